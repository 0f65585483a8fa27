"""The datasets by name: their classes, final images and where they come from.

`DATASETS` maps a name to a `DatasetSpec`; `sources.load(name, split)` reads
one. This module imports no tensorflow-datasets, so code that needs only the
table (class names, preprocessing, `decode_image`) stays light.

| name | source | one-class tasks | final image | offline here |
|---|---|---|---|---|
| `cifar10` | tfds `cifar10`, or any image folder via `source_dir` (e.g. the CIFAR-10 JPEG copy) | 10 (one per class) | 32x32x3 | JPEG copy only ("CIFAR-10 (JPEG copy)") |
| `cifar20` | tfds `cifar100`, `coarse_label` (20 superclasses) | 20 | 32x32x3 | no |
| `cifar100` | tfds `cifar100`, fine `label` | 100 | 32x32x3 | no |
| `fashion_mnist` | Debian `dataset-fashion-mnist` IDX files (used first when installed), or tfds `fashion_mnist` | 10 | 28x28 grey, zero-padded 2 px to 32x32, repeated to 3 channels | yes (`apt-get install -y dataset-fashion-mnist`) |
| `mnist` | IDX files via `source_dir`, or tfds `mnist` | 10 | as fashion_mnist | no |
| `cats_vs_dogs` | tfds `cats_vs_dogs` (one split; see below), or `source_dir` with `train/{cat,dog}/` | 2 (cat = 0, dog = 1) | shorter side resized to 64 (PIL box = area filter), centre crop 64x64x3 | no |
| `celeba_eyeglasses` | tfds `celeb_a`; label = `attributes/Eyeglasses` | 1 (inlier: no eyeglasses, label 0) | crop `[40:-20, 10:-10]` (158x158), PIL bicubic resize to 64x64x3 | no |
| `image_folder` | `source_dir` with `train/<label>/*.{jpg,jpeg,png}` (one folder is enough: normal images only) and optionally `test/<label>/` (with or without anomalies) | one per label folder (sorted names over all splits) | any size and mode: RGB (grey repeated, 16-bit rescaled, alpha dropped), whole image resized to `image_size` x `image_size` (PIL bicubic; `resize_to_square`) | yes (any folder) |

Cats-vs-Dogs has only a `train` split in tfds: 23,262 of Kaggle's 25,000
images. The authors drew 10,000 train and 2,500 test images per class from
Kaggle's 12,500; tfds has fewer per class, so here the test split is 2,500
images per class (at most half of a class) drawn with
`np.random.RandomState(0)` (the authors' seed), and the train split is the
rest of that class (roughly 9,100 per class). The split is fixed: it does not
depend on any experiment seed.
"""
import dataclasses
import functools
import pathlib
from typing import Callable, Optional

import numpy as np
from PIL import Image

from oneclass_jax.data import image_io

# ----------------------------------------------------------------------------
# Reading and final-image preprocessing (module-level functions so sources
# pickle).


def decode_image(path: pathlib.Path) -> np.ndarray:
  """Decodes an image file to uint8 HxWx3 (16-bit rescaled, alpha dropped:
  see image_io)."""
  return image_io.decode(path, "RGB")


def read_image(path: pathlib.Path, dataset: str, image_size: int) -> np.ndarray:
  """An image file as `dataset`'s final image, as its conversion made them.

  The one path from a file to a model input: image-folder conversion, `score`
  and `explain` all read files here, so a new image is preprocessed exactly
  as the training images were.
  """
  return get_spec(dataset).final_image_fn(image_size)(decode_image(path))


