"""Aggregates evaluation results into the paper's tables (Table 2, 8-11).

Command line: `python -m oneclass_jax.tools.report` (see there).

Walks every WORKDIR recursively for `results.json` files (written by
`oneclass_jax.tools.evaluate`), the runs' own and their named evaluations
(`workdir.find_runs(evaluations=True)`), groups them by (dataset, method,
evaluation, embedding, detector) and reports AUC ×100 with one decimal:

* per class: mean ± std over seeds (Tables 8-11);
* per dataset: the mean over classes of the per-class means ± the std over
  seeds of each seed's class-mean (Table 2: "mean and standard deviation of
  AUCs averaged over classes over 5 runs"). Only seeds that have a result for
  every class of the group enter that std, so a missing run cannot shift it;
* Mean: the per-dataset means averaged with weights equal to each dataset's
  `num_classes` (Table 2's "Mean" column), over the datasets present.

Every std is the sample std (ddof = 1); it is left blank with a single seed.
Runs without an AUC (a test set of normal images only, or none: their
results.json says why in `auc_skipped`) enter no statistic; they are listed
in their own table, AUC shown as "—", with the reason.
Runs are grouped by their `method` string, so different configurations of one
method must carry different method names or be reported separately. A named
evaluation (another detector set or embedding of a run) is a row of its own,
labelled `<method> [<evaluation>]`, e.g. `rotnet [g-kde]`, and the CSVs get
an `evaluation` column (empty for the runs' own); a report without named
evaluations has the columns it always had. If two results.json describe the
same (dataset, class, method, embedding, seed, evaluation), the one with the
larger `step` (the later checkpoint; the authors report the last epoch) is
kept; equal steps are an error.

With --out, writes report.md, per_class.csv, per_dataset.csv, overall.csv,
no_auc.csv and,
for every run whose directory holds `scores.npz`, a ROC-curve PNG and a
score-histogram PNG under figures/; every file is written atomically. Without
--out, prints the Markdown to stdout and draws no figures.
"""
import collections
import csv
import dataclasses
import io
import math
import os
import pathlib
import re
from typing import Callable, Optional, Sequence

from absl import logging
import matplotlib
matplotlib.use("Agg")  # Files only; no display on TPU VMs or in CI.
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np

from oneclass_jax import metrics
from oneclass_jax import paper
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.workdir import Results


def load_runs(dirs: Sequence) -> list[Results]:
  """Valid runs under `dirs`, one per task (the latest step wins)."""
  latest: dict[tuple, Results] = {}
  for run in workdir_lib.find_runs(dirs, evaluations=True):
    prev = latest.get(run.task_key)
    if prev is not None and prev.step == run.step:
      raise ValueError(f"{prev.path} and {run.path} both hold step "
                       f"{run.step} of {run.task_key}; remove one.")
    if prev is None or run.step > prev.step:
      if prev is not None:
        logging.info("%s supersedes %s (later step).", run.path, prev.path)
      latest[run.task_key] = run
  runs = list(latest.values())
  num_classes = {}
  for run in runs:
    if num_classes.setdefault(run.dataset, run.num_classes) != run.num_classes:
      raise ValueError(f"{run.path}: num_classes {run.num_classes} disagrees "
                       f"with {num_classes[run.dataset]} in other runs of "
                       f"{run.dataset!r}.")
  return runs


def _class_key(c):
  return (isinstance(c, str), c)


def _std(values) -> float:
  return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


@dataclasses.dataclass
class Report:
  """The aggregated tables; `auc_pct_*` fields are AUC ×100 (percent)."""
  per_class: list[dict]
  per_dataset: list[dict]
  overall: list[dict]
  no_auc: list[dict] = dataclasses.field(default_factory=list)


