"""Gaussian density estimator, GDE (paper Eq. 7): one full-covariance Gaussian.

The authors fit `sklearn.mixture.GaussianMixture(n_components=1,
covariance_type='full')` to L2-normalised features and score with
−`score_samples`. With one component, EM's fixed point is the closed-form
maximum-likelihood fit, so this module computes it directly in float64: the
mean, the MLE covariance (divided by n) plus `reg_covar`·I on the diagonal
(1e-6, sklearn's default), a Cholesky factor, and the negative
log-likelihood. Equal to sklearn's scores whenever n > d (tested).

When n <= d the sample covariance is singular (rank <= n − 1) and 1e-6·I
makes it barely invertible, so the Mahalanobis term would be dominated by
noise directions. Then the covariance is replaced by its Ledoit-Wolf
shrinkage towards (trace/d)·I (`sklearn.covariance.ledoit_wolf`) before
adding `reg_covar`, and a warning says so.
"""
from typing import Optional
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg
from sklearn import covariance as sk_covariance

from oneclass_jax.detectors import base as _det


class GDE(_det.Detector):
  """Single full-covariance Gaussian; score = negative log-likelihood."""

  name = "gde"
  normalize = True

  def __init__(self, reg_covar: float = 1e-6, fpr: Optional[float] = None,
               threshold_folds: int = _det.THRESHOLD_FOLDS, seed: int = 0):
    """Args: value added to the covariance diagonal (sklearn's default); the
    threshold's (`base.Detector`)."""
    super().__init__(fpr=fpr, threshold_folds=threshold_folds, seed=seed)
    self.reg_covar = reg_covar

  def _check_params(self):
    super()._check_params()
    if not self.reg_covar >= 0:
      raise ValueError(f"gde: reg_covar must be >= 0, got {self.reg_covar}.")

  def _fit(self, train):
    n, d = train.shape
    self.mean_ = train.mean(axis=0)
    if n <= d:
      warnings.warn(
          f"gde: {n} train rows for {d} dims makes the covariance singular; "
          "using Ledoit-Wolf shrinkage towards a scaled identity (plus "
          f"reg_covar={self.reg_covar}) instead of the plain MLE covariance.",
          stacklevel=3)
      cov, self.shrinkage_ = sk_covariance.ledoit_wolf(train)
    else:
      centred = train - self.mean_
      cov = centred.T @ centred / n
      self.shrinkage_ = 0.0
    cov[np.diag_indices(d)] += self.reg_covar
    try:
      self.chol_ = linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError as e:
      raise ValueError(
          "gde: the covariance is not positive definite even after "
          f"regularisation (reg_covar={self.reg_covar}); increase reg_covar."
      ) from e
    self.log_det_ = 2.0 * np.log(np.diag(self.chol_)).sum()

  def _score(self, x) -> np.ndarray:
    z = linalg.solve_triangular(self.chol_, (x - self.mean_).T, lower=True)
    mahalanobis = np.sum(z * z, axis=0)
    return 0.5 * (self._log_norm() + mahalanobis)

  def _log_norm(self) -> float:
    """d log 2π + log det Σ: twice the negative log-likelihood's constant."""
    return float(self.dim_ * np.log(2.0 * np.pi) + self.log_det_)

  def jax_score_fn(self):
    # float32 with z = L⁻¹(x − μ): L⁻¹ is formed in float64 and rounded
    # once, and x is centred on μ before the product (no large terms to
    # cancel), so z is off by the float32 rounding of x − μ magnified by at
    # most √cond(Σ). The constant ½(d log 2π + log det Σ) is added last: the
    # score is accurate to about eps_f32·√cond(Σ) relative to its two terms,
    # which is absolute error where they cancel (scores near 0).
    whiten = jnp.asarray(linalg.solve_triangular(
        self.chol_, np.eye(self.dim_), lower=True).T, jnp.float32)
    mean = jnp.asarray(self.mean_, jnp.float32)
    half_log_norm = 0.5 * self._log_norm()

    def score(x):
      z = jnp.matmul(_det.l2_normalize_jax(x) - mean, whiten,
                     precision=jax.lax.Precision.HIGHEST)
      return 0.5 * jnp.sum(z * z, axis=-1) + half_log_norm

    return score
