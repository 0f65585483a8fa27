"""Datasets by name: random access to the images and labels of one split.

`load(name, split)` returns a `Split`: a grain-compatible random-access
`source` of `{'image': uint8[H, W, 3], 'label': int}` records, already
preprocessed to the dataset's final size, plus the labels of every record as
one cheap array (cached as `.npy` beside the prepared data).

| name | source | one-class tasks | final image | offline here |
|---|---|---|---|---|
| `cifar10` | tfds `cifar10`, or any image folder via `source_dir` (e.g. the CIFAR-10 JPEG copy) | 10 (one per class) | 32x32x3 | JPEG copy only ("CIFAR-10 (JPEG copy)") |
| `cifar20` | tfds `cifar100`, `coarse_label` (20 superclasses) | 20 | 32x32x3 | no |
| `cifar100` | tfds `cifar100`, fine `label` | 100 | 32x32x3 | no |
| `fashion_mnist` | Debian `dataset-fashion-mnist` IDX files (used first when installed), or tfds `fashion_mnist` | 10 | 28x28 grey, zero-padded 2 px to 32x32, repeated to 3 channels | yes (`apt-get install -y dataset-fashion-mnist`) |
| `mnist` | IDX files via `source_dir`, or tfds `mnist` | 10 | as fashion_mnist | no |
| `cats_vs_dogs` | tfds `cats_vs_dogs` (one split; see below), or `source_dir` with `train/{cat,dog}/` | 2 (cat = 0, dog = 1) | shorter side resized to 64 (PIL box = area filter), centre crop 64x64x3 | no |
| `celeba_eyeglasses` | tfds `celeb_a`; label = `attributes/Eyeglasses` | 1 (inlier: no eyeglasses, label 0) | crop `[40:-20, 10:-10]` (158x158), PIL bicubic resize to 64x64x3 | no |
| `image_folder` | any `root/<split>/<label>/*.{jpg,jpeg,png}` via `source_dir` | one per label folder (sorted names) | as stored (all images of one shape) | yes (any folder) |

Cats-vs-Dogs has only a `train` split in tfds: 23,262 of Kaggle's 25,000
images. The authors drew 10,000 train and 2,500 test images per class from
Kaggle's 12,500; tfds has fewer per class, so here the test split is 2,500
images per class (at most half of a class) drawn with
`np.random.RandomState(0)` (the authors' seed), and the train split is the
rest of that class (roughly 9,100 per class). The split is fixed: it does not
depend on any experiment seed.

Where the data comes from, in this order:
  1. a local source: `source_dir` if given, else a known local copy (the
     Debian Fashion-MNIST IDX files). It is converted ONCE into `data_dir` as
     array_record by a local tfds builder (`oneclass_idx` or
     `oneclass_image_folder`); its config name holds the dataset name and a
     fingerprint of the source (path, file names, sizes and modification
     times), so two folders never collide and an edited folder is converted
     again. The converted records are the final images (preprocessing runs
     once, at conversion). tfds writes into an `incomplete.*` folder and
     renames it only when everything is written, so an interrupted conversion
     never reads as done; the label cache is written (atomically) only into a
     complete conversion.
  2. a tfds catalog dataset already prepared as array_record in `data_dir`.
  3. otherwise FileNotFoundError saying how to get the data.
`data_dir` defaults to `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`. Nothing
here downloads anything.

Label folders of a named dataset (e.g. `cifar10` from a JPEG folder) must be
the dataset's class names (`airplane`, ...) or class ids (`0`, `1`, ...), so
the labels keep their original ids even when only some classes are present.
"""
import abc
import concurrent.futures
import dataclasses
import fcntl
import gzip
import hashlib
import operator
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from oneclass_jax.data import image_io

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Part of every local config name: bump it when the conversion changes so old
# prepared copies are not reused.
_CONVERSION_REVISION = 2  # 2: 16-bit images rescaled, not clipped.
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_DECODE_CHUNK = 1024


# ----------------------------------------------------------------------------
# Final-image preprocessing (module-level functions so sources pickle).


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
    image_size: final square size; None = as stored (image_folder).
    tfds_name: tfds catalog name, or None when only folders are read.
    train_split: catalog split used for "train".
    test_split: catalog split used for "test".
    label_key: path of the label inside a catalog record.
    class_names: fixed class names (index = label), or None.
    preprocess: raw uint8 image -> final uint8 HxWx3 image.
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
  preprocess: Callable[[np.ndarray], np.ndarray] = to_rgb
  local_dir: Optional[str] = None
  supports_idx: bool = False
  holdout_per_class: int = 0

  @property
  def image_shape(self) -> Optional[tuple[int, int, int]]:
    if self.image_size is None:
      return None
    return (self.image_size, self.image_size, 3)

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
        DatasetSpec("image_folder", None, None, None),
    )
}


