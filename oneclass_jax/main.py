r"""Stage 1 (and the final stage-2 evaluation) from the command line.

  python -m oneclass_jax.main --config=configs/contrastive_da.py:dataset=cifar10,inlier_class=3 \
      --workdir=/tmp/run --config.total_epochs=64

Kept deliberately thin: flags, optional multi-host initialisation, then
`trainer.train_and_evaluate(config, workdir)`: one model, or, when the config
lists several classes, seeds or dist_aug sets, K models in one program, one
workdir each below --workdir:

  python -m oneclass_jax.main --config=configs/contrastive_da.py \
      --config.data.inlier_classes=0-9 --config.seeds=0-4 --workdir=/tmp/runs
"""
import logging as std_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from oneclass_jax import distributed
from oneclass_jax import trainer

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration (a configs/*.py file).",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Orbax logs several INFO lines per checkpoint; keep the log readable.
  logging.get_absl_handler().addFilter(
      lambda record: "orbax" not in record.pathname or
      record.levelno >= std_logging.WARNING)
  # Multi-process runs (launch/*.sh: TPU VMs, several GPU hosts, N local
  # processes) set ONECLASS_JAX_DISTRIBUTED=1; a single process needs nothing.
  distributed.initialize()
  logging.info("JAX process %d/%d, backend %s, %d local devices: %s",
               jax.process_index(), jax.process_count(), jax.default_backend(),
               jax.local_device_count(), jax.local_devices())
  try:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except Exception as e:  # pylint: disable=broad-except
    distributed.failure_exit(e)  # Multi-process: logs the fix and exits.
    raise


if __name__ == "__main__":
  app.run(main)
