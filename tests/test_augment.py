"""Tests for oneclass_jax.data.augment against float64 numpy references."""
import colorsys
import functools
import itertools
import os
import random
import subprocess
import sys

import chex
import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from oneclass_jax.data import augment

RNG = np.random.default_rng(0)
N_STATS = 2000  # draws for the frequency checks: 4.5 sd of p=0.5 is 0.05.


def _image(h, w=None, rng=RNG):
  return rng.random((h, w or h, 3)).astype(np.float32)


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


# ----------------------------------------------------------------------------
# Independent float64 references.
# ----------------------------------------------------------------------------


def np_resize_bilinear(img, out_h, out_w):
  """tf.image.resize bilinear, half-pixel centres, no antialias (TF kernel)."""
  img = img.astype(np.float64)
  in_h, in_w = img.shape[:2]

  def weights(out_size, in_size):
    scale = in_size / out_size
    taps = []
    for i in range(out_size):
      x = (i + 0.5) * scale - 0.5
      x_f = np.floor(x)
      lower = max(int(x_f), 0)
      upper = min(int(np.ceil(x)), in_size - 1)
      taps.append((lower, upper, x - x_f))
    return taps

  out = np.zeros((out_h, out_w, img.shape[2]))
  for i, (t, b, wy) in enumerate(weights(out_h, in_h)):
    for j, (l, r, wx) in enumerate(weights(out_w, in_w)):
      top = img[t, l] + (img[t, r] - img[t, l]) * wx
      bottom = img[b, l] + (img[b, r] - img[b, l]) * wx
      out[i, j] = top + (bottom - top) * wy
  return out


def np_hsv_map(img, fn):
  """Applies fn(h, s, v) -> (h, s, v) per pixel through colorsys (float64)."""
  flat = img.astype(np.float64).reshape(-1, 3)
  out = [colorsys.hsv_to_rgb(*fn(*colorsys.rgb_to_hsv(*px))) for px in flat]
  return np.asarray(out).reshape(img.shape)


def np_hue(img, delta):
  return np_hsv_map(img, lambda h, s, v: ((h + delta) % 1.0, s, v))


def np_saturation(img, factor):
  return np_hsv_map(img, lambda h, s, v: (h, min(max(s * factor, 0.), 1.), v))


def np_contrast(img, factor):
  img = img.astype(np.float64)
  mean = img.mean(axis=(0, 1), keepdims=True)
  return (img - mean) * factor + mean


def np_jitter(img, params, order, clip):
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  ops = [lambda x: x + p.brightness_delta,
         lambda x: np_contrast(x, p.contrast_factor),
         lambda x: np_saturation(x, p.saturation_factor),
         lambda x: np_hue(x, p.hue_delta)]
  out = img.astype(np.float64)
  for i in order:
    out = ops[i](out)
    if clip:
      out = np.clip(out, 0.0, 1.0)
  return out


def np_gray(img):
  luma = img.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
  return np.repeat(luma[..., None], 3, axis=-1)


def np_blur(img, sigma):
  """2-D convolution with the outer-product Gaussian, zeros outside."""
  radius = (img.shape[0] // 10) // 2
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-x**2 / (2.0 * float(sigma)**2))
  k2 = np.outer(k, k) / k.sum()**2
  h, w = img.shape[:2]
  padded = np.pad(img.astype(np.float64), ((radius,) * 2, (radius,) * 2,
                                           (0, 0)))
  out = np.zeros(img.shape)
  for a in range(2 * radius + 1):
    for b in range(2 * radius + 1):
      out += k2[a, b] * padded[a:a + h, b:b + w]
  return out


# ----------------------------------------------------------------------------
# Conversions, rotation, flip.
# ----------------------------------------------------------------------------


def test_to_float_matches_numpy_and_rejects_floats():
  raw = RNG.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  out = augment.to_float(jnp.asarray(raw))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, raw / 255.0, atol=1e-7)
  with pytest.raises(ValueError, match='uint8'):
    augment.to_float(jnp.asarray(raw, jnp.float32))


def test_rot90_traced_matches_numpy_and_inverts():
  img = _image(8)
  rot = jax.jit(augment.rot90)
  for k in range(4):
    out = rot(img, jnp.int32(k))
    np.testing.assert_array_equal(out, np.rot90(img, k, axes=(0, 1)))
    np.testing.assert_array_equal(rot(out, jnp.int32(4 - k)), img)
  with pytest.raises(ValueError, match='square'):
    augment.rot90(jnp.zeros((8, 6, 3)), 1)


