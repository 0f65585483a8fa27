"""The paper's one-class protocol on top of `sources.load`.

`make(cfg)` turns a dataset and an inlier class into the sets a run needs:

* `train`: inlier images of the train split (label 0), one copy per
  distribution-augmentation transform, each copy a distinct instance. With
  `contamination > 0` a fraction of it is replaced by outliers from the other
  classes' train images; the size stays the same (paper Sec. 5.3 / A.3: "the
  total amount of training examples for different settings remain
  unchanged"). The learner must not see which ones: every `train` record says
  `label` 0, and the truth is kept in `true_label` for analysis only.
* `fit`: the same images without distribution augmentation, for fitting the
  one-class detector, optionally a random subset of `fit_cap` (Fig. 5b/c; a
  cap above the number of images is clamped, with a warning).
* `test`: the whole test split, label 0 for the inlier class, 1 otherwise.
* `val` (with `validation=True`, App. A.4): 10% of the inlier train images
  held out (training keeps the other 90%) plus as many outliers drawn from
  the other classes' train images. With seed 1 the draws are the authors'
  (`np.random.seed(1)`, permute the inliers, keep 90%, then permute the
  outliers and take the first ones), on this module's record order.

All draws come from one `np.random.RandomState(cfg.seed)`, in the order
validation, contamination, fit cap. Records are dicts
`{'image': uint8[H, W, 3], 'label': int, 'index': int}` (plus `true_label` in
`train` and `fit`), where `index` is the record's position in its source, so
a trainer can derive per-example random keys from it.

Distribution augmentation: the geometric transforms of `data.geometric`.
"""
import dataclasses
import operator
from typing import Any, Optional
import warnings

import numpy as np

from oneclass_jax.data import geometric
from oneclass_jax.data import sources
from oneclass_jax.data import splits

VALIDATION_FRACTION = 0.1


class OneClassSource:
  """Random access to chosen rows of a split, under geometric transforms.

  Record i is row `rows[i % n]` under transform `transforms[i // n]`
  (n = len(rows)); the transform is applied when the record is read, so the
  augmented copies cost no memory. A grain `RandomAccessDataSource`.
  """

  def __init__(self, split_source: splits.SplitSource, rows: np.ndarray,
               labels: np.ndarray, *, transforms=(0,),
               true_labels: Optional[np.ndarray] = None):
    self._source = split_source
    self._rows = np.asarray(rows, np.int64)
    self._labels = np.asarray(labels, np.int64)
    self._true = None if true_labels is None else np.asarray(
        true_labels, np.int64)
    self._transforms = tuple(transforms)

  def __len__(self) -> int:
    return len(self._rows) * len(self._transforms)

  @property
  def labels(self) -> np.ndarray:
    """`label` of every record, in record order."""
    return np.tile(self._labels, len(self._transforms))

  @property
  def true_labels(self) -> Optional[np.ndarray]:
    """`true_label` of every record (None when records carry none)."""
    if self._true is None:
      return None
    return np.tile(self._true, len(self._transforms))

  def __getitem__(self, index) -> dict[str, Any]:
    index = operator.index(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}).")
    t, j = divmod(index, len(self._rows))
    image = self._source[int(self._rows[j])]["image"]
    if self._transforms[t]:
      image = geometric.apply_geometric(image, self._transforms[t])
    record = {"image": image, "label": int(self._labels[j]), "index": index}
    if self._true is not None:
      record["true_label"] = int(self._true[j])
    return record

  def __repr__(self) -> str:
    return (f"OneClassSource(rows={len(self._rows)}, "
            f"transforms={self._transforms})")


@dataclasses.dataclass
class OneClassData:
  """The sets of one one-class task (see the module docstring)."""
  train: OneClassSource
  fit: OneClassSource
  test: OneClassSource
  val: Optional[OneClassSource]
  dist_sets: list[int]
  meta: dict[str, Any]


def _inlier_class(value, split: splits.Split, name: str) -> int:
  """Class id from an int, a digit string or a class name."""
  if isinstance(value, str) and not value.isdigit():
    if value not in split.class_names:
      raise ValueError(f"inlier_class {value!r} is not a class of {name}; "
                       f"classes: {list(split.class_names)}.")
    return split.class_names.index(value)
  try:
    value = int(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"inlier_class must be a class id or name, got "
                     f"{value!r}.") from e
  if not 0 <= value < split.num_classes:
    raise ValueError(f"inlier_class {value} out of range for {name}: "
                     f"0..{split.num_classes - 1}.")
  return value


def _take_outliers(pool: np.ndarray, count: int, rng, what: str) -> np.ndarray:
  if count > len(pool):
    raise ValueError(f"{what} needs {count} outlier images but the other "
                     f"classes' train split has only {len(pool)} left.")
  return pool[rng.permutation(len(pool))[:count]]


