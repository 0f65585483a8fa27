"""1-nearest-neighbour cosine distance, the authors' `*.auc` score, in JAX.

score(x) = 1 − max_j cos(x, y_j) over the train rows y_j. Features are
L2-normalised first, so the cosine is a dot product: one float32 matmul per
block (`Precision.HIGHEST`, absolute error about 1e-7), computed over blocks of
test rows and chunks of train rows, so memory is bounded by
query_block × train_chunk.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from oneclass_jax.detectors import base as _det


def max_cosine(queries, train, *, train_chunk: Optional[int] = None):
  """max_j <q, y_j> for unit-norm rows (pure JAX; [m, d], [n, d] -> [m])."""
  n, d = train.shape
  if train_chunk is None or train_chunk >= n:
    return jnp.max(jnp.matmul(queries, train.T,
                              precision=jax.lax.Precision.HIGHEST), axis=1)
  num_chunks = -(-n // train_chunk)
  # Pad by repeating the first train row: it cannot change the maximum.
  pad = jnp.broadcast_to(train[:1], (num_chunks * train_chunk - n, d))
  chunks = jnp.concatenate([train, pad]).reshape(num_chunks, train_chunk, d)
  per_chunk = jax.lax.map(
      lambda rows: max_cosine(queries, rows), chunks)  # [c, m]
  return jnp.max(per_chunk, axis=0)


@functools.partial(jax.jit, static_argnames=("train_chunk",))
def _score_block(queries, train, train_chunk):
  return 1.0 - max_cosine(queries, train, train_chunk=train_chunk)


class KNN(_det.Detector):
  """1-NN cosine distance on L2-normalised features (higher = anomalous)."""

  name = "knn"
  normalize = True

  def __init__(self, query_block: int = 2048,
               train_chunk: Optional[int] = 16384,
               fpr: Optional[float] = None,
               threshold_folds: int = _det.THRESHOLD_FOLDS, seed: int = 0):
    """Args: rows per test block; train rows per chunk; the threshold's
    (`base.Detector`)."""
    super().__init__(fpr=fpr, threshold_folds=threshold_folds, seed=seed)
    self.query_block = query_block
    self.train_chunk = train_chunk

  def _fit(self, train):
    self._train = jnp.asarray(train, jnp.float32)

  def _score(self, x) -> np.ndarray:
    fn = functools.partial(_score_block, train=self._train,
                           train_chunk=self.train_chunk)
    return _det.score_in_blocks(fn, x.astype(np.float32), self.query_block)

  def jax_score_fn(self):
    # `score`'s float32 bank and block function; only the normalisation
    # differs (float32 here, float64 there), about 1e-7 absolute.
    train, train_chunk = self._train, self.train_chunk
    return lambda x: _score_block(_det.l2_normalize_jax(x), train, train_chunk)