def get_spec(name: str) -> DatasetSpec:
  """The registered spec for `name`, or ValueError listing the known names."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: "
                     f"{', '.join(sorted(DATASETS))}.")
  return DATASETS[name]


# ----------------------------------------------------------------------------
# Random access to one split.


def _label_of(record: Any, label_key: Sequence[str]) -> int:
  value = record
  for key in label_key:
    value = value[key]
  return int(value)


class SplitSource:
  """Random access to preprocessed `{'image', 'label'}` records of a split.

  A grain `RandomAccessDataSource` wrapping a tfds data source, optionally
  restricted to some of its rows.
  """

  def __init__(self, data_source, *, rows: Optional[np.ndarray] = None,
               preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
               label_key: Sequence[str] = ("label",),
               image_shape: Optional[tuple[int, int, int]] = None):
    self._data_source = data_source
    self._rows = None if rows is None else np.asarray(rows, np.int64)
    self._preprocess = preprocess
    self._label_key = tuple(label_key)
    self._image_shape = image_shape

  def __len__(self) -> int:
    if self._rows is not None:
      return len(self._rows)
    return len(self._data_source)

  @property
  def rows(self) -> np.ndarray:
    """Position of each record in the underlying tfds split."""
    if self._rows is None:
      return np.arange(len(self._data_source))
    return self._rows

  def _row(self, index) -> int:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}).")
    return index if self._rows is None else int(self._rows[index])

  def _record(self, raw: Any, row: int) -> dict[str, Any]:
    image = raw["image"]
    if self._preprocess is not None:
      image = self._preprocess(image)
    if self._image_shape is not None and image.shape != self._image_shape:
      raise ValueError(f"record {row}: image shape {image.shape}, expected "
                       f"{self._image_shape}.")
    return {"image": image, "label": _label_of(raw, self._label_key)}

  def __getitem__(self, index) -> dict[str, Any]:
    row = self._row(index)
    return self._record(self._data_source[row], row)

  def subset(self, rows: np.ndarray) -> "SplitSource":
    """A source of the given rows (positions in this source)."""
    rows = np.asarray(rows, np.int64)
    base = rows if self._rows is None else self._rows[rows]
    return SplitSource(self._data_source, rows=base,
                       preprocess=self._preprocess, label_key=self._label_key,
                       image_shape=self._image_shape)

  def __repr__(self) -> str:
    return f"SplitSource({self._data_source!r}, len={len(self)})"


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset.

  Attributes:
    source: random access to `{'image': uint8[H,W,3], 'label': int}`.
    labels: int64 [len(source)], the original class of every record.
    num_classes: number of classes of the dataset.
    image_shape: (H, W, 3) of every image.
    class_names: name of each class id.
    fingerprint: identity of the records (the prepared dataset, its split and
      the rows taken), for caches derived from them: an edited image folder
      or another tfds version gives another fingerprint.
  """
  source: SplitSource
  labels: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  fingerprint: str = ""

  def subset(self, rows: np.ndarray) -> "Split":
    rows = np.asarray(rows, np.int64)
    return dataclasses.replace(
        self, source=self.source.subset(rows), labels=self.labels[rows],
        fingerprint=f"{self.fingerprint}[rows {array_digest(rows)}]")


