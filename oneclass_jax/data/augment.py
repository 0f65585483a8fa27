"""View augmentations in JAX, run per image inside the jitted train step.

The chain follows the authors' training string
`cnr0.5+hflip+jitter_b0.4_c0.4_s0.4_h0.4+gray0.2+blur0.5` (paper Sec. 3.1:
"resize and crop, horizontal flip, color jittering, gray-scale and gaussian
blur, following SimCLR"):

  crop_and_resize -> random_flip -> color_jitter -> random_grayscale
  -> random_blur, then (rotation views only) rot90 as the very last op.

Two modes, selected by `ViewAugmentConfig.authors_code`:

* paper/SimCLR (default): jitter order drawn afresh per image, values clipped
  to [0, 1] after every jitter op, Gaussian blur applied with p = 0.5.
* authors' code (`authors_code=True`): reproduces their TF2 pipeline exactly,
  bugs included: blur is never applied (their `RandomBlur` returns the input
  when training), nothing is clipped (values leave [0, 1]), and the jitter
  order is drawn once per view for the whole run (Python `random.shuffle` at
  tf.data trace time); see `fixed_jitter_orders`.

Every random op is split into a parameter draw (`*_params`) and a
deterministic core taking those parameters, so tests can check the core
against independent references with known parameters. Images are float32
[H, W, 3] in [0, 1]; all functions use static shapes and are jit/vmap-safe.
"""
import dataclasses
import random
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

import dm_pix as pix
import jax
import jax.numpy as jnp

# Index of each jitter op in a jitter order such as (3, 0, 2, 1).
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')

Order = Tuple[int, int, int, int]


def _check_image(image, name='image'):
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'{name} must be a single [H, W, 3] image, got shape '
                     f'{image.shape}; use augment_batch for batches.')


# ----------------------------------------------------------------------------
# Conversions and geometric ops.
# ----------------------------------------------------------------------------


def to_float(images_uint8):
  """uint8 pixels in [0, 255] -> float32 in [0, 1] (the authors' x / 255)."""
  if images_uint8.dtype != jnp.uint8:
    raise ValueError(f'to_float expects uint8 images, got {images_uint8.dtype};'
                     ' pass the raw decoded pixels.')
  return images_uint8.astype(jnp.float32) / 255.0


def rot90(image, k):
  """Rotates counter-clockwise by k quarter turns (k may be traced, 0..3).

  Same convention as np.rot90(axes=(0, 1)) and tf.image.rot90. dm-pix's rot90
  needs a Python k, so the four static rotations are selected with lax.switch.

  Args:
    image: [H, W, C] square image.
    k: int or traced int scalar; taken modulo 4.

  Returns:
    The rotated image, same shape.
  """
  if image.ndim != 3 or image.shape[0] != image.shape[1]:
    raise ValueError(f'rot90 needs a square [H, H, C] image, got {image.shape};'
                     ' rotated non-square images would change shape.')
  branches = [lambda x, j=j: pix.rot90(x, j) for j in range(4)]
  return jax.lax.switch(jnp.asarray(k, jnp.int32) % 4, branches, image)


def random_flip(key, image):
  """Horizontal flip with p = 0.5 (tf.image.random_flip_left_right).

  Written as a column gather rather than dm-pix's select between the image
  and its reverse: XLA:CPU (jaxlib 0.10.2, YNNPACK fusions off) miscompiled
  that select when an HSV conversion (saturation, hue jitter) followed,
  changing whole images against eager execution (test_augment).
  """
  flip = jax.random.bernoulli(key, 0.5)  # dm-pix's draw: same decisions.
  cols = jnp.arange(image.shape[-2])
  return image[..., jnp.where(flip, cols[::-1], cols), :]


class CropParams(NamedTuple):
  """Crop window: top-left corner and size, all int32 scalars."""
  y0: jax.Array
  x0: jax.Array
  height: jax.Array
  width: jax.Array


def crop_and_resize_params(key, height, width, min_scale=0.5):
  """Draws the authors' `cnr` window for an image of static size (H, W).

  Side s ~ UniformInt[int(min_scale * H), H]; the crop is s x min(s, W) (square
  for square images), placed uniformly as tf.image.random_crop does.

  Args:
    key: PRNG key.
    height: static image height H.
    width: static image width W.
    min_scale: smallest side as a fraction of H, in (0, 1].

  Returns:
    CropParams.
  """
  if not 0.0 < min_scale <= 1.0:
    raise ValueError(f'min_scale must be in (0, 1], got {min_scale}.')
  k_side, k_y, k_x = jax.random.split(key, 3)
  low = max(int(min_scale * height), 1)
  side = jax.random.randint(k_side, (), low, height + 1)
  crop_w = jnp.minimum(side, width)
  y0 = jax.random.randint(k_y, (), 0, height - side + 1)
  x0 = jax.random.randint(k_x, (), 0, width - crop_w + 1)
  return CropParams(y0, x0, side, crop_w)


