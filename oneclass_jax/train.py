"""Stage 1: train a self-supervised representation on one inlier class.

`train_and_evaluate(config, workdir)` is the whole run: the experiment
(`experiment.setup`: data, model, optimizer), the per-device train step,
checkpoints, metrics and, at the end, the stage-2 evaluation of the config's
task (`evaluators`; the paper reports last-epoch numbers). `main.py` is a thin
shell around it; tests call it directly.

The train step is a pure function `(state, images, rng) -> (state, metrics)`
written for one device and run with `jax.shard_map` over the `data` mesh
(pmap semantics): BatchNorm statistics are per device unless
`config.model.cross_replica_bn`, the loss is normalised by the global batch and
contrastive negatives are gathered from every device.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import PartitionSpec as P

from oneclass_jax import checkpoint
from oneclass_jax import config_lib
from oneclass_jax import distributed
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import methods
from oneclass_jax import metric_writers
from oneclass_jax import parallel
from oneclass_jax.data import pipeline


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


def check_workdir_name(workdir) -> str:
  """Refuses an empty --workdir (an unset shell variable, say)."""
  if workdir is None or not str(workdir).strip():
    raise ValueError(
        f"--workdir is empty ({workdir!r}); pass a directory for the run, "
        "e.g. --workdir=/tmp/oneclass_run (an unset shell variable gives '').")
  return str(workdir)


def _prepare_workdir(workdir: str, config) -> None:
  # epath: the workdir may be a gs:// URL. Every process checks the config
  # (so all fail alike); only process 0 writes.
  root = epath.Path(workdir)
  path = root / "config.json"
  current = config_lib.to_dict(config)
  if not path.exists() and _has_checkpoints(root):
    raise ValueError(
        f"Workdir {workdir!r} holds checkpoints but no config.json, so "
        "nothing says which config trained them; refusing to resume under "
        "this one. Copy the run's config.json beside its checkpoints, or use "
        "a new --workdir.")
  if path.exists():
    saved = json.loads(path.read_text())
    diff = config_lib.config_diff(saved, current)
    if diff and (root / "checkpoints").is_dir():
      raise ValueError(
          f"Workdir {workdir!r} holds a run with a different config; refusing "
          "to resume. Differing fields:\n  " + "\n  ".join(diff) +
          "\nUse a new --workdir, or the same config to resume.")
  if jax.process_index() != 0:
    return
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe = root / ".write_test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(f"Workdir {workdir!r} is not writable ({e}); pass "
                          "a --workdir you can write to.") from e
  files.write_json(path, current)


def _has_checkpoints(root: epath.Path) -> bool:
  ckpt = root / "checkpoints"
  return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


class _NonFiniteLoss(FloatingPointError):
  pass


def _check_finite(history, last_saved):
  """Raises naming the first step whose loss is NaN or inf."""
  for step, metrics in history:
    if not np.isfinite(metrics["loss"]):
      kept = (f"The last checkpoint, step {last_saved}, is kept and a "
              "restart resumes from it." if last_saved is not None else
              "No checkpoint had been saved yet.")
      raise _NonFiniteLoss(
          f"Loss is {metrics['loss']} at step {step}; stopping. {kept} Try a "
          "lower learning rate or check the input data.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains stage 1, then runs the stage-2 evaluation once. Returns results.

  The workdir is locked for the whole run (`files.workdir_lock`): a second
  run on it fails at once, naming the first.
  """
  workdir = check_workdir_name(workdir)
  experiment.validate(config)
  mesh = parallel.make_mesh(config.get("num_devices") or None)
  parallel.check_batch_size(config.batch_size, mesh)
  with primary_lock(workdir):
    _prepare_workdir(workdir, config)
    return _train_and_evaluate(config, workdir, mesh)


def primary_lock(workdir):
  """The workdir lock, taken by process 0 (the other processes are its job)."""
  if jax.process_index() == 0:
    return files.workdir_lock(workdir)
  return contextlib.nullcontext()


