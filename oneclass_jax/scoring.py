"""Scores a folder of new images with an exported scorer (`scorer.Scorer`).

Command line: `python -m oneclass_jax.tools.score` (see there).

Beyond the paper: what a production line needs. There is one scoring path:
the exported artefact (`export.py`), whose function holds the network, the
detector the evaluation fitted on all training inliers (or the MVTec patch
memory bank) and the threshold; `score --workdir` exports one into the
workdir first (`export.export_in_workdir`). Here: reading a folder of image
files as the model's input (`read_images`, also the exporter's calibration
folders), scoring it, and writing the CSV and the anomaly maps.
Unreadable or wrongly sized files are named and skipped.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import pathlib

import matplotlib
import numpy as np
from PIL import Image

from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import scorer
from oneclass_jax.data import datasets

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_files(folder) -> list[pathlib.Path]:
  """The image files under `folder`, sorted; FileNotFoundError if none."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"Image folder {folder} does not exist.")
  found = sorted(p for p in folder.rglob("*")
                 if p.suffix.lower() in IMAGE_SUFFIXES)
  if not found:
    raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in "
                            f"{folder}.")
  return found


def folder_digest(folder) -> str:
  """sha256 (16 hex digits) of the names and bytes of `folder`'s images.

  The identity of a calibration folder in an artefact's meta.json, so a
  cached export is redone when the folder's images change.
  """
  folder = pathlib.Path(folder)
  h = hashlib.sha256()
  for path in image_files(folder):
    h.update(str(path.relative_to(folder)).encode() + b"\0")
    h.update(path.read_bytes())
  return h.hexdigest()[:16]


def read_images(folder, dataset: str, image_shape):
  """(images, names, problems): decoded, preprocessed like the dataset."""
  folder = pathlib.Path(folder)
  paths = image_files(folder)
  preprocess = experiment.image_preprocess(dataset, image_shape)
  images, names, problems = [], [], []
  for path in paths:
    try:
      # The dataset's own conversion (`datasets.read_image`'s rule) or the
      # MVTec resize; an image already of the model's shape is used as is.
      image = datasets.decode_image(path)
      if image.shape != tuple(image_shape):
        image = preprocess(image)
      if image.shape != tuple(image_shape):
        raise ValueError(f"shape {image.shape}, the model expects "
                         f"{tuple(image_shape)}")
    except ValueError as e:
      problems.append(f"{path}: {e}")
      continue
    images.append(image)
    names.append(str(path.relative_to(folder)))
  return images, names, problems


@dataclasses.dataclass
class Scored:
  """A folder scored by an exported model."""
  names: list[str]  # Image paths relative to the folder, in row order.
  images: np.ndarray  # uint8 [n, H, W, C] as the model saw them.
  outputs: dict  # `Scorer.outputs` of `images`.
  threshold: float
  problems: list[str]  # Files skipped, with why.

  def rows(self) -> list[tuple[str, float, str]]:
    """(name, score, 'anomalous' or 'normal') per image."""
    return [(n, float(s), "anomalous" if v else "normal")
            for n, s, v in zip(self.names, self.outputs["scores"],
                               self.outputs["verdicts"])]


def score_folder(model: scorer.Scorer, folder) -> Scored:
  """Every readable image of `folder` through `model`.

  Raises:
    FileNotFoundError: no such folder, or no image in it.
    ValueError: no image in it is readable at the model's size.
  """
  images, names, problems = read_images(folder, model.meta["run"]["dataset"],
                                        model.image_shape)
  if not images:
    raise ValueError(f"No readable image in {folder}:\n" +
                     "\n".join(problems))
  images = np.stack(images)
  return Scored(names, images, model.outputs(images), model.threshold,
                problems)


def write_csv(path, rows, threshold):
  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer)
  writer.writerow(["image", "score", "verdict", "threshold"])
  for name, score, verdict in rows:
    writer.writerow([name, f"{score:.8g}", verdict, f"{threshold:.8g}"])
  files.write_atomic(path, buffer.getvalue())


def write_heatmaps(directory, scored: Scored, value_range) -> list[str]:
  """Per image: `<name>.npy` (the float32 map) and `<name>.png` (overlay).

  The PNG is the image under the map in the jet colours, half transparent,
  on the fixed scale `value_range` (the artefact's `map_range`: the median
  and 99.9th percentile of its calibration images' maps), so a colour means
  the same on every image and every call. Sub-folders of the image folder
  become `__` in the names. Only MVTec-style models have maps.
  """
  root = files.path(directory)
  root.mkdir(parents=True, exist_ok=True)
  low, high = value_range
  jet = matplotlib.colormaps["jet"]
  written = []
  for name, image, heatmap in zip(scored.names, scored.images,
                                  scored.outputs["maps"]):
    stem = str(pathlib.PurePath(name).with_suffix("")).replace("/", "__")
    buffer = io.BytesIO()
    np.save(buffer, heatmap)
    files.write_atomic(root / f"{stem}.npy", buffer.getvalue())
    unit = np.clip((heatmap - low) / max(high - low, 1e-12), 0.0, 1.0)
    overlay = 0.5 * image + 0.5 * 255 * jet(unit)[..., :3]
    png = io.BytesIO()
    Image.fromarray(np.round(overlay).astype(np.uint8)).save(png, "PNG")
    files.write_atomic(root / f"{stem}.png", png.getvalue())
    written.append(str(root / f"{stem}.png"))
  return written


def check_out(path) -> None:
  """Fails before any scoring when the CSV cannot be written where asked."""
  parent = files.path(path).parent
  if not files.is_remote(parent) and not parent.is_dir():
    raise FileNotFoundError(f"--out={path}: folder {parent} does not exist; "
                            "create it or pass another --out.")
