"""RotNet (Golan & El-Yaniv): rotation prediction with an identity head.

The 4-way classifier sits directly on f; "RotNet [20]" rows of Table 2, with
the rotation-classifier score and KDE on f.

  python -m oneclass_jax.main --config=configs/rotnet.py:dataset=cifar10,inlier_class=0 \
      --workdir=/tmp/oneclass/rotnet_cifar10_0
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config(config_lib.variant(arg))
  c.method = "rotation"
  c.method_label = "rotnet"  # Report it apart from the MLP-head variant.
  c.model.head_depth = 0
  c.model.head_out_dim = 0  # Identity head: g(f) = f.
  c.batch_size = 64
  c.eval.detectors = ("kde", "ocsvm", "ocsvm_linear", "gde", "knn",
                      "rotation")
  c.lock()
  return c
