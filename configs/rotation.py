"""Rotation prediction with an MLP head: "Rotation Prediction" of Table 2.

Every image contributes all four rotations per step (Eq. 1). Head as the
authors' run_rotation.sh: 7 x [Dense 512 -> BN -> ReLU], a linear 512-d layer
with bias, then the 4-way rotation classifier; batch 64 (256 images a step).

  python -m oneclass_jax.main --config=configs/rotation.py:dataset=cifar10,inlier_class=0 \
      --workdir=/tmp/oneclass/rotation_cifar10_0
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config(config_lib.variant(arg))
  c.method = "rotation"
  c.model.head_depth = 7
  c.model.head_out_dim = c.model.head_width
  c.model.head_out_bias = True
  c.batch_size = 64
  c.eval.detectors = ("kde", "ocsvm", "ocsvm_linear", "gde", "knn",
                      "rotation")
  c.lock()
  return c
