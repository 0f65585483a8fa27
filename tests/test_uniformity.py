"""MMD to the uniform law on the sphere (oneclass_jax.analysis.uniformity):
the estimator against a float64 double loop, and cases with known answers."""
import math

import jax
import numpy as np
import pytest

from oneclass_jax.analysis import uniformity


def mmd2_u_reference(x, y, sigma):
  """The unbiased U-statistic by explicit loops, in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def k(a, b):
    return math.exp(-np.sum((a - b) ** 2) / (2 * sigma ** 2))

  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_estimator_matches_float64_loops(sigma):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 5))
  y = rng.normal(size=(9, 5)) * 0.5 + 0.3
  got = uniformity.mmd2_unbiased(x, y, sigma)
  np.testing.assert_allclose(got, mmd2_u_reference(x, y, sigma), atol=2e-6)


def test_uniform_points_are_on_the_sphere_and_isotropic():
  y = np.asarray(uniformity.uniform_sphere(jax.random.key(0), 20000, 6),
                 np.float64)
  np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
  # E[y] = 0 and E[y yᵀ] = I/d for the uniform law on S^{d-1}.
  np.testing.assert_allclose(y.mean(0), 0.0, atol=0.02)
  np.testing.assert_allclose(y.T @ y / len(y), np.eye(6) / 6, atol=0.01)


def test_point_mass_closed_form_in_3d():
  # On S², t = p·y is uniform on [-1, 1]: E exp(-(1 - t)) = (1 - e^-2) / 2.
  expected = 1.0 - (1.0 - math.exp(-2.0)) / 2.0
  assert uniformity.point_mass_mmd2(3) == pytest.approx(expected, abs=1e-10)


def test_point_mass_quadrature_matches_monte_carlo():
  rng = np.random.default_rng(1)
  d, sigma = 16, 1.3
  y = rng.normal(size=(400000, d))
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  p = np.eye(d)[0]
  mc = 1.0 - np.mean(np.exp(-np.sum((y - p) ** 2, 1) / (2 * sigma ** 2)))
  assert uniformity.point_mass_mmd2(d, sigma) == pytest.approx(mc, abs=2e-3)


def test_uniform_against_uniform_is_near_zero():
  d = 32
  emb = np.asarray(uniformity.uniform_sphere(jax.random.key(7), 1500, d))
  # Scaling rows must not matter: the embeddings are normalised first.
  emb = emb * np.random.default_rng(2).uniform(0.5, 3.0, (1500, 1))
  value = uniformity.uniformity_mmd2(emb, seed=3)
  top = uniformity.point_mass_mmd2(d)
  assert abs(value) < 1e-3 < top / 100


@pytest.mark.parametrize("dim", [3, 16, 128])
def test_point_mass_embeddings_hit_the_known_value(dim):
  rng = np.random.default_rng(dim)
  p = rng.normal(size=dim)
  emb = np.tile(5.0 * p, (2000, 1))  # one direction, far from the origin
  value = uniformity.uniformity_mmd2(emb, seed=0)
  # About 3 standard errors of the estimate at d = 3 (the noisiest case).
  assert value == pytest.approx(uniformity.point_mass_mmd2(dim), abs=0.035)


def test_concentration_orders_the_mmd():
  """Tighter clusters around one direction are less uniform."""
  rng = np.random.default_rng(4)
  d = 16
  mu = np.eye(d)[0]
  values = [uniformity.uniformity_mmd2(mu + s * rng.normal(size=(800, d)),
                                       seed=1)
            for s in (0.05, 0.3, 1.0, 10.0)]
  assert values == sorted(values, reverse=True)
  assert values[0] < uniformity.point_mass_mmd2(d) + 0.01
  assert abs(values[-1]) < 0.01


def test_subsampling_caps_the_points():
  rng = np.random.default_rng(5)
  emb = rng.normal(size=(300, 8))
  capped = uniformity.uniformity_mmd2(emb, seed=0, max_points=100)
  x = uniformity.l2_normalize(emb)
  x = x[np.sort(np.random.RandomState(0).permutation(300)[:100])]
  y = uniformity.uniform_sphere(jax.random.key(0), 100, 8)
  assert capped == pytest.approx(uniformity.mmd2_unbiased(x, y), abs=1e-7)


def test_bad_inputs():
  with pytest.raises(ValueError, match="all zero"):
    uniformity.uniformity_mmd2(np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"\[m, d\]"):
    uniformity.mmd2_unbiased(np.ones((4, 3)), np.ones((4, 2)))
  with pytest.raises(ValueError, match="at least 2"):
    uniformity.mmd2_unbiased(np.ones((1, 3)), np.ones((4, 3)))
  with pytest.raises(ValueError, match="bandwidth"):
    uniformity.mmd2_unbiased(np.ones((3, 3)), np.ones((4, 3)), 0.0)
  with pytest.raises(ValueError, match="NaN"):
    uniformity.mmd2_unbiased(np.full((3, 3), np.nan), np.ones((4, 3)))
