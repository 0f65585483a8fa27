"""MVTec AD directory reader (one category).

Reads the MVTec AD layout unchanged:

  <root>/<category>/train/good/*          defect-free training images
  <root>/<category>/test/good/*           defect-free test images
  <root>/<category>/test/<defect>/*       defective test images
  <root>/<category>/ground_truth/<defect>/<name>_mask.png   their masks

Images may be JPEG or PNG, grey or colour (returned as 3 channels), and of
different sizes. With `image_size`, every image is resized to
image_size x image_size (bilinear) and every mask likewise (nearest), so the
arrays stack; otherwise lists of arrays in their own sizes are returned.
Masks are boolean (pixel value >= 128 is defect), all False for good images.
"""
import concurrent.futures
import dataclasses
import os
import pathlib
from typing import Optional, Union

import numpy as np
from PIL import Image

from oneclass_jax.data import image_io

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

Images = Union[np.ndarray, list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class MVTecTrain:
  """Defect-free training images.

  Attributes:
    images: uint8 [N, S, S, 3] with `image_size`, else a list of [H, W, 3].
    files: path of each image.
  """
  images: Images
  files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MVTecTest:
  """Test images with their masks and labels.

  Attributes:
    images: uint8 [N, S, S, 3] with `image_size`, else a list of [H, W, 3].
    masks: bool [N, S, S] with `image_size`, else a list of [H, W].
    defect_types: folder name of each image ("good" or a defect type).
    labels: int64 [N], 0 good / 1 defective.
    files: path of each image.
  """
  images: Images
  masks: Images
  defect_types: tuple[str, ...]
  labels: np.ndarray
  files: tuple[str, ...]


def _image_files(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in directory.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _open(path: pathlib.Path, mode: str) -> Image.Image:
  return image_io.open_image(path, mode)


def resize_image(pixels: np.ndarray, size: int) -> np.ndarray:
  """uint8 HxWx3 pixels resized to size x size (bilinear).

  How every MVTec image is read, and so how `score` reads a new image for an
  exported MVTec-style model.
  """
  return np.asarray(Image.fromarray(pixels).resize(
      (size, size), Image.Resampling.BILINEAR))


class MVTecCategory:
  """One MVTec-AD-style category folder.

  Raises (at construction):
    FileNotFoundError: the category folder, `train/good`, `test` or (when
      there are defect folders) `ground_truth` is missing, or `train/good`
      holds no image. The message names exactly what is missing.
  """

  def __init__(self, root, category: str, *,
               image_size: Optional[int] = None):
    self.root = pathlib.Path(root).expanduser()
    self.category = category
    self.path = self.root / category
    if image_size is not None and image_size <= 0:
      raise ValueError(f"image_size must be positive, got {image_size}.")
    self.image_size = image_size
    self._check_layout()

  def _check_layout(self) -> None:
    if not self.root.is_dir():
      raise FileNotFoundError(f"MVTec root {self.root} does not exist.")
    if not self.path.is_dir():
      found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
      raise FileNotFoundError(f"category folder {self.path} does not exist; "
                              f"categories in {self.root}: {found}.")
    missing = [name for name in ("train/good", "test")
               if not (self.path / name).is_dir()]
    ground_truth = self.path / "ground_truth"
    if self.defect_types_present() and not ground_truth.is_dir():
      missing.append("ground_truth")
    if missing:
      raise FileNotFoundError(
          f"{self.path} does not follow the MVTec AD layout: missing "
          f"{', '.join(missing)} (expected train/good/*, test/<good or "
          "defect>/*, ground_truth/<defect>/<name>_mask.png).")
    if not _image_files(self.path / "train" / "good"):
      raise FileNotFoundError(
          f"{self.path / 'train' / 'good'} holds no .jpg/.jpeg/.png image.")

  def defect_types_present(self) -> list[str]:
    """Defect folders under test/ (every folder except good)."""
    test = self.path / "test"
    if not test.is_dir():
      return []
    return sorted(p.name for p in test.iterdir()
                  if p.is_dir() and p.name != "good")

  def _resize(self, image: Image.Image, resample) -> Image.Image:
    if self.image_size is None:
      return image
    return image.resize((self.image_size, self.image_size), resample)

  def _pixels(self, image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    if self.image_size is None:
      return array
    return resize_image(array, self.image_size)

  def _load_image(self, path: pathlib.Path) -> np.ndarray:
    return self._pixels(_open(path, "RGB"))

  def _load_pair(self, item) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask (all False without a mask file), checked and resized."""
    path, mask_path = item
    image = _open(path, "RGB")
    array = self._pixels(image)
    if mask_path is None:
      return array, np.zeros(array.shape[:2], bool)
    mask = _open(mask_path, "L")
    if mask.size != image.size:
      raise ValueError(
          f"mask {mask_path} is {mask.width}x{mask.height} but its image "
          f"{path} is {image.width}x{image.height}.")
    return array, np.asarray(
        self._resize(mask, Image.Resampling.NEAREST)) >= 128

  def _mask_path(self, defect: str, path: pathlib.Path) -> pathlib.Path:
    folder = self.path / "ground_truth" / defect
    for ext in (".png",) + IMAGE_EXTENSIONS:
      candidate = folder / f"{path.stem}_mask{ext}"
      if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"defect image {path} has no mask: expected "
        f"{folder / (path.stem + '_mask.png')}.")

  def _stack(self, arrays: list[np.ndarray]) -> Images:
    return np.stack(arrays) if self.image_size is not None else arrays

  def train(self) -> MVTecTrain:
    """The defect-free images of train/good."""
    files = _image_files(self.path / "train" / "good")
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
      images = list(pool.map(self._load_image, files))
    return MVTecTrain(images=self._stack(images),
                      files=tuple(str(p) for p in files))

  def test(self) -> MVTecTest:
    """All test images (good first, then defects by name) with masks.

    Raises:
      FileNotFoundError: a defect image without a mask.
      ValueError: an unreadable image or mask, or a mask whose size differs
        from its image's.
    """
    items, defects = [], []
    for defect in ["good"] + self.defect_types_present():
      folder = self.path / "test" / defect
      if not folder.is_dir():
        continue
      for path in _image_files(folder):
        mask = None if defect == "good" else self._mask_path(defect, path)
        items.append((path, mask))
        defects.append(defect)
    if not items:
      raise FileNotFoundError(f"{self.path / 'test'} holds no image.")
    with concurrent.futures.ThreadPoolExecutor(_workers()) as pool:
      pairs = list(pool.map(self._load_pair, items))
    return MVTecTest(
        images=self._stack([image for image, _ in pairs]),
        masks=self._stack([mask for _, mask in pairs]),
        defect_types=tuple(defects),
        labels=np.array([d != "good" for d in defects], np.int64),
        files=tuple(str(path) for path, _ in items))


def _workers() -> int:
  return min(8, os.cpu_count() or 1)
