"""Exports a trained, evaluated workdir as one self-contained scorer.

Command line: `python -m oneclass_jax.tools.export` (see there), and
`python -m oneclass_jax.tools.score --workdir`, which exports into the
workdir first (`export_in_workdir`); loading: `oneclass_jax.scorer.Scorer`
(numpy and jax only; it also owns the folder's layout).

The exported function is the whole inference path in one `jax.export`
program, taking uint8 images [batch, H, W, C] (symbolic batch):

* whole-image one-class runs: `embeddings.embed` (the evaluation's
  preprocessing and forward pass, f or g∘f) -> the detector the evaluation
  fitted on all training inliers, as its `jax_score_fn` (its fitted arrays
  baked in as constants) -> anomaly scores [batch] and verdicts. The
  evaluation is the run's own, or with `evaluation=NAME` a named one
  (`workdir.evaluation_dir`), whose embedding and detectors it then takes;
* MVTec-style patch runs: every P x P patch of each image on the
  evaluation's stride grid (as `mvtec.patches.extract_patches`) ->
  `embeddings.embed` -> the KDE on the memory bank the evaluation saved
  (`memory_bank.npz`) -> patch-score grids [batch, gh, gw]; the image score
  is their maximum and the anomaly map [batch, H, W] their Gaussian
  upsampling (`mvtec.localize`), all as `evaluators.mvtec_patches` computes
  them. Images go through one at a time (`lax.map`), so memory is that of
  one image's patches whatever the batch.

Verdicts are `detectors.anomalous(score, threshold)`. The threshold is the
(1 − fpr) quantile (`detectors.threshold_at_fpr`) of normal scores: by
default evaluate's cross-fitted held-out training-inlier scores; with
`calibration=FOLDER`, the scores of those fresh normal images through the
exported function itself (required for MVTec-style runs, whose memory bank
holds patches of every training image, so no held-out score exists).
meta.json records which, on how many scores, the rate realised on them and
a warning when fewer than 10 / fpr back the threshold.

The detector runs in float32 (the evaluation's KDE and kNN do too; its GDE
and OC-SVM run in float64): tests/test_detectors.py, tests/test_export.py
and tests/test_mvtec_export.py state the agreement reached. A score within
float32 rounding of the threshold may get the other verdict than the
float64 comparison would.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import parallel
from oneclass_jax import scorer
from oneclass_jax import scoring
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.detectors import kde
from oneclass_jax.mvtec import localize
from oneclass_jax.mvtec import patches

# The platforms lowered by default: the module carries one program per
# platform and `jax.export` picks the caller's at run time.
PLATFORMS = ("cpu", "cuda")
# meta['calibration']['source']: what the threshold is a quantile of.
HELDOUT = "heldout_training_inliers"
FOLDER = "folder"
# The percentiles of the calibration images' map pixels that `score
# --heatmaps` colours between (meta['map_range']).
MAP_PERCENTILES = (50.0, 99.9)


def score_function(model, variables, embedding: str, detector) -> Callable:
  """uint8 images [b, H, W, C] -> (scores [b],): one-class, all baked in."""
  key = embeddings.EMBEDDING_KEYS[embedding]
  detector_fn = detector.jax_score_fn()

  def score(images):
    return (detector_fn(embeddings.embed(model, variables, images)[key]),)

  return score


def patch_score_function(model, variables, embedding: str, bank, gamma: float,
                         image_shape, cfg) -> Callable:
  """uint8 images [b, S, S, C] -> (image scores [b], grids, maps).

  `cfg` is the run's `mvtec` block (patch_size, stride, sigma,
  normalize_map); `bank` and `gamma` are the saved memory bank's.
  """
  key = embeddings.EMBEDDING_KEYS[embedding]
  detector_fn = kde.KDE(gamma=gamma).fit(bank).jax_score_fn()
  height, width, channels = image_shape
  size, stride = int(cfg.patch_size), int(cfg.stride)
  grid_h, grid_w = patches.grid_shape(height, width, size, stride)
  # Pixel rows / columns of every patch: [g, P], patch i starting at i*s.
  rows = patches.grid_offsets(height, size, stride)[:, None] + np.arange(size)
  cols = patches.grid_offsets(width, size, stride)[:, None] + np.arange(size)
  u_h = localize.upsample_matrix(height, grid_h, size, stride, cfg.sigma,
                                 cfg.normalize_map)
  u_w = localize.upsample_matrix(width, grid_w, size, stride, cfg.sigma,
                                 cfg.normalize_map)

  def one_image(image):
    # [gh, gw, P, P, C], patch (i, j) in the flat image-major order of
    # `patches.extract_patches`.
    windows = image[rows[:, None, :, None], cols[None, :, None, :]]
    features = embeddings.embed(
        model, variables, windows.reshape(-1, size, size, channels))[key]
    return detector_fn(features).reshape(grid_h, grid_w)

  def score(images):
    grids = jax.lax.map(one_image, images)
    maps = localize.apply_upsample(jnp.asarray(u_h), grids, jnp.asarray(u_w))
    return grids.reshape(grids.shape[0], -1).max(axis=1), grids, maps

  return score


def with_verdicts(core: Callable, threshold: float) -> Callable:
  """`core`'s outputs with the verdicts inserted second."""
  threshold = np.float32(threshold)

  def fn(images):
    scores, *rest = core(images)
    return (scores, detectors.anomalous(scores, threshold), *rest)

  return fn


