"""MVTec-style data as 32 x 32 patches (paper Sec. 4.2, App. B.2).

`make(config)` returns a `one_class.OneClassData` whose sets the trainer and
`evaluators.mvtec_patches` consume:

* `train`: random P x P crops of the train/good images resized to S x S
  (S = mvtec.image_size = 256, P = mvtec.patch_size = 32), records
  `{'image': uint8[P, P, 3], 'label': 0, 'index': i}`. There are
  `mvtec.patches_per_image` crops per image; record i, of image
  i // patches_per_image, has its corner drawn uniformly from the
  (S - P + 1)^2 positions by the i-th pair of uniforms of
  `np.random.default_rng(seed)`, so it depends on (seed, i) only. The crops
  are the same every epoch (a grain source does not know the epoch); the
  view augmentations of the method still differ. With a distribution
  augmentation (`data.dist_aug`, contrastive_da) every crop also appears
  under each geometric transform as a distinct record, as in `one_class`.
* `fit`: every patch of the resized train/good images on the evaluation grid
  (stride mvtec.stride), from which the memory bank is drawn.
* `test`: the whole resized test images with their masks, labels (0 good,
  1 defective) and defect types.

Bad input fails here, before any training, with what is wrong and what to do:
a category folder that does not follow the MVTec AD layout, an empty
train/good, a defect image without a mask or with a mask of another size
(all from `data.mvtec.MVTecCategory`), an image or a configured image size
smaller than one patch, and a test set without good or without defective
images.
"""
import operator
from typing import Any

import numpy as np
from PIL import Image

from oneclass_jax.data import geometric
from oneclass_jax.data import mvtec as mvtec_reader
from oneclass_jax.data import one_class
from oneclass_jax.mvtec import patches

MEMORY_BANKS = ("coreset", "random", "full")


class PatchTrainSource:
  """Random crops of the training images (see the module docstring)."""

  def __init__(self, images: np.ndarray, patch: int, patches_per_image: int,
               seed: int, transforms=(0,)):
    if patches_per_image < 1:
      raise ValueError("mvtec.patches_per_image must be >= 1, got "
                       f"{patches_per_image}.")
    height, width = images.shape[1:3]
    if min(height, width) < patch:
      raise ValueError(f"train images are {height}x{width}, smaller than one "
                       f"{patch}x{patch} patch.")
    self._images = images
    self._patch = patch
    self._per_image = patches_per_image
    self._transforms = tuple(transforms)
    # Pair i of the stream is record i's corner whatever the record count.
    uniform = np.random.default_rng(seed).random(
        (len(images) * patches_per_image, 2))
    self.corners = np.floor(
        uniform * [height - patch + 1, width - patch + 1]).astype(np.int64)

  def __len__(self) -> int:
    return len(self.corners) * len(self._transforms)

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}).")
    t, j = divmod(index, len(self.corners))
    top, left = self.corners[j]
    crop = self._images[j // self._per_image, top:top + self._patch,
                        left:left + self._patch]
    if self._transforms[t]:
      crop = geometric.apply_geometric(crop, self._transforms[t])
    return {"image": np.ascontiguousarray(crop), "label": 0, "index": index}

  def __repr__(self) -> str:
    return (f"PatchTrainSource(images={len(self._images)}, "
            f"per_image={self._per_image}, transforms={self._transforms})")


class DensePatchSource:
  """Every patch of an image stack on the stride grid, image-major order.

  Record r is patch (n, i, j) with r = (n * gh + i) * gw + j, top-left
  corner (i * stride, j * stride) of image n.
  """

  def __init__(self, images: np.ndarray, patch: int, stride: int):
    self.images = images
    self.patch = patch
    self.stride = stride
    self.grid = patches.grid_shape(images.shape[1], images.shape[2], patch,
                                   stride)

  def __len__(self) -> int:
    return len(self.images) * self.grid[0] * self.grid[1]

  def locate(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, top, left) of records `indices`."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"patch records out of range [0, {len(self)}).")
    image, cell = np.divmod(indices, self.grid[0] * self.grid[1])
    row, col = np.divmod(cell, self.grid[1])
    return image, row * self.stride, col * self.stride

  def patches(self, indices) -> np.ndarray:
    """uint8 [len(indices), P, P, C] patches of records `indices`."""
    return patches.patches_at(self.images, *self.locate(indices), self.patch)

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    return {"image": self.patches([index])[0], "label": 0, "index": index}


