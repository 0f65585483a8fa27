"""The detectors as scikit-learn / PyOD outlier detectors (issue #16).

scikit-learn's own estimator checks, clone and get_params, pipelines and
model selection on labelled held-out data, the sign conventions between
`score`, `score_samples`, `decision_function` and `predict`, the realised
false-positive rate of `fpr` on fresh inliers, and pickling.
"""
import functools
import pickle

import numpy as np
import pytest
from sklearn import base as sk_base
from sklearn import exceptions as sk_exceptions
from sklearn import metrics as sk_metrics
from sklearn import model_selection
from sklearn import pipeline
from sklearn import preprocessing
from sklearn.utils import estimator_checks

from oneclass_jax import detectors
from oneclass_jax import evaluators

NAMES = sorted(detectors.DETECTORS)

# ------------------------------------------- scikit-learn's estimator checks

# Checks that fail by design, each for its reason; strict xfails, so one
# that starts passing is noticed.
_SCORE_IS_ANOMALY_SCORE = (
    "score(X) is the anomaly score evaluate and export use, not "
    "scikit-learn's score(X, y) goodness of fit, and refuses a y (naming "
    "the scoring= fix); these checks call score(X, y). The same checks' "
    "other methods are tested in test_wrong_feature_count_uses_sklearns_"
    "message.")
_EXPECTED_FAILURES = {
    "check_fit_score_takes_y": _SCORE_IS_ANOMALY_SCORE,
    "check_pipeline_consistency": _SCORE_IS_ANOMALY_SCORE,
    "check_n_features_in_after_fitting": _SCORE_IS_ANOMALY_SCORE,
}
_KNN_IN_SAMPLE = (
    "A 1-NN scores its own train rows 0 and the threshold comes from "
    "out-of-sample scores, so predict flags no train row; these checks want "
    "some flagged (test_realised_fpr_on_fresh_inliers_is_the_target tests "
    "the threshold on fresh rows).")
_EXPECTED_FAILURES_OF = {
    "knn": {"check_outliers_train": _KNN_IN_SAMPLE,
            "check_outliers_fit_predict": _KNN_IN_SAMPLE},
}
# Not run: the JAX detectors score in float32 blocks whose shape depends on
# the number of rows, which moves a score by about 1e-7 (knn.py, kde.py);
# the check allows 1e-7. test_a_subset_scores_as_in_the_whole allows 1e-6.
_SKIPPED_OF = {name: {"check_methods_subset_invariance"}
               for name in ("kde", "knn")}


def _check_name(check) -> str:
  return (check.func if isinstance(check, functools.partial) else
          check).__name__


def _estimator_checks():
  for name in NAMES:
    failing = {**_EXPECTED_FAILURES, **_EXPECTED_FAILURES_OF.get(name, {})}
    for estimator, check in estimator_checks.estimator_checks_generator(
        detectors.get(name, fpr=0.05)):
      check_name = _check_name(check)
      marks = []
      if check_name in failing:
        marks = [pytest.mark.xfail(reason=failing[check_name], strict=True)]
      if check_name in _SKIPPED_OF.get(name, ()):
        marks = [pytest.mark.skip(reason="float32 blocks, see _SKIPPED_OF")]
      yield pytest.param(estimator, check, marks=marks,
                         id=f"{name}-{check_name}")


# The checks fit on a few rows: few held-out scores back the threshold.
@pytest.mark.filterwarnings("ignore:Only .* back the threshold")
@pytest.mark.filterwarnings("ignore:gde.*Ledoit-Wolf")
@pytest.mark.parametrize("estimator,check", _estimator_checks())
def test_sklearn_estimator_checks(estimator, check):
  check(estimator)


def test_wrong_feature_count_uses_sklearns_message():
  train = np.random.default_rng(0).normal(size=(100, 4))
  det = detectors.get("kde", fpr=0.1).fit(train)
  assert det.n_features_in_ == 4
  for method in (det.score, det.score_samples, det.decision_function,
                 det.predict):
    with pytest.raises(ValueError, match="X has 3 features, but KDE is "
                       "expecting 4 features as input"):
      method(train[:, :3])


# -------------------------------------------------------- clone, get_params


@pytest.mark.parametrize("name", NAMES)
def test_clone_and_get_params_round_trip(name):
  # numpy scalars: a constructor that converted them (int(...), as
  # OCSVM's did) would break clone, which checks identity.
  params = {"fpr": np.float64(0.1), "threshold_folds": np.int64(4),
            "seed": np.int64(3)}
  if name.startswith("ocsvm"):
    params.update(max_fit_rows=np.int64(120), tol=1e-4)
  det = detectors.get(name, **params)
  got = det.get_params()
  for key, value in params.items():
    assert got[key] is value, key
  again = sk_base.clone(det)
  assert type(again) is type(det) and again.get_params() == got
  assert sk_base.clone(again.set_params(fpr=0.2)).get_params()["fpr"] == 0.2
  # Construction does not check: a bad value is refused by fit.
  bad = sk_base.clone(det).set_params(fpr=1.5)
  with pytest.raises(ValueError, match="fpr must be in"):
    bad.fit(np.random.default_rng(0).normal(size=(50, 4)))
  # A clone of a fitted detector is unfitted.
  fitted = detectors.get(name, fpr=0.1).fit(
      np.random.default_rng(0).normal(size=(100, 4)))
  assert not hasattr(sk_base.clone(fitted), "threshold_")


