r"""Stage 2: embeddings of a trained model -> one-class detectors -> AUCs.

  python -m oneclass_jax.evaluate --workdir=/tmp/run [--detectors=kde,ocsvm] [--embedding=f]

Restores the latest checkpoint of a workdir written by `oneclass_jax.main`,
extracts f (or g∘f) for the un-augmented inlier training set and the whole
test set on every device, fits the detectors of Section 3.2 / Appendix A.1 and
writes `results.json` (AUC per detector; outliers are the positive class) and
`scores.npz` atomically to the workdir. `train_and_evaluate` calls
`evaluate_state` at the end of training.
"""
from __future__ import annotations

import functools
import json
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from oneclass_jax import checkpoint
from oneclass_jax import config_lib
from oneclass_jax import detectors
from oneclass_jax import files
from oneclass_jax import metrics
from oneclass_jax import parallel
from oneclass_jax import progress
from oneclass_jax import provenance
from oneclass_jax.data import augment
from oneclass_jax.data import pipeline
from oneclass_jax.detectors import rotation_score

EMBEDDING_KEYS = {"f": "pools", "g": "embeds"}
# Folds of the cross-fitted held-out inlier scores behind the thresholds.
THRESHOLD_FOLDS = 5
# Version of detectors/: `score` refuses another one. 2: KDE and OC-SVM
# scores normalised by the fitted rows, cross-fitted held-out scores.
DETECTORS_FORMAT = 2
ROTATION = detectors.ROTATION


def make_embed_fn(model, mesh, *, rotations: bool):
  """jit(shard_map) that maps a padded uint8 batch to f, g∘f (and logits)."""

  def per_device(variables, images):
    x = augment.to_float(images)
    out = model.apply(variables, x, train=False)
    result = {"pools": out["pools"].astype(jnp.float32),
              "embeds": out["embeds"].astype(jnp.float32)}
    if rotations:
      # The rotation classifier's view of rot90(x, k) for k = 0..3 (Table 1),
      # computed per image before any gathering (the authors' multi-GPU
      # evaluation mixed views across replicas).
      result["rot_logits"] = jnp.stack([
          model.apply(variables, jnp.rot90(x, k, axes=(1, 2)),
                      train=False)["logits"].astype(jnp.float32)
          for k in range(4)], axis=1)
    return result

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(parallel.AXIS)),
                               out_specs=P(parallel.AXIS)))


