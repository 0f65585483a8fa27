"""Scores a folder of new images with a trained model and a fitted detector.

Command line: `python -m oneclass_jax.tools.score` (see there).

Beyond the paper: what a production line needs. The detector is the one the
evaluation fitted on all training inliers (`workdir/detectors/`), so a scored
image gets exactly the score the evaluation gives it. The decision threshold
is set from normal data only: the (1 - fpr) quantile of cross-fitted
held-out inlier scores (`detectors.threshold_at_fpr`), i.e. about `fpr` of
normal images are flagged (tests/test_thresholds.py). Unreadable or wrongly sized files are named and skipped.
"""
from __future__ import annotations

import csv
import io
import pathlib

import numpy as np
from absl import logging

from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import files
from oneclass_jax import parallel
from oneclass_jax.data import datasets

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ImageList:
  """A random-access source over decoded images (for the inference batches)."""

  def __init__(self, images):
    self._images = images

  def __len__(self):
    return len(self._images)

  def __getitem__(self, i):
    return {"image": self._images[i], "label": 0}


def read_images(folder, dataset: str, image_shape):
  """(images, names, problems): decoded, preprocessed like the dataset."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"Image folder {folder} does not exist.")
  files = sorted(p for p in folder.rglob("*")
                 if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in "
                            f"{folder}.")
  images, names, problems = [], [], []
  for path in files:
    try:
      # Exactly as the training images were converted (datasets.read_image).
      image = datasets.read_image(path, dataset, image_shape[0])
      if image.shape != tuple(image_shape):
        raise ValueError(f"shape {image.shape}, the model expects "
                         f"{tuple(image_shape)}")
    except ValueError as e:
      problems.append(f"{path}: {e}")
      continue
    images.append(image)
    names.append(str(path.relative_to(folder)))
  return images, names, problems


def score_folder(workdir, folder, *, detector="kde", fpr=0.05):
  """Returns (rows, threshold, problems); rows = (name, score, verdict)."""
  if not 0.0 < fpr < 1.0:
    raise ValueError(f"--fpr must be in (0, 1), got {fpr}.")
  mesh = parallel.make_mesh()
  config, run, state, (det, meta, heldout) = (
      evaluators.one_class.restore_with_detector(workdir, detector, mesh))
  image_shape = tuple(run.data.meta["image_shape"])  # Test may be empty.
  images, names, problems = read_images(folder, config.data.name,
                                        image_shape)
  for problem in problems:
    logging.warning("Skipped %s", problem)
  if not images:
    raise ValueError(f"No readable image in {folder}:\n" +
                     "\n".join(problems))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  emb = embeddings.extract(run.model, variables, ImageList(images), mesh,
                         batch_size=config.eval.batch_size)
  features = emb[embeddings.EMBEDDING_KEYS[meta["embedding"]]]
  scores = np.asarray(det.score(features), np.float64)
  threshold = detectors.threshold_at_fpr(heldout, fpr)
  flagged = detectors.anomalous(scores, threshold)
  rows = [(n, float(s), "anomalous" if f else "normal")
          for n, s, f in zip(names, scores, flagged)]
  return rows, threshold, problems


def write_csv(path, rows, threshold):
  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer)
  writer.writerow(["image", "score", "verdict", "threshold"])
  for name, score, verdict in rows:
    writer.writerow([name, f"{score:.8g}", verdict, f"{threshold:.8g}"])
  files.write_atomic(path, buffer.getvalue())


def check_out(path) -> None:
  """Fails before any scoring when the CSV cannot be written where asked."""
  parent = files.path(path).parent
  if not files.is_remote(parent) and not parent.is_dir():
    raise FileNotFoundError(f"--out={path}: folder {parent} does not exist; "
                            "create it or pass another --out.")
