"""Exports a trained, evaluated workdir as one self-contained scorer.

Command line: `python -m oneclass_jax.tools.export` (see there); loading:
`oneclass_jax.scorer.Scorer` (numpy and jax only; it also owns the folder's
layout).

The exported function is the whole inference path of `scoring.py` in one
`jax.export` program: uint8 images [batch, H, W, C] (symbolic batch) ->
`embeddings.embed` (the evaluation's preprocessing and forward pass, f or
g∘f) -> the detector the evaluation fitted on all training inliers, as its
`jax_score_fn` (its fitted arrays baked in as constants) -> anomaly scores
[batch] and verdicts score > threshold. The threshold is `scoring.py`'s:
`detectors.threshold_at_fpr` of the cross-fitted held-out inlier scores.

The detector runs in float32 (the evaluation's KDE and kNN do too; its GDE
and OC-SVM run in float64): tests/test_detectors.py and tests/test_export.py
state the agreement reached. A score within float32 rounding of the
threshold may get the other verdict than the float64 comparison would.

Only whole-image one-class runs export; MVTec patch grids and heatmaps do
not (their detector is a patch memory bank, not in `detectors/`).
"""
from __future__ import annotations

import importlib.metadata
import json

import jax
import numpy as np

from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import parallel
from oneclass_jax import scorer
from oneclass_jax import workdir as workdir_lib

# The platforms lowered by default: the module carries one program per
# platform and `jax.export` picks the caller's at run time.
PLATFORMS = ("cpu", "cuda")


def score_function(model, variables, embedding: str, detector, threshold):
  """uint8 images [b, H, W, C] -> (scores [b], verdicts [b]), all baked in."""
  key = embeddings.EMBEDDING_KEYS[embedding]
  detector_fn = detector.jax_score_fn()
  threshold = np.float32(threshold)

  def score(images):
    scores = detector_fn(embeddings.embed(model, variables, images)[key])
    return scores, detectors.anomalous(scores, threshold)

  return score


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


def export_workdir(workdir, out, *, detector: str = "kde", fpr: float = 0.05,
                   platforms=PLATFORMS) -> dict:
  """Writes the artefact folder `out` for `detector` at rate `fpr`.

  Args:
    workdir: a trained and evaluated one-class workdir.
    out: the artefact folder (replaced whole if it holds an earlier one).
    detector: a detector the evaluation fitted (`detectors/<name>.pkl`).
    fpr: target false-positive rate on normal images, in (0, 1).
    platforms: `jax.export` platforms to lower for.

  Returns:
    The artefact's metadata (its meta.json).

  Raises:
    FileNotFoundError, ValueError: a workdir whose detector is missing, of
      an old format or stale against the latest checkpoint (naming the fix),
      not a one-class run, or an --out that is not an artefact folder.
  """
  _check_out(out)
  task = experiment.task_name(workdir_lib.load_config(workdir))
  if task != "one_class":
    raise ValueError(
        f"{workdir} is a {task} run; only whole-image one-class runs export "
        "(patch grids and heatmaps do not): score it with "
        "`python -m oneclass_jax.tools.evaluate`.")
  mesh = parallel.make_mesh()
  config, run, state, saved = evaluators.one_class.restore_with_detector(
      workdir, detector, mesh)
  threshold = detectors.threshold_at_fpr(saved.heldout, fpr)
  # From the data's meta: a run of normal images only has no test split.
  image_shape = tuple(int(d) for d in run.data.meta["image_shape"])
  # Host copies: the weights become constants of the exported program
  # rather than arrays sharded over this process's mesh.
  variables = jax.device_get({"params": state["params"],
                              "batch_stats": state["batch_stats"]})
  fn = score_function(run.model, variables, saved.meta["embedding"],
                      saved.detector, threshold)
  batch, = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, *image_shape), np.uint8))
  meta = {
      "format": scorer.FORMAT,
      "image_shape": list(image_shape),
      "embedding": saved.meta["embedding"],
      "detector": detector,
      "threshold": threshold,
      "target_fpr": fpr,
      # The fraction of the held-out inlier scores above the threshold.
      "heldout_fpr": float(np.mean(saved.heldout > threshold)),
      "heldout_count": int(len(saved.heldout)),
      "run": {"workdir": str(workdir),
              "dataset": config.data.name,
              "inlier_class": config.data.inlier_class,
              "inlier_name": str(run.data.meta.get("inlier_name", "")),
              "method": config.get("method_label") or config.method,
              "seed": int(config.seed),
              "identity": saved.meta["identity"]},
      "platforms": list(exported.platforms),
      "versions": _versions(),
  }
  # meta.json last: the completion marker `Scorer.load` requires.
  files.write_dir_atomic(out, {scorer.FUNCTION: bytes(exported.serialize()),
                               scorer.META: json.dumps(meta, indent=2)})
  return meta
