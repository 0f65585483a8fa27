"""Decoding image files: the one place that turns a file into 8-bit pixels.

PIL's `convert("RGB")` / `convert("L")` clips 16-bit grey images ("I;16",
what industrial cameras write as PNG) to 255 instead of rescaling them, so a
16-bit image would read as almost white. Here 16-bit values are mapped to
8 bits by v -> round(v / 257) (0 -> 0, 65535 -> 255, linear in between)
before any mode conversion. Other modes (palette, grey + alpha, RGBA, CMYK)
go through PIL's own conversion; alpha is dropped.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
  """The image at `path` as an 8-bit PIL image of `mode` ("RGB" or "L").

  Raises:
    ValueError: the file cannot be decoded, or holds values that have no
      8-bit reading (32-bit integers above 65535, floating point); the
      message names the file.
  """
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode in _SIXTEEN_BIT or im.mode == "I":
        im = _to_8bit(np.asarray(im), path)
      elif im.mode == "F":
        raise ValueError(
            "floating-point pixels (mode F) have no fixed 8-bit reading; "
            "save the image as 8- or 16-bit PNG or JPEG")
      return im.convert(mode)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def decode(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
  """uint8 HxWx3 ("RGB") or HxW ("L") pixels of the image at `path`."""
  return np.asarray(open_image(path, mode))


def _to_8bit(values: np.ndarray, path) -> Image.Image:
  values = values.astype(np.int64)
  if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
    raise ValueError(
        f"integer pixels outside 0..65535 (range {values.min()}.."
        f"{values.max()}); save {os.fspath(path)!r} as 8- or 16-bit")
  # Integer rounding of v / 257: exact, no float error at the ends.
  return Image.fromarray(((values + 128) // 257).astype(np.uint8), mode="L")
