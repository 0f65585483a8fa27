"""AUROC, ROC points, pixel AUROC and AUPRO against hand computations."""
import numpy as np
import pytest

from oneclass_jax import metrics


def test_auroc_hand_case_with_tie():
  # Outlier 0.8 beats all 3 inliers: 3 pairs. Outlier 0.4 beats 0.1 and 0.35
  # and ties 0.4 (counts 1/2): 2.5 pairs. AUC = 5.5 / (2 · 3).
  labels = [0, 0, 0, 1, 1]
  scores = [0.1, 0.4, 0.35, 0.8, 0.4]
  assert metrics.auroc(labels, scores) == pytest.approx(5.5 / 6, abs=1e-15)
  # Booleans are labels too; flipping the score sign mirrors the AUC.
  assert metrics.auroc(np.array(labels, bool), -np.array(scores)) == (
      pytest.approx(0.5 / 6, abs=1e-15))


@pytest.mark.parametrize("labels,kind", [([0, 0, 0], "inliers"),
                                         ([1, 1], "outliers")])
def test_auroc_single_label_is_an_error(labels, kind):
  with pytest.raises(ValueError,
                     match=f"AUC is undefined: the test set holds only {kind}"):
    metrics.auroc(labels, np.arange(len(labels), dtype=float))


def test_auroc_bad_inputs():
  with pytest.raises(ValueError, match="1 of 4 scores are NaN"):
    metrics.auroc([0, 1, 0, 1], [0.1, np.nan, 0.2, 0.3])
  with pytest.raises(ValueError, match="labels must be 0"):
    metrics.auroc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match="shape"):
    metrics.auroc([0, 1, 1], [0.1, 0.2])


def test_roc_curve_points_by_hand():
  fpr, tpr, thr = metrics.roc_curve_points([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
  # Thresholds 0.9: (0, .5); 0.6: (.5, .5); 0.4: (.5, 1); 0.1: (1, 1).
  keep = np.isfinite(thr)
  np.testing.assert_allclose(fpr[keep], [0.0, 0.5, 0.5, 1.0])
  np.testing.assert_allclose(tpr[keep], [0.5, 0.5, 1.0, 1.0])


def _pairwise_auc(pos, neg):
  """Mann-Whitney AUC by counting all pairs (ties 1/2), float64."""
  pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
  return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


def test_pixel_auroc_against_pair_counting():
  rng = np.random.default_rng(0)
  masks = np.zeros((3, 6, 5), np.uint8)
  masks[0, 1:3, 1:4] = 1
  masks[2, 4:, 0] = 255  # any nonzero value marks an anomalous pixel
  maps = np.round(rng.random((3, 6, 5)), 1) + masks / 400.0  # with ties
  expected = _pairwise_auc(maps[masks > 0], maps[masks == 0])
  assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected,
                                                           abs=1e-12)
  with pytest.raises(ValueError, match=r"\[images, H, W\]"):
    metrics.pixel_auroc(masks[0], maps[0])


def test_aupro_hand_case():
  # Image 0: region A = 2 pixels (scores .9, .5). Image 1: region B = 1 pixel
  # (.7). 15 normal pixels: one at .8, the rest 0.
  # Curve: (0,0) (0,.25) [.9: A half] (1/15,.25) [.8: a normal pixel]
  #        (1/15,.75) [.7: B] (1/15,1) [.5: A whole] (1,1).
  # Area to 0.3: .25·(1/15) + 1·(0.3 − 1/15) = 1/60 + 14/60 = 0.25 -> /0.3.
  masks = np.zeros((2, 3, 3), bool)
  maps = np.zeros((2, 3, 3))
  masks[0, 0, 0] = masks[0, 0, 1] = True
  maps[0, 0, 0], maps[0, 0, 1] = 0.9, 0.5
  masks[1, 2, 2] = True
  maps[1, 2, 2] = 0.7
  maps[1, 0, 0] = 0.8
  assert metrics.aupro(masks, maps) == pytest.approx(0.25 / 0.3, abs=1e-12)
  fpr, pro = metrics.pro_curve(masks, maps)
  np.testing.assert_allclose(fpr, [0, 0, 1 / 15, 1 / 15, 1 / 15, 1])
  np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 1, 1])


def test_aupro_regions_are_8_connected():
  # Regions: two diagonal pixels (one region under 8-connectivity, two under
  # 4-connectivity) and a separate pixel. Detecting only (0, 0) gives
  # PRO (1/2 + 0) / 2 with 8-connectivity, (1 + 0 + 0) / 3 with 4.
  masks = np.zeros((1, 5, 5), bool)
  masks[0, 0, 0] = masks[0, 1, 1] = True
  masks[0, 4, 4] = True
  maps = np.zeros((1, 5, 5))
  maps[0, 0, 0] = 1.0
  fpr, pro = metrics.pro_curve(masks, maps)
  assert pro[1] == pytest.approx(0.25)  # 4-connectivity would give 1/3
  assert fpr[1] == 0.0


def _aupro_reference(region_lists, shape, maps, max_fpr):
  """Brute force over thresholds from explicit region pixel lists."""
  normal = np.ones(shape, bool)
  for image, regions in enumerate(region_lists):
    for region in regions:
      for r, c in region:
        normal[image, r, c] = False
  points = [(0.0, 0.0)]
  for t in np.unique(maps)[::-1]:
    pred = maps >= t
    overlaps = [np.mean([pred[image, r, c] for r, c in region])
                for image, regions in enumerate(region_lists)
                for region in regions]
    points.append((pred[normal].mean(), np.mean(overlaps)))
  fpr, pro = map(np.array, zip(*points))
  area = 0.0
  for i in range(1, len(fpr)):
    x0, x1, y0, y1 = fpr[i - 1], fpr[i], pro[i - 1], pro[i]
    if x0 >= max_fpr:
      break
    if x1 > max_fpr:
      y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
      x1 = max_fpr
    area += (x1 - x0) * (y0 + y1) / 2
  return area / max_fpr


def test_aupro_against_brute_force():
  rng = np.random.default_rng(1)
  shape = (3, 8, 8)
  region_lists = [
      [[(1, 1), (1, 2), (2, 1), (2, 2)], [(6, 6), (6, 7), (7, 7)]],
      [],
      [[(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]],
  ]
  masks = np.zeros(shape, bool)
  for image, regions in enumerate(region_lists):
    for region in regions:
      for r, c in region:
        masks[image, r, c] = True
  maps = np.round(rng.random(shape) + 0.5 * masks, 2)  # ties included
  for max_fpr in (0.05, 0.3, 1.0):
    assert metrics.aupro(masks, maps, max_fpr) == pytest.approx(
        _aupro_reference(region_lists, shape, maps, max_fpr), abs=1e-12)
  assert metrics.aupro(masks, masks * 1.0) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="no anomalous pixel"):
    metrics.aupro(np.zeros(shape), maps)
  with pytest.raises(ValueError, match="max_fpr"):
    metrics.aupro(masks, maps, max_fpr=0.0)
