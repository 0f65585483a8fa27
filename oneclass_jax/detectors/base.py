"""What every detector shares: feature checks, L2 normalisation, the base
class, blocked scoring and the threshold for a false-positive rate."""
import abc
from typing import Callable, Optional
import warnings

import jax.numpy as jnp
import numpy as np


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
    ValueError: if `x` is not 2-D, is empty, or has rows with NaN/inf (the
      message says how many, so a diverged model is caught before fitting).
  """
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D [rows, dims] array, got shape "
                     f"{x.shape}.")
  if x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} is empty (shape {x.shape}).")
  bad_rows = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
  if bad_rows:
    raise ValueError(
        f"{name}: {bad_rows} of {x.shape[0]} rows contain NaN or inf; the "
        "representation has probably diverged. Fix the model or drop those "
        "rows before fitting or scoring a detector.")
  return x


class Detector(abc.ABC):
  """Base class: validates and (if `normalize`) L2-normalises features."""

  name: str = ""
  normalize: bool = True
  # The rows of its train features a detector fitted on when it took a
  # subset (None: all of them); evaluate writes their number to results.json.
  fit_index_: Optional[np.ndarray] = None

  def prepare(self, x, what: str) -> np.ndarray:
    """Checks `x` and normalises it if this detector expects unit vectors."""
    x = check_features(x, f"{self.name} {what}")
    return l2_normalize(x) if self.normalize else x

  def _check_fitted_dim(self, x: np.ndarray):
    if not hasattr(self, "dim_"):
      raise ValueError(f"{self.name}: call fit(train) before score(x).")
    if x.shape[1] != self.dim_:
      raise ValueError(f"{self.name}: test features have {x.shape[1]} dims "
                       f"but the detector was fitted on {self.dim_}.")

  @abc.abstractmethod
  def fit(self, train) -> "Detector":
    """Fits on [n, d] inlier features; returns self."""

  @abc.abstractmethod
  def score(self, x) -> np.ndarray:
    """[m] float64 anomaly scores of [m, d] features (higher = anomalous)."""

  @abc.abstractmethod
  def jax_score_fn(self) -> Callable:
    """`score` as a pure JAX function closed over the fitted arrays.

    The function maps raw (un-normalised) float32 features [m, d] to [m]
    float32 anomaly scores equal to `score`'s up to float32 rounding; it
    normalises like `prepare` and does not check for NaN. It can be jitted
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
