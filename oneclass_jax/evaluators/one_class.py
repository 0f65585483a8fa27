"""The one-class evaluator: embeddings -> one-class detectors -> AUCs.

Extracts f (or g∘f) for the un-augmented inlier training set and the whole
test set on every device, fits the detectors of Section 3.2 / Appendix A.1 and
writes `results.json` (AUC per detector; outliers are the positive class),
`scores.npz` and the fitted detectors with their threshold scores atomically
to the workdir. `train_and_evaluate` calls `evaluate_state` at the end of
training; `python -m oneclass_jax.tools.evaluate` re-evaluates a workdir.
The config's own embedding and detectors write the top of the workdir;
others write a named evaluation, `evaluations/<name>/`
(`evaluation_settings`, `workdir.evaluation_name`), leaving the run's own
untouched. `restore_with_detector` reads a saved detector of either back for
the exported scorer (`export.py`).

A test set without anomalies (or without inliers, or no test split at all:
an engineer with normal images only) has no AUC. The detectors and their
held-out threshold scores are fitted and saved all the same, results.json
says `"auc": null` with the reason in `auc_skipped`, and scores.npz holds
the test scores when there is a test split (none without one).
"""
from __future__ import annotations

import functools
import json
import pickle
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from oneclass_jax import config_lib
from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import metrics
from oneclass_jax import progress
from oneclass_jax import provenance
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.data import one_class as one_class_data
from oneclass_jax.detectors import rotation_score

# Folds of the cross-fitted held-out inlier scores behind the thresholds.
THRESHOLD_FOLDS = detectors.THRESHOLD_FOLDS
# Version of detectors/: `score` refuses another one. 2: KDE and OC-SVM
# scores normalised by the fitted rows, cross-fitted held-out scores.
# 3: scikit-learn estimators; OC-SVM's libsvm offset is `libsvm_offset_`
# (a format-2 pickle's `offset_` is that ρ, which scikit-learn's `offset_`
# would misread, and it has no `libsvm_offset_` to score with).
DETECTORS_FORMAT = 3
ROTATION = detectors.ROTATION
# In detectors/: <name>.pkl, these, and meta.json last (the set is complete).
HELDOUT_SCORES = "heldout_scores.npz"
DETECTORS_META = "meta.json"


def fit_detectors(names, fit_features) -> dict:
  # Each detector L2-normalises its input itself when it should (all but
  # the linear OC-SVM, which the authors ran on raw f).
  fitted = {}
  for name in names:
    with progress.phase("Fitting %s on %d x %d features", name,
                        *np.shape(fit_features)):
      fitted[name] = detectors.get(name).fit(fit_features)
  return fitted


def score_all(fitted: dict, features) -> dict:
  """{detector: float64 anomaly scores of `features`}, each phase logged."""
  scores = {}
  for name, det in fitted.items():
    with progress.phase("Scoring %d x %d features with %s",
                        *np.shape(features), name):
      scores[name] = np.asarray(det.score(features), np.float64)
  return scores


def fit_and_score(names, fit_features, test_features) -> dict:
  """{detector: anomaly scores of the test set} for fitted detectors."""
  return score_all(fit_detectors(names, fit_features), test_features)


def heldout_scores(names, fit_features, seed,
                   folds: int = THRESHOLD_FOLDS) -> dict:
  """{detector: out-of-sample scores of every inlier}, by K-fold cross-fitting.

  The deployed detectors are fitted on all inliers (so `score` reproduces the
  evaluation exactly); their threshold for a target false-positive rate is
  the quantile of these scores (`detectors.cross_fitted_scores`).
  """
  return {name: detectors.cross_fitted_scores(
      lambda fit, held: fit_and_score([name], fit, held)[name], fit_features,
      seed=seed, folds=folds) for name in names}


def save_detectors(out, fitted: dict, heldout: dict, embedding: str,
                   ident: dict) -> None:
  """Pickles the fitted detectors and held-out scores for `score`.

  The set is written to a fresh folder that then replaces the old one, so
  `detectors/` always holds one evaluation's detectors, never a mix
  (meta.json, written last, marks a complete set: files.write_dir_atomic).
  """
  contents = {f"{name}.pkl": pickle.dumps(det) for name, det in fitted.items()}
  contents[HELDOUT_SCORES] = files.npz_bytes(**heldout)
  contents[DETECTORS_META] = json.dumps({"format": DETECTORS_FORMAT,
                                         "embedding": embedding,
                                         "step": ident["step"],
                                         "identity": ident,
                                         "detectors": sorted(fitted)})
  files.write_dir_atomic(files.path(out) / workdir_lib.DETECTORS, contents)


class SavedDetector(NamedTuple):
  """One detector of detectors/, as `save_detectors` wrote it."""
  detector: detectors.Detector  # Fitted on all training inliers.
  meta: dict  # detectors/meta.json: format, embedding, identity, names.
  heldout: np.ndarray  # Its cross-fitted held-out inlier scores.


