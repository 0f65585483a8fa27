"""Study runs read back: one `Record` per workdir, and series to plot.

A record is a run's config, its AUCs on f (results.json) and its
analysis.json (`analysis.study_runs`); `series` averages a value over
everything but the x axis (seeds, classes).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from oneclass_jax import files
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.analysis import captions
from oneclass_jax.analysis import grids


@dataclasses.dataclass
class Record:
  """What the plots need from one workdir."""
  workdir: str
  config: dict
  auc_f: dict
  analysis: dict

  @property
  def method(self) -> str:
    return captions.model_label(self.config)

  def get(self, key: str):
    return grids.get_field(self.config, key)


def load_records(root: str) -> list[Record]:
  """Every workdir under `root` with a results.json (analysis.json optional)."""
  records = []
  for run in workdir_lib.find_runs(root):
    analysis_path = run.path / workdir_lib.ANALYSIS
    analysis = (files.read_json(analysis_path) if analysis_path.exists()
                else {})
    records.append(Record(str(run.path), run.config, run.auc, analysis))
  return records


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def series(records: Sequence[Record], x: Callable[[Record], Any],
           value: Callable[[Record], Any],
           where: Callable[[Record], bool] = lambda r: True
           ) -> dict[str, tuple[list, list, list, list]]:
  """{model: (xs, means, stds, counts)} of value(record) grouped by x(record).

  Values are averaged over everything else that varies (seeds, classes);
  records whose value is None are left out.
  """
  groups: dict[str, dict[Any, list]] = {}
  for r in records:
    if not where(r):
      continue
    v = value(r)
    if v is None:
      continue
    groups.setdefault(r.method, {}).setdefault(x(r), []).append(v)
  out = {}
  for model, by_x in sorted(groups.items()):
    xs = sorted(by_x)
    stats = [mean_std(by_x[x]) for x in xs]
    out[model] = (xs, [s[0] for s in stats], [s[1] for s in stats],
                  [len(by_x[x]) for x in xs])
  return out


def auc_of(embedding: str, detector: str):
  def value(r: Record):
    if embedding == "f":
      v = r.auc_f.get(detector)
    else:
      v = r.analysis.get("auc_g", {}).get(detector)
    return None if v is None else 100.0 * v
  return value


def mmd_of(embedding: str):
  return lambda r: r.analysis.get("mmd2", {}).get(embedding)


def summary_rows(records: Sequence[Record]) -> list[Mapping[str, Any]]:
  """One flat row per run (for a CSV beside the figures)."""
  rows = []
  for r in records:
    row = {"workdir": r.workdir, "model": r.method,
           "batch_size": r.get("batch_size"),
           "head_depth": r.get("model.head_depth"),
           "dist_aug": r.get("data.dist_aug"),
           "contamination": r.get("data.contamination"),
           "seed": r.get("seed"), "inlier_class": r.get("data.inlier_class")}
    row.update({f"auc_f_{k}": v for k, v in r.auc_f.items()})
    row.update({f"auc_g_{k}": v
                for k, v in r.analysis.get("auc_g", {}).items()})
    row.update({f"mmd2_{k}": v
                for k, v in r.analysis.get("mmd2", {}).items()})
    for n, aucs in r.analysis.get("clean_fit", {}).items():
      row.update({f"clean{n}_{k}": v for k, v in aucs.items()})
    rows.append(row)
  return rows