def _default_data_dir(data_dir) -> pathlib.Path:
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  env = os.environ.get("TFDS_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path("~/tensorflow_datasets").expanduser()


def _save_npy_atomic(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes beside `path`, then renames: readers never see half a file."""
  with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp",
                                   delete=False) as f:
    np.save(f, array)
  os.replace(f.name, path)


def _read_labels(data_source, label_key) -> np.ndarray:
  return np.fromiter((_label_of(data_source[i], label_key)
                      for i in range(len(data_source))),
                     np.int64, count=len(data_source))


def _cached_labels(cache: Optional[pathlib.Path], data_source,
                   label_key) -> np.ndarray:
  """Labels of every record, from `cache` when it is there and complete."""
  if cache is not None and cache.is_file():
    labels = np.load(cache)
    if labels.shape == (len(data_source),):
      return labels
  logging.info("Reading the labels of %d records once.", len(data_source))
  labels = _read_labels(data_source, label_key)
  if cache is not None:
    try:
      _save_npy_atomic(cache, labels)
    except OSError as e:  # e.g. a read-only shared data_dir: just recompute.
      logging.warning("Could not cache labels at %s: %s", cache, e)
  return labels


# ----------------------------------------------------------------------------
# Local sources: IDX files and image folders, converted once with tfds.


def _idx_path(root: pathlib.Path, split: str,
              kind: str) -> Optional[pathlib.Path]:
  stem = f"{_IDX_PREFIX[split]}-{kind}-ubyte"
  for name in (stem + ".gz", stem):
    if (root / name).is_file():
      return root / name
  return None


def _idx_files(root: pathlib.Path) -> Optional[list[pathlib.Path]]:
  """The four IDX files under `root`, or None if any is missing."""
  paths = [_idx_path(root, split, kind) for split in _IDX_PREFIX
           for kind in ("images-idx3", "labels-idx1")]
  return None if any(p is None for p in paths) else paths


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads an unsigned-byte IDX file (optionally gzipped) as an array."""
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"cannot read IDX file {path}: {e}") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file.")
  ndim = data[3]
  dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(np.int64)
  values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if values.size != int(np.prod(dims)):
    raise ValueError(f"IDX file {path} is truncated or corrupt: header says "
                     f"{tuple(dims)}, found {values.size} values.")
  return values.reshape(dims)


def _subdirs(directory: str) -> list[str]:
  with os.scandir(directory) as entries:
    return sorted(e.name for e in entries if e.is_dir())


def _image_files(directory: str) -> list[tuple[str, int, int]]:
  """(name, size, mtime_ns) of the images in `directory`, sorted by name."""
  files = []
  with os.scandir(directory) as entries:
    for e in entries:
      extension = os.path.splitext(e.name)[1].lower()
      if e.is_file() and extension in IMAGE_EXTENSIONS:
        st = e.stat()
        files.append((e.name, st.st_size, st.st_mtime_ns))
  return sorted(files)


def _folder_layout(root: pathlib.Path) -> dict[str, dict[str, list]]:
  """{split: {label: [(file name, size, mtime_ns)]}} of root/<split>/<label>/*.

  Raises:
    FileNotFoundError: if no split/label folder holds an image.
  """
  layout, empty = {}, []
  for split in _subdirs(root):
    labels = {}
    for label in _subdirs(os.path.join(root, split)):
      files = _image_files(os.path.join(root, split, label))
      if files:
        labels[label] = files
      else:
        empty.append(os.path.join(root, split, label))
    if labels:
      layout[split] = labels
  if layout and empty:
    # Dropping it silently would shift the ids of the classes after it.
    raise ValueError(
        f"label folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): "
        f"{', '.join(empty)}; add images or remove the folder (class ids "
        "follow the sorted folder names).")
  if not layout:
    raise FileNotFoundError(
        f"no images found in {root}: expected the layout "
        f"{root}/<split>/<label>/*.{{jpg,jpeg,png}} (e.g. train/cat/0001.jpg).")
  return layout


def _fingerprint(parts: Sequence[Any]) -> str:
  return hashlib.sha256(repr(tuple(parts)).encode()).hexdigest()[:16]


def array_digest(array: np.ndarray) -> str:
  """Short digest of an array's dtype, shape and bytes."""
  array = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  h.update(array.tobytes())
  return h.hexdigest()[:16]


def _file_facts(path: pathlib.Path) -> tuple[str, int, int]:
  st = path.stat()
  return (path.name, st.st_size, st.st_mtime_ns)


def decode_image(path: pathlib.Path) -> np.ndarray:
  """Decodes an image file to uint8 HxWx3 (16-bit rescaled: data/images.py)."""
  return image_io.decode(path, "RGB")


@dataclasses.dataclass
class LocalConfig(tfds.core.BuilderConfig):
  """A local conversion: which dataset, from where, with which classes."""
  dataset: str = ""
  source_dir: str = ""
  splits: tuple[str, ...] = ()
  class_names: tuple[str, ...] = ()
  image_shape: tuple[int, int, int] = (0, 0, 3)
  shape_source: str = ""  # The image that set image_shape (image_folder).

  def __repr__(self) -> str:  # tfds logs it on every load: keep it short.
    return f"LocalConfig({self.name} from {self.source_dir})"


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes final-size images of a local source in their listing order."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.written_labels = {}  # split -> labels, filled while writing.

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{config.dataset} converted from {config.source_dir}",
        features=tfds.features.FeaturesDict({
            # Raw bytes: ~3x faster to write and read than an int64 list.
            "image": tfds.features.Tensor(shape=config.image_shape,
                                          dtype=np.uint8, encoding="bytes"),
            "label": tfds.features.ClassLabel(names=config.class_names),
        }),
        # Keeps the listing order, so the labels are known while writing.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(split)
            for split in self.builder_config.splits}

  def _generate_examples(self, split):
    labels = []
    for key, (image, label) in enumerate(self._examples(split)):
      labels.append(label)
      yield key, {"image": image, "label": label}
    self.written_labels[split] = np.asarray(labels, np.int64)

  @abc.abstractmethod
  def _examples(self, split) -> Iterator[tuple[np.ndarray, int]]:
    """Yields (final uint8 image, class id) of `split` in a fixed order."""


