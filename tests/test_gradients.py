"""Gradient explanations (analysis.gradients, explain): integrated gradients
against closed forms and completeness, GradCAM against a numpy reference, the
KDE gradient against finite differences, and the explain score functions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from oneclass_jax.analysis import explanations
from oneclass_jax import models
from oneclass_jax.analysis import gradients
from oneclass_jax.detectors import kde
from oneclass_jax.detectors import rotation_score


@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_gaussian_blur_matches_scipy(sigma):
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(2, 16, 12, 3)).astype(np.float32)
  got = np.asarray(gradients.gaussian_blur(jnp.asarray(x), sigma))
  want = ndimage.gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0),
                                 mode="reflect", truncate=4.0)
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_array_equal(
      np.asarray(gradients.blurred_baseline(jnp.asarray(x))),
      np.asarray(gradients.gaussian_blur(jnp.asarray(x), 16 / 8)))


def test_trapezoid_nodes():
  alphas, weights = gradients.trapezoid_nodes(4)
  np.testing.assert_allclose(alphas, [0, .25, .5, .75, 1])
  np.testing.assert_allclose(weights, [.125, .25, .25, .25, .125])
  with pytest.raises(ValueError, match="steps >= 1"):
    gradients.trapezoid_nodes(0)


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_ig_of_a_quadratic_is_exact(baseline):
  """s(x) = Σ c x²: IG_i = c_i (x_i² − x'_i²), exactly (linear integrand)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 8, 8, 2)).astype(np.float32)
  c = rng.normal(size=(8, 8, 2)).astype(np.float32)
  score = lambda z: jnp.sum(c * z * z, axis=(1, 2, 3))  # noqa: E731
  base = gradients.make_baseline(baseline, jnp.asarray(x))
  ig = gradients.integrated_gradients(score, jnp.asarray(x), base, steps=3,
                                      chunk=2)
  b = np.asarray(base, np.float64)
  np.testing.assert_allclose(np.asarray(ig), c * (x.astype(np.float64) ** 2
                                                  - b ** 2),
                             rtol=1e-4, atol=1e-5)
  gap = gradients.completeness_gap(score, jnp.asarray(x), base, ig)
  np.testing.assert_allclose(gap["gap"], 0.0, atol=1e-3)


def tiny_model(num_classes=0):
  return models.build_model(dict(
      backbone="resnet10", width=1 / 16, stem_width=4, head_depth=1,
      head_width=8, head_out_dim=8, num_classes=num_classes))


def trained_like(model, key):
  """Random init with random BatchNorm statistics and affine terms.

  A fresh network with zero BN biases is positively homogeneous, so an
  L2-normalised f is constant along the ray from a black image; random BN
  terms make it a generic function, as training does. A larger classifier
  gives confident rotation logits, so scores move along the IG path.
  """
  # jit: one compile is much cheaper than dispatching every op eagerly.
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, 32, 32, 3)),
                                           train=False))(key)
  rng = np.random.default_rng(99)

  def randomise(path, leaf):
    p = jax.tree_util.keystr(path)
    if "bn" in p and p.endswith("['bias']"):
      return jnp.asarray(0.2 * rng.normal(size=leaf.shape), leaf.dtype)
    if p.endswith("['mean']"):
      return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)
    if p.endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    if "classifier" in p:
      return 30.0 * leaf
    return leaf

  return jax.tree_util.tree_map_with_path(randomise, variables)


@pytest.fixture(scope="module")
def rotation_model():
  model = tiny_model(num_classes=4)
  variables = trained_like(model, jax.random.key(0))
  # Blocky images: sharp edges, so the blurred baseline differs clearly.
  blocks = np.random.default_rng(1).uniform(size=(2, 8, 8, 3))
  images = jnp.asarray(np.kron(blocks, np.ones((1, 4, 4, 1))), jnp.float32)
  fit_images = jax.random.uniform(jax.random.key(2), (40, 32, 32, 3))
  fit = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, fit_images)["pools"])
  return model, variables, images, fit


@pytest.mark.parametrize("score", ["kde", "rotation"])
def test_ig_completeness_through_the_network(rotation_model, score):
  model, variables, images, fit = rotation_model
  scorer = (explanations.kde_scorer(model, variables, fit) if score == "kde"
            else explanations.rotation_scorer(model, variables))
  # Both baselines in one batch: IG treats the images independently.
  x = jnp.concatenate([images, images])
  base = jnp.concatenate([gradients.make_baseline("black", images),
                          gradients.make_baseline("blur", images)])
  ig = jax.jit(lambda x, b: gradients.integrated_gradients(
      scorer.score_fn, x, b, steps=64, chunk=16))(x, base)
  check = gradients.completeness_gap(scorer.score_fn, x, base, ig)
  assert np.all(np.abs(check["delta"]) > 1e-3)  # a non-trivial path
  # The trapezoidal error of a ReLU network at 64 steps is ~1%; a wrong
  # gradient would miss by the size of delta itself.
  assert np.all(check["relative"] < 0.03), check