def aggregate(runs: Sequence[Results]) -> Report:
  """Per-class, per-dataset and class-weighted overall AUC statistics."""
  # (dataset, method, evaluation, embedding, detector) -> class -> seed ->
  # AUC×100; evaluation '' for the runs' own, which so sort as before.
  groups = collections.defaultdict(lambda: collections.defaultdict(dict))
  num_classes = {}
  for run in runs:
    num_classes[run.dataset] = run.num_classes
    for det, auc in run.auc.items():
      groups[(run.dataset, run.method, run.evaluation or "", run.embedding,
              det)][run.inlier_class][run.seed] = 100.0 * auc
  per_class, per_dataset = [], []
  for key in sorted(groups):
    dataset, method, evaluation, embedding, det = key
    by_class = groups[key]
    classes = sorted(by_class, key=_class_key)
    class_means = []
    for c in classes:
      values = list(by_class[c].values())
      class_means.append(float(np.mean(values)))
      per_class.append(dict(
          dataset=dataset, method=method, evaluation=evaluation,
          embedding=embedding, detector=det, inlier_class=c,
          num_seeds=len(values), auc_pct_mean=class_means[-1],
          auc_pct_std=_std(values)))
    complete = set.intersection(*(set(by_class[c]) for c in classes))
    seed_means = [np.mean([by_class[c][s] for c in classes])
                  for s in sorted(complete)]
    per_dataset.append(dict(
        dataset=dataset, method=method, evaluation=evaluation,
        embedding=embedding, detector=det,
        num_classes=num_classes[dataset], classes_present=len(classes),
        num_seeds_complete=len(complete),
        auc_pct_mean=float(np.mean(class_means)),
        auc_pct_std=_std(seed_means),
        paper_auc_pct=_or_nan(paper.table2(dataset, method, det,
                                           embedding))))
  no_auc = [dict(dataset=run.dataset, inlier_class=run.inlier_class,
                 inlier_name=run.record.get("inlier_name", ""),
                 method=run.method, evaluation=run.evaluation or "",
                 embedding=run.embedding, seed=run.seed,
                 step=run.step, reason=run.auc_skipped, path=str(run.path))
            for run in sorted(runs, key=lambda r: str(r.path))
            if run.auc_skipped]
  return Report(per_class, per_dataset, _overall(per_dataset), no_auc)


def _or_nan(value: Optional[float]) -> float:
  return math.nan if value is None else value


def _overall(per_dataset: list[dict]) -> list[dict]:
  """Class-count-weighted mean over datasets (Table 2's "Mean")."""
  rows = collections.defaultdict(list)
  for r in per_dataset:
    rows[_column(r)].append(r)
  overall = []
  for (method, evaluation, embedding, det), rs in sorted(rows.items()):
    weights = [r["num_classes"] for r in rs]
    overall.append(dict(
        method=method, evaluation=evaluation, embedding=embedding,
        detector=det,
        datasets=" ".join(r["dataset"] for r in rs), num_classes=sum(weights),
        auc_pct_mean=float(np.average([r["auc_pct_mean"] for r in rs],
                                  weights=weights))))
  return overall


def _column(row: dict) -> tuple[str, str, str, str]:
  """A row's (method, evaluation, embedding, detector)."""
  return (row["method"], row["evaluation"], row["embedding"], row["detector"])


def _label(row: dict) -> str:
  """The method as shown: 'rotnet [g-kde]' for a named evaluation."""
  return row["method"] + (f" [{row['evaluation']}]" if row["evaluation"]
                          else "")