@dataclasses.dataclass
class Exportable:
  """What one task's restore hands the common part of the export."""
  core: Callable  # uint8 images -> (scores, *other outputs).
  outputs: tuple[str, ...]  # Names of fn's outputs, verdicts second.
  image_shape: tuple[int, int, int]
  heldout: Optional[np.ndarray]  # Held-out inlier scores, if any.
  meta: dict  # Task-specific meta.json fields.


def _run_meta(workdir, config, run, identity) -> dict:
  return {"workdir": str(workdir),
          "dataset": config.data.name,
          "inlier_class": config.data.inlier_class,
          "inlier_name": str(run.data.meta.get("inlier_name", "")),
          "method": config.get("method_label") or config.method,
          "seed": int(config.seed),
          "identity": identity}


def _host_variables(state) -> dict:
  # Host copies: the weights become constants of the exported program
  # rather than arrays sharded over this process's mesh.
  return jax.device_get({"params": state["params"],
                         "batch_stats": state["batch_stats"]})


def _one_class_model(workdir, detector: str, evaluation, mesh) -> Exportable:
  config, run, state, saved = evaluators.one_class.restore_with_detector(
      workdir, detector, mesh, evaluation)
  core = score_function(run.model, _host_variables(state),
                        saved.meta["embedding"], saved.detector)
  return Exportable(
      core, ("scores", "verdicts"),
      # From the data's meta: a run of normal images only has no test split.
      tuple(int(d) for d in run.data.meta["image_shape"]), saved.heldout,
      {"embedding": saved.meta["embedding"], "detector": detector,
       "run": _run_meta(workdir, config, run, saved.meta["identity"])})


def _patch_model(workdir, detector: str, evaluation, mesh) -> Exportable:
  # Checked by `_check_request`: always the bank's KDE, the run's own.
  del detector, evaluation
  config, run, state, bank = (
      evaluators.mvtec_patches.restore_with_memory_bank(workdir, mesh))
  cfg = config.mvtec
  image_shape = tuple(int(d) for d in run.data.test.images.shape[1:])
  core = patch_score_function(run.model, _host_variables(state),
                              bank.meta["embedding"], bank.features,
                              bank.gamma, image_shape, cfg)
  return Exportable(
      core, ("scores", "verdicts", "grids", "maps"), image_shape, None,
      {"embedding": bank.meta["embedding"], "detector": "kde",
       "patches": {"patch_size": int(cfg.patch_size),
                   "stride": int(cfg.stride),
                   "grid": list(patches.grid_shape(*image_shape[:2],
                                                   cfg.patch_size,
                                                   cfg.stride)),
                   "sigma": float(cfg.sigma),
                   "normalize_map": bool(cfg.normalize_map),
                   "memory_bank": {"kind": cfg.memory_bank,
                                   "size": int(len(bank.features)),
                                   "gamma": bank.gamma}},
       "run": _run_meta(workdir, config, run, bank.meta["identity"])})


_RESTORE = {"one_class": _one_class_model, "mvtec_patches": _patch_model}


def _versions() -> dict:
  def version(package):
    try:
      return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      return "not installed"  # A source checkout on PYTHONPATH.
  return {"jax": jax.__version__, "jaxlib": version("jaxlib"),
          "oneclass_jax": version("oneclass_jax")}