def _bilinear_taps(offset, crop_size, out_size):
  """Source taps of a half-pixel-centre bilinear resize of one window axis.

  Output index i samples the window at (i + 0.5) * crop / out - 0.5, clamped
  to the window: this is what tf.image.resize (bilinear, antialias=False) does.

  Returns:
    (lower, upper, frac): absolute int32 indices and the float32 weight of
    `upper`, each of shape [out_size].
  """
  scale = crop_size.astype(jnp.float32) / out_size
  src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
  src = jnp.clip(src, 0.0, (crop_size - 1).astype(jnp.float32))
  lower = jnp.floor(src).astype(jnp.int32)
  upper = jnp.minimum(lower + 1, crop_size - 1)
  return offset + lower, offset + upper, src - lower


def resize_window(image, params):
  """Bilinearly resizes the window `params` of `image` back to its full size.

  Written here because dm-pix has no crop-and-resize and a dynamic slice
  cannot have a traced size: instead of cutting the window out, the bilinear
  sampling grid is laid over it, so the output shape stays static. Gathers
  (not interpolation matmuls) keep it exact in float32 on GPUs, where matmuls
  may run in reduced (TF32) precision.

  Args:
    image: float [H, W, C].
    params: CropParams inside the image.

  Returns:
    float [H, W, C].
  """
  height, width = image.shape[:2]
  y_lo, y_hi, fy = _bilinear_taps(params.y0, params.height, height)
  x_lo, x_hi, fx = _bilinear_taps(params.x0, params.width, width)
  rows = (jnp.take(image, y_lo, axis=0) * (1 - fy)[:, None, None]
          + jnp.take(image, y_hi, axis=0) * fy[:, None, None])
  return (jnp.take(rows, x_lo, axis=1) * (1 - fx)[None, :, None]
          + jnp.take(rows, x_hi, axis=1) * fx[None, :, None])


def crop_and_resize(key, image, min_scale=0.5):
  """The authors' `cnr<min_scale>`: random square crop, resized back to HxW."""
  params = crop_and_resize_params(key, image.shape[0], image.shape[1],
                                  min_scale)
  return resize_window(image, params)


# ----------------------------------------------------------------------------
# Colour jitter.
# ----------------------------------------------------------------------------


class JitterParams(NamedTuple):
  """Parameters of one colour jitter draw (float32 scalars, int32[4] order)."""
  brightness_delta: jax.Array
  contrast_factor: jax.Array
  saturation_factor: jax.Array
  hue_delta: jax.Array
  order: jax.Array


def _check_strengths(brightness, contrast, saturation, hue):
  """The limits tf.image.random_* enforce (hue <= 0.5, factors >= 0)."""
  if min(brightness, contrast, saturation, hue) < 0:
    raise ValueError('jitter strengths must be >= 0, got '
                     f'{(brightness, contrast, saturation, hue)}.')
  if contrast > 1 or saturation > 1:
    raise ValueError('contrast and saturation strengths must be <= 1 (factor '
                     f'1 - s must stay >= 0), got {contrast}, {saturation}.')
  if hue > 0.5:
    raise ValueError(f'hue strength must be <= 0.5 (half the hue circle), '
                     f'got {hue}.')


def check_order(order):
  """Returns `order` as a tuple after checking it permutes (0, 1, 2, 3)."""
  order = tuple(int(i) for i in order)
  if sorted(order) != [0, 1, 2, 3]:
    raise ValueError(f'a jitter order must be a permutation of (0, 1, 2, 3) '
                     f'indexing {JITTER_OPS}, got {order}.')
  return order