def extract(model, variables, source, mesh, *, batch_size: int,
            rotations: bool = False) -> dict:
  """Embeddings of every record of `source`, in source order, no padding.

  Each host reads a contiguous part of the source in padded batches (masked
  rows); outputs are gathered from all hosts and the real rows are put back
  in source order, so nothing is lost or duplicated whatever the batch,
  device and host count. `rot_logits` is [4 views, N, 4 classes].
  """
  n_dev, hosts = mesh.devices.size, jax.process_count()
  local_batch = max(n_dev, batch_size // n_dev * n_dev) // hosts
  embed = make_embed_fn(model, mesh, rotations=rotations)
  variables = parallel.replicate(variables, mesh)
  outputs, masks = [], []
  counter = progress.Counter(f"Embedding {len(source)} images"
                             f"{' (4 rotations each)' if rotations else ''}",
                             len(source) // hosts)
  with jax.set_mesh(mesh):
    for batch in pipeline.inference_batches(source, batch_size=local_batch):
      images = parallel.to_global({"image": batch["image"]}, mesh)["image"]
      gathered = multihost_utils.process_allgather(
          {"out": embed(variables, images), "mask": batch["_mask"]},
          tiled=True)
      # [hosts * local, ...] -> [hosts, local, ...]: host parts side by side.
      split = jax.tree.map(
          lambda x: np.asarray(x).reshape(hosts, local_batch, *x.shape[1:]),
          gathered)
      outputs.append(split["out"])
      masks.append(split["mask"])
      counter.update(int(np.sum(batch["_mask"])))
  counter.finish()
  # [batches, hosts, local] -> [hosts, batches, local]: host 0's part first,
  # which is the source order.
  mask = np.swapaxes(np.stack(masks), 0, 1)
  result = {}
  for key in outputs[0]:
    stacked = np.swapaxes(np.stack([o[key] for o in outputs]), 0, 1)
    result[key] = pipeline.unpad([stacked], [mask])
  if "rot_logits" in result:
    result["rot_logits"] = np.swapaxes(result["rot_logits"], 0, 1)
  if len(result["pools"]) != len(source):
    raise RuntimeError(f"Extracted {len(result['pools'])} rows for "
                       f"{len(source)} records.")
  return result


def cached_embeddings(workdir, ident: dict, compute, *, need_rotations):
  """(fit, test) embeddings of a checkpoint, from `embeddings/` if there.

  The cache holds f and g∘f (and the rotation logits when they were asked
  for) with the identity (`provenance.identity`) of the weights, config and
  data that made them, so re-scoring with other detectors or the other
  embedding does not run the network again, and a cache made by anything
  else (a retrained workdir, an edited image folder) is rebuilt.
  """
  path = files.path(workdir) / "embeddings" / f"step_{ident['step']}.npz"
  if path.exists():
    arrays = files.load_npz(path)
    saved = (json.loads(str(arrays.pop("identity")))
             if "identity" in arrays else None)
    stale = provenance.differences(saved, ident)
    if stale:
      logging.info("Embedding cache %s is stale (%s differ); recomputing.",
                   path, ", ".join(stale))
    elif not need_rotations or "test/rot_logits" in arrays:
      split = lambda p: {k.split("/", 1)[1]: v for k, v in arrays.items()
                         if k.startswith(p + "/")}
      return split("fit"), split("test")
  fit_emb, test_emb = compute()
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {**{f"fit/{k}": v for k, v in fit_emb.items()},
              **{f"test/{k}": v for k, v in test_emb.items()}}
    files.write_atomic(path, files.npz_bytes(
        identity=np.asarray(json.dumps(ident, sort_keys=True)), **arrays))
  return fit_emb, test_emb


def labels_of(source) -> np.ndarray:
  return np.asarray([source[i]["label"] for i in range(len(source))])


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
  """Out-of-sample scores of every inlier, by K-fold cross-fitting.

  Each inlier is scored by detectors fitted on the other K − 1 folds. The
  deployed detectors are fitted on all inliers (so `score` reproduces the
  evaluation exactly); their threshold for a target false-positive rate is
  the quantile of these scores, which needs no outlier. Every detector's
  score is normalised by its number of fitted rows (KDE by n, OC-SVM by Σα),
  so fold detectors and the deployed one score on the same scale
  (tests/test_thresholds.py measures the realised rate on fresh inliers).
  """
  n = len(fit_features)
  folds = max(2, min(folds, n))
  fold_of = np.random.default_rng(seed).permutation(n) % folds
  out = {name: np.empty(n) for name in names}
  for k in range(folds):
    held = fold_of == k
    logging.info("Threshold fold %d of %d (%d held-out inliers)", k + 1,
                 folds, int(held.sum()))
    for name, s in fit_and_score(names, fit_features[~held],
                                 fit_features[held]).items():
      out[name][held] = s
  return out


def save_detectors(workdir, fitted: dict, heldout: dict, embedding: str,
                   ident: dict) -> None:
  """Pickles the fitted detectors and held-out scores for `score`.

  The set is written to a fresh folder that then replaces the old one, so
  `detectors/` always holds one evaluation's detectors, never a mix
  (meta.json, written last, marks a complete set: files.write_dir_atomic).
  """
  contents = {f"{name}.pkl": pickle.dumps(det) for name, det in fitted.items()}
  contents["heldout_scores.npz"] = files.npz_bytes(**heldout)
  contents["meta.json"] = json.dumps({"format": DETECTORS_FORMAT,
                                      "embedding": embedding,
                                      "step": ident["step"],
                                      "identity": ident,
                                      "detectors": sorted(fitted)})
  files.write_dir_atomic(files.path(workdir) / "detectors", contents)


def _aucs(labels, scores: dict) -> dict:
  return {name: float(metrics.auroc(labels, s)) for name, s in scores.items()}


def evaluate_state(config, workdir, model, state, data, mesh, *,
                   detector_names=None, embedding=None) -> dict:
  """Scores the test set with every detector; writes results.json."""
  embedding = embedding or config.eval.embedding
  detector_names = detectors.check_eval_settings(
      detector_names or config.eval.detectors, embedding, config.method)
  fitted = [n for n in detector_names if n != ROTATION]
  rotations = ROTATION in detector_names
  if rotations and "logits" not in _output_keys(model, data):
    raise ValueError("The 'rotation' score needs a rotation model "
                     "(configs/rotation.py or configs/rotnet.py).")
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  ident = provenance.identity(config, state, data.meta)
  step = ident["step"]
  extract_fn = functools.partial(extract, model, variables, mesh=mesh,
                                 batch_size=config.eval.batch_size)
  fit_emb, test_emb = cached_embeddings(
      workdir, ident, lambda: (extract_fn(data.fit),
                               extract_fn(data.test, rotations=rotations)),
      need_rotations=rotations)
  key = EMBEDDING_KEYS[embedding]
  for split, emb in (("fit", fit_emb), ("test", test_emb)):
    detectors.check_features(emb[key], f"{split} embeddings ({embedding})")
  test_labels = labels_of(data.test)
  fitted_dets = fit_detectors(fitted, fit_emb[key])
  scores = score_all(fitted_dets, test_emb[key])
  if rotations:
    for name, s in rotation_score.rotation_scores(
        test_emb["rot_logits"]).items():
      scores[name] = np.asarray(s, np.float64)

  results = {
      "dataset": config.data.name,
      "inlier_class": config.data.inlier_class,
      "inlier_name": str(data.meta.get("inlier_name", "")),
      "num_classes": int(data.meta.get("num_classes", 0)),
      "method": config.get("method_label") or config.method,
      "seed": int(config.seed),
      "step": step,
      "embedding": embedding,
      "auc": _aucs(test_labels, scores),
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
  if config.eval.baselines:
    with progress.phase("Baselines (raw pixels, untrained network)"):
      results["baselines"] = _baselines(config, model, data, mesh, fitted,
                                        test_labels)
  if jax.process_index() == 0:
    # results.json last: a run that has it has its scores and detectors too
    # (sweeps treat results.json as "finished").
    files.write_atomic(files.path(workdir) / "scores.npz",
                       files.npz_bytes(labels=test_labels, **scores))
    with progress.phase("Held-out inlier scores for the thresholds"):
      heldout = heldout_scores(fitted, fit_emb[key], config.seed)
    save_detectors(workdir, fitted_dets, heldout, embedding, ident)
    files.write_json(files.path(workdir) / "results.json", results)
  _log_table(results)
  return results


def _baselines(config, model, data, mesh, names, test_labels) -> dict:
  """The same detectors on raw pixels and on an untrained network."""
  out = {}
  fit_px = _pixels(data.fit)
  test_px = _pixels(data.test)
  out["raw_pixels"] = _aucs(test_labels, fit_and_score(names, fit_px, test_px))
  image_shape = tuple(data.train[0]["image"].shape)
  variables = model.init(jax.random.key(config.seed + 1),
                         jnp.zeros((2, *image_shape)), train=False)
  extract_fn = functools.partial(extract, model, variables, mesh=mesh,
                                 batch_size=config.eval.batch_size)
  key = EMBEDDING_KEYS[config.eval.embedding]
  out["untrained"] = _aucs(test_labels, fit_and_score(
      names, extract_fn(data.fit)[key], extract_fn(data.test)[key]))
  return out


def _pixels(source) -> np.ndarray:
  return np.stack([np.asarray(source[i]["image"], np.float32).ravel() / 255.0
                   for i in range(len(source))])


def _output_keys(model, data):
  image = jnp.zeros((1, *np.shape(data.test[0]["image"])), jnp.float32)
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


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = files.path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a "
                            "workdir written by `oneclass_jax.main`.")
  return ml_collections.ConfigDict(files.read_json(path))


def restore_run(workdir: str, mesh):
  """(config, run, state) of a workdir's latest checkpoint."""
  from oneclass_jax import train  # pylint: disable=g-import-not-at-top
  config = load_config(workdir)
  run = train.setup(config, mesh)
  abstract = checkpoint.abstract(jax.eval_shape(run.init_fn,
                                                jax.random.key(0)))
  state, _ = checkpoint.restore_state_only(workdir, abstract)
  return config, run, state


def evaluate_workdir(workdir: str, detector_names=None, embedding=None):
  """Re-evaluates a workdir's newest intact checkpoint (workdir locked)."""
  config = load_config(workdir)
  if config.data.name == "mvtec" and (detector_names or embedding):
    raise ValueError(
        "--detectors and --embedding do not apply to MVTec-style workdirs: "
        "their patch detectors are set by the config's mvtec.* fields. Drop "
        "those flags.")
  mesh = parallel.make_mesh()
  with files.workdir_lock(workdir):
    config, run, state = restore_run(workdir, mesh)
    if config.data.name == "mvtec":  # Dense patch scoring and localization.
      from oneclass_jax.mvtec import evaluate as mvtec_evaluate  # pylint: disable=g-import-not-at-top
      return mvtec_evaluate.evaluate_state(config, workdir, run.model, state,
                                           run.data, mesh)
    return evaluate_state(config, workdir, run.model, state, run.data, mesh,
                          detector_names=detector_names, embedding=embedding)


def main(argv):
  del argv
  f = flags.FLAGS
  evaluate_workdir(f.workdir, f.detectors, f.embedding)


if __name__ == "__main__":
  # Defined here, not at import: train.py imports this module and main.py
  # already owns --workdir.
  flags.DEFINE_string("workdir", None, "A workdir written by oneclass_jax.main.")
  flags.DEFINE_list("detectors", None, "Detectors (default: the config's).")
  flags.DEFINE_enum("embedding", None, ["f", "g"],
                    "f = pooled representation (paper), g = head output.")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
