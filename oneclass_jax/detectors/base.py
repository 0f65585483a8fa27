"""What every detector shares: feature checks, L2 normalisation, the base
class (a scikit-learn outlier detector), blocked scoring, cross-fitted
out-of-sample scores and the threshold for a false-positive rate."""
import abc
from typing import Callable, Optional
import warnings

from absl import logging
import jax.numpy as jnp
import numpy as np
from scipy import sparse
from sklearn import base as sk_base
from sklearn import exceptions as sk_exceptions

# Folds of the cross-fitted held-out inlier scores behind the thresholds
# (the evaluator's and the detectors' own, `Detector(fpr=...)`).
THRESHOLD_FOLDS = 5


def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows of `x` divided by their L2 norm, in float64; all-zero rows stay 0."""
  x = np.asarray(x, dtype=np.float64)
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.where(norms > 0, norms, 1.0)


def l2_normalize_jax(x):
  """`l2_normalize` in JAX, in the input's precision (float32 by default).

  sqrt(max(., tiny)) keeps the gradient finite at an all-zero row, which
  stays 0 as in `l2_normalize`.
  """
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True),
                                  1e-24))


def check_features(x, name: str) -> np.ndarray:
  """Returns `x` as a 2-D float64 array, or raises ValueError.

  Args:
    x: features, [rows, dims].
    name: what the array is ("train features", ...), used in the messages.

  Raises:
    ValueError: if `x` is not 2-D, is empty, is complex, or has rows with
      NaN/inf (the message says how many, so a diverged model is caught
      before fitting).
    TypeError: if `x` is a sparse matrix.
  """
  # Both would otherwise "convert": a sparse matrix to a 0-d object array,
  # a complex one to its real part (silently dropping the imaginary part).
  if sparse.issparse(x):
    raise TypeError(f"{name}: sparse input is not supported; pass a dense "
                    "array (x.toarray()).")
  x = np.asarray(x)
  if np.iscomplexobj(x):
    raise ValueError(f"{name}: Complex data not supported; pass real "
                     "features.")
  x = x.astype(np.float64, copy=False)
  # The wording of the 2-D and empty messages is scikit-learn's, which its
  # estimator checks look for.
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D [rows, dims] array, got shape "
                     f"{x.shape}. Reshape your data: x.reshape(-1, 1) for a "
                     "single feature, x.reshape(1, -1) for a single row.")
  if x.shape[0] == 0:
    raise ValueError(f"{name} is empty: 0 sample(s) (shape={x.shape}).")
  if x.shape[1] == 0:
    raise ValueError(f"{name} has 0 feature(s) (shape={x.shape}) while a "
                     "minimum of 1 is required.")
  bad_rows = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
  if bad_rows:
    raise ValueError(
        f"{name}: {bad_rows} of {x.shape[0]} rows contain NaN or inf; the "
        "representation has probably diverged. Fix the model or drop those "
        "rows before fitting or scoring a detector.")
  return x


class Detector(sk_base.OutlierMixin, sk_base.BaseEstimator, abc.ABC):
  """Base class: a scikit-learn outlier detector on features.

  It validates and (if `normalize`) L2-normalises the features, and builds
  scikit-learn's and PyOD's API on a subclass's `_fit` and `_score` (the
  signs are in the package docstring). Each subclass names `fpr`,
  `threshold_folds` and `seed` in its own `__init__`, as scikit-learn reads
  the parameters from that signature, and passes them here.

  Args:
    fpr: the fraction of normal data the threshold flags, in (0, 1). None
      (the default) fits no threshold, so that `fit` stays one fit for
      evaluate, export and the MVTec memory bank, which threshold on their
      own held-out or calibration scores; `predict` and `decision_function`
      then refuse.
    threshold_folds: folds of the cross-fitting behind the threshold.
    seed: seeds the folds (and the OC-SVM's subset of rows).

  Attributes (after fit; the last three only with `fpr`):
    dim_ (also `n_features_in_`): the feature dimension.
    decision_scores_: [n] cross-fitted held-out anomaly scores of the train
      rows (PyOD's name; out-of-sample here, see `_fit_threshold`).
    threshold_: their (1 − fpr) quantile; score > threshold_ is anomalous.
    offset_: −threshold_ (scikit-learn's: decision_function =
      score_samples − offset_).
  """

  name: str = ""
  normalize: bool = True
  # The rows of its train features a detector fitted on when it took a
  # subset (None: all of them); evaluate writes their number to results.json.
  fit_index_: Optional[np.ndarray] = None

  def __init__(self, fpr: Optional[float] = None,
               threshold_folds: int = THRESHOLD_FOLDS, seed: int = 0):
    # Stored unchanged and checked in `fit`: scikit-learn's clone and
    # set_params (GridSearchCV) set parameters without calling __init__.
    self.fpr = fpr
    self.threshold_folds = threshold_folds
    self.seed = seed

  @property
  def n_features_in_(self) -> int:
    # A property over `dim_`, so detectors pickled before it existed have it.
    return self.dim_

  def _normalized(self, x: np.ndarray, what: str) -> np.ndarray:
    """Checked features `x`, normalised if this detector expects unit
    vectors."""
    if not self.normalize:
      return x
    if x.shape[1] == 1:
      # A unit vector in one dimension is its sign: nothing left to detect.
      raise ValueError(
          f"{self.name} {what}: 1 feature(s) cannot be L2-normalised (every "
          "row becomes -1, 0 or 1); give at least 2 features, or use "
          "ocsvm_linear, which works on raw features.")
    return l2_normalize(x)

  def _check_params(self):
    """Raises ValueError for a bad parameter; subclasses extend it."""
    if self.fpr is not None and not 0.0 < self.fpr < 1.0:
      raise ValueError(f"{self.name}: fpr must be in (0, 1) or None, got "
                       f"{self.fpr}.")
    if not self.threshold_folds >= 2:
      raise ValueError(f"{self.name}: threshold_folds must be >= 2, got "
                       f"{self.threshold_folds}.")

  def _check_fitted_dim(self, x: np.ndarray):
    # NotFittedError is a ValueError (and an AttributeError), as before.
    if not hasattr(self, "dim_"):
      raise sk_exceptions.NotFittedError(
          f"{self.name}: call fit(train) before score(x).")
    if x.shape[1] != self.dim_:
      # scikit-learn's wording, which its estimator checks look for.
      raise ValueError(f"{self.name}: X has {x.shape[1]} features, but "
                       f"{type(self).__name__} is expecting {self.dim_} "
                       f"features as input (it was fitted on {self.dim_}).")

  def fit(self, X, y=None) -> "Detector":
    """Fits on [n, d] inlier features `X`; returns self.

    `y` is ignored (every row is an inlier; scikit-learn passes it). With
    `fpr` set, the threshold costs `threshold_folds` more fits.
    """
    del y
    self._check_params()
    raw = check_features(X, f"{self.name} train features")
    x = self._normalized(raw, "train features")
    for stale in ("decision_scores_", "threshold_", "offset_"):
      vars(self).pop(stale, None)  # A refit with fpr=None has none.
    self._fit(x)
    self.dim_ = x.shape[1]
    if self.fpr is not None:
      self._fit_threshold(raw)
    return self

  def _fit_threshold(self, train: np.ndarray):
    # The threshold is a quantile of OUT-of-sample normal scores, as
    # evaluate's is. A detector's scores of its own train rows are biased
    # towards normal: a KDE's include each point's own kernel, exp(0) = 1,
    # and a 1-NN's distance to itself is 0. Their (1 − fpr) quantile would
    # sit far below fresh normal data's, and flag far more than fpr of it
    # (1-NN: nearly all; tests/test_sklearn_api.py).
    self.decision_scores_ = cross_fitted_scores(
        lambda fit_rows, held_rows: sk_base.clone(self).set_params(
            fpr=None).fit(fit_rows).score(held_rows),
        train, seed=self.seed, folds=self.threshold_folds)
    self.threshold_ = threshold_at_fpr(
        self.decision_scores_, self.fpr,
        what=f"{self.name} cross-fitted held-out train scores")
    self.offset_ = -self.threshold_

  def score(self, X, y=None) -> np.ndarray:
    """[m] float64 anomaly scores of [m, d] features (higher = anomalous).

    Not scikit-learn's `score(X, y)`, a goodness of fit: `y` is there only
    to refuse it, so that model selection without a `scoring` stops with
    the fix rather than failing on an array.
    """
    if y is not None:
      raise TypeError(
          f"{type(self).__name__}.score(X) returns anomaly scores, not a "
          "goodness of fit, and takes no y: give GridSearchCV or "
          "cross_val_score a scoring, e.g. scoring='roc_auc' with labels +1 "
          "(inlier) / -1 (outlier), which ranks by decision_function.")
    x = check_features(X, f"{self.name} test features")
    self._check_fitted_dim(x)
    return self._score(self._normalized(x, "test features"))

  def score_samples(self, X) -> np.ndarray:
    """scikit-learn's normality: −`score` (higher = more normal)."""
    return -self.score(X)

  def decision_function(self, X) -> np.ndarray:
    """score_samples − offset_ = threshold_ − score: < 0 for outliers."""
    self._threshold()
    return self.score_samples(X) - self.offset_

  def predict(self, X) -> np.ndarray:
    """+1 (inlier) or −1 (outlier, `anomalous`: above threshold_ or NaN)."""
    threshold = self._threshold()
    return np.where(anomalous(self.score(X), threshold), -1, 1)

  def _threshold(self) -> float:
    if not hasattr(self, "threshold_"):
      raise sk_exceptions.NotFittedError(
          f"{self.name}: no threshold to predict with; fit it with fpr set, "
          f"e.g. {type(self).__name__}(fpr=0.05).fit(X) (with fpr=None, the "
          "default and evaluate's, fit sets none).")
    return self.threshold_

  @abc.abstractmethod
  def _fit(self, x: np.ndarray):
    """Fits on [n, d] inlier features, checked and normalised by `fit`."""

  @abc.abstractmethod
  def _score(self, x: np.ndarray) -> np.ndarray:
    """`score` of [m, d] features checked and normalised by `score`."""

  @abc.abstractmethod
  def jax_score_fn(self) -> Callable:
    """`score` as a pure JAX function closed over the fitted arrays.

    The function maps raw (un-normalised) float32 features [m, d] to [m]
    float32 anomaly scores equal to `score`'s up to float32 rounding; it
    normalises like `score` and does not check for NaN. It can be jitted
    and `jax.export`ed (the exported scorer, `oneclass_jax/export.py`) with a
    symbolic m.
    """


def score_in_blocks(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                    block: int) -> np.ndarray:
  """Applies a row-wise jitted `fn` to `x` in blocks of `block` rows.

  Blocks are balanced (sizes differ by at most one row) and the last one is
  zero-padded to the common size, so `fn` is compiled once per call. Only one
  block is on the accelerator at a time, so memory does not grow with the
  number of rows.
  """
  m = x.shape[0]
  num_blocks = -(-m // block)
  block = -(-m // num_blocks)
  out = np.empty(m, dtype=np.float64)
  for start in range(0, m, block):
    chunk = x[start:start + block]
    rows = chunk.shape[0]
    if rows < block:
      chunk = np.concatenate(
          [chunk, np.zeros((block - rows, x.shape[1]), chunk.dtype)])
    out[start:start + rows] = np.asarray(fn(chunk), dtype=np.float64)[:rows]
  return out


def cross_fitted_scores(fit_and_score: Callable[[np.ndarray, np.ndarray],
                                                 np.ndarray],
                        x: np.ndarray, *, seed: int,
                        folds: int = THRESHOLD_FOLDS) -> np.ndarray:
  """Out-of-sample scores of every row of `x`, by K-fold cross-fitting.

  The rows are dealt into `folds` seeded folds (at least 2, at most one per
  row); `fit_and_score(other_rows, fold_rows)` scores each fold's rows with
  a detector fitted on the other K − 1 folds. A detector deployed on all
  the rows gets its threshold for a target false-positive rate from the
  quantile of these scores, which needs no outlier: every detector's score
  is normalised by its number of fitted rows (KDE by n, OC-SVM by Σα), so
  fold detectors and the deployed one score on the same scale
  (tests/test_thresholds.py measures the realised rate on fresh inliers).

  Returns:
    [len(x)] float64 scores.
  """
  n = len(x)
  if n < 2:
    raise ValueError(f"Cross-fitting needs at least 2 rows (one to fit on, "
                     f"one to score), got {n} sample{'' if n == 1 else 's'}.")
  folds = max(2, min(folds, n))
  fold_of = np.random.default_rng(seed).permutation(n) % folds
  out = np.empty(n)
  for k in range(folds):
    held = fold_of == k
    logging.info("Threshold fold %d of %d (%d held-out inliers)", k + 1,
                 folds, int(held.sum()))
    out[held] = fit_and_score(x[~held], x[held])
  return out


def threshold_at_fpr(normal_scores, fpr: float, *,
                     what: str = "held-out normal scores") -> float:
  """The score above which a fraction `fpr` of normal data is flagged.

  The (1 − fpr) quantile of out-of-sample normal scores: evaluate's
  cross-fitted held-out inlier scores, or the scores of fresh normal images
  (`export --calibration`); `what` names them in the messages. Fewer than
  10 / fpr of them put less than about 10 scores above the threshold, so its
  realised rate is noisy: that warns (the exporter records the warning).
  """
  if not 0.0 < fpr < 1.0:
    raise ValueError(f"fpr must be in (0, 1), got {fpr}.")
  normal_scores = np.asarray(normal_scores, np.float64)
  if normal_scores.ndim != 1 or not len(normal_scores):
    raise ValueError(f"No {what} to set a threshold from.")
  if len(normal_scores) < 10 / fpr:
    warnings.warn(
        f"Only {len(normal_scores)} {what} back the threshold for fpr={fpr} "
        f"(fewer than 10/fpr = {10 / fpr:.0f}): the realised false-positive "
        "rate will be noisy; use more normal images or a larger fpr.")
  return float(np.quantile(normal_scores, 1.0 - fpr))


def anomalous(scores, threshold):
  """Verdicts: True where a score is above the threshold, or NaN.

  `not <=` rather than `>`: a NaN score (a network that diverged on this
  input) is flagged, not passed as normal. Works on numpy and jax arrays, so
  `score` and the exported function give the same verdicts.
  """
  return ~(scores <= threshold)
