"""Score ensembles over seeds and distribution sets: paper Table 6 / Fig. 7.

Command line: `python -m oneclass_jax.tools.ensemble` (see there).

Reads every run under ROOT that has `results.json` and `scores.npz` (written
by `oneclass_jax.tools.evaluate`) and groups them:

* a *task* is (dataset, inlier class): all its runs must score the same test
  set (identical label vectors);
* a *family* is one representation setting: runs whose configs are equal up
  to the seed (and the fields that never change what is trained: logging,
  checkpointing, evaluation). Families are named by the config fields in
  which they differ, e.g. the distribution set `data.dist_aug`.

Per task, with the scores of `--detector`:

* single model (row 1, per family): AUC of each seed's model, mean ± std
  over seeds;
* ensemble over seeds (row 2, per family): AUC of the mean standardised
  score of all seeds' models (`detectors.ensemble.ensemble_scores`: each
  model's scores z-scored on its own test scores, then averaged);
* ensemble over families (last column): row 1 ensembles the families within
  each seed (mean ± std over the seeds that every family has), row 2
  ensembles every model of the task (families × seeds; 25 in the paper).

Dataset values average the task values over classes; a "±" is the sample std
over seeds of the per-seed class means (as `oneclass_jax.tools.report`), so only
seeds present for every class enter it. AUCs are ×100 with one decimal.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import pathlib
from typing import Sequence

import numpy as np

from oneclass_jax import config_lib
from oneclass_jax import metrics
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.analysis import captions
from oneclass_jax.detectors import ensemble as ensemble_lib

# Fields that do not tell settings apart: the task (dataset, class), the
# seeds, and what never changes the trained representation.
_IGNORED = set(config_lib.RESUMABLE_FIELDS) | {
    "seed", "data.seed", "data.name", "data.inlier_class"}


@dataclasses.dataclass
class Model:
  """One trained run's test scores."""
  path: pathlib.Path
  task: tuple
  seed: int
  family: str  # canonical JSON of the config without seeds
  config: dict
  labels: np.ndarray
  scores: np.ndarray


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, name + "."))
    else:
      out[name] = v
  return out


def family_key(config: dict) -> str:
  flat = _flatten(config)
  kept = {k: v for k, v in flat.items()
          if k not in _IGNORED and k.split(".")[0] not in _IGNORED}
  return json.dumps(kept, sort_keys=True)


def load_models(root, detector: str) -> list[Model]:
  """Every run under `root` with results.json and scores.npz."""
  models = []
  for run in workdir_lib.find_runs(root, with_scores=True):
    scores = run.scores()
    if detector not in scores:
      raise ValueError(f"{run.path / workdir_lib.SCORES} has no scores of "
                       f"{detector!r} (it has "
                       f"{sorted(set(scores) - {'labels'})}); pick "
                       "--detector among those.")
    models.append(Model(run.path, (run.dataset, run.inlier_class), run.seed,
                        family_key(run.config), run.config,
                        np.asarray(scores["labels"]),
                        np.asarray(scores[detector], np.float64)))
  return models


def family_names(models: Sequence[Model]) -> dict[str, str]:
  """family key -> 'field=value, ...' for the fields where families differ."""
  flats = {m.family: json.loads(m.family) for m in models}
  keys = sorted({k for f in flats.values() for k in f})
  varying = [k for k in keys
             if len({json.dumps(f.get(k)) for f in flats.values()}) > 1]
  names = {}
  for fam, flat in flats.items():
    parts = [captions.set_label(flat[k]) if k == "data.dist_aug" else
             f"{k}={flat.get(k)}" for k in varying]
    names[fam] = ", ".join(parts) or "all runs"
  return names


def _auc(labels, scores) -> float:
  return 100.0 * metrics.auroc(labels, scores)


def task_table(models: Sequence[Model]) -> dict:
  """Table 6 numbers of one task (one dataset and inlier class)."""
  labels = models[0].labels
  for m in models:
    if m.labels.shape != labels.shape or np.any(m.labels != labels):
      raise ValueError(f"{m.path}: its test labels differ from "
                       f"{models[0].path}'s; runs of one task must score the "
                       "same test set.")
  fams = collections.defaultdict(dict)
  for m in models:
    if m.seed in fams[m.family]:
      raise ValueError(f"Two runs of one setting with seed {m.seed}: "
                       f"{fams[m.family][m.seed].path} and {m.path}.")
    fams[m.family][m.seed] = m
  out = {"single": {}, "seed_ensemble": {}, "per_seed": {}}
  for fam, by_seed in fams.items():
    out["per_seed"][fam] = {s: _auc(labels, m.scores)
                            for s, m in by_seed.items()}
    out["seed_ensemble"][fam] = _auc(labels, ensemble_lib.ensemble_scores(
        [by_seed[s].scores for s in sorted(by_seed)]))
  common = sorted(set.intersection(*(set(b) for b in fams.values())))
  out["cross_family_per_seed"] = {
      s: _auc(labels, ensemble_lib.ensemble_scores(
          [fams[f][s].scores for f in sorted(fams)])) for s in common}
  out["all_models"] = _auc(labels, ensemble_lib.ensemble_scores(
      [m.scores for m in models]))
  out["num_models"] = len(models)
  return out