def test_ocsvm_params_reach_libsvm():
  train = np.random.default_rng(0).normal(size=(80, 4))
  default = detectors.get("ocsvm").fit(train)
  with pytest.warns(sk_exceptions.ConvergenceWarning, match="max_iter=3"):
    capped = detectors.get("ocsvm", max_iter=3).fit(train)
  assert default.n_iter_ > 3 and capped.n_iter_ == 3


# ------------------------------------- pipelines and model selection


def _labelled(seed=0, d=8, n_in=600, n_out=100):
  """Correlated Gaussian inliers, outliers shifted across the correlation.

  Standardising centres the inliers, and the detectors L2-normalise, so
  the outliers must differ in direction: the inliers lie near the line
  through (1, ..., 1), the outliers are shifted along (1, -1, 1, ...).
  Labels are scikit-learn's: +1 inlier, -1 outlier.
  """
  rng = np.random.default_rng(seed)
  cov = 0.9 * np.ones((d, d)) + 0.1 * np.eye(d)
  shift = np.where(np.arange(d) % 2, -1.0, 1.0)
  x = np.concatenate([rng.multivariate_normal(np.zeros(d), cov, n_in),
                      rng.multivariate_normal(shift, cov, n_out)])
  y = np.r_[np.ones(n_in, int), -np.ones(n_out, int)]
  # One-class splits: fit on inliers only, test on the other inliers and
  # every outlier.
  folds = np.array_split(rng.permutation(n_in), 3)
  splits = [(np.setdiff1d(np.arange(n_in), held),
             np.r_[held, np.arange(n_in, n_in + n_out)]) for held in folds]
  return x, y, splits


def _manual_aucs(make_detector, x, y, splits):
  """AUCs of the anomaly score, outliers positive, scaler fitted by hand."""
  aucs = []
  for train, test in splits:
    scaler = preprocessing.StandardScaler().fit(x[train])
    det = make_detector().fit(scaler.transform(x[train]))
    aucs.append(sk_metrics.roc_auc_score(
        y[test] == -1, det.score(scaler.transform(x[test]))))
  return np.array(aucs)


@pytest.mark.parametrize("name", ["kde", "gde"])
def test_pipeline_in_cross_val_score_with_roc_auc(name):
  # roc_auc ranks by decision_function with +1 (inlier) positive: the same
  # AUC as the anomaly score with outliers positive.
  x, y, splits = _labelled()
  model = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                 detectors.get(name, fpr=0.05))
  aucs = model_selection.cross_val_score(model, x, y, cv=splits,
                                         scoring="roc_auc")
  expected = _manual_aucs(lambda: detectors.get(name), x, y, splits)
  np.testing.assert_allclose(aucs, expected, rtol=1e-12)
  assert aucs.min() > 0.75


def test_grid_search_over_the_kde_bandwidth():
  x, y, splits = _labelled()
  model = pipeline.make_pipeline(preprocessing.StandardScaler(),
                                 detectors.get("kde", fpr=0.05))
  gammas = [None, 0.5, 50.0]
  # refit=False: refitting would fit on every row of x, outliers included.
  search = model_selection.GridSearchCV(
      model, {"kde__gamma": gammas}, cv=splits, scoring="roc_auc",
      refit=False).fit(x, y)
  expected = [_manual_aucs(lambda g=g: detectors.get("kde", gamma=g), x, y,
                           splits).mean() for g in gammas]
  np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected,
                             rtol=1e-12)
  assert search.best_params_ == {"kde__gamma": gammas[int(np.argmax(
      expected))]}


def test_score_refuses_y_and_names_the_scoring_fix():
  x, y, splits = _labelled()
  det = detectors.get("gde", fpr=0.05).fit(x[:500])
  with pytest.raises(TypeError, match="give GridSearchCV or cross_val_score "
                     "a scoring"):
    det.score(x, y)
  with pytest.warns(UserWarning, match="give GridSearchCV or cross_val_score"):
    scores = model_selection.cross_val_score(detectors.get("gde"), x, y,
                                             cv=splits)
  assert np.isnan(scores).all()


# ----------------------------------------------------------- sign conventions


