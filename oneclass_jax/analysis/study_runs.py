"""Trains a study grid and writes what its figures need beyond results.json.

`run_grid` trains each `grids.RunSpec` with `single.train_and_evaluate` into
`<root>/<spec.name>` (a run whose results.json exists is not retrained; a
half-finished one resumes from its checkpoint). `analyze_run` then writes
`analysis.json` beside it:

* `auc_g`: the same detectors on g∘f instead of f (Fig. 4b/4c, Fig. 8);
* `mmd2`: MMD²_u between the L2-normalised embeddings (f and g∘f) of the
  test-set inliers (held-out inliers, as the paper's validation set) and as
  many uniform points on the sphere (`analysis.uniformity`);
* `clean_fit`: for contaminated training sets, the detectors refitted on
  N clean inliers only (the train images whose hidden `true_label` is 0;
  Figs. 5b/5c, 11), N in `clean_fits`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from absl import logging
import ml_collections
import numpy as np

from oneclass_jax import config_lib
from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import metrics
from oneclass_jax import parallel
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.analysis import grids
from oneclass_jax.analysis import uniformity
from oneclass_jax.trainer import single


def analyze_run(workdir: str, *, mmd: bool = True, auc_g: bool = True,
                clean_fits: Sequence[int] = (), mmd_points: int = 2000,
                mesh=None) -> dict:
  """Writes `<workdir>/analysis.json` (see the module docstring)."""
  mesh = mesh or parallel.make_mesh()
  config, run, state = experiment.restore_run(workdir, mesh)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  extract = lambda src: embeddings.extract(  # noqa: E731
      run.model, variables, src, mesh, batch_size=config.eval.batch_size)
  names = [n for n in config.eval.detectors if n != detectors.ROTATION]
  fit, test = extract(run.data.fit), extract(run.data.test)
  labels = embeddings.labels_of(run.data.test)
  out: dict[str, Any] = {"detectors": names}
  if auc_g:
    out["auc_g"] = _aucs(names, fit["embeds"], test["embeds"], labels)
  if mmd:
    inliers = labels == 0
    out["mmd2"] = {
        e: uniformity.uniformity_mmd2(test[k][inliers], seed=int(config.seed),
                                      max_points=mmd_points)
        for e, k in embeddings.EMBEDDING_KEYS.items()}
    out["mmd_points"] = int(min(mmd_points, inliers.sum()))
    out["mmd_bandwidth"] = uniformity.DEFAULT_BANDWIDTH
  if clean_fits:
    key = embeddings.EMBEDDING_KEYS[config.eval.embedding]
    out["clean_fit"] = _clean_fits(run.data.fit, fit[key], test[key], labels,
                                   names, clean_fits, int(config.seed))
  files.write_json(files.path(workdir) / workdir_lib.ANALYSIS, out)
  return out


def _aucs(names, fit_features, test_features, labels) -> dict:
  scores = evaluators.one_class.fit_and_score(names, fit_features, test_features)
  return {n: float(metrics.auroc(labels, s)) for n, s in scores.items()}


def clean_rows(true_labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """n positions of true inliers (true_label 0), drawn with `seed`, sorted."""
  clean = np.flatnonzero(np.asarray(true_labels) == 0)
  if n > len(clean):
    raise ValueError(f"Asked for {n} clean inliers but the training set has "
                     f"only {len(clean)}.")
  return np.sort(np.random.RandomState(seed).permutation(clean)[:n])


def _clean_fits(fit_source, fit_features, test_features, labels, names,
                sizes, seed) -> dict:
  true = fit_source.true_labels
  if true is None:
    raise ValueError("The fit set carries no true labels; clean refits need "
                     "a run built by data.one_class.")
  out = {}
  for n in sizes:
    rows = clean_rows(true, int(n), seed)
    out[str(n)] = _aucs(names, fit_features[rows], test_features, labels)
  return out


def _check_same_config(workdir: str, config) -> None:
  """A finished run is only reused for the very config the grid asks for."""
  saved = workdir_lib.Results.read(workdir).config
  diff = config_lib.config_diff(saved, config_lib.to_dict(config),
                                ignore=("log_every_steps",
                                        "checkpoint_every_steps",
                                        "keep_checkpoints"))
  if diff:
    raise ValueError(
        f"{workdir} holds a run of a different config than the grid's:\n  "
        + "\n  ".join(diff) + "\nUse another --root or remove that run.")


def run_grid(specs: Sequence[grids.RunSpec], root: str, *,
             build: Callable[[grids.RunSpec], ml_collections.ConfigDict],
             analyze: Callable[[str], dict] | None = None,
             train_fn: Callable | None = None) -> list[str]:
  """Trains every spec not yet done (sequentially), then analyzes it.

  Args:
    specs: the grid.
    root: runs go to `<root>/<spec.name>`.
    build: spec -> config.
    analyze: workdir -> analysis dict, run when analysis.json is missing.
    train_fn: (config, workdir) -> results; `single.train_and_evaluate` by
      default (a parameter so tests can count calls).

  Returns:
    The workdirs, in grid order.
  """
  if train_fn is None:
    train_fn = single.train_and_evaluate
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError("Two runs of the grid share a name; the grid repeats a "
                     "setting.")
  workdirs = []
  for i, spec in enumerate(specs, start=1):
    workdir = os.path.join(root, spec.name)
    workdirs.append(workdir)
    config = build(spec)
    if workdir_lib.finished(workdir):
      _check_same_config(workdir, config)
      logging.info("[%d/%d] %s: done, skipped.", i, len(specs), spec.name)
    else:
      logging.info("[%d/%d] %s: training.", i, len(specs), spec.name)
      train_fn(config, workdir)
    if analyze is not None and not os.path.exists(
        os.path.join(workdir, workdir_lib.ANALYSIS)):
      analyze(workdir)
  return workdirs