def test_gradcam_against_numpy_reference():
  """s(A) = tanh(w · mean_ij A): ∂s/∂A_ijk = (1 − tanh²) w_k / (h w)."""
  rng = np.random.default_rng(3)
  a = rng.normal(size=(2, 4, 5, 6)).astype(np.float32)
  w = rng.normal(size=6).astype(np.float32)
  score = lambda f: jnp.tanh(jnp.mean(f, axis=(1, 2)) @ w)  # noqa: E731
  cam = np.asarray(gradients.gradcam(score, jnp.asarray(a)))
  a64 = a.astype(np.float64)
  z = a64.mean(axis=(1, 2)) @ w
  alpha = (1 - np.tanh(z) ** 2)[:, None] * w[None, :] / 20.0  # [B, K]
  want = np.maximum(np.einsum("bhwk,bk->bhw", a64, alpha), 0.0)
  np.testing.assert_allclose(cam, want, rtol=1e-5, atol=1e-7)
  assert (want == 0).any() and (want > 0).any()  # the ReLU is exercised


def test_gradcam_upsampled_shape_and_sign(rotation_model):
  model, variables, images, fit = rotation_model
  for scorer in (explanations.kde_scorer(model, variables, fit),
                 explanations.rotation_scorer(model, variables),
                 explanations.kde_scorer(model, variables, fit, sign=-1.0)):
    maps = np.asarray(jax.jit(scorer.gradcam_fn)(images))
    assert maps.shape == (2, 32, 32)
    assert np.all(maps >= 0) and np.all(np.isfinite(maps))
  norm = gradients.normalize_maps(maps)
  assert norm.max() <= 1.0 and np.allclose(norm.reshape(2, -1).max(1)[
      maps.reshape(2, -1).max(1) > 0], 1.0)


def test_apply_from_features_reproduces_the_model(rotation_model):
  model, variables, images, _ = rotation_model
  out = model.apply(variables, images, train=False)
  again = explanations.apply_from_features(model, variables, out["feature_map"],
                                      images.shape[1:])
  for key in ("pools", "embeds", "logits"):
    np.testing.assert_allclose(again[key], out[key], rtol=1e-5, atol=1e-6)


def test_scores_agree_with_the_evaluation_detectors(rotation_model):
  """The explained scores are the detectors' scores (negated anomaly)."""
  model, variables, images, fit = rotation_model
  out = model.apply(variables, images, train=False)
  kde_det = kde.KDE().fit(fit)
  np.testing.assert_allclose(
      explanations.kde_scorer(model, variables, fit).score_fn(images),
      -kde_det.score(np.asarray(out["pools"])), rtol=1e-4, atol=1e-4)
  logits = np.stack([np.asarray(model.apply(
      variables, jnp.rot90(images, k, axes=(1, 2)), train=False)["logits"])
                     for k in range(4)])
  np.testing.assert_allclose(
      explanations.rotation_scorer(model, variables).score_fn(images),
      -rotation_score.rotation_scores(logits)["rot_sum"], rtol=1e-4,
      atol=1e-5)


def kde_reference(q, train, gamma):
  """Anomaly score −KDE_γ(q/|q|) in float64 numpy, train pre-normalised."""
  qn = q / np.linalg.norm(q)
  d2 = np.sum((train - qn) ** 2, axis=1)
  top = np.max(-gamma * d2)
  return -(top + math.log(np.mean(np.exp(-gamma * d2 - top)))) / gamma


def test_kde_gradient_matches_finite_differences():
  rng = np.random.default_rng(4)
  train = rng.normal(size=(30, 6)) + 0.5
  queries = rng.normal(size=(4, 6)) + 0.5
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  gamma = 10.0 / (6 * tn.var())
  with jax.enable_x64(True):
    score = kde.kde_score_fn(train)
    grad = np.asarray(jax.grad(lambda q: jnp.sum(score(q)))(
        jnp.asarray(queries, jnp.float64)))
    np.testing.assert_allclose(np.asarray(score(jnp.asarray(queries))),
                               [kde_reference(q, tn, gamma) for q in queries],
                               rtol=1e-10)
  eps = 1e-6
  fd = np.zeros_like(queries)
  for i in range(queries.shape[0]):
    for j in range(queries.shape[1]):
      e = np.zeros(6)
      e[j] = eps
      fd[i, j] = (kde_reference(queries[i] + e, tn, gamma) -
                  kde_reference(queries[i] - e, tn, gamma)) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_attribution_heatmap_range():
  rng = np.random.default_rng(5)
  a = rng.normal(size=(2, 8, 8, 3))
  h = gradients.attribution_heatmap(a)
  assert h.shape == (2, 8, 8) and h.min() >= 0 and h.max() == 1.0
  s = np.abs(a).sum(-1)
  np.testing.assert_allclose(
      h[0], np.clip(s[0] / np.percentile(s[0], 99), 0, 1))


def test_bad_inputs():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="baseline"):
    gradients.make_baseline("noise", x)
  with pytest.raises(ValueError, match="same shape"):
    gradients.integrated_gradients(lambda z: z.sum((1, 2, 3)), x,
                                   jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="sigma"):
    gradients.gaussian_blur(x, 0.0)
  with pytest.raises(ValueError, match=r"\[B, h, w, K\]"):
    gradients.gradcam(lambda f: f.sum(), jnp.zeros((8, 8, 3)))
