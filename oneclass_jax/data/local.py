"""Local sources: IDX files and image folders, converted once with tfds.

A local source (`source_dir`, or a known local copy such as the Debian
Fashion-MNIST IDX files; `sources.load` decides) is converted ONCE into
`data_dir` as array_record by a local tfds builder (`oneclass_idx` or
`oneclass_image_folder`); its config name holds the dataset name and a
fingerprint of the source (path, file names, sizes and modification times),
so two folders never collide and an edited folder is converted again. The
converted records are the final images (preprocessing runs once, at
conversion). tfds writes into an `incomplete.*` folder and renames it only
when everything is written, so an interrupted conversion never reads as done;
the label cache is written (atomically) only into a complete conversion.

An image folder needs only `train/<label>/` (one label folder of normal
images is enough); `test/` is optional. Its images may have any size and
mode: image_folder resizes each to `image_size` (`datasets.resize_to_square`,
the target size is part of the fingerprint, so another size converts again);
a named dataset's folder goes through that dataset's own preprocessing.

A prepared copy (`prepare_copy`, `python -m oneclass_jax.tools.prepare`) is
such a conversion on its own in a folder, with `PREPARED.json` naming the
converted config: copied to every worker (or put on a shared mount), it is
read as `source_dir` without the original folder, and gives the same split
fingerprints as the original (the config name holds the source's digest), so
embedding caches and saved detectors stay valid across the two.

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
import json
import os
import pathlib
import shutil
from typing import Any, Iterator, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from oneclass_jax.data import datasets
from oneclass_jax.data import splits

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Part of every local config name: bump it when the conversion changes so old
# prepared copies are not reused.
_CONVERSION_REVISION = 2  # 2: 16-bit images rescaled, not clipped.
_IDX_PREFIX = {"train": "train", "test": "t10k"}
# The marker of a prepared copy; this module is the one reader and writer.
PREPARED = "PREPARED.json"
_PREPARED_FORMAT = 1
_DECODE_CHUNK = 1024


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


def _file_facts(path: pathlib.Path) -> tuple[str, int, int]:
  st = path.stat()
  return (path.name, st.st_size, st.st_mtime_ns)


@dataclasses.dataclass
class LocalConfig(tfds.core.BuilderConfig):
  """A local conversion: which dataset, from where, with which classes."""
  dataset: str = ""
  source_dir: str = ""
  splits: tuple[str, ...] = ()
  class_names: tuple[str, ...] = ()
  image_shape: tuple[int, int, int] = (0, 0, 3)

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
    preprocess = datasets.get_spec(config.dataset).preprocess
    for image, label in zip(images, labels):
      yield preprocess(image), int(label)


class _FolderBuilder(_LocalBuilder, skip_registration=True):
  """Image folders `root/<split>/<label>/*.{jpg,jpeg,png}`."""

  name = "oneclass_image_folder"

  def _examples(self, split):
    config = self.builder_config
    spec = datasets.get_spec(config.dataset)
    final_image = spec.final_image_fn(config.image_shape[0])
    items = [
        (os.path.join(config.source_dir, split, label, name),
         _label_index(spec, label, config.class_names, config.source_dir))
        for label, files in _folder_layout(config.source_dir)[split].items()
        for name, _, _ in files]

    def load_chunk(chunk):
      images = []
      for path, _ in chunk:
        image = final_image(datasets.decode_image(path))
        if image.shape != tuple(config.image_shape):
          # Only a named dataset's fixed preprocessing can get here
          # (image_folder resizes every image).
          raise ValueError(
              f"{path} is {image.shape} after preprocessing, but "
              f"{config.dataset} expects {tuple(config.image_shape)}; give "
              f"it an image of that dataset's original size.")
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


def _label_index(spec: datasets.DatasetSpec, folder: str, class_names,
                 root) -> int:
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
    splits.save_npy_atomic(
        pathlib.Path(builder.data_dir) / f"labels-{split}.npy", labels)


def _idx_builder(spec, root, data_dir) -> _LocalBuilder:
  files = _idx_files(root)
  digest = _fingerprint([_CONVERSION_REVISION, spec.name, str(root)] +
                        [_file_facts(p) for p in files])
  config = LocalConfig(
      name=f"{spec.name}_{digest}", dataset=spec.name, source_dir=str(root),
      splits=tuple(_IDX_PREFIX), class_names=spec.names(),
      image_shape=spec.image_shape)
  return _IdxBuilder(config=config, data_dir=str(data_dir))


def _folder_builder(spec, root, data_dir, image_size) -> _LocalBuilder:
  image_shape = spec.final_shape(image_size)  # Fails before any scan.
  layout = _folder_layout(root)
  parts = [_CONVERSION_REVISION, spec.name, str(root), sorted(layout.items())]
  if spec.image_size is None:  # The target size decides the final images.
    parts.append(image_shape)
  digest = _fingerprint(parts)
  if spec.num_classes is None:  # image_folder: the folders are the classes.
    # Over all splits, so a test-only folder (test/crack/) has an id too.
    class_names = tuple(sorted({n for labels in layout.values()
                                for n in labels}))
  else:
    class_names = spec.names()
  for labels in layout.values():  # Fail on a foreign label before converting.
    for label in labels:
      _label_index(spec, label, class_names, root)
  config = LocalConfig(
      name=f"{spec.name}_{digest}", dataset=spec.name, source_dir=str(root),
      splits=tuple(layout), class_names=class_names,
      image_shape=tuple(image_shape))
  return _FolderBuilder(config=config, data_dir=str(data_dir))


def layout_help(spec: datasets.DatasetSpec) -> str:
  """The local source layouts `spec` accepts, for error messages."""
  text = ("an image folder <source_dir>/<split>/<label>/*.{jpg,jpeg,png}: "
          "train/<label>/ (one folder of normal images is enough, e.g. "
          "train/good/0001.png) and optionally test/<label>/ (e.g. "
          "test/good/, test/crack/)")
  if spec.supports_idx:
    text = ("the four IDX files {train,t10k}-{images-idx3,labels-idx1}-ubyte"
            "[.gz], or " + text)
  return text


def find_root(spec: datasets.DatasetSpec,
              source_dir) -> Optional[pathlib.Path]:
  """`source_dir`, else the spec's installed local copy, else None."""
  if source_dir is not None:
    root = pathlib.Path(source_dir).expanduser().resolve()
    if not root.is_dir():
      raise FileNotFoundError(
          f"source_dir {root} does not exist or is not a directory; it should "
          f"hold {layout_help(spec)}.")
    return root
  if spec.local_dir and _idx_files(pathlib.Path(spec.local_dir)):
    return pathlib.Path(spec.local_dir)
  return None