def jitter_params(key, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4):
  """Draws jitter parameters as the tf.image.random_* ops the authors used.

  Brightness delta ~ U[-b, b] (additive), contrast and saturation factors
  ~ U[1 - c, 1 + c], hue delta ~ U[-h, h] (fraction of the hue circle), and a
  uniformly random order of the four ops.
  """
  _check_strengths(brightness, contrast, saturation, hue)
  k_b, k_c, k_s, k_h, k_o = jax.random.split(key, 5)

  def around(k, centre, half_width):
    return jax.random.uniform(k, (), jnp.float32, centre - half_width,
                              centre + half_width)

  return JitterParams(
      brightness_delta=around(k_b, 0.0, brightness),
      contrast_factor=around(k_c, 1.0, contrast),
      saturation_factor=around(k_s, 1.0, saturation),
      hue_delta=around(k_h, 0.0, hue),
      order=jax.random.permutation(k_o, 4).astype(jnp.int32))


def adjust_brightness(image, delta):
  """x + delta (tf.image.adjust_brightness)."""
  return pix.adjust_brightness(image, delta)


def adjust_contrast(image, factor):
  """(x - mean) * factor + mean, mean per channel (tf.image.adjust_contrast)."""
  return pix.adjust_contrast(image, factor)


def adjust_saturation(image, factor):
  """HSV saturation times factor, clipped to [0, 1] (tf.image)."""
  return pix.adjust_saturation(image, factor)


def adjust_hue(image, delta):
  """Rotates HSV hue by delta of the full circle (tf.image.adjust_hue)."""
  return pix.adjust_hue(image, delta)


def _jitter_ops(params, clip):
  """The four jitter ops as image -> image functions, in JITTER_OPS order."""
  finish = (lambda x: jnp.clip(x, 0.0, 1.0)) if clip else (lambda x: x)
  return [
      lambda x: finish(adjust_brightness(x, params.brightness_delta)),
      lambda x: finish(adjust_contrast(x, params.contrast_factor)),
      lambda x: finish(adjust_saturation(x, params.saturation_factor)),
      lambda x: finish(adjust_hue(x, params.hue_delta)),
  ]


def apply_jitter(image, params, order=None, clip=True):
  """Applies jitter `params` deterministically.

  Args:
    image: float [H, W, 3].
    params: JitterParams.
    order: a static permutation of (0, 1, 2, 3) indexing JITTER_OPS, or None
      to use the traced `params.order` (one lax.switch per step).
    clip: clip to [0, 1] after each op (SimCLR); False keeps the authors'
      unclipped values.

  Returns:
    The jittered image.
  """
  ops = _jitter_ops(params, clip)
  if order is not None:
    for i in check_order(order):
      image = ops[i](image)
    return image
  for step in range(4):
    # Every op, then the one this step's order names. Under vmap a switch
    # computes all branches too (a select), but XLA:CPU (jaxlib 0.10.2,
    # YNNPACK fusions off) miscompiles two such selects in a row after the
    # crop: whole images differed from eager execution. Indexing the stack
    # compiles correctly everywhere we checked (test_augment).
    image = jnp.stack([op(image) for op in ops])[params.order[step]]
  return image


def color_jitter(key, image, *, brightness=0.4, contrast=0.4, saturation=0.4,
                 hue=0.4, order=None, clip=True):
  """The authors' ColorJitter, applied with probability 1.

  Args:
    key: PRNG key.
    image: float [H, W, 3].
    brightness: additive delta bound b, delta ~ U[-b, b].
    contrast: factor ~ U[1 - c, 1 + c] around the per-channel mean.
    saturation: factor ~ U[1 - s, 1 + s].
    hue: delta ~ U[-h, h] of the hue circle, h <= 0.5.
    order: None draws a fresh order per image (paper/SimCLR); a permutation
      of (0, 1, 2, 3) over JITTER_OPS fixes it (the authors' code).
    clip: clip to [0, 1] after each op.

  Returns:
    The jittered image.
  """
  params = jitter_params(key, brightness, contrast, saturation, hue)
  return apply_jitter(image, params, order, clip)


def fixed_jitter_orders(seed, num_views):
  """One frozen jitter order per view, as the authors' code produced them.

  Their ColorJitter calls Python `random.shuffle` on the op list
  [brightness, contrast, saturation, hue] once per view when tf.data traces
  the map function, after `random.seed(seed)`. This replays that mechanism
  with a private `random.Random(seed)`, so with no other draws in between it
  gives their orders.

  Args:
    seed: int seed.
    num_views: number of views (2 contrastive, 4 rotation).

  Returns:
    Tuple of `num_views` orders, each a permutation of (0, 1, 2, 3).
  """
  if num_views < 1:
    raise ValueError(f'num_views must be >= 1, got {num_views}.')
  rng = random.Random(seed)
  orders = []
  for _ in range(num_views):
    order = list(range(4))
    rng.shuffle(order)
    orders.append(tuple(order))
  return tuple(orders)


