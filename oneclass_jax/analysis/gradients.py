"""Gradient explanations of a one-class score (paper Sections 3.2.1 and 5.4).

Everything here is a pure JAX function of a *score function*: a map from a
batch of images [B, H, W, C] (float) to one score per image [B] that treats
the images independently (a model in inference mode, BatchNorm on its running
statistics). For the paper's explanation the score is the KDE normality
KDE_γ(f(x)) of `detectors.kde`, differentiated end to end through the network:
∂KDE(f(x))/∂x = ∂KDE/∂f · ∂f/∂x.

* `integrated_gradients` (Sundararajan et al. 2017): the path integral of the
  gradient from a baseline x' to x,
      IG_i(x) = (x_i − x'_i) ∫_0^1 ∂s(x' + α(x − x'))/∂x_i dα,
  by the trapezoidal rule with `steps` intervals. Completeness:
  Σ_i IG_i(x) = s(x) − s(x') up to the quadrature error, which
  `completeness_gap` measures (it shrinks as `steps` grows).
* `gradcam` (Selvaraju et al. 2017) on a feature map A [B, h, w, K] (the last
  convolutional stage): α_k = mean_{ij} ∂s/∂A_ijk, map = ReLU(Σ_k α_k A_k),
  upsampled bilinearly to the image size.
* Baselines: black (all zeros) and blurred (a Gaussian blur of x, Sturmfels
  et al. 2020), so the attribution says what the sharp image adds.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ScoreFn = Callable[[jax.Array], jax.Array]


def black_baseline(images: jax.Array) -> jax.Array:
  """An all-zero (black) image per input."""
  return jnp.zeros_like(images)


def _gaussian_kernel_1d(sigma: float, radius: int) -> np.ndarray:
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return (k / k.sum()).astype(np.float32)


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur of [B, H, W, C] images, per channel.

  The kernel has radius int(4σ + 0.5) and the border is mirrored with the
  edge sample repeated (`jnp.pad` 'symmetric'), which is what
  `scipy.ndimage.gaussian_filter(mode='reflect')` does.
  """
  if not sigma > 0:
    raise ValueError(f"blur sigma must be > 0, got {sigma}.")
  if images.ndim != 4:
    raise ValueError(f"gaussian_blur expects [B, H, W, C] images, got shape "
                     f"{images.shape}.")
  radius = int(4.0 * sigma + 0.5)
  kernel = jnp.asarray(_gaussian_kernel_1d(sigma, radius), images.dtype)
  out = images
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (radius, radius)
    padded = jnp.pad(out, pad, mode="symmetric")
    size = out.shape[axis]
    # A weighted sum of shifted slices: exact, and cheap for small images.
    out = sum(kernel[j] * jax.lax.slice_in_dim(padded, j, j + size, axis=axis)
              for j in range(2 * radius + 1))
  return out


def blurred_baseline(images: jax.Array, sigma: float | None = None
                     ) -> jax.Array:
  """A Gaussian blur of each image; σ defaults to 1/8 of the image side."""
  if sigma is None:
    sigma = images.shape[1] / 8.0
  return gaussian_blur(images, sigma)


BASELINES = {"black": black_baseline, "blur": blurred_baseline}


def make_baseline(name: str, images: jax.Array, **kwargs) -> jax.Array:
  """The baseline called `name` ('black' or 'blur') for `images`."""
  if name not in BASELINES:
    raise ValueError(f"Unknown IG baseline {name!r}; choose one of "
                     f"{sorted(BASELINES)}.")
  return BASELINES[name](images, **kwargs)