def load_detector(workdir, name, evaluation=None) -> SavedDetector:
  """Detector `name` of an evaluation's detectors/; refuses missing or old ones.

  `evaluation`: a named evaluation of the workdir (None: the run's own).
  """
  root = (workdir_lib.checked_evaluation_dir(workdir, evaluation) /
          workdir_lib.DETECTORS)
  path = root / f"{name}.pkl"
  # meta.json is written last: without it the set is incomplete.
  if not path.exists() or not (root / DETECTORS_META).exists():
    raise FileNotFoundError(
        f"No fitted detector {name!r} in {root}: fit it with "
        f"`{workdir_lib.evaluate_command(workdir)} --detectors={name}` and "
        "pass the evaluation name it prints as --evaluation (named "
        "evaluations there now: "
        f"{', '.join(workdir_lib.evaluation_names(workdir)) or 'none'}).")
  meta = files.read_json(root / DETECTORS_META)
  if meta.get("format") != DETECTORS_FORMAT:
    raise ValueError(
        f"{root} holds detectors of format {meta.get('format', 1)}; this "
        f"version scores with format {DETECTORS_FORMAT}: run "
        f"`{workdir_lib.evaluate_command(workdir, evaluation)}` to refit "
        "them.")
  detector = pickle.loads(path.read_bytes())
  heldout = files.load_npz(root / HELDOUT_SCORES)[name]
  return SavedDetector(detector, meta, heldout)


def restore_with_detector(workdir, name, mesh, evaluation=None):
  """(config, run, state, saved): the latest checkpoint and its detector.

  What scoring new images needs; `evaluation` as in `load_detector`.
  Refuses (naming the fix) a detector that is missing, of an old format, or
  not fitted on this checkpoint, config and data (the workdir trained on
  after its evaluation, say).
  """
  saved = load_detector(workdir, name, evaluation)
  where = workdir_lib.evaluation_dir(workdir, evaluation)
  config, run, state = experiment.restore_matching(
      workdir, mesh, saved.meta.get("identity"),
      f"The detectors in {where / workdir_lib.DETECTORS}",
      evaluation=evaluation)
  return config, run, state, saved


def _aucs(labels, scores: dict) -> dict:
  return {name: float(metrics.auroc(labels, s)) for name, s in scores.items()}


def evaluation_settings(config, detector_names=None, embedding=None):
  """(detector names, embedding, evaluation name) of an evaluation request.

  None for `detector_names` or `embedding`: the config's (`eval.detectors`,
  `eval.embedding`). The name is None when the request is the config's own
  set, in any order (written to the top of the workdir), else
  `workdir.evaluation_name` (written to evaluations/<name>/).

  Raises:
    ValueError: an empty or unknown detector, an unknown embedding, or the
      rotation score for a run that is not a rotation one; `evaluate` calls
      this before it restores anything.
  """
  if detector_names is not None and not detectors.split_names(detector_names):
    raise ValueError(
        "--detectors is empty; name one or more of "
        f"{', '.join([*sorted(detectors.DETECTORS), ROTATION])}, or leave "
        "it out for the config's "
        f"({','.join(detectors.split_names(config.eval.detectors))}).")
  own = detectors.check_eval_settings(config.eval.detectors,
                                      config.eval.embedding, config.method)
  embedding = embedding or config.eval.embedding
  names = detectors.check_eval_settings(
      own if detector_names is None else detector_names, embedding,
      config.method)
  name = workdir_lib.evaluation_name(embedding, names)
  own_name = workdir_lib.evaluation_name(config.eval.embedding, own)
  return names, embedding, None if name == own_name else name