@pytest.mark.parametrize("name", NAMES)
def test_predict_decision_function_and_score_agree(name):
  x, _, _ = _labelled()
  det = detectors.get(name, fpr=0.1).fit(x[:500])
  test = x[500:]
  scores = det.score(test)
  np.testing.assert_array_equal(det.score_samples(test), -scores)
  decision = det.decision_function(test)
  np.testing.assert_array_equal(decision, det.score_samples(test) -
                                det.offset_)
  assert det.offset_ == -det.threshold_
  verdicts = det.predict(test)
  assert verdicts.dtype.kind == "i" and set(verdicts) == {-1, 1}
  np.testing.assert_array_equal(
      verdicts, np.where(detectors.anomalous(scores, det.threshold_), -1, 1))
  np.testing.assert_array_equal(verdicts == 1, decision >= 0)
  # PyOD's threshold_: the (1 − fpr) quantile of decision_scores_.
  assert det.threshold_ == np.quantile(det.decision_scores_, 0.9)


def test_a_nan_score_is_an_outlier_and_the_threshold_an_inlier(monkeypatch):
  x, _, _ = _labelled()
  det = detectors.get("knn", fpr=0.1).fit(x[:500])
  at_threshold = np.array([det.threshold_, np.nan, np.nextafter(
      det.threshold_, np.inf)])
  monkeypatch.setattr(type(det), "_score", lambda self, q: at_threshold)
  np.testing.assert_array_equal(det.predict(x[:3]), [1, -1, -1])
  decision = det.decision_function(x[:3])
  assert decision[0] == 0 and np.isnan(decision[1]) and decision[2] < 0


def test_without_fpr_there_is_no_threshold():
  x, _, _ = _labelled()
  det = detectors.get("gde", fpr=0.1).fit(x[:500])
  det.set_params(fpr=None).fit(x[:400])  # The old threshold is dropped.
  assert not hasattr(det, "threshold_")
  assert not hasattr(det, "decision_scores_")
  det.score_samples(x)  # Ranking needs no threshold.
  for method in (det.predict, det.decision_function):
    with pytest.raises(sk_exceptions.NotFittedError,
                       match=r"fit it with fpr set, e.g. GDE\(fpr=0.05\)"):
      method(x)


def test_decision_scores_are_the_evaluators_heldout_scores():
  # One cross-fitting code: the detector's own threshold and evaluate's
  # held-out scores agree bit for bit for the same seed and folds.
  x, _, _ = _labelled()
  for name in ("kde", "ocsvm"):
    det = detectors.get(name, fpr=0.1, seed=7).fit(x[:300])
    heldout = evaluators.one_class.heldout_scores([name], x[:300], seed=7)
    np.testing.assert_array_equal(det.decision_scores_, heldout[name])


# ------------------------------------------------- the realised false-positive rate


def _inliers(rng, n, d=16):
  """Non-negative clustered features (like ReLU-pooled f), one known law."""
  centre = np.linspace(0.2, 2.0, d)
  return np.abs(centre + 0.5 * rng.normal(size=(n, d)))


@pytest.mark.parametrize("name", NAMES)
def test_realised_fpr_on_fresh_inliers_is_the_target(name):
  rng = np.random.default_rng(0)
  train, fresh = _inliers(rng, 4000), _inliers(rng, 20000)
  det = detectors.get(name)
  # At 4,000 rows the realised rate's binomial noise alone is about 0.2
  # points at fpr 0.01 and 0.35 at 0.05 (and 0.5 at 0.1, where ±1 point
  # would be a 2σ band).
  for fpr in (0.01, 0.05):
    det.set_params(fpr=fpr).fit(train)
    realised = float(np.mean(det.predict(fresh) == -1))
    assert abs(realised - fpr) <= 0.01, (name, fpr, realised)
  if name in ("kde", "knn", "ocsvm"):
    # Why the threshold is cross-fitted: the (1 − fpr) quantile of the
    # in-sample scores (each row scored with itself in the fit) flags over
    # 5 points more of fresh inliers (measured: kde 11%, ocsvm 29%, knn
    # all of them).
    in_sample = np.quantile(det.score(train), 1 - fpr)
    assert np.mean(det.score(fresh) > in_sample) > fpr + 0.05


# ------------------------------------------- subsets, pickling


@pytest.mark.parametrize("name", NAMES)
def test_a_subset_scores_as_in_the_whole(name):
  x, _, _ = _labelled()
  det = detectors.get(name, fpr=0.1).fit(x[:500])
  whole = det.decision_function(x)
  for rows in (slice(0, 7), slice(500, 700), slice(123, 124)):
    np.testing.assert_allclose(det.decision_function(x[rows]), whole[rows],
                               rtol=0, atol=1e-6)
  np.testing.assert_allclose(det.decision_function(x[::-1])[::-1], whole,
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_pickled_fitted_detector_round_trips(name):
  x, _, _ = _labelled()
  det = detectors.get(name, fpr=0.1).fit(x[:500])
  again = pickle.loads(pickle.dumps(det))
  assert type(again) is type(det)
  assert again.get_params() == det.get_params()
  assert again.threshold_ == det.threshold_
  np.testing.assert_array_equal(again.decision_scores_, det.decision_scores_)
  np.testing.assert_array_equal(again.score(x), det.score(x))
  np.testing.assert_array_equal(again.predict(x), det.predict(x))