def _check_out(out) -> None:
  """Refuses an --out that exists and is not an earlier artefact.

  The artefact replaces the folder `out` whole (`files.write_dir_atomic`),
  so a typo such as --out=. must not delete a folder of other files.
  """
  out = files.path(out)
  if out.exists() and (not out.is_dir() or (
      any(out.iterdir()) and not (out / scorer.META).exists())):
    raise ValueError(
        f"--out={out} exists and is not an exported scorer; the export "
        "replaces that folder whole: pass a new folder.")


def _check_request(task: str, workdir, detector: str, fpr: float,
                   calibration, evaluation) -> None:
  """Everything checkable before the run is restored, which takes a while."""
  if not 0.0 < fpr < 1.0:
    raise ValueError(f"--fpr must be in (0, 1), got {fpr}.")
  if task == "mvtec_patches":
    if evaluation is not None:
      raise ValueError(
          f"{workdir} is an MVTec-style run: it has only its own "
          "evaluation (evaluate takes no --detectors or --embedding there); "
          "drop --evaluation.")
    if detector != "kde":
      raise ValueError(
          f"{workdir} is an MVTec-style run: it scores patches with the KDE "
          f"on its memory bank, not {detector!r}; drop --detector.")
    if calibration is None:
      raise ValueError(
          f"{workdir} is an MVTec-style run: its memory bank holds patches "
          "of every training image, so no held-out normal score exists to "
          "set the threshold from. Pass --calibration=FOLDER of normal "
          "images the model has not seen (e.g. held-back train/good "
          "images; test/good works too, but then the test set no longer "
          "measures the false-positive rate).")
  # ValueError naming the evaluations present.
  workdir_lib.checked_evaluation_dir(workdir, evaluation)
  if calibration is not None:
    scoring.image_files(calibration)  # FileNotFoundError naming the folder.


