"""Detectors against independent float64 numpy / scikit-learn references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy import stats
from sklearn import covariance
from sklearn import metrics as sk_metrics
from sklearn import mixture
from sklearn import neighbors
from sklearn import svm

from oneclass_jax import detectors
from oneclass_jax.detectors import ensemble
from oneclass_jax.detectors import kde
from oneclass_jax.detectors import knn
from oneclass_jax.detectors import rotation_score


def _features(seed, n, d, shift=0.0):
  """Non-negative, clustered features (like ReLU-pooled f), [n, d] float64."""
  rng = np.random.default_rng(seed)
  centre = np.abs(rng.normal(size=d))
  centre[: d // 2] += shift
  return np.abs(centre + 0.6 * rng.normal(size=(n, d)))


@pytest.fixture(name="data")
def fixture_data():
  """150 train inliers; 30 test inliers and 30 outliers, d = 12.

  Outliers come from a cluster whose centre is a permutation of the inlier
  centre: same norm, another direction, as a semantic shift would be.
  """
  rng = np.random.default_rng(0)
  c_in = np.abs(rng.normal(size=12))
  c_out = rng.permutation(c_in)
  draw = lambda c, n: np.abs(c + 0.25 * rng.normal(size=(n, 12)))
  train = draw(c_in, 150)
  test = np.concatenate([draw(c_in, 30), draw(c_out, 30)])
  labels = np.r_[np.zeros(30), np.ones(30)]
  return train, test, labels


def _unit(x):
  return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


def _kde_reference(test, train, gamma):
  """−(1/γ) log((1/n) Σ exp(−γ‖x−y‖²)) with direct float64 differences."""
  sq = ((test[:, None, :] - train[None, :, :]) ** 2).sum(axis=-1)
  return -(special.logsumexp(-gamma * sq, axis=1) - np.log(len(train))) / gamma


# ----------------------------------------------------------------- registry


def test_registry_and_feature_flags():
  assert set(detectors.DETECTORS) == {"kde", "ocsvm", "ocsvm_linear", "gde",
                                      "knn"}
  assert {n: c.normalize for n, c in detectors.DETECTORS.items()} == {
      "kde": True, "ocsvm": True, "ocsvm_linear": False, "gde": True,
      "knn": True}
  with pytest.raises(ValueError, match="known detectors: gde, kde, knn"):
    detectors.get("kdee")


def test_check_features_counts_bad_rows_and_stops_fitting():
  x = np.ones((6, 3))
  x[1, 0] = np.nan
  x[1, 2] = np.inf
  x[4, 1] = -np.inf
  with pytest.raises(ValueError, match="2 of 6 rows contain NaN or inf"):
    detectors.check_features(x, "train features")
  det = detectors.get("kde")
  with pytest.raises(ValueError, match="kde train features: 2 of 6 rows"):
    det.fit(x)
  assert not hasattr(det, "gamma_")
  with pytest.raises(ValueError, match="2-D"):
    detectors.check_features(np.ones(3), "x")


def test_l2_normalize_against_numpy():
  x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 1.0]])
  np.testing.assert_allclose(detectors.l2_normalize(x),
                             [[0.6, 0.8], [0.0, 0.0],
                              [-2 ** -0.5, 2 ** -0.5]])


def test_score_before_fit_and_dim_mismatch(data):
  train, test, _ = data
  with pytest.raises(ValueError, match="call fit"):
    detectors.get("knn").score(test)
  with pytest.raises(ValueError, match="fitted on 12"):
    detectors.get("gde").fit(train).score(test[:, :5])


# A linear OC-SVM only ranks by the projection on one direction w, so a
# change of direction at equal norm is only partly visible to it.
_MIN_AUC = {"kde": 0.95, "ocsvm": 0.95, "gde": 0.95, "knn": 0.95,
            "ocsvm_linear": 0.7}


@pytest.mark.parametrize("name", sorted(detectors.DETECTORS))
def test_every_detector_separates_other_cluster(name, data):
  train, test, labels = data
  scores = detectors.get(name).fit(train).score(test)
  assert scores.dtype == np.float64 and scores.shape == (60,)
  assert sk_metrics.roc_auc_score(labels, scores) > _MIN_AUC[name]


# ---------------------------------------------------------------------- KDE


def test_bandwidth_gamma_formula():
  f = _unit(_features(2, 40, 7))
  var_all_entries = ((f - f.mean()) ** 2).sum() / f.size  # ddof=0, no axis
  assert kde.bandwidth_gamma(f) == pytest.approx(10 / (7 * var_all_entries),
                                                 rel=1e-12)
  with pytest.raises(ValueError, match="zero variance"):
    kde.bandwidth_gamma(np.ones((5, 3)))


def test_kde_matches_float64_reference_and_sklearn(data):
  train, test, labels = data
  det = detectors.get("kde").fit(train)
  tr, te = _unit(train), _unit(test)
  gamma = 10 / (tr.shape[1] * tr.var())
  assert det.gamma_ == pytest.approx(gamma, rel=1e-12)
  scores = det.score(test)
  # float32 matmul expansion on unit vectors: ~1e-6 absolute (kde.py doc).
  np.testing.assert_allclose(scores, _kde_reference(te, tr, gamma), atol=2e-5)

  # sklearn's log-density with h = 1/sqrt(2γ) is γ·KDE − d/2·log(π/γ).
  sk = neighbors.KernelDensity(kernel="gaussian",
                               bandwidth=(2 * gamma) ** -0.5).fit(tr)
  sk_normality = sk.score_samples(te)
  d = tr.shape[1]
  np.testing.assert_allclose(
      -scores, (sk_normality + d / 2 * np.log(np.pi / gamma)) / gamma,
      atol=2e-5)
  assert (sk_metrics.roc_auc_score(labels, scores) ==
          sk_metrics.roc_auc_score(labels, -sk_normality))


def test_kde_gamma_override(data):
  train, test, _ = data
  scores = detectors.get("kde", gamma=3.0).fit(train).score(test)
  np.testing.assert_allclose(scores,
                             _kde_reference(_unit(test), _unit(train), 3.0),
                             atol=2e-5)


def test_kde_chunked_equals_unchunked(data):
  train, test, _ = data
  whole = detectors.get("kde", query_block=10**6, train_chunk=None)
  chunked = detectors.get("kde", query_block=7, train_chunk=32)
  a = whole.fit(train).score(test)
  b = chunked.fit(train).score(test)
  # float32: the same sums in a different order, a few ulp apart.
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # In float64 the pure function's chunked sum equals the direct one.
  with jax.enable_x64(True):
    tr, te = jnp.asarray(_unit(train)), jnp.asarray(_unit(test))
    direct = kde.kde_log_density(te, tr, 7.0)
    for chunk in (1, 32, 149, 150):
      np.testing.assert_allclose(
          kde.kde_log_density(te, tr, 7.0, train_chunk=chunk), direct,
          rtol=1e-13, atol=1e-15)
    # The pure function leaves out the detector's 1/n.
    np.testing.assert_allclose(
        -direct + np.log(len(train)) / 7.0,
        _kde_reference(_unit(test), _unit(train), 7.0), rtol=1e-12)


def test_kde_gradient_matches_analytic_and_finite_differences(data):
  train, test, _ = data
  tr, te = _unit(train), _unit(test[:5])
  gamma = 6.0
  with jax.enable_x64(True):
    grad = jax.jit(jax.grad(
        lambda q: kde.kde_log_density(q, jnp.asarray(tr), gamma,
                                      train_chunk=40).sum()))(jnp.asarray(te))
    # Analytic: ∇_x (1/γ) lse(−γ‖x−y_j‖²) = Σ_j softmax_j · (−2)(x − y_j).
    sq = ((te[:, None] - tr[None]) ** 2).sum(-1)
    w = special.softmax(-gamma * sq, axis=1)
    analytic = -2 * (te - w @ tr)
    np.testing.assert_allclose(grad, analytic, rtol=1e-10, atol=1e-12)

    # The normalised score function, jitted, vs float64 central differences.
    # h = 1e-5: truncation ~h²·|f'''| (f''' ~ γ² ≈ 40) ≈ 4e-9 and round-off
    # ~1e-16/h ≈ 1e-11, so 1e-6 absolute leaves a wide margin.
    score_fn = kde.kde_score_fn(train, gamma)
    x0 = test[:3]
    g = jax.jit(jax.grad(lambda q: score_fn(q).sum()))(jnp.asarray(x0))
    h = 1e-5
    fd = np.zeros_like(x0)
    for i in range(x0.shape[0]):
      for j in range(x0.shape[1]):
        e = np.zeros_like(x0)
        e[i, j] = h
        fd[i, j] = (float(score_fn(jnp.asarray(x0 + e)).sum()) -
                    float(score_fn(jnp.asarray(x0 - e)).sum())) / (2 * h)
    np.testing.assert_allclose(g, fd, atol=1e-6)


def test_kde_score_fn_matches_detector(data):
  train, test, _ = data
  det = detectors.get("kde").fit(train)
  fn = jax.jit(kde.kde_score_fn(train))
  np.testing.assert_allclose(np.asarray(fn(jnp.asarray(test, jnp.float32))),
                             det.score(test), atol=2e-5)


# ------------------------------------------------------------------ OC-SVMs


@pytest.mark.parametrize("gamma,nu", [(None, 0.5), (2.0, 0.5), (5.0, 0.1)])
def test_ocsvm_same_solution_as_libsvm_computing_its_own_kernel(gamma, nu):
  # The paper's γ makes every row a support vector; the overrides give strict
  # subsets, so "the same support set" is a real check there.
  train = _features(0, 400, 40)
  test = np.concatenate([_features(1, 60, 40), _features(2, 60, 40, 1.0)])
  tr, te = _unit(train), _unit(test)
  g = gamma if gamma is not None else 10 / (tr.shape[1] * tr.var())
  ref = svm.OneClassSVM(kernel="rbf", gamma=g, nu=nu).fit(tr)
  det = detectors.get("ocsvm", gamma=gamma, nu=nu).fit(train)
  if gamma is not None:
    assert len(ref.support_) < len(tr)
  np.testing.assert_array_equal(det.support_, ref.support_)
  np.testing.assert_allclose(det.dual_coef_, ref.dual_coef_[0], rtol=1e-7,
                             atol=1e-10)
  np.testing.assert_allclose(det.libsvm_offset_, ref.offset_[0], rtol=1e-9)
  # Scores are libsvm's divided by Σα = ν·n.
  alpha_sum = ref.dual_coef_.sum()
  assert alpha_sum == pytest.approx(nu * len(tr), rel=1e-6)
  scores = det.score(test)
  np.testing.assert_allclose(scores * alpha_sum, -ref.score_samples(te),
                             rtol=1e-9)
  # The decisions (inlier iff decision_function >= 0) agree.
  np.testing.assert_array_equal(-scores * alpha_sum - det.libsvm_offset_ >= 0,
                                ref.decision_function(te) >= 0)


def test_linear_ocsvm_same_support_as_libsvm():
  train, test = _features(0, 300, 20), _features(1, 50, 20, 1.0)
  ref = svm.OneClassSVM(kernel="linear", nu=0.5).fit(train)
  det = detectors.get("ocsvm_linear").fit(train)
  assert len(ref.support_) < len(train)
  np.testing.assert_array_equal(det.support_, ref.support_)
  np.testing.assert_allclose(det.score(test) * ref.dual_coef_.sum(),
                             -ref.score_samples(test), rtol=1e-9)


def test_ocsvm_above_max_fit_rows_fits_a_recorded_seeded_subset():
  train, test = _features(0, 300, 20), _features(1, 50, 20)
  with pytest.warns(UserWarning, match="random 120 of the 300 inliers"):
    det = detectors.get("ocsvm", max_fit_rows=120, seed=3).fit(train)
  index = det.fit_index_
  assert len(index) == 120 and len(np.unique(index)) == 120
  # The subset is what was fitted (with its γ), and the seed decides it.
  sub = detectors.get("ocsvm").fit(train[index])
  assert sub.fit_index_ is None
  np.testing.assert_allclose(det.score(test), sub.score(test), rtol=1e-12)
  with pytest.warns(UserWarning):
    again = detectors.get("ocsvm", max_fit_rows=120, seed=3).fit(train)
  np.testing.assert_array_equal(again.fit_index_, index)
  with pytest.warns(UserWarning):
    other = detectors.get("ocsvm", max_fit_rows=120, seed=4).fit(train)
  assert not np.array_equal(other.fit_index_, index)


# ---------------------------------------------------------------------- GDE


def test_gde_equals_gaussian_mixture(data):
  train, test, _ = data
  gm = mixture.GaussianMixture(n_components=1, covariance_type="full",
                               reg_covar=1e-6, random_state=0)
  expected = -gm.fit(_unit(train)).score_samples(_unit(test))
  np.testing.assert_allclose(detectors.get("gde").fit(train).score(test),
                             expected, rtol=1e-8)


def test_gde_shrinks_and_warns_when_n_not_above_d():
  train = _features(3, 10, 12)
  test = _features(4, 5, 12)
  with pytest.warns(UserWarning, match="Ledoit-Wolf"):
    det = detectors.get("gde").fit(train)
  cov = covariance.LedoitWolf().fit(_unit(train)).covariance_
  cov += 1e-6 * np.eye(12)
  expected = -stats.multivariate_normal(_unit(train).mean(0), cov).logpdf(
      _unit(test))
  np.testing.assert_allclose(det.score(test), expected, rtol=1e-8)


# ---------------------------------------------------------------------- KNN


@pytest.mark.parametrize("query_block,train_chunk", [(2048, None), (9, 17)])
def test_knn_equals_brute_force(data, query_block, train_chunk):
  train, test, _ = data
  cos = (test @ train.T) / np.outer(np.linalg.norm(test, axis=1),
                                    np.linalg.norm(train, axis=1))
  expected = 1 - cos.max(axis=1)
  det = detectors.get("knn", query_block=query_block, train_chunk=train_chunk)
  np.testing.assert_allclose(det.fit(train).score(test), expected, atol=1e-6)
  assert knn.max_cosine(jnp.ones((1, 3)), jnp.eye(3)).shape == (1,)


# ---------------------------------------------- pure JAX scoring (export)

# rtol of the float32 `jax_score_fn` against `score` on the features below
# (d = 48); measured: kde 2.7e-7, knn 2.3e-6 (1.2e-7 absolute: float32's
# resolution of a cosine near 1), gde 1.9e-7, ocsvm 2.0e-6, ocsvm_linear
# 1.3e-7. tests/test_export.py checks them on a trained network's features,
# where GDE's scores cross 0.
_JAX_RTOL = {"kde": 1e-6, "knn": 1e-5, "gde": 1e-6, "ocsvm": 1e-5,
             "ocsvm_linear": 1e-6}


@pytest.mark.parametrize("name,kwargs", [
    ("kde", {}), ("kde", {"train_chunk": 17}), ("knn", {}),
    ("knn", {"train_chunk": 17}), ("gde", {}), ("ocsvm", {}),
    ("ocsvm_linear", {})])
def test_jax_score_fn_matches_score(name, kwargs):
  x = _features(0, 400, 48).astype(np.float32)
  train = x[:300]
  test = np.concatenate([x[300:], _features(0, 100, 48, shift=1.0)]).astype(
      np.float32)
  det = detectors.get(name, **kwargs).fit(train)
  got = jax.jit(det.jax_score_fn())(jnp.asarray(test))
  assert got.dtype == jnp.float32 and got.shape == (200,)
  np.testing.assert_allclose(got, det.score(test), rtol=_JAX_RTOL[name])


# ----------------------------------------------------------- rotation scores


def test_rotation_scores_by_hand():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(4, 6, 4)) * 3
  out = rotation_score.rotation_scores(logits)
  p0 = np.empty(6)
  nll = np.zeros(6)
  for i in range(6):
    for k in range(4):
      e = np.exp(logits[k, i])
      p = e / e.sum()
      if k == 0:
        p0[i] = 1 - p[0]
      nll[i] -= np.log(p[k])
  np.testing.assert_allclose(out["rot_p0"], p0, rtol=1e-12)
  np.testing.assert_allclose(out["rot_sum"], nll, rtol=1e-12)
  with pytest.raises(ValueError, match=r"\[K views, m images, K classes\]"):
    rotation_score.rotation_scores(np.zeros((4, 6, 3)))
  logits[2, 1, 0] = np.nan
  with pytest.raises(ValueError, match="1 images"):
    rotation_score.rotation_scores(logits)


# ----------------------------------------------------------------- ensemble


def test_ensemble_by_hand():
  a = [1.0, 2.0, 3.0]   # mean 2, population std sqrt(2/3)
  b = [10.0, 30.0, 20.0]  # mean 20, population std sqrt(200/3)
  za = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2 / 3)
  zb = np.array([-10.0, 10.0, 0.0]) / np.sqrt(200 / 3)
  np.testing.assert_allclose(ensemble.ensemble_scores([a, b]), (za + zb) / 2)
  # With reference scores: mean 0 / std 1 and mean 10 / std 10.
  got = ensemble.ensemble_scores([a, b], [[-1.0, 1.0], [0.0, 20.0]])
  np.testing.assert_allclose(got, ((np.array(a) - 0) / 1 +
                                   (np.array(b) - 10) / 10) / 2)
  with pytest.raises(ValueError, match="differ in length"):
    ensemble.ensemble_scores([a, [1.0, 2.0]])
  with pytest.raises(ValueError, match="all equal"):
    ensemble.ensemble_scores([[1.0, 1.0]])
