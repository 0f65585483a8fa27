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
  A local source without a test split (an image folder with only train/)
  gives an empty `test` and `meta['test_split']` False; a test set without
  outliers or without inliers is kept as it is. `auc_skipped_reason` says
  why such a test set has no AUC: the evaluation then fits and saves the
  detectors and their threshold all the same.
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


def _folder_hint(cfg, label: str) -> str:
  source_dir = getattr(cfg, "source_dir", None)
  if not source_dir:
    return ""
  return (f" Its images belong in {source_dir}/train/{label}/ (one folder "
          "per class; test/ is optional).")


def _inlier_class(value, split: splits.Split, name: str, cfg=None) -> int:
  """Class id from an int, a digit string or a class (label folder) name."""
  # A bool or a float would pass int() (True -> 1, 0.5 -> 0): refuse them.
  if isinstance(value, bool) or not isinstance(value, (int, np.integer, str)):
    raise ValueError(f"inlier_class must be a class id or name, got "
                     f"{value!r}.")
  if isinstance(value, str) and not value.isdigit():
    if value not in split.class_names:
      raise ValueError(f"inlier_class {value!r} is not a class of {name}; "
                       f"classes: {list(split.class_names)}."
                       + _folder_hint(cfg, value))
    return split.class_names.index(value)
  value = int(value)
  if not 0 <= value < split.num_classes:
    raise ValueError(f"inlier_class {value} out of range for {name}: "
                     f"0..{split.num_classes - 1}.")
  return value


def _take_outliers(pool: np.ndarray, count: int, rng, what: str) -> np.ndarray:
  if count > len(pool):
    raise ValueError(f"{what} needs {count} outlier images but the other "
                     f"classes' train split has only {len(pool)} left.")
  return pool[rng.permutation(len(pool))[:count]]


def auc_skipped_reason(meta: dict) -> Optional[str]:
  """Why the test set of `make`'s `meta` allows no AUC; None when it does."""
  counts = meta["counts"]
  if not meta["test_split"]:
    return "No test split (the source has no test/ folder)"
  inliers, total = counts["test_inliers"], counts["test"]
  if inliers == total:
    return ("No anomalies in the test set (test/ has only the inlier class "
            f"{meta['inlier_name']!r})")
  if inliers == 0:
    return ("No inliers in the test set (test/ has no images of the inlier "
            f"class {meta['inlier_name']!r}, only anomalies)")
  return None


def make(cfg, *, image_size: Optional[int] = None) -> OneClassData:
  """Builds the one-class sets described by `cfg`.

  Args:
    cfg: ConfigDict or any attribute object with `name`, `inlier_class` (int,
      or class name) and optionally `data_dir`, `source_dir`, `seed` (0),
      `validation` (False), `contamination` (0.0, in [0, 1)), `fit_cap` (0 =
      all; larger than the training set: clamped with a warning),
      `train_cap` (0 = all: at most this many images, before distribution
      augmentation, train the representation; Figure 9), `dist_aug` ("none").
    image_size: side of the final images where the dataset has no fixed
      size (image_folder: config.model.image_size).

  Returns:
    The `OneClassData`.

  Raises:
    ValueError: bad inlier class (out of range, not a label folder or no
      train images), no train split (`splits.MissingSplit`),
      contamination outside [0, 1), negative fit_cap, unknown dist_aug, or
      too few outliers for validation or contamination. (Every dataset's
      final images are square, so every dist_aug applies.)
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
               source_dir=getattr(cfg, "source_dir", None) or None,
               image_size=image_size)
  train_split = sources.load(name, "train", **paths)
  try:
    test_split = sources.load(name, "test", **paths)
  except splits.MissingSplit:
    test_split = None  # Normal images only: train, fit and threshold.
  inlier = _inlier_class(cfg.inlier_class, train_split, name, cfg)
  inliers = np.flatnonzero(train_split.labels == inlier)
  outlier_pool = np.flatnonzero(train_split.labels != inlier)
  if not len(inliers):
    # E.g. the default inlier_class 0 where test/crack/ sorts before the
    # only train folder, train/good/.
    present = [train_split.class_names[c] for c in np.unique(
        train_split.labels)]
    raise ValueError(f"inlier class {inlier} "
                     f"({train_split.class_names[inlier]}) has no train "
                     f"images in {name}; the train split holds {present}: "
                     f"pass inlier_class=<one of those>."
                     + _folder_hint(cfg, train_split.class_names[inlier]))
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
  if test_split is None:
    test = OneClassSource(train_split.source, np.zeros(0, np.int64),
                          np.zeros(0, np.int64))
    test_inliers, test_fingerprint = 0, "no test split"
  else:
    test = OneClassSource(test_split.source,
                          np.arange(len(test_split.labels)),
                          (test_split.labels != inlier).astype(np.int64))
    test_inliers = int(np.sum(test_split.labels == inlier))
    test_fingerprint = test_split.fingerprint
  meta = {
      # What the cached embeddings and fitted detectors were computed from.
      "fingerprint": splits.array_digest(np.frombuffer(
          "|".join([train_split.fingerprint, test_fingerprint,
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
      "test_split": test_split is not None,
      "counts": {
          "train": len(train),
          "train_images": len(train_rows),
          "train_outliers": n_out,
          "fit": len(fit),
          "test": len(test),
          "test_inliers": test_inliers,
          "val": 0 if val is None else len(val),
      },
  }
  return OneClassData(train=train, fit=fit, test=test, val=val,
                      dist_sets=list(transforms), meta=meta)
