"""Bounded memory banks of training-patch embeddings.

Scored exhaustively, the KDE of every test patch runs against every training
patch: at stride 4 that is 600 x 57^2, about two million vectors for one
magnetic-tile category. Two ways to keep a bank of `size` rows:

* `random_subset`: rows drawn uniformly without replacement. Chosen before
  any embedding is computed, so only the kept patches go through the network.
* `greedy_coreset`: greedy k-center selection (Gonzalez 1985, the coreset of
  Roth et al.'s PatchCore): from a seeded random first row, repeatedly add
  the row farthest from the rows already chosen. Its covering radius
  max_x min_c ||x - c|| is at most twice the best any `size` rows achieve,
  so rare patch types (which random sampling misses) keep a nearby
  representative. It needs the embeddings of its candidates, so callers draw
  a random candidate pool first (`mvtec.coreset_pool`).

Memory of the coreset: the candidates [n, d] plus one running distance per
candidate; each step is one matrix-vector product over the candidates, so no
n x size matrix is ever formed. `projection_dim` runs the selection on a
Gaussian random projection (Johnson-Lindenstrauss), which preserves
distances up to a small relative error at a fraction of the cost.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def random_subset(n: int, size: int, seed: int) -> np.ndarray:
  """`min(size, n)` distinct indices of range(n), sorted; all when size >= n."""
  if size < 1:
    raise ValueError(f"memory bank size must be >= 1, got {size}.")
  if size >= n:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size, replace=False))


@functools.partial(jax.jit, static_argnames=("size",))
def _k_center(x, first, size):
  """Greedy k-center indices (selection order) of the rows of x."""
  x = x - jnp.mean(x, axis=0)  # Smaller norms: less cancellation below.
  sq = jnp.sum(x * x, axis=1)

  def dist_to(c):
    cross = jnp.matmul(x, x[c], precision=_HIGHEST)
    return jnp.maximum(sq - 2.0 * cross + sq[c], 0.0)

  # Chosen rows get -1, below any distance, so they are never chosen again
  # (even when duplicates leave only zero distances).
  min_d = dist_to(first).at[first].set(-1.0)
  chosen = jnp.zeros(size, jnp.int32).at[0].set(first)

  def body(k, carry):
    chosen, min_d = carry
    nxt = jnp.argmax(min_d).astype(jnp.int32)
    min_d = jnp.minimum(min_d, dist_to(nxt)).at[nxt].set(-1.0)
    return chosen.at[k].set(nxt), min_d

  chosen, _ = jax.lax.fori_loop(1, size, body, (chosen, min_d))
  return chosen


def greedy_coreset(features, size: int, *, seed: int = 0,
                   projection_dim: Optional[int] = None) -> np.ndarray:
  """Indices of a greedy k-center coreset of `size` rows, in selection order.

  Args:
    features: [n, d] rows (pass them as the detector sees them, e.g.
      L2-normalised for the KDE). Computed in float32, or in float64 under
      `jax.enable_x64(True)` with float64 input.
    size: rows to keep; all n (in order) when size >= n.
    seed: picks the first row and the projection.
    projection_dim: select on a d -> projection_dim Gaussian projection
      (None or >= d: the features themselves).

  Raises:
    ValueError: features not [n, d], NaN/inf, or size < 1.
  """
  x = np.asarray(features)
  if x.ndim != 2 or not x.size:
    raise ValueError(f"coreset features must be a non-empty [n, d] array, got "
                     f"shape {x.shape}.")
  if not np.isfinite(x).all():
    raise ValueError("coreset features contain NaN or inf.")
  if size < 1:
    raise ValueError(f"memory bank size must be >= 1, got {size}.")
  n, d = x.shape
  if size >= n:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  use_f64 = x.dtype == np.float64 and jax.config.jax_enable_x64
  x = x.astype(np.float64 if use_f64 else np.float32)
  if projection_dim and projection_dim < d:
    proj = rng.normal(size=(d, projection_dim)) / np.sqrt(projection_dim)
    x = x @ proj.astype(x.dtype)
  first = int(rng.integers(n))
  return np.asarray(_k_center(jnp.asarray(x), first, size), np.int64)


@functools.partial(jax.jit, static_argnames=("block",))
def _nearest_sq(x, centres, block):
  """Squared distance of every row of x to its nearest centre, in blocks."""
  n, d = x.shape
  num = -(-n // block)
  padded = jnp.pad(x, ((0, num * block - n), (0, 0))).reshape(num, block, d)
  c_sq = jnp.sum(centres * centres, axis=1)

  def one(rows):
    cross = jnp.matmul(rows, centres.T, precision=_HIGHEST)
    sq = jnp.sum(rows * rows, axis=1, keepdims=True)
    return jnp.min(jnp.maximum(sq - 2.0 * cross + c_sq, 0.0), axis=1)

  return jax.lax.map(one, padded).reshape(-1)[:n]


def coverage_radius(features, centres, *, block: int = 4096) -> float:
  """max over rows of `features` of the distance to the nearest centre.

  The quantity greedy k-center minimises (to within a factor 2); computed
  block by block, so memory is block x len(centres).
  """
  x = np.asarray(features, np.float32)
  c = np.asarray(centres, np.float32)
  mean = x.mean(axis=0)
  block = max(1, min(block, len(x)))
  sq = _nearest_sq(jnp.asarray(x - mean), jnp.asarray(c - mean), block)
  return float(np.sqrt(np.max(np.asarray(sq, np.float64))))
