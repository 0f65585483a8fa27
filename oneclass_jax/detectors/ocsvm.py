"""One-class SVMs (paper Eqs. 3-5): libsvm's solver on a precomputed kernel.

`ocsvm`: RBF kernel on L2-normalised features with the KDE bandwidth
γ = 10 / (d · Var(F)) (`kde.bandwidth_gamma`), cast to a Python float, and all
other scikit-learn defaults (nu = 0.5, tol = 1e-3, shrinking on). Paper keys
`*.kocsvm`.

`ocsvm_linear`: linear kernel on the RAW (un-normalised) features, nu = 0.5.
That is the authors' choice in their code (`*.locsvm`), kept for
comparability, not a recommendation.

Score = −Σ_i α_i k(sv_i, x) / Σ_i α_i, i.e. −`OneClassSVM.score_samples`
divided by Σ α = ν·n (higher means more anomalous). The division changes no
ranking; it makes scores of OC-SVMs fitted on different numbers of inliers
comparable, so a threshold set with detectors fitted on part of the inliers
(evaluate's cross-fitted held-out scores) holds for the one fitted on all.
`dual_coef_` and `libsvm_offset_` are libsvm's, unscaled.

Why a precomputed kernel: libsvm evaluates k(x_i, x_j) one pair at a time, in
one thread, and caches kernel rows in 200 MB; on 10,000 × 12,288 raw pixels
the n² matrix does not fit, so it recomputes rows for over an hour. The same
n × n matrix through BLAS (float64, centred, in row blocks) takes about a
minute, and libsvm's solver on it is the same SMO on the same numbers up to
rounding: the same support set and dual coefficients (tests/test_detectors).
The matrix costs 8 n² bytes, so at most `max_fit_rows` inliers (default
20,000, the authors' own cap on the fitting set: 3.2 GB) are fitted; above
that a seeded random subset is, with a warning, and `fit_index_` records it
(evaluate writes it into results.json).
"""
from typing import Optional
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import svm

from oneclass_jax.detectors import base as _det
from oneclass_jax.detectors import kde

# The authors' code fits every detector on at most 20,000 inliers.
MAX_FIT_ROWS = 20_000
_BLOCK = 1024  # Rows per kernel block: block × n float64 at a time.


