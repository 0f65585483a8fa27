"""Rotation prediction (Eq. 1): every image contributes all four rotations.

As in the authors' code, view k is the full stochastic augmentation followed by
rot90 with k quarter-turns (applied last), and the four views go through the
network in one pass, so BatchNorm sees all rotations together.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from oneclass_jax.data import augment

NUM_ROTATIONS = 4


def make_inputs(keys, images, config):
  """uint8 [B,H,W,3] -> inputs [4B,H,W,3] (view-major) and targets [4B]."""
  views = augment.make_views(keys, images, config.augment, NUM_ROTATIONS,
                             config.seed)
  views = [jax.vmap(lambda im, k=k: augment.rot90(im, k))(view)
           for k, view in enumerate(views)]
  targets = jnp.repeat(jnp.arange(NUM_ROTATIONS), images.shape[0])
  return jnp.concatenate(views), targets


def loss(outputs, targets, config, axis_name):
  del config, axis_name  # The cross-entropy needs nothing from other devices.
  logits = outputs["logits"].astype(jnp.float32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = jnp.sum(jnp.argmax(logits, -1) == targets)
  return jnp.sum(xent), targets.shape[0], {"accuracy": correct}