def _threshold(scores, fpr: float, what: str) -> tuple[float, Optional[str]]:
  """(threshold, warning or None), the warning logged."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    threshold = detectors.threshold_at_fpr(scores, fpr, what=what)
  warning = " ".join(str(w.message) for w in caught) or None
  if warning:
    logging.warning("%s", warning)
  return threshold, warning


def _export(fn, image_shape, platforms) -> jax.export.Exported:
  batch, = jax.export.symbolic_shape("batch")
  return jax.export.export(
      jax.jit(fn), platforms=None if platforms is None else tuple(platforms))(
          jax.ShapeDtypeStruct((batch, *image_shape), np.uint8))


def calibrate(model: Exportable, folder) -> tuple[np.ndarray, dict, dict]:
  """(scores, calibration fields, other meta fields) of `folder`'s images.

  Through the exported function itself (lowered for this process's
  platform, with a placeholder threshold: its scores do not depend on it),
  chunked as `Scorer` chunks.

  Raises:
    ValueError: a file of the folder is unreadable; a calibration set must
      be the images it claims to be, so none is skipped.
  """
  images, _, problems = scoring.read_images(
      folder, model.meta["run"]["dataset"], model.image_shape)
  if problems:
    raise ValueError(f"{len(problems)} calibration images of {folder} are "
                     "unreadable; fix or remove them:\n" + "\n".join(problems))
  probe = scorer.Scorer(
      _export(with_verdicts(model.core, np.nan), model.image_shape, None),
      {"threshold": np.nan, "image_shape": model.image_shape,
       "outputs": model.outputs})
  outputs = probe.outputs(np.stack(images))
  fields = {"source": FOLDER, "folder": str(folder),
            "identity": scoring.folder_digest(folder)}
  extra = {}
  if "maps" in outputs:
    extra["map_range"] = [float(v) for v in np.percentile(
        outputs["maps"], MAP_PERCENTILES)]
  return outputs["scores"], fields, extra


def export_workdir(workdir, out, *, detector: str = "kde", fpr: float = 0.05,
                   calibration=None, platforms=PLATFORMS,
                   evaluation=None) -> dict:
  """Writes the artefact folder `out` for `detector` at rate `fpr`.

  Args:
    workdir: a trained and evaluated workdir (one-class or MVTec-style).
    out: the artefact folder (replaced whole if it holds an earlier one).
    detector: a detector the evaluation fitted (`detectors/<name>.pkl`);
      MVTec-style runs: 'kde' (their memory bank's).
    fpr: target false-positive rate on normal images, in (0, 1).
    calibration: None (the threshold from the evaluation's held-out
      training-inlier scores) or a folder of fresh normal images whose
      scores set it (required for MVTec-style runs).
    platforms: `jax.export` platforms to lower for.
    evaluation: a named evaluation of the workdir whose detector to export
      (`workdir.evaluation_dir`); None: the run's own.

  Returns:
    The artefact's metadata (its meta.json).

  Raises:
    FileNotFoundError, ValueError: a workdir whose detector or memory bank
      is missing, of an old format or stale against the latest checkpoint
      (naming the fix); an MVTec-style run without calibration; a missing,
      empty or unreadable calibration folder; an --out that is not an
      artefact folder.
  """
  _check_out(out)
  task = experiment.task_name(workdir_lib.load_config(workdir))
  _check_request(task, workdir, detector, fpr, calibration, evaluation)
  model = _RESTORE[task](workdir, detector, evaluation, parallel.make_mesh())
  if calibration is None:
    scores, what = model.heldout, "held-out training-inlier scores"
    source, extra = {"source": HELDOUT}, {}
  else:
    scores, source, extra = calibrate(model, calibration)
    what = "calibration scores"
  threshold, warning = _threshold(scores, fpr, what)
  exported = _export(with_verdicts(model.core, threshold), model.image_shape,
                     platforms)
  # In the scores' own precision, as the exported function compares.
  realised = np.mean(detectors.anomalous(
      scores, np.asarray(threshold, np.asarray(scores).dtype)))
  meta = {
      "format": scorer.FORMAT,
      "task": task,
      "outputs": list(model.outputs),
      "image_shape": list(model.image_shape),
      "evaluation": evaluation,
      **{k: v for k, v in model.meta.items() if k != "run"},
      "threshold": threshold,
      "target_fpr": fpr,
      "calibration": {**source, "count": int(len(scores)),
                      "realised_fpr": float(realised), "warning": warning},
      **extra,
      "run": model.meta["run"],
      "platforms": list(exported.platforms),
      "versions": _versions(),
  }
  # meta.json last: the completion marker `Scorer.load` requires.
  files.write_dir_atomic(out, {scorer.FUNCTION: bytes(exported.serialize()),
                               scorer.META: json.dumps(meta, indent=2)})
  return meta


def _saved_identity(workdir, task: str, detector: str,
                    evaluation) -> tuple[dict, str]:
  """(identity, embedding) of what the evaluation saved for the export."""
  if task == "mvtec_patches":
    meta = evaluators.mvtec_patches.load_memory_bank(workdir).meta
  else:
    meta = evaluators.one_class.load_detector(workdir, detector,
                                              evaluation).meta
  return meta.get("identity") or {}, meta.get("embedding")


def export_in_workdir(workdir, *, detector: str = "kde", fpr: float = 0.05,
                      calibration=None,
                      platforms=PLATFORMS, evaluation=None):
  """`workdir/exported/<name>` (`files.path`): the artefact for these settings.

  Exported on first use, reused after while it matches: the name
  (`workdir.export_cache_dir`) carries the detector, the fpr, the checkpoint
  step, the evaluation (a named one, or none for the run's own) and the
  calibration folder's digest, and meta.json must hold the identity
  (weights, config, data, embedding) of the detectors or memory bank that
  evaluation holds now, that calibration digest, and this process's
  platform. A workdir trained or re-evaluated since gets a new export
  (which refuses, naming the fix, detectors stale against the latest
  checkpoint).
  """
  task = experiment.task_name(workdir_lib.load_config(workdir))
  _check_request(task, workdir, detector, fpr, calibration, evaluation)
  identity, embedding = _saved_identity(workdir, task, detector, evaluation)
  digest = scoring.folder_digest(calibration) if calibration else None
  step = workdir_lib.latest_checkpoint_step(workdir)
  out = workdir_lib.export_cache_dir(
      workdir, detector=detector, fpr=fpr, step=step, evaluation=evaluation,
      calibration_digest=digest)
  if (out / scorer.META).exists():
    meta = json.loads((out / scorer.META).read_text())
    if (meta.get("format") == scorer.FORMAT
        and identity.get("step") == step
        and meta["run"]["identity"] == identity
        and meta["embedding"] == embedding
        and meta["calibration"].get("identity") == digest
        and scorer.platform_names() & set(meta["platforms"])):
      return out
  logging.info("Exporting %s to %s", workdir, out)
  export_workdir(workdir, out, detector=detector, fpr=fpr,
                 calibration=calibration, platforms=platforms,
                 evaluation=evaluation)
  return out