def make(cfg) -> OneClassData:
  """Builds the one-class sets described by `cfg`.

  Args:
    cfg: ConfigDict or any attribute object with `name`, `inlier_class` (int,
      or class name) and optionally `data_dir`, `source_dir`, `seed` (0),
      `validation` (False), `contamination` (0.0, in [0, 1)), `fit_cap` (0 =
      all; larger than the training set: clamped with a warning),
      `train_cap` (0 = all: at most this many images, before distribution
      augmentation, train the representation; Figure 9), `dist_aug` ("none").

  Returns:
    The `OneClassData`.

  Raises:
    ValueError: bad inlier class (out of range or no train images),
      contamination outside [0, 1), negative fit_cap, unknown dist_aug (or a
      rotating one on non-square images), or too few outliers for
      validation or contamination.
  """
  name = cfg.name
  seed = int(getattr(cfg, "seed", 0))
  validation = bool(getattr(cfg, "validation", False))
  contamination = float(getattr(cfg, "contamination", 0.0))
  fit_cap = int(getattr(cfg, "fit_cap", 0))
  train_cap = int(getattr(cfg, "train_cap", 0))
  dist_aug = getattr(cfg, "dist_aug", "none")
  transforms = geometric.dist_aug_transforms(dist_aug)
  if not 0.0 <= contamination < 1.0:
    raise ValueError(f"contamination must be in [0, 1), got {contamination}.")
  for cap_name, cap in (("fit_cap", fit_cap), ("train_cap", train_cap)):
    if cap < 0:
      raise ValueError(f"{cap_name} must be >= 0 (0 = no cap), got {cap}.")
  # Configs use '' for "not set" (ml_collections cannot override None).
  paths = dict(data_dir=getattr(cfg, "data_dir", None) or None,
               source_dir=getattr(cfg, "source_dir", None) or None)
  train_split = sources.load(name, "train", **paths)
  test_split = sources.load(name, "test", **paths)
  height, width = train_split.image_shape[:2]
  if height != width and any(t >= 2 for t in transforms):
    raise ValueError(f"dist_aug {dist_aug!r} rotates, but {name} images are "
                     f"{height}x{width}, not square.")
  inlier = _inlier_class(cfg.inlier_class, train_split, name)
  inliers = np.flatnonzero(train_split.labels == inlier)
  outlier_pool = np.flatnonzero(train_split.labels != inlier)
  if not len(inliers):
    raise ValueError(f"inlier class {inlier} "
                     f"({train_split.class_names[inlier]}) has no train "
                     f"images in {name}.")
  rng = np.random.RandomState(seed)

  val = None
  if validation:
    perm = rng.permutation(len(inliers))
    n_train = int(len(inliers) * (1 - VALIDATION_FRACTION))
    val_in = inliers[perm[n_train:]]
    inliers = inliers[perm[:n_train]]
    val_out = _take_outliers(outlier_pool, len(val_in), rng, "validation")
    outlier_pool = np.setdiff1d(outlier_pool, val_out)
    val = OneClassSource(
        train_split.source, np.concatenate([val_in, val_out]),
        np.repeat([0, 1], [len(val_in), len(val_out)]))

  n_out = int(round(contamination * len(inliers)))
  true = np.zeros(len(inliers), np.int64)
  if n_out:
    kept = inliers[np.sort(rng.permutation(len(inliers))[n_out:])]
    added = _take_outliers(outlier_pool, n_out, rng, "contamination")
    order = rng.permutation(len(inliers))  # Outliers not grouped at the end.
    inliers = np.concatenate([kept, added])[order]
    true = np.repeat([0, 1], [len(kept), n_out])[order]

  fit_rows = np.arange(len(inliers))
  if fit_cap > len(inliers):
    warnings.warn(f"fit_cap {fit_cap} exceeds the {len(inliers)} training "
                  "images; fitting on all of them.")
  elif fit_cap:
    fit_rows = np.sort(rng.permutation(len(inliers))[:fit_cap])

  zeros = np.zeros(len(inliers), np.int64)
  train_rows = np.arange(len(inliers))
  if train_cap and train_cap < len(inliers):
    # Figure 9: fewer images for the representation; the detector still
    # fits on the full (fit_cap-limited) set.
    train_rows = np.sort(rng.permutation(len(inliers))[:train_cap])
  train = OneClassSource(train_split.source, inliers[train_rows],
                         zeros[train_rows], transforms=transforms,
                         true_labels=true[train_rows])
  fit = OneClassSource(train_split.source, inliers[fit_rows],
                       zeros[fit_rows], true_labels=true[fit_rows])
  test = OneClassSource(test_split.source, np.arange(len(test_split.labels)),
                        (test_split.labels != inlier).astype(np.int64))
  meta = {
      # What the cached embeddings and fitted detectors were computed from.
      "fingerprint": splits.array_digest(np.frombuffer(
          "|".join([train_split.fingerprint, test_split.fingerprint,
                    splits.array_digest(inliers[fit_rows]),
                    splits.array_digest(test.labels)]).encode(), np.uint8)),
      "dataset": name,
      "inlier_class": inlier,
      "inlier_name": train_split.class_names[inlier],
      "num_classes": int(train_split.num_classes),
      "seed": seed,
      "validation": validation,
      "contamination": contamination,
      "dist_aug": dist_aug,
      "image_shape": tuple(train_split.image_shape),
      "counts": {
          "train": len(train),
          "train_images": len(train_rows),
          "train_outliers": n_out,
          "fit": len(fit),
          "test": len(test),
          "test_inliers": int(np.sum(test_split.labels == inlier)),
          "val": 0 if val is None else len(val),
      },
  }
  return OneClassData(train=train, fit=fit, test=test, val=val,
                      dist_sets=list(transforms), meta=meta)
