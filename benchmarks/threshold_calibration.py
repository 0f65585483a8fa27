r"""Realised false-positive rate of the saved thresholds on held-out inliers.

  python benchmarks/threshold_calibration.py WORKDIR... [--fprs=0.01,0.05,0.1]

For every evaluated workdir (results.json, scores.npz, detectors/): the
threshold `score` and the exporter use, `detectors.threshold_at_fpr` of the
5-fold cross-fitted held-out *training* inlier scores
(detectors/heldout_scores.npz), is applied to the scores of the *test*
inliers (scores.npz, labels == 0), which no detector and no threshold saw.
The realised rate is the fraction of test inliers flagged; its binomial
standard error is sqrt(p (1 - p) / n). Issue #16 asks for it within ±1 point
of the target for every detector. Writes section "Threshold calibration" of
benchmarks/RESULTS.md (--results_md='' prints only).
"""
from __future__ import annotations

import datetime
import math
import pathlib
import socket

from absl import app
from absl import flags
import numpy as np

from oneclass_jax import detectors
from oneclass_jax import files
from oneclass_jax import workdir as workdir_lib
from results_md import write_section

ROOT = pathlib.Path(__file__).resolve().parents[1]
TITLE = "Threshold calibration (issue #16)"

_FPRS = flags.DEFINE_list("fprs", ["0.01", "0.05", "0.1"], "Target rates.")
_RESULTS_MD = flags.DEFINE_string(
    "results_md", str(ROOT / "benchmarks" / "RESULTS.md"),
    "RESULTS.md to update ('' = print only).")


def realised(workdir) -> list[dict]:
  """One row per (detector, target fpr) of an evaluated workdir."""
  run = workdir_lib.Results.read(workdir)
  heldout = files.load_npz(files.path(workdir) / workdir_lib.DETECTORS /
                           "heldout_scores.npz")
  scores = run.scores()
  inliers = np.asarray(scores["labels"]) == 0
  rows = []
  for name in sorted(heldout):
    test = np.asarray(scores[name], np.float64)[inliers]
    for fpr in map(float, _FPRS.value):
      threshold = detectors.threshold_at_fpr(heldout[name], fpr)
      p = float(np.mean(test > threshold))
      rows.append(dict(workdir=str(workdir), dataset=run.dataset,
                       inlier_class=run.inlier_class, method=run.method,
                       seed=run.seed, step=run.step, detector=name,
                       target=fpr, realised=p, n_test=int(inliers.sum()),
                       n_heldout=int(len(heldout[name])),
                       stderr=math.sqrt(p * (1 - p) / inliers.sum())))
  return rows


def to_markdown(rows, command: str) -> str:
  when = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds")
  lines = [f"## {TITLE}", "",
           f"Host {socket.gethostname()}, {when}. Command: `{command}`. The "
           "threshold is the (1 − fpr) quantile of 5-fold cross-fitted "
           "held-out training-inlier scores (`detectors.threshold_at_fpr`); "
           "the realised rate is the fraction of the *test* inliers above it "
           "(± one binomial standard error).", "",
           "| dataset | class | method | seed | step | detector | held-out "
           "scores | test inliers | target | realised | within ±1 pt |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ok = abs(r["realised"] - r["target"]) <= 0.01
    lines.append(
        f"| {r['dataset']} | {r['inlier_class']} | {r['method']} | "
        f"{r['seed']} | {r['step']} | {r['detector']} | {r['n_heldout']} | "
        f"{r['n_test']} | {100 * r['target']:.0f}% | "
        f"{100 * r['realised']:.2f}% ± {100 * r['stderr']:.2f} | "
        f"{'yes' if ok else 'no'} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("Give one or more evaluated workdirs.")
  rows = [row for wd in argv[1:] for row in realised(wd)]
  md = to_markdown(rows, "python benchmarks/threshold_calibration.py " +
                   " ".join(argv[1:]))
  print(md)
  if _RESULTS_MD.value:
    write_section(pathlib.Path(_RESULTS_MD.value), md, title=TITLE)


if __name__ == "__main__":
  app.run(main)
