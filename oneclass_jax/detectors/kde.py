"""Gaussian kernel density estimator (paper Eq. 6) in JAX.

Normality of a query x given train features y_1..y_n:

  KDE_γ(x) = (1/γ) log (1/n) Σ_j exp(−γ‖x − y_j‖²)

and the anomaly score is −KDE_γ(x). The authors compute −(1/γ)·logsumexp(2γ x·y)
on unit vectors, which differs from this by a constant (2 and (log n)/γ,
`original_code.md` §6), so rankings and AUCs agree. The 1/n (which the
paper's Eq. 6 leaves out as a constant) is kept by the `KDE` detector so that
a threshold set on scores of detectors fitted on part of the inliers (the
evaluator's cross-fitted held-out scores) transfers to the detector fitted on
all of them. It is added in float64 to the float32 sums, which keeps every
score's order, and so every AUC, bit for bit what it was without it.
`kde_score_fn` (for gradients) adds it too; `kde_log_density` leaves it out.

Bandwidth (Appendix A.4 and the authors' code): γ = 10 / (d · Var(F)), with
Var over ALL n·d entries of the L2-normalised train matrix F (population
variance, like `tf.math.reduce_variance`). This is 10× scikit-learn's
`gamma='scale'`.

Precision. Squared distances use ‖x‖² + ‖y‖² − 2x·y so that the work is one
matrix multiply, in float32 with `Precision.HIGHEST` (no TF32/bf16 passes on
GPU/TPU). The expansion loses absolute accuracy of about eps_f32·(‖x‖²+‖y‖²),
so both sides are first centred on the train mean (distances do not change)
to keep those norms as small as the data spread allows, and negative
round-off is clipped to 0. Perturbing every squared distance by at most δ
moves −KDE_γ by at most δ, so for unit-norm features the score is accurate to
about 1e-6 absolute (checked against float64 in tests/test_detectors.py).
With `jax.enable_x64(True)` and float64 inputs the pure functions compute in
float64.

Memory. The log-sum-exp runs over blocks of test rows (`query_block`) and,
inside each block, over chunks of train rows (`train_chunk`), combining the
per-chunk results with a second log-sum-exp, so the largest intermediate is
query_block × train_chunk whatever the data sizes.
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from oneclass_jax.detectors import base as _det

_HIGHEST = jax.lax.Precision.HIGHEST


def bandwidth_gamma(train) -> float:
  """γ = 10 / (d · Var(train)), Var over all entries (authors' rule).

  Args:
    train: [n, d] train features, already L2-normalised when the detector
      works on normalised features (kde, ocsvm).

  Returns:
    γ as a Python float (scikit-learn rejects array scalars from other
    frameworks, which is what broke the authors' code on current sklearn).

  Raises:
    ValueError: if all entries are equal (zero variance, γ undefined).
  """
  train = np.asarray(train, dtype=np.float64)
  var = float(train.var())
  if not var > 0:
    raise ValueError("Cannot set the KDE/OC-SVM bandwidth: the train features "
                     "have zero variance (all entries equal); the "
                     "representation has collapsed.")
  return 10.0 / (train.shape[1] * var)


def sq_dists(queries, train, train_sq):
  """[m, n] squared distances via the matmul expansion, clipped at 0.

  `train_sq` is ‖train‖² per row. Centre both sides on the train mean first
  (see the module docstring on precision); the OC-SVM's kernel uses it too.
  """
  cross = jnp.matmul(queries, train.T, precision=_HIGHEST)
  q_sq = jnp.sum(queries * queries, axis=-1, keepdims=True)
  return jnp.maximum(q_sq + train_sq[None, :] - 2.0 * cross, 0.0)


def _log_density_centred(queries, train, train_sq, gamma, train_chunk):
  """KDE_γ of already-centred queries against centred train rows."""
  n, d = train.shape
  if train_chunk is None or train_chunk >= n:
    lse = jax.nn.logsumexp(-gamma * sq_dists(queries, train, train_sq),
                           axis=1)
    return lse / gamma
  num_chunks = -(-n // train_chunk)
  pad = num_chunks * train_chunk - n
  # Padded train rows are excluded by `where`; the first chunk always holds
  # real rows, so no chunk-level result is -inf for every chunk.
  valid = jnp.arange(num_chunks * train_chunk) < n
  chunks = jnp.pad(train, ((0, pad), (0, 0))).reshape(num_chunks, train_chunk,
                                                      d)
  chunk_sq = jnp.pad(train_sq, (0, pad)).reshape(num_chunks, train_chunk)
  valid = valid.reshape(num_chunks, train_chunk)

  def one_chunk(args):
    rows, rows_sq, ok = args
    logits = -gamma * sq_dists(queries, rows, rows_sq)
    return jax.nn.logsumexp(logits, axis=1, where=ok[None, :])

  per_chunk = jax.lax.map(one_chunk, (chunks, chunk_sq, valid))  # [c, m]
  return jax.nn.logsumexp(per_chunk, axis=0) / gamma


def kde_log_density(queries, train, gamma, *,
                    train_chunk: Optional[int] = None) -> jax.Array:
  """(1/γ) log Σ_j exp(−γ‖x − y_j‖²) for each query row: KDE_γ + (log n)/γ.

  A pure JAX function: jit-able and differentiable w.r.t. `queries` (and
  `train`). It does not normalise; pass features as the detector sees them.

  Args:
    queries: [m, d] query features.
    train: [n, d] train features.
    gamma: kernel parameter γ > 0.
    train_chunk: if set, sum over train rows in chunks of this many rows so
      the [m, train_chunk] intermediate bounds memory.

  Returns:
    [m] log-density (normality; higher = more normal).
  """
  centre = jnp.mean(train, axis=0)
  train_c = train - centre
  train_sq = jnp.sum(train_c * train_c, axis=-1)
  return _log_density_centred(queries - centre, train_c, train_sq, gamma,
                              train_chunk)


def kde_score_fn(train, gamma: Optional[float] = None, *,
                 normalize: bool = True,
                 train_chunk: Optional[int] = None) -> Callable:
  """A differentiable anomaly-score function −KDE_γ(·) fitted on `train`.

  For gradient explanations (paper §3.2.1): compose it with a model,
  `jax.grad(lambda x: score_fn(f(x)).sum())`.

  Args:
    train: [n, d] raw train features.
    gamma: override for γ; by default `bandwidth_gamma` of the (normalised)
      train features.
    normalize: L2-normalise train and queries (the authors' setting); the
      query normalisation is done in JAX so gradients flow through it.
    train_chunk: see `kde_log_density`.

  Returns:
    score(queries [m, d] jax array) -> [m] anomaly scores (higher = more
    anomalous), usable under jax.jit and jax.grad.
  """
  train = _det.check_features(train, "kde train features")
  if normalize:
    train = _det.l2_normalize(train)
  if gamma is None:
    gamma = bandwidth_gamma(train)
  train = jnp.asarray(train)

  def score(queries):
    if normalize:
      queries = _det.l2_normalize_jax(queries)
    # The detector's 1/n, so these scores equal `KDE.score`'s.
    return (-kde_log_density(queries, train, gamma, train_chunk=train_chunk)
            + log_n / gamma)

  log_n = float(np.log(train.shape[0]))
  return score


@functools.partial(jax.jit, static_argnames=("train_chunk",))
def _score_block(queries, centre, train_c, train_sq, gamma, train_chunk):
  return -_log_density_centred(queries - centre, train_c, train_sq, gamma,
                               train_chunk)


class KDE(_det.Detector):
  """Gaussian KDE on L2-normalised features; score = −KDE_γ(x).

  Runs on the default JAX device (the accelerator when there is one).

  Attributes (after fit):
    gamma_: the bandwidth γ used.
    dim_: feature dimension.
  """

  name = "kde"
  normalize = True

  def __init__(self, gamma: Optional[float] = None, query_block: int = 2048,
               train_chunk: Optional[int] = 16384,
               fpr: Optional[float] = None,
               threshold_folds: int = _det.THRESHOLD_FOLDS, seed: int = 0):
    """Args: γ override; rows per test block; train rows per chunk; the
    threshold's (`base.Detector`)."""
    super().__init__(fpr=fpr, threshold_folds=threshold_folds, seed=seed)
    self.gamma = gamma
    self.query_block = query_block
    self.train_chunk = train_chunk

  def _check_params(self):
    super()._check_params()
    if self.gamma is not None and not self.gamma > 0:
      raise ValueError(f"kde: gamma must be > 0, got {self.gamma}.")

  def _fit(self, train):
    self.gamma_ = (float(self.gamma) if self.gamma is not None
                   else bandwidth_gamma(train))
    centre = train.mean(axis=0)
    train_c = train - centre  # centred in float64, then stored as float32
    self._centre = jnp.asarray(centre, jnp.float32)
    self._train = jnp.asarray(train_c, jnp.float32)
    self._train_sq = jnp.sum(self._train * self._train, axis=-1)

  def _score(self, x) -> np.ndarray:
    fn = functools.partial(_score_block, centre=self._centre,
                           train_c=self._train, train_sq=self._train_sq,
                           gamma=self.gamma_, train_chunk=self.train_chunk)
    scores = _det.score_in_blocks(fn, x.astype(np.float32), self.query_block)
    return scores + np.log(self._train.shape[0]) / self.gamma_

  def jax_score_fn(self):
    # The same float32 arrays and block function as `score`; only the
    # normalisation (float32 here, float64 there) and the final float32 sum
    # differ, a few ulp of the score.
    centre, train_c, train_sq = self._centre, self._train, self._train_sq
    gamma, train_chunk = self.gamma_, self.train_chunk
    log_n_over_gamma = float(np.log(train_c.shape[0]) / gamma)

    def score(x):
      return (_score_block(_det.l2_normalize_jax(x), centre, train_c,
                           train_sq, gamma, train_chunk) + log_n_over_gamma)

    return score