def test_random_flip_is_mirror_or_identity_at_half_rate():
  img = _image(8)
  outs = np.asarray(jax.jit(jax.vmap(augment.random_flip, (0, None)))(
      _keys(N_STATS), img))
  flipped = np.all(outs == img[:, ::-1], axis=(1, 2, 3))
  same = np.all(outs == img, axis=(1, 2, 3))
  assert np.all(flipped ^ same)
  assert abs(flipped.mean() - 0.5) < 0.05
  # Flipping twice with the same key flips twice or never.
  k = _keys(1, seed=3)[0]
  twice = augment.random_flip(k, augment.random_flip(k, img))
  np.testing.assert_array_equal(twice, img)
  np.testing.assert_array_equal(pix.flip_left_right(pix.flip_left_right(img)),
                                img)


# ----------------------------------------------------------------------------
# Crop and resize.
# ----------------------------------------------------------------------------


@jax.jit
@functools.partial(jax.vmap, in_axes=(0, None))
def _crop_batch(key, img):
  params = augment.crop_and_resize_params(key, img.shape[0], img.shape[1], 0.5)
  return (params, augment.resize_window(img, params),
          augment.crop_and_resize(key, img, 0.5))


def test_crop_and_resize_matches_tf_bilinear_reference():
  img = _image(16)
  params, windowed, outs = _crop_batch(_keys(24, seed=1), img)
  np.testing.assert_array_equal(windowed, outs)
  for n in range(24):
    y0, x0, h, w = (int(v[n]) for v in params)
    ref = np_resize_bilinear(img[y0:y0 + h, x0:x0 + w], 16, 16)
    np.testing.assert_allclose(outs[n], ref, atol=2e-6)


def test_full_window_is_identity_and_small_window_upsamples():
  img = _image(8)
  full = augment.CropParams(*(jnp.int32(v) for v in (0, 0, 8, 8)))
  np.testing.assert_array_equal(augment.resize_window(img, full), img)
  small = augment.CropParams(*(jnp.int32(v) for v in (3, 1, 4, 4)))
  np.testing.assert_allclose(augment.resize_window(img, small),
                             np_resize_bilinear(img[3:7, 1:5], 8, 8),
                             atol=2e-6)


def test_non_square_image_uses_authors_window():
  img = _image(12, 8)
  key = _keys(1, seed=5)[0]
  y0, x0, h, w = (int(v) for v in augment.crop_and_resize_params(
      key, 12, 8, 0.5))
  assert w == min(h, 8) and 6 <= h <= 12
  out = augment.crop_and_resize(key, img, 0.5)
  np.testing.assert_allclose(
      out, np_resize_bilinear(img[y0:y0 + h, x0:x0 + w], 12, 8), atol=2e-6)


def test_crop_side_and_position_cover_their_ranges():
  params = jax.jit(jax.vmap(
      lambda k: augment.crop_and_resize_params(k, 16, 16, 0.5)))(
          _keys(N_STATS, seed=2))
  y0, x0, side, width = (np.asarray(p) for p in params)
  np.testing.assert_array_equal(side, width)  # square crops
  counts = np.bincount(side, minlength=17)[8:]
  assert counts.sum() == N_STATS and np.all(counts > 0.6 * N_STATS / 9)
  assert np.all(y0 >= 0) and np.all(y0 + side <= 16)
  assert np.all(x0 + side <= 16)
  small = side == 8  # the position of the smallest crop spans 0..8
  assert set(y0[small]) == set(range(9))
  with pytest.raises(ValueError, match='min_scale'):
    augment.crop_and_resize_params(_keys(1)[0], 16, 16, 0.0)


# ----------------------------------------------------------------------------
# Colour jitter.
# ----------------------------------------------------------------------------


def test_single_jitter_ops_match_references():
  img = _image(8)
  np.testing.assert_allclose(augment.adjust_brightness(img, 0.3), img + 0.3,
                             atol=1e-6)
  np.testing.assert_allclose(augment.adjust_contrast(img, 1.35),
                             np_contrast(img, 1.35), atol=2e-6)
  for factor in (0.6, 1.4):
    np.testing.assert_allclose(augment.adjust_saturation(img, factor),
                               np_saturation(img, factor), atol=2e-6)
  for delta in (-0.4, 0.13, 0.4):
    np.testing.assert_allclose(augment.adjust_hue(img, delta),
                               np_hue(img, delta), atol=2e-6)


