"""Scores images with an exported one-class model: numpy and jax only.

An artefact folder, written by `python -m oneclass_jax.tools.export`
(`oneclass_jax/export.py`), holds

  score_fn.jax  a serialised `jax.export` function: uint8 images
                [batch, H, W, C] -> the outputs `meta['outputs']` names:
                anomaly scores [batch] float32 and verdicts [batch] bool,
                and for an MVTec-style model also the patch-score grids
                [batch, gh, gw] and the anomaly maps [batch, H, W] (float32);
                the network's weights, the preprocessing, the fitted detector
                (or patch memory bank) and the threshold are inside
  meta.json     what it is: task, outputs, image shape, embedding, detector,
                threshold, target false-positive rate and how the threshold
                was calibrated, the run's identity, versions, the artefact
                format (written last)

Usage::

  scorer = Scorer.load("model/")
  scores, verdicts = scorer.score(images)  # uint8 [n, H, W, C] or [H, W, C]
  outputs = scorer.outputs(images)  # {'scores', 'verdicts'[, 'grids', 'maps']}

This module imports only the standard library, numpy and jax (checked by
tests/test_export.py), so a serving process needs neither flax nor the
training, data or model code.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

# Version of the artefact folder; `Scorer.load` refuses another one.
# 2: the outputs are named in meta.json (MVTec-style grids and maps), and
# meta.json says how the threshold was calibrated.
FORMAT = 2
FUNCTION = "score_fn.jax"
META = "meta.json"
# Rows per call of the exported function. Its batch dimension is symbolic,
# but each distinct batch size compiles anew, so inputs are cut into chunks
# of at most MAX_BATCH rows and each chunk is zero-padded to a power of two:
# at most log2(MAX_BATCH) + 1 compilations whatever the input sizes.
MAX_BATCH = 256


def _bucket(rows: int, max_batch: int) -> int:
  """The padded size of a chunk of `rows` rows: a power of two or the cap."""
  return min(max_batch, 1 << (rows - 1).bit_length())


def platform_names() -> set[str]:
  """This process's device platform as `jax.export` names platforms."""
  platform = jax.devices()[0].platform
  return {"cuda", "rocm"} if platform == "gpu" else {platform}


class Scorer:
  """An exported model: `score` images, read `threshold` and `meta`."""

  def __init__(self, exported, meta: dict, *, max_batch: int = MAX_BATCH):
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}.")
    self.meta = meta
    self.threshold = float(meta["threshold"])
    self.image_shape = tuple(meta["image_shape"])
    self.output_names = tuple(meta["outputs"])
    self._max_batch = max_batch
    # One compilation per bucket size, cached by jit.
    self._call = jax.jit(exported.call)
    self._out_avals = exported.out_avals

  @classmethod
  def load(cls, path, *, max_batch: int = MAX_BATCH) -> "Scorer":
    """Reads an artefact folder written by `oneclass_jax.tools.export`.

    Raises:
      FileNotFoundError: `path` is not a complete artefact folder.
      ValueError: an artefact of another format, or exported for other
        platforms than this process's devices.
    """
    root = pathlib.Path(path)
    # meta.json is written last: without it the folder is incomplete.
    if not (root / META).is_file() or not (root / FUNCTION).is_file():
      raise FileNotFoundError(
          f"{root} is not an exported scorer (no {META} and {FUNCTION}): "
          "write one with `python -m oneclass_jax.tools.export "
          f"--workdir=DIR --out={root}`.")
    meta = json.loads((root / META).read_text())
    if meta.get("format") != FORMAT:
      raise ValueError(
          f"{root} is an exported scorer of format {meta.get('format')}; "
          f"this version loads format {FORMAT}: export it again with "
          "`python -m oneclass_jax.tools.export`.")
    exported = jax.export.deserialize(bytearray((root / FUNCTION).read_bytes()))
    here = platform_names()
    if not here & set(exported.platforms):
      raise ValueError(
          f"{root} was exported for {', '.join(exported.platforms)}; this "
          f"process runs on {', '.join(sorted(here))}: export it again with "
          f"--platforms={','.join(sorted(here))} (or run on those devices).")
    return cls(exported, meta, max_batch=max_batch)

  def _check(self, images) -> np.ndarray:
    """`images` as a uint8 [n, H, W, C] array, or ValueError naming why."""
    images = np.asarray(images)
    expected = "[n, {0}, {1}, {2}] or [{0}, {1}, {2}]".format(
        *self.image_shape)
    if images.dtype != np.uint8:
      raise ValueError(
          f"Expected uint8 images {expected} (decoded pixels in 0..255), got "
          f"dtype {images.dtype}.")
    if images.shape == self.image_shape:
      images = images[None]
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise ValueError(
          f"Expected uint8 images {expected} (height, width, channels as "
          f"the model was trained), got shape {images.shape}.")
    return images

  def outputs(self, images) -> dict[str, np.ndarray]:
    """{name: array} of every output (`meta['outputs']`) of uint8 images.

    Args:
      images: [n, H, W, C] or one [H, W, C] image, uint8, preprocessed like
        the training data (`meta['image_shape']`): read files with
        `oneclass_jax.data.datasets.read_image(path, dataset, H)`, the
        conversion's own function (image_folder: RGB, 16-bit rescaled,
        alpha dropped, the whole image resized to H x H, PIL bicubic).

    Returns:
      'scores' [n] float32 (higher = more anomalous), 'verdicts' [n] bool
      (score > threshold; a NaN score, from a network that diverged on an
      input, is anomalous too) and, for an MVTec-style model, 'grids'
      [n, gh, gw] (patch scores) and 'maps' [n, H, W] (upsampled grids).
    """
    images = self._check(images)
    n = len(images)
    parts = {name: [] for name in self.output_names}
    for start in range(0, n, self._max_batch):
      chunk = images[start:start + self._max_batch]
      rows = len(chunk)
      pad = _bucket(rows, self._max_batch) - rows
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *self.image_shape),
                                                np.uint8)])
      for name, value in zip(self.output_names, self._call(chunk)):
        parts[name].append(np.asarray(value)[:rows])
    if not n:  # No call: empty outputs of the exported shapes and dtypes.
      return {name: np.zeros((0, *aval.shape[1:]), aval.dtype)
              for name, aval in zip(self.output_names, self._out_avals)}
    return {name: np.concatenate(values) for name, values in parts.items()}

  def score(self, images) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n] float32, verdicts [n] bool) of uint8 images (`outputs`)."""
    out = self.outputs(images)
    return out["scores"], out["verdicts"]
