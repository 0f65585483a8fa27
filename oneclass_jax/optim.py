"""The optimizer of Appendix A.4: momentum SGD, one cosine cycle, coupled L2.

The authors added `weight_decay * sum(||w||^2 / 2)` over every trainable
variable (BatchNorm scales and biases included: their `regularize_bn` flag is
inverted, so its default decays everything) to the loss. That is the same as
adding `weight_decay * w` to the gradient before momentum, which is what
`optax.add_decayed_weights` placed before `optax.sgd` does.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(optim_cfg, steps_per_epoch: int, total_steps: int):
  """lr(step) = base * (min + (1 - min) * (1 + cos(pi * s / total)) / 2).

  With `schedule_granularity='epoch'` (the authors' default) s is the step at
  the start of the current epoch, so the rate is constant within an epoch.
  """
  base, floor = optim_cfg.learning_rate, optim_cfg.min_learning_rate_ratio
  if optim_cfg.schedule == "constant":
    return optax.constant_schedule(base)
  if optim_cfg.schedule != "cosine":
    raise ValueError(f"Unknown schedule {optim_cfg.schedule!r}; use 'cosine' "
                     "or 'constant'.")
  if optim_cfg.schedule_granularity not in ("epoch", "step"):
    raise ValueError("optim.schedule_granularity must be 'epoch' or 'step', "
                     f"got {optim_cfg.schedule_granularity!r}.")
  per_epoch = optim_cfg.schedule_granularity == "epoch"

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    if per_epoch:
      s = steps_per_epoch * jnp.floor(s / steps_per_epoch)
    frac = jnp.clip(s / total_steps, 0.0, 1.0)
    return base * (floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))

  return schedule


# BatchNorm modules: Flax's default names and ours (bn1, stem_bn, proj_bn_0).
_BN_NAME = re.compile(r"^BatchNorm|(^|_)bn(\d*)(_|$)")


def _decay_mask(params, decay_bn: bool):
  """True for every leaf that is L2-decayed (all, or all but BN scale/bias)."""
  def mask_leaf(path, _):
    names = [str(getattr(p, "key", "")) for p in path]
    return decay_bn or not any(_BN_NAME.search(n) for n in names)
  return jax.tree_util.tree_map_with_path(mask_leaf, params)


def make_optimizer(optim_cfg, steps_per_epoch: int, total_steps: int):
  """optax chain: coupled L2 -> momentum SGD with the cosine schedule."""
  if optim_cfg.name != "sgd":
    raise ValueError(f"Unknown optimizer {optim_cfg.name!r}; only 'sgd' "
                     "(the paper's) is implemented.")
  schedule = learning_rate_schedule(optim_cfg, steps_per_epoch, total_steps)
  tx = optax.chain(
      optax.add_decayed_weights(
          optim_cfg.weight_decay,
          mask=lambda p: _decay_mask(p, optim_cfg.decay_batchnorm)),
      optax.sgd(schedule, momentum=optim_cfg.momentum or None,
                nesterov=optim_cfg.nesterov),
  )
  return tx, schedule