def _jitter_batch(order, clip, n, seed, strengths=(0.4, 0.4, 0.4, 0.4)):
  img = _image(8)
  b, c, s, h = strengths

  def one(key):
    params = augment.jitter_params(key, b, c, s, h)
    out = augment.color_jitter(key, img, brightness=b, contrast=c,
                               saturation=s, hue=h, order=order, clip=clip)
    return params, out

  params, outs = jax.jit(jax.vmap(one))(_keys(n, seed))
  return img, params, outs


def test_random_order_jitter_matches_reference_per_image():
  img, params, outs = _jitter_batch(order=None, clip=True, n=12, seed=4)
  orders = {tuple(int(i) for i in o) for o in params.order}
  assert len(orders) > 1
  for n in range(12):
    p = jax.tree.map(lambda x, n=n: x[n], params)
    ref = np_jitter(img, p, [int(i) for i in p.order], clip=True)
    np.testing.assert_allclose(outs[n], ref, atol=1e-5)
  assert outs.min() >= 0.0 and outs.max() <= 1.0


def test_fixed_order_jitter_uses_that_order_for_every_image():
  order = (2, 3, 1, 0)  # HSV ops first: unclipped values reach them in range
  img, params, outs = _jitter_batch(order=order, clip=False, n=12, seed=6)
  for n in range(12):
    p = jax.tree.map(lambda x, n=n: x[n], params)
    np.testing.assert_allclose(outs[n], np_jitter(img, p, order, clip=False),
                               atol=1e-5)
  # The traced-order path agrees when handed the same order.
  as_traced = params._replace(order=jnp.tile(jnp.asarray(order), (12, 1)))
  traced = jax.jit(jax.vmap(lambda p: augment.apply_jitter(
      img, p, None, False)))(as_traced)
  np.testing.assert_allclose(outs, traced, atol=1e-6)
  assert outs.min() < 0.0 or outs.max() > 1.0  # no clipping


def test_jitter_parameter_ranges_and_order_distribution():
  params = jax.jit(jax.vmap(
      lambda k: augment.jitter_params(k, 0.4, 0.3, 0.2, 0.1)))(
          _keys(N_STATS, seed=7))
  for value, lo, hi in ((params.brightness_delta, -0.4, 0.4),
                        (params.contrast_factor, 0.7, 1.3),
                        (params.saturation_factor, 0.8, 1.2),
                        (params.hue_delta, -0.1, 0.1)):
    value = np.asarray(value)
    assert value.min() >= lo and value.max() <= hi
    span = hi - lo
    assert value.min() < lo + 0.01 * span and value.max() > hi - 0.01 * span
    assert abs(value.mean() - (lo + hi) / 2) < 0.02 * span
  orders = {tuple(int(i) for i in o) for o in params.order}
  assert orders == set(itertools.permutations(range(4)))


def test_jitter_rejects_bad_strengths_and_orders():
  key, img = _keys(1)[0], _image(4)
  with pytest.raises(ValueError, match='hue'):
    augment.color_jitter(key, img, hue=0.6)
  with pytest.raises(ValueError, match='contrast'):
    augment.color_jitter(key, img, contrast=1.5)
  with pytest.raises(ValueError, match='permutation'):
    augment.color_jitter(key, img, order=(0, 1, 1, 3))


def test_fixed_jitter_orders_replay_python_shuffle():
  state = random.getstate()
  try:
    random.seed(1)
    expected = []
    for _ in range(4):  # the authors' mechanism: shuffle the op list per view
      ops = list(augment.JITTER_OPS)
      random.shuffle(ops)
      expected.append(tuple(augment.JITTER_OPS.index(o) for o in ops))
  finally:
    random.setstate(state)
  assert augment.fixed_jitter_orders(1, 4) == tuple(expected)
  assert len({augment.fixed_jitter_orders(s, 2) for s in range(10)}) > 1
  with pytest.raises(ValueError, match='num_views'):
    augment.fixed_jitter_orders(0, 0)


# ----------------------------------------------------------------------------
# Grey-scale and blur.
# ----------------------------------------------------------------------------


def test_grayscale_matches_luma_and_rate():
  img = _image(8)
  np.testing.assert_allclose(augment.to_grayscale(img), np_gray(img),
                             atol=1e-6)
  outs = np.asarray(jax.jit(jax.vmap(augment.random_grayscale,
                                     (0, None, None)))(
                                         _keys(N_STATS, seed=8), img, 0.2))
  grey = np.all(np.abs(outs - np_gray(img)) < 1e-6, axis=(1, 2, 3))
  same = np.all(outs == img, axis=(1, 2, 3))
  assert np.all(grey ^ same)
  assert abs(grey.mean() - 0.2) < 0.04