def _mean_std_over_seeds(per_class: Sequence[dict]) -> tuple[float, float]:
  """Class-mean of per-class seed means ± std over seeds of class means."""
  mean = float(np.mean([np.mean(list(d.values())) for d in per_class]))
  seeds = set.intersection(*(set(d) for d in per_class))
  per_seed = [np.mean([d[s] for d in per_class]) for s in sorted(seeds)]
  std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan
  return mean, std


def dataset_tables(models: Sequence[Model]) -> dict[str, dict]:
  """{dataset: {'columns', 'single', 'ensemble', 'classes', ...}}."""
  names = family_names(models)
  by_task = collections.defaultdict(list)
  for m in models:
    by_task[m.task].append(m)
  tables = {}
  for dataset in sorted({t[0] for t in by_task}):
    tasks = {t: task_table(ms) for t, ms in by_task.items()
             if t[0] == dataset}
    models_of = [m for m in models if m.task[0] == dataset]
    fams = sorted({f for tab in tasks.values() for f in tab["per_seed"]},
                  key=lambda f: names[f])
    for t, tab in tasks.items():
      missing = [names[f] for f in fams if f not in tab["per_seed"]]
      if missing:
        raise ValueError(f"{dataset} class {t[1]} has no run of {missing}; "
                         "every class needs every setting.")
    single = [_mean_std_over_seeds([tab["per_seed"][f]
                                    for tab in tasks.values()])
              for f in fams]
    ensemble = [float(np.mean([tab["seed_ensemble"][f]
                               for tab in tasks.values()])) for f in fams]
    cross = [tab["cross_family_per_seed"] for tab in tasks.values()]
    cross_single = (_mean_std_over_seeds(cross) if all(cross)
                    else (math.nan, math.nan))
    tables[dataset] = {
        "label": captions.dataset_label(models_of[0].config["data"]),
        "scale": captions.scale_note([m.config for m in models_of]),
        "columns": [names[f] for f in fams],
        "single": single,
        "ensemble": ensemble,
        "cross_single": cross_single,
        "all_models": float(np.mean([tab["all_models"]
                                     for tab in tasks.values()])),
        "classes": sorted(t[1] for t in tasks),
        "seeds_per_setting": [
            sorted({s for tab in tasks.values() for s in tab["per_seed"][f]})
            for f in fams],
        "models_per_class": [tab["num_models"] for tab in tasks.values()],
    }
  return tables


def _cell(mean: float, std: float = math.nan) -> str:
  if math.isnan(mean):
    return "—"
  return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f}±{std:.1f}"


def to_markdown(tables: dict[str, dict], detector: str) -> str:
  lines = []
  for dataset, t in tables.items():
    n_fam = len(t["columns"])
    seeds = max(len(s) for s in t["seeds_per_setting"])
    lines.append(f"### {t['label']}: classes {t['classes']}, detector "
                 f"{detector}\n")
    lines.append(f"Scale: {t['scale']}. AUC ×100; ± is the std over "
                 "seeds.\n")
    header = (["Representations"] + t["columns"] +
              [f"Ensemble of {n_fam}"])
    single = (["single model"] + [_cell(*c) for c in t["single"]] +
              [_cell(*t["cross_single"])])
    ensemble = ([f"ensemble of {seeds} models"] +
                [_cell(v) for v in t["ensemble"]] +
                [_cell(t["all_models"])])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines.append("| " + " | ".join(single) + " |")
    lines.append("| " + " | ".join(ensemble) + " |")
    lines.append("")
  return "\n".join(lines)


def to_csv(tables: dict[str, dict]) -> str:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(["dataset", "setting", "single_mean", "single_std",
                   "seed_ensemble"])
  for dataset, t in tables.items():
    for name, (m, s), e in zip(t["columns"], t["single"], t["ensemble"]):
      writer.writerow([dataset, name, f"{m:.4f}", f"{s:.4f}", f"{e:.4f}"])
    m, s = t["cross_single"]
    writer.writerow([dataset, "ensemble of settings", f"{m:.4f}",
                     f"{s:.4f}", f"{t['all_models']:.4f}"])
  return buf.getvalue()