class _IdxBuilder(_LocalBuilder, skip_registration=True):
  """MNIST-style IDX files (`train-*` and `t10k-*`)."""

  name = "oneclass_idx"

  def _examples(self, split):
    config = self.builder_config
    root = pathlib.Path(config.source_dir)
    images = read_idx(_idx_path(root, split, "images-idx3"))
    labels = read_idx(_idx_path(root, split, "labels-idx1"))
    if images.ndim != 3 or len(images) != len(labels):
      raise ValueError(f"IDX files of split {split!r} in {root} disagree: "
                       f"images {images.shape}, labels {labels.shape}.")
    if labels.max(initial=0) >= len(config.class_names):
      raise ValueError(f"IDX labels in {root} go up to {labels.max()}, but "
                       f"{config.dataset} has {len(config.class_names)} "
                       "classes.")
    preprocess = get_spec(config.dataset).preprocess
    for image, label in zip(images, labels):
      yield preprocess(image), int(label)


class _FolderBuilder(_LocalBuilder, skip_registration=True):
  """Image folders `root/<split>/<label>/*.{jpg,jpeg,png}`."""

  name = "oneclass_image_folder"

  def _examples(self, split):
    config = self.builder_config
    spec = get_spec(config.dataset)
    items = [
        (os.path.join(config.source_dir, split, label, name),
         _label_index(spec, label, config.class_names, config.source_dir))
        for label, files in _folder_layout(config.source_dir)[split].items()
        for name, _, _ in files]

    def load_chunk(chunk):
      images = []
      for path, _ in chunk:
        image = spec.preprocess(decode_image(path))
        if image.shape != tuple(config.image_shape):
          # image_folder takes its shape from the first image, which may be
          # the odd one: name both, blame neither.
          raise ValueError(
              f"images differ in shape after preprocessing: {path} is "
              f"{image.shape}, but {config.dataset} expects "
              f"{tuple(config.image_shape)} (the shape of "
              f"{config.shape_source or 'the dataset'}). Give every image "
              "the same size.")
        images.append(image)
      return images

    # PIL releases the GIL while decoding. One task per small chunk keeps the
    # per-future overhead low; reading ahead a bounded window keeps memory low.
    step = 64
    chunks = [items[i:i + step] for i in range(0, len(items), step)]
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      window = _DECODE_CHUNK // step
      for start in range(0, len(chunks), window):
        batch = chunks[start:start + window]
        for chunk, images in zip(batch, pool.map(load_chunk, batch)):
          for (_, label), image in zip(chunk, images):
            yield image, label


def _label_index(spec: DatasetSpec, folder: str, class_names, root) -> int:
  """Class id of a label folder (its name, or its id for named datasets)."""
  if folder in class_names:
    return class_names.index(folder)
  if spec.num_classes is not None and folder.isdigit():
    if int(folder) < spec.num_classes:
      return int(folder)
  raise ValueError(
      f"label folder {folder!r} in {root} is not a class of {spec.name}: use "
      f"one of {list(class_names)} or a class id 0..{len(class_names) - 1}.")