class TestImages:
  """Whole resized test images with masks, labels and defect types."""

  def __init__(self, split: mvtec_reader.MVTecTest):
    self.images = split.images
    self.masks = split.masks
    self.labels = split.labels
    self.defect_types = split.defect_types
    self.files = split.files

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    return {"image": self.images[index], "mask": self.masks[index],
            "label": int(self.labels[index]), "index": index}


def _check_config(cfg, model_image_size: int) -> None:
  """Fails early on a configuration that cannot work."""
  if not cfg.root:
    raise ValueError("mvtec.root is not set: point it at the folder holding "
                     f"the {cfg.category!r} category folder (MVTec AD "
                     "layout), e.g. --config.mvtec.root=/data/mvtec.")
  if cfg.patch_size < 1 or cfg.stride < 1:
    raise ValueError(f"mvtec.patch_size ({cfg.patch_size}) and mvtec.stride "
                     f"({cfg.stride}) must be >= 1.")
  if cfg.image_size < cfg.patch_size:
    raise ValueError(f"mvtec.image_size {cfg.image_size} is smaller than one "
                     f"{cfg.patch_size}x{cfg.patch_size} patch; raise it or "
                     "lower mvtec.patch_size.")
  if model_image_size != cfg.patch_size:
    raise ValueError(f"the model sees {cfg.patch_size}-px patches but "
                     f"config.model.image_size is {model_image_size}; set "
                     f"--config.model.image_size={cfg.patch_size}.")
  if cfg.memory_bank not in MEMORY_BANKS:
    raise ValueError(f"mvtec.memory_bank must be one of {MEMORY_BANKS}, got "
                     f"{cfg.memory_bank!r}.")
  if cfg.memory_bank_size < 1:
    raise ValueError(f"mvtec.memory_bank_size must be >= 1, got "
                     f"{cfg.memory_bank_size}.")


def _check_source_sizes(files, patch: int) -> None:
  """Rejects original images smaller than one patch (reads headers only)."""
  for path in files:
    with Image.open(path) as im:
      width, height = im.size
    if min(width, height) < patch:
      raise ValueError(f"image {path} is {width}x{height}, smaller than one "
                       f"{patch}x{patch} patch; remove it or use a smaller "
                       "mvtec.patch_size.")


def _check_test(test: mvtec_reader.MVTecTest, path) -> None:
  counts = np.bincount(test.labels, minlength=2)
  if not counts.all():
    missing = "good" if counts[0] == 0 else "defective"
    raise ValueError(f"{path}/test holds no {missing} image; detection and "
                     "localization AUROCs need both good and defective "
                     "test images.")


def make(config) -> one_class.OneClassData:
  """The patch sets of one category (module docstring).

  Args:
    config: the full run config, with `mvtec` (root, category, image_size,
      patch_size, stride, patches_per_image, memory_bank, memory_bank_size),
      `data.dist_aug`, `model.image_size` and `seed`.

  Raises:
    FileNotFoundError: layout problems, an empty train/good, a defect image
      without a mask.
    ValueError: bad settings, a mask of the wrong size, an image smaller than
      one patch, a test set without good or without defective images.
  """
  cfg = config.mvtec
  _check_config(cfg, config.model.image_size)
  transforms = geometric.dist_aug_transforms(config.data.dist_aug)
  category = mvtec_reader.MVTecCategory(cfg.root, cfg.category,
                                        image_size=cfg.image_size)
  train_split = category.train()
  test_split = category.test()
  _check_source_sizes(train_split.files + test_split.files, cfg.patch_size)
  _check_test(test_split, category.path)
  train = PatchTrainSource(train_split.images, cfg.patch_size,
                           cfg.patches_per_image, int(config.seed),
                           transforms=transforms)
  fit = DensePatchSource(train_split.images, cfg.patch_size, cfg.stride)
  test = TestImages(test_split)
  meta = {
      "dataset": "mvtec",
      "inlier_class": cfg.category,
      "inlier_name": cfg.category,
      "num_classes": 1,
      "seed": int(config.seed),
      "dist_aug": config.data.dist_aug,
      "image_shape": tuple(train_split.images.shape[1:]),
      "grid": fit.grid,
      "counts": {
          "train": len(train),
          "train_images": len(train_split.images),
          "fit": len(fit),
          "test": len(test),
          "test_defective": int(test.labels.sum()),
      },
  }
  return one_class.OneClassData(train=train, fit=fit, test=test, val=None,
                                dist_sets=list(transforms), meta=meta)
