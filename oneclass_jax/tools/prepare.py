r"""Converts a run's local data source once, for workers that do not have it.

  python -m oneclass_jax.tools.prepare --config=configs/rotnet.py:dataset=cifar10 \
      --config.data.source_dir=/data/cifar10_jpeg --out=/data/cifar10_prepared

Then copy --out to every worker (or put it on a shared mount) and pass
`--config.data.source_dir=<that folder>` there: the workers read the
converted records and never need the original folder (IDX files, image
folder, CIFAR-10 JPEG copy). The copy carries the identity of its source,
so runs on it and on the original share embedding caches and detectors.
Image folders are converted at the config's `model.image_size`.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from oneclass_jax.data import sources

_OUT = flags.DEFINE_string("out", None, "Folder for the prepared copy.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The run's configuration (a configs/*.py file).")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  data = _CONFIG.value.data
  meta = sources.prepare(data.name, _OUT.value,
                         source_dir=data.source_dir or None,
                         image_size=_CONFIG.value.model.image_size)
  print(f"Prepared {meta['dataset']} ({', '.join(meta['splits'])}; "
        f"{len(meta['class_names'])} classes, {meta['image_shape'][0]}x"
        f"{meta['image_shape'][1]} images) from {meta['source_dir']} into "
        f"{_OUT.value}. On every worker pass "
        f"--config.data.source_dir={_OUT.value}.")


if __name__ == "__main__":
  app.run(main)
