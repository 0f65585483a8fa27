"""A CPU recipe for CIFAR-10: RotNet at width 1/4, about 30 minutes a class.

Chosen for AUC per CPU-hour on a 2-core machine (issue #15): rotation
prediction with the identity head (RotNet) learned fastest of the paper's
methods at CPU scale (benchmarks/RESULTS.md, "CPU-scale reproduction"), and
1,500 steps of batch 64 (about 19 epochs of one class, four rotations per
image) at width 1/4 fit in about half an hour of these two cores. The
schedule decays per step because there are few epochs. Stage 2 reports KDE,
OC-SVM, GDE and the rotation classifier, beside raw pixels and an untrained
network of the same shape.

  python -m oneclass_jax.main --config=configs/cifar10_cpu.py:inlier_class=1 \
      --workdir=/tmp/cifar10_cpu/1 --config.data.source_dir=/data/cifar10_jpeg
"""
from oneclass_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config(config_lib.variant(arg))
  c.method = "rotation"
  c.method_label = "rotnet"
  c.model.width, c.model.stem_width = 0.25, 16
  c.model.head_depth, c.model.head_out_dim = 0, 0  # Identity head (RotNet).
  c.batch_size = 64
  c.total_epochs, c.total_steps = -1, 1500
  c.optim.schedule_granularity = "step"
  c.log_every_steps = 100
  c.checkpoint_every_steps = 250
  c.keep_checkpoints = 2
  c.eval.detectors = ("kde", "ocsvm", "gde", "rotation")
  c.eval.baselines = True
  c.lock()
  return c
