"""Thresholds from normal data only: the realised false-positive rate on
fresh inliers is the requested one (issue #16)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from oneclass_jax import detectors
from oneclass_jax import evaluators
from oneclass_jax import export


def _inliers(rng, n, d=16):
  """Non-negative clustered features (like ReLU-pooled f), one known law."""
  centre = np.linspace(0.2, 2.0, d)
  return np.abs(centre + 0.5 * rng.normal(size=(n, d)))


@pytest.mark.parametrize("name", ["kde", "ocsvm", "gde", "knn"])
def test_realised_fpr_on_fresh_inliers_is_the_target(name):
  rng = np.random.default_rng(0)
  train, fresh = _inliers(rng, 4000), _inliers(rng, 20000)
  heldout = evaluators.one_class.heldout_scores([name], train, seed=0)[name]
  deployed = detectors.get(name).fit(train)
  fresh_scores = deployed.score(fresh)
  for fpr in (0.01, 0.05, 0.1):
    threshold = detectors.threshold_at_fpr(heldout, fpr)
    realised = float(np.mean(fresh_scores > threshold))
    assert abs(realised - fpr) <= 0.01, (name, fpr, realised)


def test_calibration_folder_sets_the_realised_rate_on_fresh_images(tmp_path):
  # `export --calibration`: the (1 - fpr) quantile of a folder's scores
  # through the exported function. Here the "model" scores an image by its
  # mean pixel, and normal images have uniform random pixels: a known law,
  # so fresh normal images must be flagged at the target rate (±1 point).
  rng = np.random.default_rng(0)
  shape = (4, 4, 3)
  for i, image in enumerate(rng.integers(0, 256, (2000, *shape), np.uint8)):
    Image.fromarray(image).save(tmp_path / f"{i:04d}.png")
  core = lambda images: (jnp.mean(images.astype(jnp.float32), (1, 2, 3)),)
  model = export.Exportable(core, ("scores", "verdicts"), shape, None,
                            {"run": {"dataset": "image_folder"}})
  scores, fields, extra = export.calibrate(model, tmp_path)
  assert scores.shape == (2000,) and extra == {}
  assert fields["source"] == export.FOLDER
  fresh = rng.integers(0, 256, (50000, *shape), np.uint8)
  fresh_scores = np.asarray(jax.jit(core)(fresh)[0])
  for fpr in (0.01, 0.05, 0.1):
    threshold = detectors.threshold_at_fpr(scores, fpr,
                                           what="calibration scores")
    realised = float(np.mean(fresh_scores > np.float32(threshold)))
    assert abs(realised - fpr) <= 0.01, (fpr, realised)


def test_heldout_scores_are_out_of_sample_for_every_inlier():
  rng = np.random.default_rng(1)
  train = _inliers(rng, 50)
  heldout = evaluators.one_class.heldout_scores(["knn"], train, seed=0, folds=5)["knn"]
  # 1-NN distance in-sample is 0 (self-match); cross-fitted, never.
  assert heldout.shape == (50,) and (heldout > 1e-9).all()
  # The folds are seeded: the same scores again.
  again = evaluators.one_class.heldout_scores(["knn"], train, seed=0, folds=5)["knn"]
  np.testing.assert_array_equal(heldout, again)


def test_threshold_warns_when_few_scores_back_it():
  scores = np.arange(500, dtype=float)
  with pytest.warns(UserWarning, match="Only 500 held-out normal scores "
                    "back the threshold for fpr=0.01"):
    assert detectors.threshold_at_fpr(scores, 0.01) == pytest.approx(
        np.quantile(scores, 0.99))
  with pytest.raises(ValueError, match="fpr must be in"):
    detectors.threshold_at_fpr(scores, 0.0)


def test_score_refuses_detectors_of_an_older_format(tmp_path):
  root = tmp_path / "detectors"
  root.mkdir()
  (root / "kde.pkl").write_bytes(b"")
  (root / "meta.json").write_text(json.dumps({"embedding": "f"}))
  with pytest.raises(ValueError, match="format 1; this version scores with "
                     "format 3"):
    evaluators.one_class.load_detector(tmp_path, "kde")


def test_verdicts_flag_nan_and_agree_between_numpy_and_jax():
  # `score` used `s > threshold`, which passes a NaN score (a diverged
  # network) as normal, while the exported function flagged it; both now
  # share detectors.anomalous.
  scores = np.array([0.5, 1.0, 2.0, np.nan])
  expected = [False, False, True, True]
  assert detectors.anomalous(scores, 1.0).tolist() == expected
  assert np.asarray(detectors.anomalous(jnp.asarray(scores, jnp.float32),
                                        jnp.float32(1.0))).tolist() == expected
