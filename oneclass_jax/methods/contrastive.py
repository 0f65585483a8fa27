"""Contrastive learning (Eq. 2), negatives from the whole global batch.

Two forms, chosen by `config.contrastive.symmetric`:
- False (default, the authors' code): one-directional InfoNCE. Anchors are the
  first views; candidates are the second views of every image of the global
  batch (one positive, B_global - 1 negatives).
- True: SimCLR's symmetric NT-Xent over all 2·B_global views (each anchor has
  one positive and 2·B_global - 2 negatives).
With distribution augmentation (`contrastive_da`) rotated copies are distinct
instances of the training set, so they are simply negatives of one another.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from oneclass_jax.data import augment


def make_inputs(keys, images, config):
  """uint8 [B,H,W,3] -> two independent views, stacked [2B,H,W,3]."""
  views = augment.make_views(keys, images, config.augment, 2, config.seed)
  return jnp.concatenate(views), None


def _normalize(x):
  # Through the squared norm, not jnp.linalg.norm: the gradient of a norm at
  # an all-zero row (a dead ReLU head) is 0/0 = NaN even behind a maximum.
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, 1e-24))


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(
      x, axis_name, tiled=True)


def _xent_sum(logits, targets):
  picked = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
  return jnp.sum(jax.nn.logsumexp(logits, axis=1) - picked)


def loss(outputs, targets, config, axis_name):
  del targets
  z = _normalize(outputs["embeds"].astype(jnp.float32))
  z1, z2 = jnp.split(z, 2)
  local = z1.shape[0]
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local
  positives = offset + jnp.arange(local)  # Global rows of this device's pairs.
  inv_tau = 1.0 / config.contrastive.temperature
  z2_all = _gather(z2, axis_name)
  logits_12 = z1 @ z2_all.T * inv_tau
  if not config.contrastive.symmetric:
    correct = jnp.sum(jnp.argmax(logits_12, -1) == positives)
    return _xent_sum(logits_12, positives), local, {"accuracy": correct}
  z1_all = _gather(z1, axis_name)
  self_mask = jax.nn.one_hot(positives, z1_all.shape[0], dtype=bool)
  logits_11 = jnp.where(self_mask, -jnp.inf, z1 @ z1_all.T * inv_tau)
  logits_22 = jnp.where(self_mask, -jnp.inf, z2 @ z2_all.T * inv_tau)
  logits_21 = z2 @ z1_all.T * inv_tau
  # Columns: [other view | same view]; the positive sits in the first block.
  anchors_1 = jnp.concatenate([logits_12, logits_11], axis=1)
  anchors_2 = jnp.concatenate([logits_21, logits_22], axis=1)
  total = _xent_sum(anchors_1, positives) + _xent_sum(anchors_2, positives)
  correct = (jnp.sum(jnp.argmax(anchors_1, -1) == positives) +
             jnp.sum(jnp.argmax(anchors_2, -1) == positives))
  return total, 2 * local, {"accuracy": correct}
