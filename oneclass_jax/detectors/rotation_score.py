"""Rotation-classifier anomaly scores (Golan & El-Yaniv 2018; Hendrycks 2019).

Given the rotation head's logits for the K rotated copies of each test image
(view k = image rotated by k·90°, whose correct label is k):

* `rot_p0`  = 1 − p(y = 0 | x): one minus the probability that the unrotated
  image is unrotated (the authors' `logit.auc` key).
* `rot_sum` = −Σ_k log p(y = k | rot_k x): the summed negative log-likelihood
  of the correct rotations. The authors' `dscore.auc` is 1 − Π_k p(k | rot_k x)
  = 1 − exp(−rot_sum), a monotone transform, so the AUC is the same.

Both are higher for more anomalous inputs. Computed in float64 numpy with a
stable log-softmax; no training data is needed.
"""
import numpy as np
from scipy import special


def rotation_scores(logits_per_view) -> dict[str, np.ndarray]:
  """Anomaly scores from the logits of the rotated views.

  Args:
    logits_per_view: [K, m, K] array; entry [k, i, c] is the logit of class c
      (rotation c·90°) for test image i rotated by k·90°. K = 4 for rotations.

  Returns:
    {'rot_p0': [m], 'rot_sum': [m]} float64 scores, higher = more anomalous.

  Raises:
    ValueError: on a wrong shape or non-finite logits.
  """
  logits = np.asarray(logits_per_view, dtype=np.float64)
  if logits.ndim != 3 or logits.shape[0] != logits.shape[2]:
    raise ValueError("rotation_scores expects logits of shape [K views, m "
                     f"images, K classes], got {logits.shape}.")
  if not np.isfinite(logits).all():
    bad = int(np.count_nonzero(~np.isfinite(logits).all(axis=(0, 2))))
    raise ValueError(f"rotation_scores: logits of {bad} images contain NaN "
                     "or inf.")
  log_probs = special.log_softmax(logits, axis=-1)
  num_views = logits.shape[0]
  # log p(y = k | rot_k x) for every view k: the diagonal over (view, class).
  correct = log_probs[np.arange(num_views), :, np.arange(num_views)]  # [K, m]
  return {
      # −expm1 keeps precision where p(y = 0 | x) is close to 1.
      "rot_p0": -np.expm1(log_probs[0, :, 0]),
      "rot_sum": -correct.sum(axis=0),
  }