def _builder(spec, root, data_dir, image_size) -> _LocalBuilder:
  """The converter of the local source `root` into `data_dir`."""
  if spec.supports_idx and _idx_files(root):
    return _idx_builder(spec, root, data_dir)
  try:
    return _folder_builder(spec, root, data_dir, image_size)
  except FileNotFoundError as e:
    if not spec.supports_idx:
      raise
    raise FileNotFoundError(f"{e} {spec.name} also accepts the four IDX "
                            "files {train,t10k}-{images-idx3,labels-idx1}-"
                            "ubyte[.gz].") from e


def is_prepared_copy(root) -> bool:
  return (pathlib.Path(root) / PREPARED).is_file()


def _prepared_builder(spec, root: pathlib.Path, image_size) -> _LocalBuilder:
  """The finished conversion a prepared copy names (never converts).

  Raises:
    ValueError: a copy of another dataset, of another final image size, or
      of an unknown format.
    FileNotFoundError: the marker is there but the conversion is not (a
      partial copy).
  """
  try:
    meta = json.loads((root / PREPARED).read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {root / PREPARED}: {e}; prepare the copy "
                     "again (python -m oneclass_jax.tools.prepare).") from e
  if meta.get("format") != _PREPARED_FORMAT:
    raise ValueError(f"{root / PREPARED} has format {meta.get('format')!r}; "
                     f"this version reads {_PREPARED_FORMAT}: prepare the "
                     "copy again with this version.")
  if meta["dataset"] != spec.name:
    raise ValueError(f"{root} is a prepared copy of {meta['dataset']!r}, not "
                     f"{spec.name!r}: set data.name={meta['dataset']} or "
                     "point data.source_dir at a copy of this dataset.")
  config = LocalConfig(
      name=meta["config"], dataset=meta["dataset"],
      source_dir=meta["source_dir"], splits=tuple(meta["splits"]),
      class_names=tuple(meta["class_names"]),
      image_shape=tuple(meta["image_shape"]))
  wanted = spec.final_shape(image_size)
  if config.image_shape != wanted:
    raise ValueError(
        f"{root} holds {config.image_shape[0]}x{config.image_shape[1]} "
        f"images, but the config asks for {wanted[0]}x{wanted[1]} "
        "(model.image_size): prepare the copy again with that size, or set "
        f"model.image_size={config.image_shape[0]}.")
  builders = {b.name: b for b in (_IdxBuilder, _FolderBuilder)}
  builder = builders[meta["builder"]](config=config, data_dir=str(root))
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"{root} has {PREPARED} but not the conversion it names "
        f"({builder.data_dir}): the copy is partial; copy the whole folder "
        "again.")
  return builder


