"""Patch-grid geometry and dense patch extraction (paper Sec. 4.2, App. B.2).

A P x P window slides over an image with stride s; its top-left corners sit
at 0, s, 2s, ..., so a side of S pixels holds

  g = (S - P) // s + 1

patch positions: 57 for S = 256, P = 32, s = 4, i.e. a 57 x 57 grid. (The
paper prints "(256 - 224) / 4 + 1", which is 9; its own 57 x 57 needs
(256 - 32) / 4 + 1.) The patches cover the first (g - 1) * s + P pixels of the
side; when s does not divide S - P, the last (S - P) mod s rows or columns
lie in no patch, and `localize.upsample` extends the map to them from the
nearest covered pixel.

Patches of a batch are numbered image-major, then row, then column: patch
(n, i, j) is flat row (n * gh + i) * gw + j and has its top-left corner at
pixel (i * s, j * s).
"""
from typing import Iterator

import numpy as np


def _check_geometry(patch: int, stride: int) -> None:
  if patch < 1:
    raise ValueError(f"patch size must be >= 1, got {patch}.")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}.")


def grid_size(size: int, patch: int, stride: int) -> int:
  """Patch positions along a `size`-pixel side: (size - patch) // stride + 1.

  Raises:
    ValueError: a side smaller than one patch, or patch/stride < 1.
  """
  _check_geometry(patch, stride)
  if size < patch:
    raise ValueError(f"a side of {size} px is smaller than one {patch}x{patch} "
                     "patch; use larger images or a smaller patch size.")
  return (size - patch) // stride + 1


def grid_shape(height: int, width: int, patch: int,
               stride: int) -> tuple[int, int]:
  """(rows, columns) of the patch grid of a height x width image."""
  return grid_size(height, patch, stride), grid_size(width, patch, stride)


def grid_offsets(size: int, patch: int, stride: int) -> np.ndarray:
  """Top-left pixel of each patch position along one side."""
  return np.arange(grid_size(size, patch, stride)) * stride


def covered_size(grid: int, patch: int, stride: int) -> int:
  """Pixels along a side that some patch of a `grid`-long row covers."""
  _check_geometry(patch, stride)
  return (grid - 1) * stride + patch


def _check_images(images: np.ndarray, patch: int) -> None:
  if images.ndim != 4:
    raise ValueError(f"images must be a batch [N, H, W, C], got shape "
                     f"{images.shape}.")
  height, width = images.shape[1:3]
  if height < patch or width < patch:
    raise ValueError(f"images are {height}x{width}, smaller than one "
                     f"{patch}x{patch} patch; resize them (mvtec.image_size) "
                     "or lower mvtec.patch_size.")


def extract_patches(images: np.ndarray, patch: int,
                    stride: int) -> np.ndarray:
  """Every patch on the stride grid: [N, H, W, C] -> [N, gh, gw, P, P, C].

  Returns a read-only strided view of `images` (no copy); reshape it to
  [-1, P, P, C] to get the flat, image-major order (this copies).

  Raises:
    ValueError: not a 4-D batch, an image smaller than one patch, or
      patch/stride < 1.
  """
  images = np.asarray(images)
  _check_geometry(patch, stride)
  _check_images(images, patch)
  windows = np.lib.stride_tricks.sliding_window_view(
      images, (patch, patch), axis=(1, 2))  # [N, H-P+1, W-P+1, C, P, P]
  return windows[:, ::stride, ::stride].transpose(0, 1, 2, 4, 5, 3)


def iter_patch_chunks(images: np.ndarray, patch: int, stride: int,
                      images_per_chunk: int
                      ) -> Iterator[tuple[int, np.ndarray]]:
  """Yields (first image index, flat patches [k * gh * gw, P, P, C]).

  Only one chunk of `images_per_chunk` images is materialised at a time, so
  memory stays bounded whatever the number of images.
  """
  if images_per_chunk < 1:
    raise ValueError(f"images_per_chunk must be >= 1, got {images_per_chunk}.")
  images = np.asarray(images)
  _check_images(images, patch)
  for start in range(0, len(images), images_per_chunk):
    view = extract_patches(images[start:start + images_per_chunk], patch,
                           stride)
    yield start, view.reshape((-1,) + view.shape[3:])


def patches_at(images: np.ndarray, image_index: np.ndarray,
               top: np.ndarray, left: np.ndarray, patch: int) -> np.ndarray:
  """Gathers patches [len(top), P, P, C] at given images and top-left corners.

  One vectorised fancy-indexing gather, for reading many patches of a large
  image stack (the memory-bank candidates) without a Python loop.
  """
  rows = np.asarray(top)[:, None] + np.arange(patch)  # [n, P]
  cols = np.asarray(left)[:, None] + np.arange(patch)
  image_index = np.asarray(image_index)
  return images[image_index[:, None, None], rows[:, :, None],
                cols[:, None, :]]