def trapezoid_nodes(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(α_0..α_steps, weights) of the trapezoidal rule on [0, 1]."""
  if steps < 1:
    raise ValueError(f"integrated gradients needs steps >= 1, got {steps}.")
  alphas = np.linspace(0.0, 1.0, steps + 1)
  weights = np.full(steps + 1, 1.0 / steps)
  weights[[0, -1]] *= 0.5
  return alphas.astype(np.float32), weights.astype(np.float32)


def input_gradients(score_fn: ScoreFn, images: jax.Array) -> jax.Array:
  """∂s(x_b)/∂x_b for every image of the batch (scores are per image)."""
  return jax.grad(lambda x: jnp.sum(score_fn(x)))(images)


def integrated_gradients(score_fn: ScoreFn, images: jax.Array,
                         baseline: jax.Array, *, steps: int = 64,
                         chunk: int | None = 8) -> jax.Array:
  """Integrated-gradient attributions [B, H, W, C] of `score_fn` at `images`.

  Args:
    score_fn: images [n, H, W, C] -> [n] scores, independent per image.
    images: [B, H, W, C] inputs.
    baseline: [B, H, W, C] reference inputs (see `make_baseline`).
    steps: trapezoidal intervals along the straight path (steps + 1
      gradient evaluations per image).
    chunk: path points evaluated together (bounds memory: chunk × B images
      go through the network at once); None = all at once.

  Returns:
    Attributions whose sum over an image approximates s(x) − s(baseline).
  """
  if images.shape != baseline.shape:
    raise ValueError(f"images {images.shape} and baseline {baseline.shape} "
                     "must have the same shape.")
  alphas, weights = trapezoid_nodes(steps)
  delta = images - baseline

  def grad_at(alpha):
    return input_gradients(score_fn, baseline + alpha * delta)

  grads = jax.lax.map(grad_at, jnp.asarray(alphas),
                      batch_size=None if chunk is None else min(chunk,
                                                                steps + 1))
  mean_grad = jnp.tensordot(jnp.asarray(weights), grads, axes=1)
  return delta * mean_grad


def completeness_gap(score_fn: ScoreFn, images: jax.Array,
                     baseline: jax.Array, attributions: jax.Array
                     ) -> dict[str, np.ndarray]:
  """How far Σ IG is from s(x) − s(baseline), per image.

  Returns:
    {'sum': Σ_i IG_i, 'delta': s(x) − s(x'), 'gap': sum − delta,
     'relative': |gap| / max(|delta|, 1e-12)} as float64 numpy arrays [B].
  """
  total = np.asarray(jnp.sum(attributions, axis=(1, 2, 3)), np.float64)
  delta = np.asarray(score_fn(images) - score_fn(baseline), np.float64)
  gap = total - delta
  return {"sum": total, "delta": delta, "gap": gap,
          "relative": np.abs(gap) / np.maximum(np.abs(delta), 1e-12)}


def gradcam(score_from_features: ScoreFn, features: jax.Array,
            size: tuple[int, int] | None = None) -> jax.Array:
  """GradCAM maps [B, h, w] (or [B, *size]) of a score of a feature map.

  Args:
    score_from_features: feature maps [B, h, w, K] -> [B] scores (the rest of
      the network after the last convolutional stage, then the score).
    features: [B, h, w, K] activations of that stage for the images.
    size: (H, W) to upsample the maps to (bilinear), or None.

  Returns:
    Non-negative maps ReLU(Σ_k α_k A_k) with α_k the spatial mean of
    ∂s/∂A_k.
  """
  if features.ndim != 4:
    raise ValueError(f"gradcam expects features [B, h, w, K], got shape "
                     f"{features.shape}.")
  grads = jax.grad(lambda a: jnp.sum(score_from_features(a)))(features)
  weights = jnp.mean(grads, axis=(1, 2), keepdims=True)
  cam = jax.nn.relu(jnp.sum(weights * features, axis=-1))
  if size is not None and tuple(size) != cam.shape[1:]:
    # Bilinear weights are non-negative, so the upsampled map stays >= 0.
    cam = jnp.maximum(jax.image.resize(cam, (cam.shape[0], *size),
                                       "bilinear"), 0.0)
  return cam


def attribution_heatmap(attributions, percentile: float = 99.0
                        ) -> np.ndarray:
  """[B, H, W] display maps in [0, 1]: Σ_c |IG|, clipped at a percentile.

  Clipping at the per-image 99th percentile keeps a few extreme pixels from
  washing out the rest, as is usual for IG displays.
  """
  a = np.abs(np.asarray(attributions, np.float64)).sum(axis=-1)
  top = np.percentile(a.reshape(len(a), -1), percentile, axis=1)
  top = np.where(top > 0, top, 1.0)[:, None, None]
  return np.clip(a / top, 0.0, 1.0)


def normalize_maps(maps) -> np.ndarray:
  """[B, H, W] non-negative maps divided by their per-image maximum."""
  m = np.asarray(maps, np.float64)
  top = m.reshape(len(m), -1).max(axis=1)
  return m / np.where(top > 0, top, 1.0)[:, None, None]

