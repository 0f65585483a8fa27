r"""The paper's tables (Table 2, 8-11) from every results.json under WORKDIRs.

  python -m oneclass_jax.tools.report WORKDIR... [--out=DIR]

Without --out, prints the Markdown; with it, writes report.md, the CSVs and
the per-run figures (`analysis.tables`).
"""
import pathlib

from absl import app
from absl import flags
from absl import logging

from oneclass_jax import workdir
from oneclass_jax.analysis import tables

_OUT = flags.DEFINE_string(
    "out", None, "Directory for report.md, CSVs and figures; default: print "
    "the Markdown to stdout.")


def main(argv):
  dirs = argv[1:]
  if not dirs:
    raise app.UsageError("Give one or more directories to search for "
                         f"{workdir.RESULTS}.")
  runs = tables.load_runs(dirs)
  report = tables.aggregate(runs)
  if _OUT.value is None:
    print(tables.to_markdown(report), end="")
    return
  for path in tables.write_report(report, pathlib.Path(_OUT.value), runs):
    logging.info("Wrote %s", path)


if __name__ == "__main__":
  app.run(main)
