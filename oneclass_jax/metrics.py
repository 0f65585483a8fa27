"""Evaluation metrics: image AUROC, ROC points, pixel AUROC and AUPRO.

Convention everywhere: label 1 = outlier (the positive class), and a higher
score means more anomalous, as in the authors' `util/metric.py`. Metrics
refuse to return a number when it is undefined (one class only) or when a
score is NaN/inf, instead of silently reporting 0.5.
"""
import numpy as np
from scipy import ndimage
from sklearn import metrics as sk_metrics


def _check_labels_scores(labels, scores, what: str):
  """Flat int labels in {0, 1} (both present) and finite float64 scores."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.shape != scores.shape:
    raise ValueError(f"{what}: labels have shape {labels.shape} but scores "
                     f"have shape {scores.shape}.")
  labels = labels.reshape(-1)
  scores = scores.reshape(-1)
  values = np.unique(labels)
  if not np.isin(values, [0, 1]).all():
    raise ValueError(f"{what}: labels must be 0 (inlier) or 1 (outlier), got "
                     f"values {values[:10].tolist()}.")
  if values.size < 2:
    kind = "outliers" if values.size and values[0] == 1 else "inliers"
    raise ValueError(f"{what}: AUC is undefined: the test set holds only "
                     f"{kind}. Evaluate on a set with both inliers and "
                     "outliers.")
  bad = np.count_nonzero(~np.isfinite(scores))
  if bad:
    raise ValueError(f"{what}: {bad} of {scores.size} scores are NaN or inf; "
                     "the detector or the representation has failed.")
  return labels.astype(np.int64), scores


def auroc(labels, scores) -> float:
  """Area under the ROC curve with outliers (label 1) as positives.

  Ties count one half, as in scikit-learn's `roc_auc_score`, which is used.

  Raises:
    ValueError: only one label present, labels not in {0, 1}, shapes differ,
      or NaN/inf scores.
  """
  labels, scores = _check_labels_scores(labels, scores, "auroc")
  return float(sk_metrics.roc_auc_score(labels, scores))


def roc_curve_points(labels, scores):
  """(fpr, tpr, thresholds) of the ROC curve, outliers positive."""
  labels, scores = _check_labels_scores(labels, scores, "roc_curve_points")
  return sk_metrics.roc_curve(labels, scores)


def _check_masks_maps(masks, maps, what: str):
  masks = np.asarray(masks)
  maps = np.asarray(maps, dtype=np.float64)
  if masks.shape != maps.shape or masks.ndim != 3:
    raise ValueError(f"{what}: masks and maps must both be [images, H, W]; "
                     f"got {masks.shape} and {maps.shape}.")
  return (masks > 0), maps


def pixel_auroc(masks, maps) -> float:
  """AUROC over all pixels of all images (anomalous pixels positive).

  Args:
    masks: [N, H, W] ground truth, nonzero = anomalous pixel.
    maps: [N, H, W] anomaly maps, higher = more anomalous.
  """
  masks, maps = _check_masks_maps(masks, maps, "pixel_auroc")
  return auroc(masks.reshape(-1).astype(np.int64), maps.reshape(-1))


def pro_curve(masks, maps):
  """Per-region-overlap curve: (fpr, pro) at every distinct threshold.

  For a threshold t, pixels with map >= t are predicted anomalous. fpr is
  the fraction of normal pixels (over all images) so predicted; pro is the
  mean, over all connected ground-truth regions (8-connectivity, per image),
  of the fraction of the region's pixels so predicted. Both are computed
  for every distinct map value at once from one sort: each anomalous pixel
  contributes 1 / (|its region| · #regions) to pro.

  Returns:
    fpr, pro: 1-D arrays starting at (0, 0), non-decreasing.
  """
  masks, maps = _check_masks_maps(masks, maps, "pro_curve")
  if not masks.any():
    raise ValueError("pro_curve: the masks hold no anomalous pixel, so the "
                     "per-region overlap is undefined.")
  if masks.all():
    raise ValueError("pro_curve: the masks hold no normal pixel, so the "
                     "false-positive rate is undefined.")
  if not np.isfinite(maps).all():
    raise ValueError("pro_curve: the anomaly maps contain NaN or inf.")
  weights = np.zeros(masks.shape, dtype=np.float64)
  num_regions = 0
  structure = np.ones((3, 3), dtype=bool)
  for i in range(masks.shape[0]):
    regions, count = ndimage.label(masks[i], structure=structure)
    if count:
      sizes = np.bincount(regions.ravel())
      inside = regions > 0
      weights[i][inside] = 1.0 / sizes[regions[inside]]
      num_regions += count
  weights /= num_regions
  order = np.argsort(-maps.ravel(), kind="stable")
  sorted_maps = maps.ravel()[order]
  pro = np.cumsum(weights.ravel()[order])
  fp = np.cumsum(~masks.ravel()[order])
  # Keep the last index of each run of tied values: a threshold admits all
  # pixels with that value at once.
  last = np.r_[np.flatnonzero(np.diff(sorted_maps) != 0), sorted_maps.size - 1]
  fpr = np.r_[0.0, fp[last] / np.count_nonzero(~masks)]
  return fpr, np.r_[0.0, pro[last]]


def aupro(masks, maps, max_fpr: float = 0.3) -> float:
  """Area under the PRO curve up to `max_fpr`, divided by `max_fpr`.

  The curve is integrated with the trapezoid rule and linearly interpolated
  at fpr = max_fpr (the MVTec AD protocol, Bergmann et al.). 1.0 is perfect;
  a random map gives about max_fpr / 2.
  """
  if not 0 < max_fpr <= 1:
    raise ValueError(f"aupro: max_fpr must be in (0, 1], got {max_fpr}.")
  fpr, pro = pro_curve(masks, maps)
  # fpr is non-decreasing; the value at max_fpr is interpolated between the
  # last point at or below it and the first point above it.
  cut = np.searchsorted(fpr, max_fpr, side="right")
  fpr_c, pro_c = fpr[:cut], pro[:cut]
  if cut < fpr.size and fpr_c[-1] < max_fpr:
    x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
    pro_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    fpr_c, pro_c = np.r_[fpr_c, max_fpr], np.r_[pro_c, pro_end]
  return float(np.trapezoid(pro_c, fpr_c) / max_fpr)
