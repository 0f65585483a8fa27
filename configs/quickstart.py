"""Quickstart: the paper's best method at a size that fits 2 CPU cores.

Distribution-augmented contrastive learning (rot90, Table 2's "Contrastive
(DA)") on Fashion-MNIST, inlier class 0 (T-shirt/top), from the Debian package
`dataset-fashion-mnist` (no download). A narrow ResNet-18 and a short run
instead of width 1 and 2,048 epochs; at the end the stage-2 table compares
KDE / OC-SVM / GDE on the learned f with the same detectors on raw pixels and
on an untrained network of the same shape.

  python -m oneclass_jax.main --config=configs/quickstart.py --workdir=/tmp/oneclass_quickstart
  python -m oneclass_jax.main --config=configs/quickstart.py:inlier_class=7 --workdir=/tmp/qs7
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  arg = config_lib.variant(arg)
  arg.dataset = arg.dataset if arg.dataset != "cifar10" else "fashion_mnist"
  c = config_lib.base_config(arg)
  c.method = "contrastive_da"
  c.data.dist_aug = "rot90"
  c.model.width, c.model.stem_width = 0.25, 16
  c.model.head_depth, c.model.head_width, c.model.head_out_dim = 2, 128, 64
  c.batch_size = 32
  c.total_epochs, c.total_steps = -1, 2400
  c.optim.learning_rate = 0.05
  c.optim.schedule_granularity = "step"
  c.log_every_steps = 50
  c.checkpoint_every_steps = 200
  c.eval.detectors = ("kde", "ocsvm", "gde")
  c.eval.baselines = True
  c.lock()
  return c