def _prepare(builder: _LocalBuilder) -> None:
  """Converts once; tfds renames `incomplete.*` only after a full write."""
  if builder.is_prepared():
    return
  # One converter at a time per dataset folder; under the lock, any
  # `incomplete.*` folder there is the leftover of a killed conversion.
  dataset_dir = pathlib.Path(builder.data_dir).parent
  dataset_dir.mkdir(parents=True, exist_ok=True)
  with open(dataset_dir / ".convert.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if builder.is_prepared():  # Another process converted it meanwhile.
      return
    for leftover in dataset_dir.glob("incomplete.*"):
      logging.warning("Removing %s, left by a killed conversion.", leftover)
      shutil.rmtree(leftover, ignore_errors=True)
    logging.info("Converting %s into %s (once).",
                 builder.builder_config.source_dir, builder.data_dir)
    builder.download_and_prepare(file_format="array_record")
  for split, labels in builder.written_labels.items():
    _save_npy_atomic(pathlib.Path(builder.data_dir) / f"labels-{split}.npy",
                     labels)


def _idx_builder(spec, root, data_dir) -> _LocalBuilder:
  files = _idx_files(root)
  digest = _fingerprint([_CONVERSION_REVISION, spec.name, str(root)] +
                        [_file_facts(p) for p in files])
  config = LocalConfig(
      name=f"{spec.name}_{digest}", dataset=spec.name, source_dir=str(root),
      splits=tuple(_IDX_PREFIX), class_names=spec.names(),
      image_shape=spec.image_shape)
  return _IdxBuilder(config=config, data_dir=str(data_dir))


def _folder_builder(spec, root, data_dir) -> _LocalBuilder:
  layout = _folder_layout(root)
  digest = _fingerprint([_CONVERSION_REVISION, spec.name, str(root),
                         sorted(layout.items())])
  if spec.num_classes is None:  # image_folder: the folders are the classes.
    class_names = tuple(sorted({n for labels in layout.values()
                                for n in labels}))
    split, labels = next(iter(layout.items()))
    label, files = next(iter(labels.items()))
    first = os.path.join(root, split, label, files[0][0])
    image_shape = spec.preprocess(decode_image(first)).shape
  else:
    class_names = spec.names()
    image_shape = spec.image_shape
    first = ""
  for labels in layout.values():  # Fail on a foreign label before converting.
    for label in labels:
      _label_index(spec, label, class_names, root)
  config = LocalConfig(
      name=f"{spec.name}_{digest}", dataset=spec.name, source_dir=str(root),
      splits=tuple(layout), class_names=class_names,
      image_shape=tuple(image_shape), shape_source=first)
  return _FolderBuilder(config=config, data_dir=str(data_dir))


def _layout_help(spec: DatasetSpec) -> str:
  text = ("an image folder <source_dir>/<split>/<label>/*.{jpg,jpeg,png} "
          "(e.g. train/<label>/0001.jpg, test/<label>/0001.jpg)")
  if spec.supports_idx:
    text = ("the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte"
            "[.gz], or " + text)
  return text


def _local_root(spec: DatasetSpec, source_dir) -> Optional[pathlib.Path]:
  if source_dir is not None:
    root = pathlib.Path(source_dir).expanduser().resolve()
    if not root.is_dir():
      raise FileNotFoundError(
          f"source_dir {root} does not exist or is not a directory; it should "
          f"hold {_layout_help(spec)}.")
    return root
  if spec.local_dir and _idx_files(pathlib.Path(spec.local_dir)):
    return pathlib.Path(spec.local_dir)
  return None


def _load_local(spec, split, root, data_dir) -> Split:
  if spec.supports_idx and _idx_files(root):
    builder = _idx_builder(spec, root, data_dir)
  else:
    try:
      builder = _folder_builder(spec, root, data_dir)
    except FileNotFoundError as e:
      if not spec.supports_idx:
        raise
      raise FileNotFoundError(f"{e} {spec.name} also accepts the four IDX "
                              "files {train,t10k}-{images-idx3,labels-idx1}-"
                              "ubyte[.gz].") from e
  if split not in builder.builder_config.splits:
    raise ValueError(f"split {split!r} not found in {root}; found "
                     f"{list(builder.builder_config.splits)}.")
  _prepare(builder)
  data_source = builder.as_data_source(split=split)
  cache = pathlib.Path(builder.data_dir) / f"labels-{split}.npy"
  config = builder.builder_config
  return Split(
      source=SplitSource(data_source, image_shape=tuple(config.image_shape)),
      labels=_cached_labels(cache, data_source, ("label",)),
      num_classes=len(config.class_names),
      image_shape=tuple(config.image_shape),
      class_names=tuple(config.class_names),
      # The config name holds a digest of every file's name, size and mtime.
      fingerprint=f"{builder.name}/{config.name}/{split}")


# ----------------------------------------------------------------------------
# tfds catalog datasets.


def _missing_message(spec: DatasetSpec, data_dir: pathlib.Path) -> str:
  lines = [f"no data found for {spec.name!r}."]
  if spec.local_dir:
    lines.append(f"Looked for the IDX files in {spec.local_dir}: install "
                 "them with `apt-get install -y dataset-fashion-mnist`.")
  lines.append(
      f"Looked for the tfds dataset {spec.tfds_name!r} prepared as "
      f"array_record in {data_dir}: build it (with internet) with `tfds build "
      f"{spec.tfds_name} --file_format=array_record --data_dir={data_dir}` "
      "(some catalog builders need TensorFlow: `pip install oneclass_jax[tf]`)"
      ", or pass data_dir= where it is prepared.")
  lines.append(f"Or pass source_dir= with {_layout_help(spec)}.")
  return " ".join(lines)


def _load_catalog(spec, split, data_dir) -> Split:
  builder = tfds.builder(spec.tfds_name, data_dir=str(data_dir))
  tfds_split = {"train": spec.train_split, "test": spec.test_split}.get(
      split, split)
  if builder.is_prepared() and tfds_split not in builder.info.splits:
    raise ValueError(f"split {tfds_split!r} not in tfds {spec.tfds_name}; "
                     f"it has {list(builder.info.splits)}.")
  try:
    data_source = builder.as_data_source(split=tfds_split)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          KeyError) as e:
    raise FileNotFoundError(_missing_message(spec, data_dir)) from e
  info_dir = pathlib.Path(data_source.dataset_info.data_dir)
  cache = None
  if (info_dir / "dataset_info.json").is_file():
    cache = info_dir / (f"oneclass-labels-{tfds_split}-"
                        f"{'.'.join(spec.label_key)}.npy")
  class_names = spec.class_names
  if class_names is None:
    class_names = tuple(builder.info.features[spec.label_key[0]].names)
  return Split(
      source=SplitSource(data_source, preprocess=spec.preprocess,
                         label_key=spec.label_key,
                         image_shape=spec.image_shape),
      labels=_cached_labels(cache, data_source, spec.label_key),
      num_classes=spec.num_classes,
      image_shape=spec.image_shape,
      class_names=tuple(class_names),
      fingerprint=(f"tfds/{spec.tfds_name}/{builder.version}/{tfds_split}/"
                   f"{len(data_source)}@{info_dir}"))


