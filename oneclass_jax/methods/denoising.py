"""Denoising autoencoder (Vincent et al. 2008; the "Denoising" rows of Table 2).

The encoder is the ResNet and the decoder reconstructs the clean image from
the pooled representation f of a noisy copy, so f is the bottleneck. The paper
gives no recipe; Gaussian pixel noise with `config.denoising.noise_std` and a
per-pixel squared error are our choices (docs/deviations.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from oneclass_jax.data import augment


def make_inputs(keys, images, config):
  """uint8 [B,H,W,3] -> noisy inputs and clean targets (float, [0,1])."""
  clean = augment.to_float(images)
  noise_keys = jax.vmap(lambda key: jax.random.fold_in(key, 0))(keys)
  noisy = jax.vmap(
      lambda key, im: augment.add_noise(key, im, config.denoising.noise_std))(
          noise_keys, clean)
  return noisy, clean


def loss(outputs, targets, config, axis_name):
  del config, axis_name
  recon = outputs["recon"].astype(jnp.float32)
  per_image = jnp.mean(jnp.square(recon - targets), axis=(1, 2, 3))
  return jnp.sum(per_image), targets.shape[0], {}