def evaluate_state(config, workdir, model, state, data, mesh, *,
                   detector_names=None, embedding=None) -> dict:
  """Scores the test set with every detector; writes results.json.

  The config's own detectors and embedding (or None for both) write the top
  of `workdir`; others a named evaluation (`evaluation_settings`).
  """
  detector_names, embedding, evaluation = evaluation_settings(
      config, detector_names, embedding)
  fitted = [n for n in detector_names if n != ROTATION]
  rotations = ROTATION in detector_names
  if rotations and "logits" not in _output_keys(model, data):
    raise ValueError("The 'rotation' score needs a rotation model "
                     "(configs/rotation.py or configs/rotnet.py).")
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  ident = provenance.identity(config, state, data.meta)
  step = ident["step"]
  skipped = one_class_data.auc_skipped_reason(data.meta)
  has_test = len(data.test) > 0  # False without a test split.
  extract_fn = functools.partial(embeddings.extract, model, variables, mesh=mesh,
                                 batch_size=config.eval.batch_size)
  fit_emb, test_emb = embeddings.cached_embeddings(
      workdir, ident, lambda: (
          extract_fn(data.fit),
          extract_fn(data.test, rotations=rotations) if has_test else {}),
      need_rotations=rotations and has_test)
  key = embeddings.EMBEDDING_KEYS[embedding]
  detectors.check_features(fit_emb[key], f"fit embeddings ({embedding})")
  if has_test:
    detectors.check_features(test_emb[key], f"test embeddings ({embedding})")
  test_labels = embeddings.labels_of(data.test).astype(np.int64)
  fitted_dets = fit_detectors(fitted, fit_emb[key])
  scores = score_all(fitted_dets, test_emb[key]) if has_test else {}
  if rotations and has_test:
    for name, s in rotation_score.rotation_scores(
        test_emb["rot_logits"]).items():
      scores[name] = np.asarray(s, np.float64)

  results = {
      "dataset": config.data.name,
      # The resolved id (the config may name the class) and its name.
      "inlier_class": int(data.meta["inlier_class"]),
      "inlier_name": str(data.meta.get("inlier_name", "")),
      "num_classes": int(data.meta.get("num_classes", 0)),
      "method": config.get("method_label") or config.method,
      "seed": int(config.seed),
      "step": step,
      "embedding": embedding,
      "auc": None if skipped else _aucs(test_labels, scores),
      "counts": {"fit": int(len(data.fit)), "test": int(len(data.test)),
                 "test_outliers": int(test_labels.sum())},
      # Detectors that fitted a subset of the fit set (OC-SVM above
      # ocsvm.MAX_FIT_ROWS): rows used.
      "fit_subsets": {name: int(len(det.fit_index_))
                      for name, det in fitted_dets.items()
                      if det.fit_index_ is not None},
      "config": config_lib.to_dict(config),
      "identity": ident,
  }
  if skipped:
    results["auc_skipped"] = skipped
  if evaluation:
    results["evaluation"] = evaluation
  if config.eval.baselines and not skipped:  # Baselines are AUCs too.
    with progress.phase("Baselines (raw pixels, untrained network)"):
      results["baselines"] = _baselines(config, model, data, mesh, fitted,
                                        test_labels, embedding)
  if jax.process_index() == 0:
    # The scores, then the detectors, then results.json (last: a run that
    # has it has the rest too).
    out = workdir_lib.evaluation_dir(workdir, evaluation)
    workdir_lib.clear_results(out)
    scores_path = out / workdir_lib.SCORES
    if has_test:
      files.write_atomic(scores_path,
                         files.npz_bytes(labels=test_labels, **scores))
    elif scores_path.exists():
      scores_path.unlink()  # Another evaluation's, of another test set.
    with progress.phase("Held-out inlier scores for the thresholds"):
      heldout = heldout_scores(fitted, fit_emb[key], config.seed)
    save_detectors(out, fitted_dets, heldout, embedding, ident)
    workdir_lib.write_results(out, results)
  if skipped:
    logging.warning("%s: AUC skipped; detectors and threshold saved.",
                    skipped)
  else:
    _log_table(results)
  return results


def _baselines(config, model, data, mesh, names, test_labels,
               embedding) -> dict:
  """The same detectors on raw pixels and on an untrained network.

  The network's features are the evaluation's `embedding` (a named
  evaluation's, not necessarily the config's), so both compare like for like.
  """
  out = {}
  fit_px = _pixels(data.fit)
  test_px = _pixels(data.test)
  out["raw_pixels"] = _aucs(test_labels, fit_and_score(names, fit_px, test_px))
  image_shape = tuple(data.train[0]["image"].shape)
  variables = model.init(jax.random.key(config.seed + 1),
                         jnp.zeros((2, *image_shape)), train=False)
  extract_fn = functools.partial(embeddings.extract, model, variables, mesh=mesh,
                                 batch_size=config.eval.batch_size)
  key = embeddings.EMBEDDING_KEYS[embedding]
  out["untrained"] = _aucs(test_labels, fit_and_score(
      names, extract_fn(data.fit)[key], extract_fn(data.test)[key]))
  return out


def _pixels(source) -> np.ndarray:
  return np.stack([np.asarray(source[i]["image"], np.float32).ravel() / 255.0
                   for i in range(len(source))])


def _output_keys(model, data):
  image = jnp.zeros((1, *data.meta["image_shape"]), jnp.float32)
  shapes = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), image,
                                     train=False)[0])
  return set(shapes)


def _log_table(results):
  lines = [f"{'detector':<14} AUC"]
  lines += [f"{k:<14} {100 * v:5.1f}" for k, v in results["auc"].items()]
  for base, aucs in results.get("baselines", {}).items():
    lines += [f"{base + ':' + k:<26} {100 * v:5.1f}" for k, v in aucs.items()]
  logging.info("Results (%s class %s, step %d, embedding %s):\n%s",
               results["dataset"], results["inlier_class"], results["step"],
               results["embedding"], "\n".join(lines))