def prepare_copy(spec, root: pathlib.Path, out, image_size=None) -> dict:
  """Converts the local source `root` into the folder `out` on its own.

  Every split is converted (and its label cache written) into `out`, then
  `out/PREPARED.json` is written last (atomically): a copy without it is not
  one. Preparing again after the source changed converts the new version
  beside the old one and points the marker at it.

  Returns:
    The marker's contents.

  Raises:
    ValueError: `root` is itself a prepared copy, or `out` holds other files.
  """
  out = pathlib.Path(out).expanduser().resolve()
  if is_prepared_copy(root):
    raise ValueError(f"{root} is already a prepared copy: copy that folder "
                     "to the workers as it is.")
  if out.exists() and any(out.iterdir()) and not is_prepared_copy(out):
    raise ValueError(f"{out} exists and is not a prepared copy: pass a new "
                     "or empty folder.")
  builder = _builder(spec, root, out, image_size)
  _prepare(builder)
  config = builder.builder_config
  for split in config.splits:  # The copy carries its label caches.
    splits.cached_labels(pathlib.Path(builder.data_dir) /
                         f"labels-{split}.npy",
                         builder.as_data_source(split=split), ("label",))
  meta = {"format": _PREPARED_FORMAT, "dataset": config.dataset,
          "builder": builder.name, "config": config.name,
          "source_dir": config.source_dir, "splits": list(config.splits),
          "class_names": list(config.class_names),
          "image_shape": list(config.image_shape)}
  tmp = out / f".{PREPARED}.tmp"
  tmp.write_text(json.dumps(meta, indent=1) + "\n")
  os.replace(tmp, out / PREPARED)
  return meta


def load_split(spec, split, root, data_dir, image_size=None) -> splits.Split:
  """One split of the local source `root`, converted into `data_dir` once.

  A prepared copy (`prepare_copy`) is read where it is, never converted.

  Raises:
    splits.MissingSplit: `root` has no such split (before any conversion).
  """
  if is_prepared_copy(root):
    builder = _prepared_builder(spec, root, image_size)
  else:
    builder = _builder(spec, root, data_dir, image_size)
  if split not in builder.builder_config.splits:
    raise splits.MissingSplit(
        f"split {split!r} not found in {root} (it has "
        f"{list(builder.builder_config.splits)}); expected "
        f"{layout_help(spec)}.")
  _prepare(builder)
  data_source = builder.as_data_source(split=split)
  cache = pathlib.Path(builder.data_dir) / f"labels-{split}.npy"
  config = builder.builder_config
  return splits.Split(
      source=splits.SplitSource(data_source,
                                image_shape=tuple(config.image_shape)),
      labels=splits.cached_labels(cache, data_source, ("label",)),
      num_classes=len(config.class_names),
      image_shape=tuple(config.image_shape),
      class_names=tuple(config.class_names),
      # The config name holds a digest of every file's name, size and mtime.
      fingerprint=f"{builder.name}/{config.name}/{split}")