# ----------------------------------------------------------------------------
# Grey-scale and blur.
# ----------------------------------------------------------------------------


def to_grayscale(image):
  """Luma (0.2989, 0.5870, 0.1140) replicated to 3 channels (tf.image)."""
  # dm-pix uses a dot; pin full float32 so GPUs do not run it in TF32.
  with jax.default_matmul_precision('highest'):
    return pix.rgb_to_grayscale(image, keep_dims=True, luma_standard='rec601')


def random_grayscale(key, image, p=0.2):
  """Converts to grey with probability p."""
  return jnp.where(jax.random.bernoulli(key, p), to_grayscale(image), image)


def blur_kernel_size(height):
  """SimCLR's kernel size H // 10; dm-pix, like SimCLR, uses radius size // 2."""
  return height // 10


def gaussian_blur(image, sigma):
  """SimCLR's separable Gaussian blur with zero ('SAME') padding.

  SimCLR's `gaussian_blur` convolves with padding='SAME', i.e. zeros outside
  the image (so borders darken slightly); dm-pix does the same. The kernel has
  2 * ((H // 10) // 2) + 1 taps: 3 for 32x32, 7 for 64x64.
  """
  # Full float32 convolutions: GPUs would otherwise be free to use TF32.
  with jax.default_matmul_precision('highest'):
    return pix.gaussian_blur(image, sigma, blur_kernel_size(image.shape[0]),
                             padding='SAME')


def blur_params(key, p=0.5, sigma_min=0.1, sigma_max=2.0):
  """(apply ~ Bernoulli(p), sigma ~ U[sigma_min, sigma_max])."""
  k_apply, k_sigma = jax.random.split(key)
  sigma = jax.random.uniform(k_sigma, (), jnp.float32, sigma_min, sigma_max)
  return jax.random.bernoulli(k_apply, p), sigma


def random_blur(key, image, p=0.5, sigma_min=0.1, sigma_max=2.0):
  """SimCLR's random Gaussian blur, applied with probability p."""
  apply, sigma = blur_params(key, p, sigma_min, sigma_max)
  return jnp.where(apply, gaussian_blur(image, sigma), image)


def add_noise(key, images, stddev=0.1):
  """Gaussian pixel noise for the denoising autoencoder's input.

  Neither the paper nor the authors' code gives the noise level; the default
  0.1 (about 25/255 on [0, 1] pixels) is a common denoising-autoencoder
  choice. Values are not clipped, so the noise stays zero-mean.

  Args:
    key: PRNG key (one for the whole array).
    images: float array of any shape.
    stddev: noise standard deviation, >= 0.

  Returns:
    images + stddev * N(0, 1), same shape and dtype.
  """
  if stddev < 0:
    raise ValueError(f'stddev must be >= 0, got {stddev}.')
  noise = jax.random.normal(key, images.shape, images.dtype)
  return images + stddev * noise


# ----------------------------------------------------------------------------
# The view pipeline.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViewAugmentConfig:
  """Settings of one view's augmentation chain (hashable: usable as static).

  Attributes:
    crop_min_scale: smallest crop side as a fraction of H (`cnr0.5`).
    flip: random horizontal flip.
    jitter_strength: (brightness, contrast, saturation, hue) strengths.
    gray_prob: probability of grey-scale.
    blur_prob: probability of Gaussian blur (ignored with authors_code).
    authors_code: reproduce the authors' code: no blur, no clipping, one
      fixed jitter order per view.
  """
  crop_min_scale: float = 0.5
  flip: bool = True
  jitter_strength: Tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.4)
  gray_prob: float = 0.2
  blur_prob: float = 0.5
  authors_code: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'jitter_strength',
                       tuple(float(s) for s in self.jitter_strength))
    if len(self.jitter_strength) != 4:
      raise ValueError('jitter_strength needs 4 values (brightness, contrast, '
                       f'saturation, hue), got {self.jitter_strength}.')
    _check_strengths(*self.jitter_strength)
    if not 0.0 < self.crop_min_scale <= 1.0:
      raise ValueError(f'crop_min_scale must be in (0, 1], got '
                       f'{self.crop_min_scale}.')
    for name in ('gray_prob', 'blur_prob'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got '
                         f'{getattr(self, name)}.')

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> 'ViewAugmentConfig':
    """Builds from a ConfigDict (or dict) using the same field names."""
    config = dict(config)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise ValueError(f'unknown augmentation settings {unknown}; valid '
                       f'names are {sorted(fields)}.')
    return cls(**config)