# ----------------------------------------------------------------------------
# Entry point.


def _holdout_rows(labels: np.ndarray, per_class: int, split: str) -> np.ndarray:
  """Fixed per-class test draw (seed 0, like the authors); train = the rest."""
  rng = np.random.RandomState(0)
  rows = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    perm = rng.permutation(len(members))
    n_test = min(per_class, len(members) // 2)
    rows.append(members[perm[:n_test] if split == "test" else perm[n_test:]])
  return np.sort(np.concatenate(rows))


def load(name: str, split: str, *, data_dir=None, source_dir=None) -> Split:
  """Loads one split of a registered dataset (see the module docstring).

  Args:
    name: a key of `DATASETS`.
    split: "train" or "test" (a folder source may have other split folders;
      a catalog dataset may have other tfds splits).
    data_dir: where prepared tfds data lives and local sources are converted
      to; default `$TFDS_DATA_DIR`, else ~/tensorflow_datasets.
    source_dir: a local source (IDX files or an image folder) to use.

  Returns:
    The `Split`.

  Raises:
    ValueError: unknown dataset or split, unreadable image, wrong image shape.
    FileNotFoundError: no data, or a missing or empty source folder.
  """
  spec = get_spec(name)
  data_dir = _default_data_dir(data_dir)
  holdout = spec.holdout_per_class and split in ("train", "test")
  raw_split = "train" if holdout else split
  root = _local_root(spec, source_dir)
  if root is not None:
    result = _load_local(spec, raw_split, root, data_dir)
  elif spec.tfds_name is None:
    raise FileNotFoundError(
        f"{name} reads only local folders: pass source_dir= with "
        f"{_layout_help(spec)}.")
  else:
    result = _load_catalog(spec, raw_split, data_dir)
  if holdout:
    result = result.subset(
        _holdout_rows(result.labels, spec.holdout_per_class, split))
  return result
