r"""How uniform embeddings are on the hypersphere (Section 5.1, Fig. 4, 8).

The paper measures uniformity "via MMD distance between the learned
representation and samples from uniform distributions on hyperspheres":
smaller MMD = closer to uniform. It names neither kernel nor estimator; ours:

* Points: each embedding row is L2-normalised onto S^{d−1}; the reference
  sample has as many points drawn uniformly on S^{d−1} of the same d
  (normalised standard Gaussians), from a fixed seed.
* Kernel: Gaussian RBF on the sphere, k(x, y) = exp(−‖x − y‖² / (2σ²)),
  σ = 1 by default. On unit vectors ‖x − y‖² ∈ [0, 4]; two independent
  uniform points are almost orthogonal in high dimension (‖x − y‖² ≈ 2,
  k ≈ e^{−1}), a collapsed set has k ≈ 1, so σ = 1 keeps the kernel in its
  sensitive range whatever d. The RBF kernel is characteristic: MMD = 0 only
  for identical distributions.
* Estimator: the unbiased U-statistic of Gretton et al. (2012, Eq. 3),

      MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j)
               − 2/(mn) Σ_{i,j} k(x_i, y_j),

  whose expectation is exactly MMD² (0 for uniform embeddings; it can then be
  slightly negative). We report MMD²_u ("MMD²" on the figures).

Known answer: a point mass δ_p against the uniform distribution has
MMD² = 1 − E_y k(p, y) (E k(y, y') = E k(p, y) by rotation invariance), and
t = p·y has density ∝ (1 − t²)^{(d−3)/2} on [−1, 1];
`point_mass_mmd2` integrates that numerically. It is the value of a fully
collapsed representation, the top of the scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate
from scipy import special

DEFAULT_BANDWIDTH = 1.0
DEFAULT_MAX_POINTS = 2000
_HIGHEST = jax.lax.Precision.HIGHEST


def uniform_sphere(key, n: int, dim: int) -> jax.Array:
  """n points drawn uniformly on the unit sphere S^{dim−1} (float32)."""
  if dim < 1 or n < 1:
    raise ValueError(f"uniform_sphere needs n >= 1 and dim >= 1, got n={n}, "
                     f"dim={dim}.")
  g = jax.random.normal(key, (n, dim), jnp.float32)
  return g / jnp.linalg.norm(g, axis=1, keepdims=True)


def _sq_dists(a, b):
  cross = jnp.matmul(a, b.T, precision=_HIGHEST)
  sq = (jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2 * cross)
  return jnp.maximum(sq, 0.0)


def rbf_kernel(a, b, bandwidth: float = DEFAULT_BANDWIDTH) -> jax.Array:
  """[m, n] Gram matrix exp(−‖a_i − b_j‖² / (2σ²))."""
  return jnp.exp(-_sq_dists(a, b) / (2.0 * bandwidth ** 2))


@jax.jit
def _mmd2_u(x, y, bandwidth):
  m, n = x.shape[0], y.shape[0]
  kxx = rbf_kernel(x, x, bandwidth)
  kyy = rbf_kernel(y, y, bandwidth)
  kxy = rbf_kernel(x, y, bandwidth)
  # Off-diagonal means: the diagonal k(x_i, x_i) = 1 is left out.
  xx = (jnp.sum(kxx) - jnp.trace(kxx)) / (m * (m - 1))
  yy = (jnp.sum(kyy) - jnp.trace(kyy)) / (n * (n - 1))
  return xx + yy - 2.0 * jnp.mean(kxy)


def mmd2_unbiased(x, y, bandwidth: float = DEFAULT_BANDWIDTH) -> float:
  """Unbiased MMD² U-statistic between samples x [m, d] and y [n, d].

  The points are used as given (normalise first for the sphere).

  Raises:
    ValueError: fewer than 2 points in a sample, differing dimensions,
      non-finite values or a non-positive bandwidth.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.float32)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"mmd2_unbiased needs [m, d] and [n, d] samples, got "
                     f"{x.shape} and {y.shape}.")
  if min(len(x), len(y)) < 2:
    raise ValueError("mmd2_unbiased needs at least 2 points per sample.")
  if not (np.isfinite(x).all() and np.isfinite(y).all()):
    raise ValueError("mmd2_unbiased: samples contain NaN or inf.")
  if not bandwidth > 0:
    raise ValueError(f"MMD bandwidth must be > 0, got {bandwidth}.")
  return float(_mmd2_u(jnp.asarray(x), jnp.asarray(y), float(bandwidth)))


def l2_normalize(x) -> np.ndarray:
  """Rows divided by their norm (float64); an all-zero row is an error."""
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError(f"{int(np.sum(norms == 0))} embedding rows are all "
                     "zero and have no direction on the sphere; the "
                     "representation has collapsed to 0.")
  return x / norms


def uniformity_mmd2(embeddings, *, seed: int = 0,
                    max_points: int = DEFAULT_MAX_POINTS,
                    bandwidth: float = DEFAULT_BANDWIDTH) -> float:
  """MMD²_u between normalised embeddings and uniform points on the sphere.

  Args:
    embeddings: [n, d] raw embeddings (f or g∘f); rows are L2-normalised.
    seed: draws the subsample (when n > max_points) and the uniform points.
    max_points: at most this many embedding rows (a seeded random subset),
      and as many uniform points; the cost is O(max_points² d).
    bandwidth: σ of the RBF kernel on the sphere.

  Returns:
    MMD²_u as a Python float (0 in expectation for uniform embeddings).
  """
  x = l2_normalize(embeddings)
  rng = np.random.RandomState(seed)
  if len(x) > max_points:
    x = x[np.sort(rng.permutation(len(x))[:max_points])]
  y = uniform_sphere(jax.random.key(seed), len(x), x.shape[1])
  return mmd2_unbiased(x, y, bandwidth)


def point_mass_mmd2(dim: int, bandwidth: float = DEFAULT_BANDWIDTH) -> float:
  """Exact MMD² between a point mass and the uniform law on S^{dim−1}.

  1 − E exp(−(1 − t)/σ²), with t = p·y of density ∝ (1 − t²)^{(dim−3)/2},
  by adaptive quadrature (scipy `quad` with the algebraic weight, so the
  endpoint behaviour of the density is integrated exactly); the density's
  normaliser is the Beta function B(1/2, (dim − 1)/2).
  """
  if dim < 2:
    raise ValueError(f"point_mass_mmd2 needs dim >= 2, got {dim}.")
  power = (dim - 3) / 2.0
  s2 = bandwidth ** 2
  num, _ = integrate.quad(lambda t: np.exp(-(1.0 - t) / s2), -1.0, 1.0,
                          weight="alg", wvar=(power, power))
  den = special.beta(0.5, power + 1.0)  # ∫ (1 − t²)^power dt on [−1, 1]
  return float(1.0 - num / den)
