"""The pure per-device train step, and how it runs on a mesh.

`make_step_fn` gives `(state, images, rng, axis_name) -> (state, metrics)`
for one device; `shard_step` runs it with `jax.shard_map` over the `data`
mesh (pmap semantics): BatchNorm statistics are per device unless
`config.model.cross_replica_bn`, the loss is normalised by the global batch
and contrastive negatives are gathered from every device. `shard_models_step`
runs K models' steps in one program over a (`model`, `data`) mesh
(`trainer/multi.py`). Nothing here has side effects; the loop
(`trainer/loop.py`) owns checkpoints, writers and logging.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from oneclass_jax import parallel

MODEL_AXIS = "model"
BATCHING = ("auto", "vmap", "sequential")


def make_loss_fn(model, method, config):
  """Per-device loss: `(params, batch_stats, images, rng, step, axis_name)`.

  Returns `(global_loss, (sums, new_batch_stats))`, where the loss is already
  reduced over `axis_name`, so its gradient is the global one.
  """

  def loss_fn(params, batch_stats, images, rng, step, axis_name):
    rng = jax.random.fold_in(rng, step)
    local = images.shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local
    # One key per example from its position in the *global* batch, so the
    # augmentations do not depend on how the batch is split over devices.
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(
        offset + jnp.arange(local))
    inputs, targets = method.make_inputs(keys, images, config)
    outputs, new_vars = model.apply(
        {"params": params, "batch_stats": batch_stats}, inputs, train=True,
        mutable=["batch_stats"])
    loss_sum, count, aux = method.loss(outputs, targets, config, axis_name)
    # Differentiate the *globally reduced* loss: under shard_map the
    # gradient w.r.t. replicated parameters is then already the global one
    # (a pmean of local gradients would be N times too large).
    sums = _psum((loss_sum, count, aux), axis_name)
    return sums[0] / sums[1], (sums, new_vars["batch_stats"])

  return loss_fn


def apply_gradients(state, grads, batch_stats, sums, tx):
  """The optimizer update and the step's metrics (pure, no collectives)."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = jax.tree.map(jnp.add, state["params"], updates)
  new_state = {"step": state["step"] + 1, "params": params,
               "batch_stats": batch_stats, "opt_state": opt_state}
  loss_sum, count, aux = sums
  metrics = {"loss": loss_sum / count, "grad_norm": _global_norm(grads),
             **{k: v / count for k, v in aux.items()}}
  return new_state, metrics


def make_step_fn(model, method, tx, config):
  """The per-device train step; `axis_name` names the device axis (or None)."""
  loss_fn = make_loss_fn(model, method, config)

  def step_fn(state, images, rng, axis_name):
    grads, (sums, batch_stats) = jax.grad(loss_fn, has_aux=True)(
        state["params"], state["batch_stats"], images, rng, state["step"],
        axis_name)
    if axis_name is not None:
      # Per-device BN normalises with local statistics; the running averages
      # are averaged over devices, as Keras' MirroredStrategy does.
      batch_stats = jax.lax.pmean(batch_stats, axis_name)
    return apply_gradients(state, grads, batch_stats, sums, tx)

  return step_fn


def _psum(tree, axis_name):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


def shard_step(step_fn, mesh):
  """jit(shard_map(step)) over the data mesh; the state buffer is donated."""
  sharded = jax.shard_map(
      functools.partial(step_fn, axis_name=parallel.AXIS), mesh=mesh,
      in_specs=(P(), P(parallel.AXIS), P()), out_specs=(P(), P()))
  return jax.jit(sharded, donate_argnums=(0,))


def resolve_batching(batching: str) -> str:
  """'auto' -> 'sequential' on CPU, 'vmap' on accelerators."""
  if batching not in BATCHING:
    raise ValueError(f"model_batching must be one of {BATCHING}, got "
                     f"{batching!r}.")
  if batching == "auto":
    return "sequential" if jax.default_backend() == "cpu" else "vmap"
  return batching


def shard_models_step(step_fn, mesh, batching: str = "vmap"):
  """jit(shard_map(K models' steps)) over stacked states [K, ...].

  `step_fn(state, images, rng, axis_name)` is train.make_step_fn's per-device
  step; images are [K, global batch, H, W, C], rngs [K] typed keys.
  """
  step = functools.partial(step_fn, axis_name=parallel.AXIS)

  def per_device(states, images, rngs):
    if resolve_batching(batching) == "vmap":
      return jax.vmap(step)(states, images, rngs)
    outs = [step(*jax.tree.map(lambda x, i=i: x[i], (states, images, rngs)))
            for i in range(images.shape[0])]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  models = P(MODEL_AXIS)
  sharded = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(models, P(MODEL_AXIS, parallel.AXIS), models),
      out_specs=(models, models))
  return jax.jit(sharded, donate_argnums=(0,))