def _view_order(cfg, view_index, jitter_orders) -> Optional[Order]:
  """The static jitter order of this view, or None for a per-image order."""
  if jitter_orders is None:
    if cfg.authors_code:
      raise ValueError('authors_code=True freezes one jitter order per view: '
                       'pass jitter_orders=fixed_jitter_orders(seed, '
                       'num_views).')
    return None
  if not 0 <= view_index < len(jitter_orders):
    raise ValueError(f'view_index {view_index} has no entry in jitter_orders '
                     f'({len(jitter_orders)} views).')
  return check_order(jitter_orders[view_index])


def view_augment(key, image, cfg, view_index=0, jitter_orders=None):
  """One stochastic view: crop -> flip -> jitter -> grey -> blur.

  The key is split once into (crop, flip, jitter, grey, blur) sub-keys, in
  that order; each op uses its own sub-key whether or not it is enabled.

  Args:
    key: PRNG key for this image and view.
    image: float32 [H, W, 3] in [0, 1].
    cfg: ViewAugmentConfig.
    view_index: static index of this view in `jitter_orders`.
    jitter_orders: None (a fresh jitter order per image), or per-view static
      orders from `fixed_jitter_orders` (required with cfg.authors_code).

  Returns:
    float32 [H, W, 3]; in [0, 1] unless cfg.authors_code.
  """
  _check_image(image)
  order = _view_order(cfg, view_index, jitter_orders)
  clip = not cfg.authors_code
  k_crop, k_flip, k_jitter, k_gray, k_blur = jax.random.split(key, 5)
  image = crop_and_resize(k_crop, image, cfg.crop_min_scale)
  if cfg.flip:
    image = random_flip(k_flip, image)
  brightness, contrast, saturation, hue = cfg.jitter_strength
  image = color_jitter(k_jitter, image, brightness=brightness,
                       contrast=contrast, saturation=saturation, hue=hue,
                       order=order, clip=clip)
  image = random_grayscale(k_gray, image, cfg.gray_prob)
  if cfg.authors_code:
    return image  # Their RandomBlur is a no-op in training (inverted flag).
  image = random_blur(k_blur, image, cfg.blur_prob)
  # The normalised kernel can sum to 1 + 1 ulp; keep the promised range.
  return jnp.clip(image, 0.0, 1.0)


def augment_batch(keys, images_uint8, cfg, view_index=0,
                  jitter_orders: Optional[Sequence[Order]] = None):
  """view_augment over a batch, each image with its own key.

  Args:
    keys: [B] PRNG keys (typed or raw uint32 [B, 2]), one per example; derive
      them from global example indices so sharding does not change them.
    images_uint8: uint8 [B, H, W, 3].
    cfg: ViewAugmentConfig (static).
    view_index: static view index (selects the frozen jitter order).
    jitter_orders: see view_augment.

  Returns:
    float32 [B, H, W, 3].
  """
  if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
    raise ValueError(f'images must be [B, H, W, 3], got {images_uint8.shape}.')
  if keys.shape[0] != images_uint8.shape[0]:
    raise ValueError(f'need one key per image: {keys.shape[0]} keys for '
                     f'{images_uint8.shape[0]} images.')
  images = to_float(images_uint8)
  one = lambda k, x: view_augment(k, x, cfg, view_index, jitter_orders)
  return jax.vmap(one)(keys, images)


def make_views(keys, images_uint8, augment_config, num_views, seed):
  """`num_views` independent views of a batch: a list of float32 [B,H,W,3].

  View v of example i uses `fold_in(keys[i], v)`. `augment_config` is a
  ConfigDict (or mapping) of ViewAugmentConfig fields; with `authors_code`
  the per-view jitter orders are frozen from `seed`, as their code did.
  """
  cfg = ViewAugmentConfig.from_config(augment_config)
  orders = fixed_jitter_orders(seed, num_views) if cfg.authors_code else None
  views = []
  for v in range(num_views):
    view_keys = jax.vmap(lambda key, v=v: jax.random.fold_in(key, v))(keys)
    views.append(augment_batch(view_keys, images_uint8, cfg, view_index=v,
                               jitter_orders=orders))
  return views