def to_rgb(image) -> np.ndarray:
  """uint8 HxW, HxWx1 or HxWx3 -> HxWx3 (grey repeated to 3 channels)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {image.dtype}.")
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError("expected an HxW, HxWx1 or HxWx3 image, got shape "
                     f"{image.shape}.")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def pad_28_to_32(image) -> np.ndarray:
  """28x28 grey (Fashion-MNIST, MNIST) -> zero-pad 2 px -> 32x32x3."""
  image = to_rgb(image)
  if image.shape[:2] != (28, 28):
    raise ValueError(f"expected a 28x28 image, got shape {image.shape}.")
  return np.pad(image, ((2, 2), (2, 2), (0, 0)))


def resize_shorter_center_crop_64(image) -> np.ndarray:
  """Shorter side to 64 (box filter = area average), then centre 64x64 crop.

  The authors used cv2.resize(INTER_AREA); PIL's box filter averages the
  same source areas when shrinking.
  """
  image = to_rgb(image)
  size = 64
  height, width = image.shape[:2]
  scale = size / min(height, width)
  new_width = max(size, round(width * scale))
  new_height = max(size, round(height * scale))
  resized = np.asarray(Image.fromarray(image).resize(
      (new_width, new_height), Image.Resampling.BOX))
  top = (new_height - size) // 2
  left = (new_width - size) // 2
  return resized[top:top + size, left:left + size]


def resize_to_square(image, size: int) -> np.ndarray:
  """image_folder's final image: the WHOLE image resized to size x size x 3.

  PIL bicubic, which antialiases when it shrinks (PIL widens the filter by
  the scale factor). A plain resize rather than a centre crop: a defect at
  the border of a part must stay in view, and since training and new images
  are squeezed alike, the detector still compares like with like (the MVTec
  pipeline resizes whole images too, `data/mvtec.py`). An image that is
  already size x size is returned unchanged (PIL copies it).
  """
  image = to_rgb(image)
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize(
      (size, size), Image.Resampling.BICUBIC))


def celeba_crop_resize_64(image) -> np.ndarray:
  """CelebA 218x178: crop [40:-20, 10:-10] (158x158), bicubic resize to 64.

  Bicubic is PIL's default `resize` filter, which the authors' script used.
  """
  image = to_rgb(image)
  if image.shape[:2] != (218, 178):
    raise ValueError(
        f"expected a 218x178 CelebA image, got shape {image.shape}.")
  cropped = np.ascontiguousarray(image[40:-20, 10:-10])
  return np.asarray(Image.fromarray(cropped).resize(
      (64, 64), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------
# The registry.


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How to find, label and preprocess one dataset.

  Attributes:
    name: registry name.
    num_classes: number of classes; None = the label folders decide.
    image_size: final square size; None = the caller's `image_size`
      (image_folder: `config.model.image_size`).
    tfds_name: tfds catalog name, or None when only folders are read.
    train_split: catalog split used for "train".
    test_split: catalog split used for "test".
    label_key: path of the label inside a catalog record.
    class_names: fixed class names (index = label), or None.
    preprocess: raw uint8 image -> final uint8 HxWx3 image; None (with
      image_size None): `resize_to_square` to the caller's size. Read it
      through `final_image_fn`.
    local_dir: a local IDX copy used when present (Debian package).
    supports_idx: whether IDX files are a valid local source.
    holdout_per_class: > 0: "test" is drawn from the source's train split,
      this many per class (at most half a class), and "train" is the rest.
  """
  name: str
  num_classes: Optional[int]
  image_size: Optional[int]
  tfds_name: Optional[str]
  train_split: str = "train"
  test_split: str = "test"
  label_key: tuple[str, ...] = ("label",)
  class_names: Optional[tuple[str, ...]] = None
  preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = to_rgb
  local_dir: Optional[str] = None
  supports_idx: bool = False
  holdout_per_class: int = 0

  @property
  def image_shape(self) -> Optional[tuple[int, int, int]]:
    if self.image_size is None:
      return None
    return (self.image_size, self.image_size, 3)

  def final_image_fn(self, image_size: Optional[int]
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """Raw uint8 image -> final image (picklable, for the converter threads).

    A dataset with a fixed final size (the paper's) keeps its own
    preprocessing whatever `image_size` says (`experiment.setup` refuses a
    model of another size); image_folder resizes to `image_size`.

    Raises:
      ValueError: image_folder without a positive int `image_size`.
    """
    if self.image_size is not None:
      return self.preprocess
    if (isinstance(image_size, bool) or not isinstance(image_size, int) or
        image_size <= 0):
      raise ValueError(
          f"{self.name} resizes every image to image_size x image_size, so "
          f"it needs a positive integer image_size (config.model.image_size"
          f"), got {image_size!r}.")
    return functools.partial(resize_to_square, size=image_size)

  def final_shape(self, image_size: Optional[int]) -> tuple[int, int, int]:
    """(H, W, 3) of the final images (see `final_image_fn`)."""
    self.final_image_fn(image_size)  # Validates image_size.
    size = self.image_size if self.image_size is not None else image_size
    return (size, size, 3)

  def names(self) -> tuple[str, ...]:
    """Class names: the fixed ones, else "0", "1", ..."""
    if self.class_names is not None:
      return self.class_names
    return tuple(str(i) for i in range(self.num_classes))


_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                  "frog", "horse", "ship", "truck")
_FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec("cifar10", 10, 32, "cifar10", class_names=_CIFAR10_NAMES),
        DatasetSpec("cifar20", 20, 32, "cifar100",
                    label_key=("coarse_label",)),
        DatasetSpec("cifar100", 100, 32, "cifar100"),
        DatasetSpec("fashion_mnist", 10, 32, "fashion_mnist",
                    class_names=_FASHION_NAMES, preprocess=pad_28_to_32,
                    local_dir="/usr/share/datasets/fashion-mnist",
                    supports_idx=True),
        DatasetSpec("mnist", 10, 32, "mnist",
                    class_names=tuple(str(i) for i in range(10)),
                    preprocess=pad_28_to_32, supports_idx=True),
        DatasetSpec("cats_vs_dogs", 2, 64, "cats_vs_dogs",
                    class_names=("cat", "dog"),
                    preprocess=resize_shorter_center_crop_64,
                    holdout_per_class=2500),
        DatasetSpec("celeba_eyeglasses", 2, 64, "celeb_a",
                    label_key=("attributes", "Eyeglasses"),
                    class_names=("no_eyeglasses", "eyeglasses"),
                    preprocess=celeba_crop_resize_64),
        DatasetSpec("image_folder", None, None, None, preprocess=None),
    )
}


def get_spec(name: str) -> DatasetSpec:
  """The registered spec for `name`, or ValueError listing the known names."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: "
                     f"{', '.join(sorted(DATASETS))}.")
  return DATASETS[name]