@pytest.mark.parametrize('size, taps', [(32, 3), (64, 7)])
def test_gaussian_blur_matches_zero_padded_reference(size, taps):
  img = _image(size)
  assert 2 * (augment.blur_kernel_size(size) // 2) + 1 == taps
  for sigma in (0.3, 1.0, 2.0):
    np.testing.assert_allclose(augment.gaussian_blur(img, jnp.float32(sigma)),
                               np_blur(img, sigma), atol=2e-6)


def test_random_blur_rate_sigma_range_and_consistency():
  img = _image(32)

  def one(key):
    apply, sigma = augment.blur_params(key)
    return apply, sigma, augment.random_blur(key, img)

  apply, sigma, outs = jax.jit(jax.vmap(one))(_keys(N_STATS, seed=9))
  apply, sigma = np.asarray(apply), np.asarray(sigma)
  assert abs(apply.mean() - 0.5) < 0.05
  assert sigma.min() >= 0.1 and sigma.max() <= 2.0
  for n in range(8):
    ref = np_blur(img, sigma[n]) if apply[n] else img
    np.testing.assert_allclose(outs[n], ref, atol=2e-6)


def test_add_noise_statistics_and_validation():
  x = jnp.zeros((64, 16, 16, 3))
  key = _keys(1, seed=10)[0]
  noisy = np.asarray(augment.add_noise(key, x, 0.1))
  assert abs(noisy.mean()) < 0.003 and abs(noisy.std() - 0.1) < 0.003
  np.testing.assert_array_equal(augment.add_noise(key, x, 0.1), noisy)
  with pytest.raises(ValueError, match='stddev'):
    augment.add_noise(key, x, -1.0)


# ----------------------------------------------------------------------------
# The view pipeline.
# ----------------------------------------------------------------------------


def _manual_view(key, img, cfg, order):
  """The chain rebuilt from its public pieces with the documented keys."""
  k_crop, k_flip, k_jit, k_gray, k_blur = jax.random.split(key, 5)
  x = augment.crop_and_resize(k_crop, img, cfg.crop_min_scale)
  x = augment.random_flip(k_flip, x)
  b, c, s, h = cfg.jitter_strength
  x = augment.color_jitter(k_jit, x, brightness=b, contrast=c, saturation=s,
                           hue=h, order=order, clip=not cfg.authors_code)
  x = augment.random_grayscale(k_gray, x, cfg.gray_prob)
  if not cfg.authors_code:
    x = jnp.clip(augment.random_blur(k_blur, x, cfg.blur_prob), 0.0, 1.0)
  return x


@pytest.mark.parametrize('authors_code', [False, True])
def test_view_augment_is_the_documented_chain(authors_code):
  img = _image(32)
  cfg = augment.ViewAugmentConfig(authors_code=authors_code)
  orders = augment.fixed_jitter_orders(1, 2) if authors_code else None
  order = orders[1] if authors_code else None

  def both(key):
    return (augment.view_augment(key, img, cfg, view_index=1,
                                 jitter_orders=orders),
            _manual_view(key, img, cfg, order))

  got, want = jax.jit(jax.vmap(both))(_keys(8, seed=11))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_value_range_clipped_vs_authors_code():
  raw = RNG.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
  keys = _keys(32, seed=12)
  batch = jax.jit(augment.augment_batch, static_argnums=(2, 3, 4))
  paper = batch(keys, raw, augment.ViewAugmentConfig(), 0, None)
  assert paper.min() >= 0.0 and paper.max() <= 1.0
  cfg = augment.ViewAugmentConfig(authors_code=True)
  authors = batch(keys, raw, cfg, 0, augment.fixed_jitter_orders(1, 2))
  assert authors.min() < 0.0 and authors.max() > 1.0


def test_augment_batch_is_deterministic_and_traced_once():
  cfg = augment.ViewAugmentConfig()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(keys, images):
    return augment.augment_batch(keys, images, cfg)

  raw = RNG.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  keys = _keys(6, seed=13)
  first = np.asarray(fn(keys, raw))
  assert first.shape == (6, 8, 8, 3) and first.dtype == np.float32
  np.testing.assert_array_equal(fn(keys, raw), first)
  other = np.asarray(fn(_keys(6, seed=14), raw))
  assert np.all(np.any(other != first, axis=(1, 2, 3)))
  # Identical images with different keys give different views.
  same = np.repeat(raw[:1], 6, axis=0)
  views = np.asarray(fn(keys, same)).reshape(6, -1)
  assert len({v.tobytes() for v in views}) == 6


def test_no_reduced_precision_contractions():
  # Grey-scale (a dot) and blur (convolutions) must not drop to TF32 on GPUs.
  raw = np.zeros((2, 32, 32, 3), np.uint8)
  hlo = jax.jit(augment.augment_batch, static_argnums=2).lower(
      _keys(2), raw, augment.ViewAugmentConfig()).as_text()
  assert 'dot_general' in hlo and hlo.count('convolution') >= 2
  assert hlo.count('HIGHEST') >= 6 and 'DEFAULT' not in hlo


def test_config_validation_and_conversion():
  cd = ml_collections.ConfigDict({'crop_min_scale': 0.75,
                                  'jitter_strength': [0.1, 0.2, 0.3, 0.4],
                                  'authors_code': True})
  cfg = augment.ViewAugmentConfig.from_config(cd)
  assert cfg.jitter_strength == (0.1, 0.2, 0.3, 0.4)
  assert cfg.crop_min_scale == 0.75 and cfg.authors_code and cfg.flip
  hash(cfg)  # usable as a static jit argument
  with pytest.raises(ValueError, match='unknown'):
    augment.ViewAugmentConfig.from_config({'blur': 0.5})
  with pytest.raises(ValueError, match='gray_prob'):
    augment.ViewAugmentConfig(gray_prob=1.5)
  with pytest.raises(ValueError, match='jitter_strength'):
    augment.ViewAugmentConfig(jitter_strength=(0.4, 0.4))
  img = _image(8)
  with pytest.raises(ValueError, match='fixed_jitter_orders'):
    augment.view_augment(_keys(1)[0], img, cfg)
  with pytest.raises(ValueError, match='view_index'):
    augment.view_augment(_keys(1)[0], img, cfg, 2,
                         augment.fixed_jitter_orders(0, 2))
  with pytest.raises(ValueError, match='one key per image'):
    augment.augment_batch(_keys(2), np.zeros((3, 8, 8, 3), np.uint8),
                          augment.ViewAugmentConfig())


_COMPILED_VS_EAGER = r"""
import jax, numpy as np
from oneclass_jax.data import augment
keys = jax.random.split(jax.random.key(7), 24)
images = np.random.default_rng(7).integers(0, 256, (24, 32, 32, 3), np.uint8)
for authors in (False, True):
  cfg = augment.ViewAugmentConfig(crop_min_scale=0.5, flip=True,
                                  jitter_strength=(0.4, 0.4, 0.4, 0.4),
                                  gray_prob=0.2, blur_prob=0.5,
                                  authors_code=authors)
  orders = augment.fixed_jitter_orders(0, 1) if authors else None
  run = lambda k, x: augment.augment_batch(k, x, cfg, 0, orders)
  compiled = np.asarray(jax.jit(run)(keys, images))
  with jax.disable_jit():
    eager = np.concatenate([np.asarray(run(keys[i:i + 1], images[i:i + 1]))
                            for i in range(len(images))])
  print(authors, float(np.abs(compiled - eager).max()))
"""


@pytest.mark.parametrize("xla_flags", [
    "", "--xla_cpu_experimental_ynn_fusion_type="])
def test_compiled_augmentation_equals_eager_as_training_compiles(xla_flags):
  """The jitted view pipeline, compiled as training compiles it (all XLA
  optimizations; JAX's XLA:CPU defaults, and YNNPACK fusions off as
  launch/local.sh and the CPU benchmarks run), against op-by-op execution.

  With the fusions off XLA:CPU (jaxlib 0.10.2) miscompiled a select between
  an image and its flip followed by an HSV conversion: whole images changed.
  The conftest's JAX_DISABLE_MOST_OPTIMIZATIONS would hide that, hence the
  subprocess.
  """
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_DISABLE_MOST_OPTIMIZATIONS", "XLA_FLAGS")}
  env["XLA_FLAGS"] = xla_flags
  out = subprocess.run([sys.executable, "-c", _COMPILED_VS_EAGER], env=env,
                       capture_output=True, text=True, timeout=600,
                       check=True).stdout.split()
  diffs = dict(zip(out[::2], map(float, out[1::2])))
  assert set(diffs) == {"False", "True"}, out
  for authors, diff in diffs.items():
    assert diff < 1e-5, (authors, diff)