class _OneClassSVM(_det.Detector):
  """libsvm's one-class SVM on a precomputed kernel; score = −score_samples.

  The kernel is linear unless a subclass's `_gamma` gives an RBF bandwidth.
  """

  def __init__(self, nu: float = 0.5, max_fit_rows: int = MAX_FIT_ROWS,
               seed: int = 0, tol: float = 1e-3, shrinking: bool = True,
               cache_size: float = 200, max_iter: int = -1,
               fpr: Optional[float] = None,
               threshold_folds: int = _det.THRESHOLD_FOLDS):
    """Args: ν; the most rows fitted (a seeded random subset above it); the
    subset's and the threshold folds' seed; `sklearn.svm.OneClassSVM`'s
    tol, shrinking, cache_size (MB) and max_iter; the threshold's
    (`base.Detector`)."""
    super().__init__(fpr=fpr, threshold_folds=threshold_folds, seed=seed)
    self.nu = nu
    self.max_fit_rows = max_fit_rows
    self.tol = tol
    self.shrinking = shrinking
    self.cache_size = cache_size
    self.max_iter = max_iter

  def _check_params(self):
    super()._check_params()
    if not self.max_fit_rows >= 1:
      raise ValueError(f"max_fit_rows must be >= 1, got {self.max_fit_rows}.")

  def _gamma(self, train: np.ndarray) -> Optional[float]:
    """The RBF bandwidth for `train`, or None for the linear kernel."""
    del train
    return None

  def _fit(self, train):
    max_fit_rows = int(self.max_fit_rows)
    self.fit_index_ = None
    if len(train) > max_fit_rows:
      self.fit_index_ = np.sort(np.random.default_rng(self.seed).permutation(
          len(train))[:max_fit_rows])
      warnings.warn(
          f"{self.name}: fitting on a random {max_fit_rows} of the "
          f"{len(train)} inliers (its n x n kernel would need "
          f"{8 * len(train) ** 2 / 2**30:.1f} GiB); set data.fit_cap to "
          "choose the subset for every detector.")
      train = train[self.fit_index_]
    self.gamma_ = self._gamma(train)
    # The mean is subtracted before the dot products: distances do not change
    # and the cancellation in ‖a‖² + ‖b‖² − 2 a·b is smaller.
    self.centre_ = train.mean(axis=0) if self.gamma_ is not None else None
    train = self._centred(train)
    gram = np.empty((len(train), len(train)))
    for start in range(0, len(train), _BLOCK):
      gram[start:start + _BLOCK] = self._kernel(train[start:start + _BLOCK],
                                                train)
    fitted = svm.OneClassSVM(
        kernel="precomputed", nu=self.nu, tol=self.tol,
        shrinking=self.shrinking, cache_size=self.cache_size,
        max_iter=self.max_iter).fit(gram)
    del gram
    self.support_ = fitted.support_  # Rows of the fitted (sub)set.
    self.support_vectors_ = train[fitted.support_]  # Centred.
    self.dual_coef_ = np.asarray(fitted.dual_coef_[0], np.float64)
    self.n_iter_ = int(fitted.n_iter_)  # libsvm's iterations (max_iter's).
    # libsvm's offset_ (ρ), unscaled; `offset_` is scikit-learn's for
    # this detector's threshold (base.Detector).
    self.libsvm_offset_ = float(fitted.offset_[0])

  def _centred(self, x: np.ndarray) -> np.ndarray:
    return x if self.centre_ is None else x - self.centre_

  def _kernel(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(a_i, b_j), [len(a), len(b)] float64, for centred rows."""
    dots = a @ b.T
    if self.gamma_ is None:
      return dots
    d2 = (np.einsum("ij,ij->i", a, a)[:, None] +
          np.einsum("ij,ij->i", b, b)[None, :] - 2 * dots)
    return np.exp(-self.gamma_ * np.maximum(d2, 0.0))

  def _score(self, x) -> np.ndarray:
    if not hasattr(self, "dual_coef_"):
      raise ValueError(f"{self.name} was fitted by an older oneclass_jax; "
                       "re-run evaluate to refit it.")
    x = self._centred(x)
    out = np.empty(len(x))
    for start in range(0, len(x), _BLOCK):
      out[start:start + _BLOCK] = (
          self._kernel(x[start:start + _BLOCK], self.support_vectors_) @
          self.dual_coef_)
    return -out / self.dual_coef_.sum()

  def jax_score_fn(self):
    # float32 with `score`'s centring (on the fitted rows' mean, so the
    # squared distances' expansion cancels little: the KDE's `sq_dists`).
    # The weights α / Σα are formed in float64 and are all positive, so the
    # RBF sum has no cancellation: its relative error is about γ times the
    # squared distances' absolute error (~1e-7 for unit-norm features).
    # Scores below float32's range (~1e-38: every support vector further
    # than √(87/γ)) come out as 0.
    sv = jnp.asarray(self.support_vectors_, jnp.float32)
    weights = jnp.asarray(self.dual_coef_ / self.dual_coef_.sum(),
                          jnp.float32)
    centre = (None if self.centre_ is None
              else jnp.asarray(self.centre_, jnp.float32))
    gamma, normalize = self.gamma_, self.normalize
    sv_sq = jnp.sum(sv * sv, axis=-1)

    def score(x):
      if normalize:
        x = _det.l2_normalize_jax(x)
      if centre is None:  # Linear kernel on raw features.
        kernel = jnp.matmul(x, sv.T, precision=jax.lax.Precision.HIGHEST)
      else:
        kernel = jnp.exp(-gamma * kde.sq_dists(x - centre, sv, sv_sq))
      return -jnp.matmul(kernel, weights, precision=jax.lax.Precision.HIGHEST)

    return score


class OCSVM(_OneClassSVM):
  """RBF one-class SVM on L2-normalised features; score = −score_samples."""

  name = "ocsvm"
  normalize = True

  def __init__(self, gamma: Optional[float] = None, nu: float = 0.5,
               max_fit_rows: int = MAX_FIT_ROWS, seed: int = 0,
               tol: float = 1e-3, shrinking: bool = True,
               cache_size: float = 200, max_iter: int = -1,
               fpr: Optional[float] = None,
               threshold_folds: int = _det.THRESHOLD_FOLDS):
    """Args: γ override; the rest as `_OneClassSVM`'s."""
    super().__init__(nu=nu, max_fit_rows=max_fit_rows, seed=seed, tol=tol,
                     shrinking=shrinking, cache_size=cache_size,
                     max_iter=max_iter, fpr=fpr,
                     threshold_folds=threshold_folds)
    self.gamma = gamma

  def _gamma(self, train: np.ndarray) -> Optional[float]:
    """The RBF bandwidth for `train` (normalised as this detector expects)."""
    return (float(self.gamma) if self.gamma is not None
            else kde.bandwidth_gamma(train))


class LinearOCSVM(_OneClassSVM):
  """Linear one-class SVM on RAW features (the authors' choice), nu = 0.5."""

  name = "ocsvm_linear"
  normalize = False
