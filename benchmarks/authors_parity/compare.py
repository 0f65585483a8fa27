"""The comparison tables of the parity records (one JSONL line per run).

Per method and inlier class: each implementation's mean ± std over seeds of
the KDE and OC-SVM AUC on f, training images/s and evaluation time; whether
ours and theirs agree (|difference of means| <= 2 standard errors of that
difference, SE = sqrt(s_a^2 / n_a + s_b^2 / n_b), which needs >= 2 seeds a
side); and the training loss at the same steps, as a table and a figure.
"""
from __future__ import annotations

import collections
import math

import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

DETECTORS = ("kde", "ocsvm")
_NAMES = {"kde": "KDE", "ocsvm": "OC-SVM"}


def mean_std(values) -> tuple[float, float]:
  """Mean and sample std (ddof 1; NaN for one value)."""
  values = np.asarray(values, np.float64)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
  return float(np.mean(values)), std


def difference(a, b) -> tuple[float, float, bool | None]:
  """(mean(a) - mean(b), its standard error, |diff| <= 2 SE or None).

  None when a side has fewer than 2 values: no spread, no test.
  """
  (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
  if len(a) < 2 or len(b) < 2:
    return ma - mb, math.nan, None
  se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
  return ma - mb, se, bool(abs(ma - mb) <= 2 * se)


def _pm(values, digits=1) -> str:
  mean, std = mean_std(values)
  return f"{mean:.{digits}f}" if math.isnan(std) else \
      f"{mean:.{digits}f} ± {std:.{digits}f}"


def _groups(records):
  groups = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in records:
    groups[(r["method"], r["inlier_class"])][r["implementation"]].append(r)
  return dict(sorted(groups.items()))


def markdown(records, implementations, title: str) -> str:
  """The three tables (results, parity, loss curves) of `records`."""
  groups = _groups(records)
  lines = [f"### {title}", "",
           "| method | class | implementation | seeds | KDE | OC-SVM | "
           "train img/s | evaluation (s) |", "|---|---|---|---|---|---|---|---|"]
  for (method, cls), by_impl in groups.items():
    for impl in implementations:
      runs = by_impl.get(impl, [])
      if not runs:
        continue
      cells = [_pm([r["auc"][d] for r in runs]) for d in DETECTORS]
      lines.append(
          f"| {method} | {cls} | {impl} | "
          f"{','.join(str(r['seed']) for r in runs)} | {' | '.join(cells)} | "
          f"{_pm([r['train_images_per_s'] for r in runs])} | "
          f"{_pm([r['eval_seconds'] for r in runs], 0)} |")
  lines += ["", "Ours − authors (difference of mean AUCs, ± 2 SE); "
            "'within' = |difference| <= 2 SE.", "",
            "| method | class | " + " | ".join(
                f"{_NAMES[d]} diff | within" for d in DETECTORS) + " |",
            "|---|---|" + "---|---|" * len(DETECTORS)]
  for (method, cls), by_impl in groups.items():
    if not (by_impl.get("authors") and by_impl.get("ours")):
      continue
    cells = []
    for d in DETECTORS:
      diff, se, within = difference([r["auc"][d] for r in by_impl["ours"]],
                                    [r["auc"][d] for r in by_impl["authors"]])
      cells.append(f"{diff:+.1f}" + ("" if math.isnan(se) else
                                     f" ± {2 * se:.1f}"))
      cells.append({None: "n/a (< 2 seeds)", True: "yes",
                    False: "**no**"}[within])
    lines.append(f"| {method} | {cls} | {' | '.join(cells)} |")
  lines += ["", "Training loss (cross-entropy, window means, mean over "
            "seeds) at the same steps.", "",
            "| method | class | step | " + " | ".join(implementations) + " |",
            "|---|---|---|" + "---|" * len(implementations)]
  for (method, cls), by_impl in groups.items():
    steps = next(iter(by_impl.values()))[0]["loss_steps"]
    for i, step in enumerate(steps):
      cells = [f"{np.mean([r['loss'][i] for r in by_impl[impl]]):.3f}"
               if by_impl.get(impl) else "" for impl in implementations]
      lines.append(f"| {method} | {cls} | {step} | {' | '.join(cells)} |")
  return "\n".join(lines) + "\n"


def loss_figure(records, implementations):
  """One panel per (method, class): each implementation's loss curve (mean
  over seeds, shaded between the lowest and highest seed)."""
  groups = _groups(records)
  fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.4),
                           squeeze=False)
  for ax, ((method, cls), by_impl) in zip(axes[0], groups.items()):
    for impl in implementations:
      runs = by_impl.get(impl)
      if not runs:
        continue
      steps = runs[0]["loss_steps"]
      losses = np.asarray([r["loss"] for r in runs], np.float64)
      ax.plot(steps, losses.mean(0), marker=".", label=impl)
      if len(runs) > 1:
        ax.fill_between(steps, losses.min(0), losses.max(0), alpha=0.2)
    ax.set(title=f"{method}, class {cls}", xlabel="step",
           ylabel="cross-entropy (window mean)")
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
