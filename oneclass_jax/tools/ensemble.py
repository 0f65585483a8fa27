r"""Score ensembles over seeds and distribution sets (paper Table 6 / Fig. 7).

  python -m oneclass_jax.tools.ensemble ROOT... [--detector=kde] [--out=DIR]

Reads every run under ROOT with results.json and scores.npz; how runs are
grouped into tasks and families is in `analysis.ensembles`.
"""
import pathlib

from absl import app
from absl import flags

from oneclass_jax import files
from oneclass_jax.analysis import ensembles

_DETECTOR = flags.DEFINE_string("detector", "kde", "Detector whose scores "
                                "are ensembled (a key of scores.npz).")
_OUT = flags.DEFINE_string("out", None, "Write table6.md and table6.csv here "
                           "(default: print the Markdown).")


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more directories of runs.")
  models = [m for root in argv[1:]
            for m in ensembles.load_models(root, _DETECTOR.value)]
  tables = ensembles.dataset_tables(models)
  md = ensembles.to_markdown(tables, _DETECTOR.value)
  if not _OUT.value:
    print(md)
    return
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  for name, text in (("table6.md", md),
                     ("table6.csv", ensembles.to_csv(tables))):
    files.write_atomic(out / name, text)


if __name__ == "__main__":
  app.run(main)