def _cell(mean: float, std: float = math.nan) -> str:
  return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def to_markdown(report: Report) -> str:
  """report.md: the summary (Table 2 layout), then one table per dataset."""
  datasets = sorted({r["dataset"] for r in report.per_dataset})
  cells = {}
  for r in report.per_dataset:
    text = _cell(r["auc_pct_mean"], r["auc_pct_std"])
    if r["classes_present"] < r["num_classes"]:
      text += f" ({r['classes_present']}/{r['num_classes']} classes)"
    cells[_column(r) + (r["dataset"],)] = text
  summary_rows = []
  for o in report.overall:
    summary_rows.append([_label(o), o["embedding"], o["detector"]] +
                        [cells.get(_column(o) + (d,), "") for d in datasets] +
                        [_cell(o["auc_pct_mean"])])
  parts = [
      "# One-class classification AUROC",
      "AUC ×100. Per class: mean ± sample std (ddof=1) over seeds. Per "
      "dataset: mean over classes of the per-class means ± sample std over "
      "seeds of each seed's class-mean (seeds with every class only). Mean: "
      "average over datasets weighted by their number of classes. No std "
      "means a single seed.",
      "## Summary (Table 2 layout)",
      _md_table(["method", "embedding", "detector"] + datasets + ["Mean"],
                summary_rows)]
  beside = [r for r in report.per_dataset
            if not math.isnan(r["paper_auc_pct"])]
  if beside:
    parts += [
        "## Beside the paper (Table 2: ResNet-18 width 1, 2,048 epochs, "
        "5 seeds)",
        _md_table(["dataset", "method", "embedding", "detector", "ours",
                   "paper", "ours − paper"],
                  [[r["dataset"], _label(r), r["embedding"], r["detector"],
                    _cell(r["auc_pct_mean"], r["auc_pct_std"]) + (
                        f" ({r['classes_present']}/{r['num_classes']} "
                        "classes)" if r["classes_present"] < r["num_classes"]
                        else ""),
                    f"{r['paper_auc_pct']:.1f}",
                    f"{r['auc_pct_mean'] - r['paper_auc_pct']:+.1f}"]
                   for r in beside])]
  for dataset in datasets:
    parts += [f"## {dataset}: per-class AUROC (Tables 8-11 layout)",
              _per_class_markdown(report, dataset)]
  if report.no_auc:
    parts += ["## Runs without an AUC (detectors and threshold saved)",
              _md_table(["dataset", "class", "method", "embedding", "seed",
                         "step", "AUC", "reason", "workdir"],
                        [[r["dataset"], f"{r['inlier_class']} "
                          f"({r['inlier_name']})", _label(r),
                          r["embedding"], str(r["seed"]), str(r["step"]),
                          "—", r["reason"], r["path"]]
                         for r in report.no_auc])]
  return "\n\n".join(parts) + "\n"


def _per_class_markdown(report: Report, dataset: str) -> str:
  rows_here = [r for r in report.per_dataset if r["dataset"] == dataset]
  columns = sorted(_column(r) for r in rows_here)
  labels = {_column(r): "/".join([_label(r), r["embedding"], r["detector"]])
            for r in rows_here}
  classes = sorted({r["inlier_class"] for r in report.per_class
                    if r["dataset"] == dataset}, key=_class_key)
  cells = {_column(r) + (r["inlier_class"],):
           _cell(r["auc_pct_mean"], r["auc_pct_std"])
           for r in report.per_class if r["dataset"] == dataset}
  means = {_column(r): _cell(r["auc_pct_mean"], r["auc_pct_std"])
           for r in rows_here}
  rows = [[str(c)] + [cells.get(col + (c,), "") for col in columns]
          for c in classes]
  rows.append(["mean"] + [means[col] for col in columns])
  return _md_table(["class"] + [labels[col] for col in columns], rows)


# "evaluation" is left out of reports without named evaluations, so theirs
# keep the columns they always had.
_CSV_COLUMNS = {
    "per_class.csv": ("per_class", ["dataset", "method", "evaluation",
                                    "embedding", "detector", "inlier_class",
                                    "num_seeds", "auc_pct_mean",
                                    "auc_pct_std"]),
    "per_dataset.csv": ("per_dataset", [
        "dataset", "method", "evaluation", "embedding", "detector",
        "num_classes", "classes_present", "num_seeds_complete",
        "auc_pct_mean", "auc_pct_std", "paper_auc_pct"]),
    "overall.csv": ("overall", ["method", "evaluation", "embedding",
                                "detector", "datasets", "num_classes",
                                "auc_pct_mean"]),
    "no_auc.csv": ("no_auc", ["dataset", "inlier_class", "inlier_name",
                              "method", "evaluation", "embedding", "seed",
                              "step", "reason", "path"]),
}


def _csv_text(rows: list[dict], columns: list[str]) -> str:
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ("" if isinstance(row[k], float) and
                         math.isnan(row[k]) else row[k]) for k in columns})
  return buf.getvalue()