def _train_and_evaluate(config, workdir, mesh):
  run = experiment.setup(config, mesh)
  experiment.check_test_set(config, run.data)
  data, model, tx, schedule = run.data, run.model, run.tx, run.schedule
  steps_per_epoch, total_steps = run.steps_per_epoch, run.total_steps
  method = methods.get(config.method)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = run.init_fn(init_rng)
  # A typed key cannot be put on other processes' devices; its data can.
  step_rng = jax.random.wrap_key_data(
      parallel.replicate(jax.random.key_data(step_rng), mesh))

  loader = pipeline.train_loader(data.train,
                                 global_batch_size=config.batch_size,
                                 seed=config.seed)
  data_iter = iter(loader)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  # The workdir's own newest intact checkpoint (a damaged newer one is moved
  # to broken_checkpoints/ with a warning).
  restored, start = checkpoint.restore_latest(
      mngr, workdir, checkpoint.abstract(state), data_iter, quarantine=True)
  if start is not None:
    state = restored
    logging.info("Resumed from step %d in %s.", start, workdir)
  start = int(start or 0)

  train_step = shard_step(make_step_fn(model, method, tx, config), mesh)
  writer = metric_writers.MetricWriter(workdir, resume_step=start)
  last_step = run_until(config, start, total_steps)
  logging.info("Training %s on %s class %s: %d steps (%d per epoch), global "
               "batch %d on %d devices.", config.method, config.data.name,
               config.data.inlier_class, total_steps, steps_per_epoch,
               config.batch_size, mesh.devices.size)

  history, t_window, n_window = [], time.perf_counter(), 0
  t_start, warned_eta = t_window, False
  guard = distributed.PreemptionGuard()
  with guard, jax.set_mesh(mesh):
    for step in range(start, last_step):
      batch = next(data_iter)
      images = parallel.to_global({"image": batch["image"]}, mesh)["image"]
      state, metrics = train_step(state, images, step_rng)
      history.append((step + 1, metrics))
      bound_run_ahead(history)
      n_window += 1
      done = step + 1
      # Asked by every process every step: after SIGTERM all of them save
      # the same step and stop.
      stop = guard.should_stop(done)
      is_log, is_ckpt = cadence(config, done, last_step, stop)
      if not (is_log or is_ckpt):
        continue
      history = [(s, jax.device_get(m)) for s, m in history]
      _check_finite(history, mngr.latest_step())
      if is_log:
        elapsed = time.perf_counter() - t_window
        scalars = {k: float(np.mean([m[k] for _, m in history]))
                   for k in history[-1][1]}
        scalars["learning_rate"] = float(schedule(step))
        scalars["steps_per_sec"] = n_window / elapsed
        scalars["examples_per_sec"] = n_window * config.batch_size / elapsed
        writer.write_scalars(done, scalars)
        eta = (total_steps - done) / max(scalars["steps_per_sec"], 1e-9)
        if not warned_eta and eta > _LONG_RUN_SECONDS and done > start + 1:
          warned_eta = True  # Once, from a window past the compilation.
          logging.warning(
              "This run's ETA is %s (%d steps left at %.2f steps/s on %s). "
              "Paper-scale configs are meant for an accelerator; on a CPU, "
              "shorten the run (--config.total_steps=...) or see "
              "configs/cifar10_cpu.py.", _format_eta(eta),
              total_steps - done, scalars["steps_per_sec"],
              jax.devices()[0].platform.upper())
        logging.info(
            "step %d/%d  loss %.4f  lr %.5f  %.1f img/s  ETA %s", done,
            total_steps, scalars["loss"], scalars["learning_rate"],
            scalars["examples_per_sec"], _format_eta(eta))
        history, t_window, n_window = [], time.perf_counter(), 0
      if is_ckpt:
        checkpoint.save(mngr, done, state, data_iter)
      if stop:
        break
  writer.close()
  mngr.close()
  if guard.stopped_at is not None:
    raise distributed.Preempted(guard.stopped_at)  # Exit status 143.
  logging.info("Trained to step %d in %.1f s.", last_step,
               time.perf_counter() - t_start)
  if last_step < total_steps:
    return None  # A partial run (max_steps_this_run): no final evaluation.

  return evaluators.evaluate_state(config, workdir, model, state, data, mesh)


def run_until(config, start: int, total_steps: int) -> int:
  """The step this run stops at: the end, or start + max_steps_this_run."""
  if config.get("max_steps_this_run", -1) > 0:
    return min(total_steps, start + config.max_steps_this_run)
  return total_steps


def cadence(config, done: int, last_step: int, stop: bool):
  """(log?, checkpoint?) after step `done`; the last step and a stop do both.

  Host-side metrics are fetched only at these steps, so the loop does not
  wait for the device in between.
  """
  end = done == last_step or stop
  return (done % config.log_every_steps == 0 or end,
          done % config.checkpoint_every_steps == 0 or end)


_LONG_RUN_SECONDS = 24 * 3600  # Warn when a run would take over a day.


# Steps the host may dispatch ahead of the device. JAX dispatches
# asynchronously and nothing else waits between log steps, so on a slow
# device the host queued a whole log window (100 steps: 8 minutes on these 2
# CPU cores) and a SIGTERM save had to wait for all of it, far beyond a Spot
# VM's 30 s notice. Two keep the device fed.
RUN_AHEAD_STEPS = 2


def bound_run_ahead(history: list) -> None:
  """Waits for the step RUN_AHEAD_STEPS back in `history` [(step, metrics)]."""
  if len(history) > RUN_AHEAD_STEPS:
    jax.block_until_ready(history[-1 - RUN_AHEAD_STEPS][1])


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"
