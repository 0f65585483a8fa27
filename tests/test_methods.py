"""Losses of the stage-1 methods against float64 numpy references."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from oneclass_jax import methods
from oneclass_jax import parallel
from oneclass_jax.methods import contrastive
from oneclass_jax.methods import rotation


def _config(symmetric=False, temperature=0.2):
  return ml_collections.ConfigDict({"contrastive": {
      "temperature": temperature, "symmetric": symmetric}})


def _logsoftmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def ref_contrastive(z1, z2, tau, symmetric):
  """Eq. 2 in float64: one-directional (authors) or SimCLR's NT-Xent."""
  z1 = z1 / np.linalg.norm(z1, axis=1, keepdims=True)
  z2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
  n = len(z1)
  if not symmetric:
    return -np.mean(np.diag(_logsoftmax(z1 @ z2.T / tau)))
  z = np.concatenate([z1, z2])
  sim = z @ z.T / tau
  np.fill_diagonal(sim, -np.inf)
  pos = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  return -np.mean(_logsoftmax(sim)[np.arange(2 * n), pos])


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_matches_reference(symmetric):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(2 * 12, 7))
  cfg = _config(symmetric, temperature=0.3)
  loss_sum, count, _ = contrastive.loss(
      {"embeds": jnp.asarray(z, jnp.float32)}, None, cfg, None)
  expected = ref_contrastive(z[:12], z[12:], 0.3, symmetric)
  np.testing.assert_allclose(loss_sum / count, expected, rtol=1e-5)


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_gradient_is_finite_for_a_zero_embedding(symmetric):
  # A dead ReLU head gives all-zero rows; the norm's gradient there is 0/0.
  z = np.random.default_rng(1).normal(size=(2 * 6, 5)).astype(np.float32)
  z[2] = 0.0
  cfg = _config(symmetric)
  grad = jax.grad(lambda e: contrastive.loss({"embeds": e}, None, cfg,
                                             None)[0])(jnp.asarray(z))
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("symmetric", [False, True])
def test_contrastive_sharded_uses_global_negatives(symmetric):
  """On 8 devices each anchor sees every other image's view as a negative."""
  rng = np.random.default_rng(1)
  n, per_dev = 16, 2
  z1, z2 = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
  # Each device holds its rows of view 1 followed by its rows of view 2.
  local = np.concatenate([
      np.concatenate([z1[d * per_dev:(d + 1) * per_dev],
                      z2[d * per_dev:(d + 1) * per_dev]])
      for d in range(8)])
  mesh = parallel.make_mesh(8)
  cfg = _config(symmetric)

  def per_device(e):
    s, c, _ = contrastive.loss({"embeds": e}, None, cfg, parallel.AXIS)
    return jax.lax.psum(s, parallel.AXIS) / jax.lax.psum(c, parallel.AXIS)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(parallel.AXIS),
                             out_specs=P()))
  x = jax.device_put(jnp.asarray(local, jnp.float32),
                     NamedSharding(mesh, P(parallel.AXIS)))
  np.testing.assert_allclose(fn(x), ref_contrastive(z1, z2, 0.2, symmetric),
                             rtol=1e-5)


def test_distribution_augmented_copies_are_negatives():
  """A rotated copy in the batch is a distinct instance: a negative."""
  rng = np.random.default_rng(2)
  base = rng.normal(size=(4, 6))
  # Rows 0 and 1 are "the same image" under two distributions (here: the
  # embedding of its rotated copy happens to be close to the original).
  z1 = np.stack([base[0], base[0] + 0.01, base[1], base[2]])
  z2 = z1 + 0.05 * rng.normal(size=z1.shape)
  loss_sum, count, _ = contrastive.loss(
      {"embeds": jnp.asarray(np.concatenate([z1, z2]), jnp.float32)}, None,
      _config(), None)
  expected = ref_contrastive(z1, z2, 0.2, False)
  np.testing.assert_allclose(loss_sum / count, expected, rtol=1e-5)
  # And it is larger than with the copy removed from the negatives: the
  # near-duplicate competes with the positive.
  without = ref_contrastive(z1[1:], z2[1:], 0.2, False)
  assert expected > without


def test_rotation_loss_matches_reference():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(20, 4))
  targets = np.repeat(np.arange(4), 5)
  loss_sum, count, aux = rotation.loss(
      {"logits": jnp.asarray(logits, jnp.float32)}, jnp.asarray(targets),
      None, None)
  expected = -np.mean(_logsoftmax(logits)[np.arange(20), targets])
  np.testing.assert_allclose(loss_sum / count, expected, rtol=1e-5)
  assert aux["accuracy"] == np.sum(logits.argmax(1) == targets)


def test_rotation_views_are_rotated_last():
  """With augmentation off, view k is exactly rot90(image, k)."""
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
  cfg = ml_collections.ConfigDict({"seed": 0, "augment": {
      "crop_min_scale": 1.0, "flip": False,
      "jitter_strength": (0.0, 0.0, 0.0, 0.0), "gray_prob": 0.0,
      "blur_prob": 0.0, "authors_code": False}})
  keys = jax.random.split(jax.random.key(0), 3)
  inputs, targets = rotation.make_inputs(keys, jnp.asarray(images), cfg)
  assert inputs.shape == (12, 8, 8, 3)
  for k in range(4):
    expected = np.rot90(images.astype(np.float64) / 255, k, axes=(1, 2))
    np.testing.assert_allclose(inputs[3 * k:3 * (k + 1)], expected, atol=1e-5)
    np.testing.assert_array_equal(targets[3 * k:3 * (k + 1)], k)


def test_unknown_method():
  with pytest.raises(ValueError, match="Unknown method 'simclr'"):
    methods.get("simclr")


def test_registry_is_consistent():
  for name, method in methods.METHODS.items():
    assert method.name == name
  assert methods.get("rotation").num_classes == 4
  assert methods.get("denoising").decoder
  assert functools.reduce(
      lambda a, b: a and b,
      [methods.get(n).loss is contrastive.loss
       for n in ("contrastive", "contrastive_da")])