def _atomic_write(path: pathlib.Path, write: Callable[[str], None]):
  """Calls write(tmp_path), then renames tmp onto `path` (same directory)."""
  tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
  try:
    write(str(tmp))
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def _task_name(run: Results) -> str:
  name = (f"{run.dataset}_{run.inlier_class}_{run.method}_{run.embedding}"
          f"_seed{run.seed}" + (f"_{run.evaluation}" if run.evaluation else ""))
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def load_scores(path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(labels, {detector: scores}) from a scores.npz, validated."""
  with np.load(path) as npz:
    arrays = {k: npz[k] for k in npz.files}
  if "labels" not in arrays:
    raise ValueError(f"{path}: no 'labels' array.")
  labels = arrays.pop("labels")
  for name, s in arrays.items():
    if s.shape != labels.shape:
      raise ValueError(f"{path}: scores {name!r} have shape {s.shape} but "
                       f"labels have {labels.shape}.")
  return labels, arrays


def plot_run(run: Results, fig_dir: pathlib.Path) -> list[pathlib.Path]:
  """ROC and histogram PNGs for a run with scores.npz; returns the paths."""
  labels, scores = load_scores(run.path / workdir_lib.SCORES)
  names = sorted(scores)
  title = (f"{run.dataset} class {run.inlier_class} · {run.method} "
           f"({run.embedding}) · seed {run.seed} · step {run.step}")
  fig_dir.mkdir(parents=True, exist_ok=True)
  written = []

  fig, ax = plt.subplots(figsize=(5, 5))
  for name in names:
    fpr, tpr, _ = metrics.roc_curve_points(labels, scores[name])
    auc = metrics.auroc(labels, scores[name])
    ax.plot(fpr, tpr, label=f"{name} (AUC {100 * auc:.1f})")
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
  ax.set(xlabel="false-positive rate (inliers)",
         ylabel="true-positive rate (outliers)", title=title)
  ax.title.set_fontsize(8)
  ax.legend(loc="lower right", fontsize=8)
  written.append(_save(fig, fig_dir / f"{_task_name(run)}_roc.png"))

  fig, axes = plt.subplots(len(names), 1, figsize=(6, 2.2 * len(names)),
                           squeeze=False)
  for ax, name in zip(axes[:, 0], names):
    s = scores[name]
    bins = np.histogram_bin_edges(s, bins=50)
    ax.hist(s[labels == 0], bins=bins, alpha=0.6, density=True,
            label="inliers")
    ax.hist(s[labels == 1], bins=bins, alpha=0.6, density=True,
            label="outliers")
    ax.set_ylabel(name)
    ax.legend(fontsize=7)
  axes[0, 0].set_title(title, fontsize=8)
  axes[-1, 0].set_xlabel("anomaly score (higher = more anomalous)")
  fig.tight_layout()
  written.append(_save(fig, fig_dir / f"{_task_name(run)}_hist.png"))
  return written


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
  plt.close(fig)
  return path


def write_report(report: Report, out: pathlib.Path,
                 runs: Optional[Sequence[Results]] = None) -> list[pathlib.Path]:
  """Writes report.md, the CSVs and (for `runs` with scores) the figures."""
  out.mkdir(parents=True, exist_ok=True)
  written = []
  md = to_markdown(report)
  _atomic_write(out / "report.md", lambda tmp: pathlib.Path(tmp).write_text(md))
  written.append(out / "report.md")
  named = any(r["evaluation"] for r in report.per_class + report.no_auc)
  for filename, (attr, columns) in _CSV_COLUMNS.items():
    if not named:
      columns = [c for c in columns if c != "evaluation"]
    text = _csv_text(getattr(report, attr), columns)
    _atomic_write(out / filename,
                  lambda tmp, t=text: pathlib.Path(tmp).write_text(t))
    written.append(out / filename)
  for run in runs or ():
    # A run without an AUC has no ROC curve (one class only, or no scores).
    if run.auc and (run.path / workdir_lib.SCORES).exists():
      try:
        written += plot_run(run, out / "figures")
      except ValueError as e:
        raise ValueError(f"{run.path / workdir_lib.SCORES}: {e}") from e
  return written
