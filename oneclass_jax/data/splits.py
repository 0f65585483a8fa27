"""One split of a dataset: random access to its records, and their labels.

A `Split` holds a grain-compatible random-access `source` of
`{'image': uint8[H, W, 3], 'label': int}` records, already preprocessed to the
dataset's final size, plus the labels of every record as one cheap array
(cached as `.npy` beside the prepared data).
"""
import dataclasses
import hashlib
import operator
import os
import pathlib
import tempfile
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np


class MissingSplit(ValueError):
  """A source has no split of the asked name (an image folder without
  test/, say); `one_class.make` runs without a test split then."""


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


def array_digest(array: np.ndarray) -> str:
  """Short digest of an array's dtype, shape and bytes."""
  array = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  h.update(array.tobytes())
  return h.hexdigest()[:16]


def save_npy_atomic(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes beside `path`, then renames: readers never see half a file."""
  with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp",
                                   delete=False) as f:
    np.save(f, array)
  os.replace(f.name, path)


def _read_labels(data_source, label_key) -> np.ndarray:
  return np.fromiter((_label_of(data_source[i], label_key)
                      for i in range(len(data_source))),
                     np.int64, count=len(data_source))


def cached_labels(cache: Optional[pathlib.Path], data_source,
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
      save_npy_atomic(cache, labels)
    except OSError as e:  # e.g. a read-only shared data_dir: just recompute.
      logging.warning("Could not cache labels at %s: %s", cache, e)
  return labels
