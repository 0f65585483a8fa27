"""Score ensembles over models (seeds, distribution sets; paper Table 6).

Scores of different models live on different scales (a KDE's −log-density
depends on γ and on how spread the features are), so each model's scores are
standardised before averaging:

  z_k(x) = (s_k(x) − mean_k) / std_k,   ensemble(x) = (1/K) Σ_k z_k(x)

where mean_k and std_k (population std) come from a reference set of that
model's scores:

* with `reference_scores` (e.g. each model's scores on held-out inliers),
  those are used. Scores of the fit set itself are a poor reference for
  memorising detectors: a KDE or 1-NN scores its own train points with a
  self-match, so those scores are biased low.
* without a reference, each model is standardised on its own test scores.
  That uses no labels, gives every model the same population and hence the
  same scale, and is an affine map per model, so each single model's AUC is
  unchanged; it is transductive (the ensemble score of one example depends
  on the rest of the test set), which suits a fixed benchmark test set.
"""
from typing import Optional, Sequence

import numpy as np


def _as_score_vectors(scores: Sequence, what: str) -> list[np.ndarray]:
  vectors = [np.asarray(s, dtype=np.float64) for s in scores]
  if not vectors:
    raise ValueError(f"ensemble: no {what} given.")
  for i, s in enumerate(vectors):
    if s.ndim != 1:
      raise ValueError(f"ensemble: {what}[{i}] must be 1-D, got {s.shape}.")
    if not np.isfinite(s).all():
      raise ValueError(f"ensemble: {what}[{i}] has "
                       f"{np.count_nonzero(~np.isfinite(s))} NaN/inf values.")
  return vectors


def standardize(scores, reference) -> np.ndarray:
  """(scores − mean(reference)) / std(reference), population std."""
  scores = np.asarray(scores, dtype=np.float64)
  reference = np.asarray(reference, dtype=np.float64)
  std = reference.std()
  if not std > 0:
    raise ValueError("ensemble: a model's reference scores are all equal, so "
                     "they cannot be standardised.")
  return (scores - reference.mean()) / std


def ensemble_scores(test_scores: Sequence,
                    reference_scores: Optional[Sequence] = None
                    ) -> np.ndarray:
  """Mean of per-model standardised scores.

  Args:
    test_scores: K score vectors [m], one per model, same test examples in the
      same order.
    reference_scores: optional K vectors (any lengths) giving each model's
      standardisation statistics; by default each model's test scores.

  Returns:
    [m] float64 ensemble scores, higher = more anomalous.
  """
  tests = _as_score_vectors(test_scores, "test_scores")
  if len({s.shape[0] for s in tests}) != 1:
    raise ValueError("ensemble: test score vectors differ in length: "
                     f"{[s.shape[0] for s in tests]}.")
  if reference_scores is None:
    refs = tests
  else:
    refs = _as_score_vectors(reference_scores, "reference_scores")
    if len(refs) != len(tests):
      raise ValueError(f"ensemble: {len(tests)} test score vectors but "
                       f"{len(refs)} reference vectors.")
  return np.mean([standardize(s, r) for s, r in zip(tests, refs)], axis=0)
