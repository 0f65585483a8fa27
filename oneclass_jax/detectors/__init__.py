"""One-class detectors: arrays of features in, anomaly scores out.

Every detector is a scikit-learn outlier detector (`base.Detector`)::

  det = detectors.get("kde").fit(train)   # train: [n, d] features of inliers
  scores = det.score(test)                # [m] float64, higher = more anomalous

Each detector class declares with `normalize` whether it works on
L2-normalised features (kde, ocsvm, gde, knn: the authors normalise f before
these) or on the raw features (ocsvm_linear). The detectors normalise
internally (idempotent if the caller already normalised), so callers may pass
the raw representation.

Signs. Two conventions meet here, and both are kept:

* `score(X)`, the `threshold_` and PyOD's `decision_scores_` are anomaly
  scores: HIGHER = MORE ANOMALOUS, and a row is an outlier where
  `anomalous(score, threshold_)`, i.e. score > threshold_ (or NaN). This is
  what evaluate, export and the scorer use.
* scikit-learn's methods (as `OneClassSVM`, `IsolationForest`,
  `LocalOutlierFactor`): `score_samples(X)` = −score, HIGHER = MORE NORMAL;
  `decision_function(X)` = score_samples − offset_ = threshold_ − score,
  >= 0 for an inlier; `predict(X)` = +1 (inlier) / −1 (outlier), −1 exactly
  where `anomalous(score, threshold_)`. So `scoring="roc_auc"` with labels
  +1 inlier / −1 outlier is the AUC of the anomaly score with outliers
  positive.

The threshold: `get(name, fpr=0.05)` (or `KDE(fpr=0.05)`) makes `fit` also
cross-fit the detector over `threshold_folds` folds of the train rows and
set `threshold_` to the (1 − fpr) quantile of those held-out scores
(`decision_scores_`), as evaluate does; the realised false-positive rate on
fresh normal data is then about fpr. With fpr=None (the default, and
evaluate's and export's, which threshold on their own held-out or
calibration scores) `fit` is a single fit and `predict` refuses.

This package imports nothing from the training, data or model code.
"""
from oneclass_jax.detectors import gaussian
from oneclass_jax.detectors import kde
from oneclass_jax.detectors import knn
from oneclass_jax.detectors import ocsvm
from oneclass_jax.detectors.base import anomalous
from oneclass_jax.detectors.base import check_features
from oneclass_jax.detectors.base import cross_fitted_scores
from oneclass_jax.detectors.base import Detector
from oneclass_jax.detectors.base import l2_normalize
from oneclass_jax.detectors.base import score_in_blocks
from oneclass_jax.detectors.base import THRESHOLD_FOLDS
from oneclass_jax.detectors.base import threshold_at_fpr

__all__ = ["anomalous", "check_features", "cross_fitted_scores", "Detector",
           "l2_normalize", "score_in_blocks", "THRESHOLD_FOLDS",
           "threshold_at_fpr", "DETECTORS", "get",
           "ROTATION", "EMBEDDINGS",
           "split_names", "check_eval_settings"]

DETECTORS: dict[str, type] = {
    "kde": kde.KDE,
    "ocsvm": ocsvm.OCSVM,
    "ocsvm_linear": ocsvm.LinearOCSVM,
    "gde": gaussian.GDE,
    "knn": knn.KNN,
}


def get(name: str, **kwargs) -> Detector:
  """A new, unfitted detector `name` built with `kwargs`."""
  if name not in DETECTORS:
    raise ValueError(f"Unknown detector {name!r}; known detectors: "
                     f"{', '.join(sorted(DETECTORS))}.")
  return DETECTORS[name](**kwargs)


# Not a fitted detector: the rotation classifier's own score (Table 1).
ROTATION = "rotation"
EMBEDDINGS = ("f", "g")  # Pooled representation (the paper's), head output.


def split_names(names) -> list[str]:
  """Detector names from a list, a tuple or 'kde,ocsvm' (command lines)."""
  if isinstance(names, str):
    names = [names]
  return [n.strip() for item in names for n in str(item).split(",")
          if n.strip()]


def check_eval_settings(names, embedding: str, method: str) -> list[str]:
  """The detector names, or ValueError for what the evaluation cannot do.

  Called before training, so that a typo in `eval.detectors` does not cost
  a whole run.
  """
  names = split_names(names)
  if not names:
    raise ValueError("No detector given: set eval.detectors (e.g. kde,ocsvm).")
  for name in names:
    if name != ROTATION:
      get(name)  # Unknown names raise with the list of known ones.
  if embedding not in EMBEDDINGS:
    raise ValueError(f"Unknown embedding {embedding!r}; use 'f' (pooled "
                     "representation) or 'g' (head output).")
  if ROTATION in names and method != "rotation":
    raise ValueError(f"The 'rotation' score needs a rotation model "
                     f"(configs/rotation.py or configs/rotnet.py), not "
                     f"method {method!r}.")
  return names