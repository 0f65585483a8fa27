"""Stage 1 for one model: train on one inlier class, then evaluate once.

`train_and_evaluate(config, workdir)` is the whole run: the experiment
(`experiment.setup`: data, model, optimizer), the per-device step
(`trainer/step.py`) in the one loop (`trainer/loop.py`) and, at the end, the
stage-2 evaluation of the config's task (`evaluators`; the paper reports
last-epoch numbers).
"""
from __future__ import annotations

import jax
import ml_collections
from absl import logging

from oneclass_jax import checkpoint
from oneclass_jax.data import pipeline
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import methods
from oneclass_jax import parallel
from oneclass_jax.trainer import loop
from oneclass_jax.trainer import step as step_lib
from oneclass_jax import workdir as workdir_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains stage 1, then runs the stage-2 evaluation once.

  The workdir is locked for the whole run (`workdir.lock`): a second run on
  it fails at once, naming the first.

  Returns:
    The results dict, or None after a partial run (`max_steps_this_run`).
  """
  workdir = workdir_lib.check_name(workdir)
  experiment.validate(config)
  mesh = parallel.make_mesh(config.get("num_devices") or None)
  parallel.check_batch_size(config.batch_size, mesh)
  with workdir_lib.lock(workdir):
    workdir_lib.prepare(workdir, config)
    return _train_and_evaluate(config, workdir, mesh)


def _train_and_evaluate(config, workdir, mesh):
  run = experiment.setup(config, mesh)
  experiment.check_test_set(config, run.data)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  state = run.init_fn(init_rng)
  # A typed key cannot be put on other processes' devices; its data can.
  step_rng = jax.random.wrap_key_data(
      parallel.replicate(jax.random.key_data(step_rng), mesh))

  data_iter = iter(pipeline.train_loader(run.data.train,
                                         global_batch_size=config.batch_size,
                                         seed=config.seed))
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  # The workdir's own newest intact checkpoint (a damaged newer one is moved
  # to broken_checkpoints/ with a warning).
  restored, start = checkpoint.restore_latest(
      mngr, workdir, checkpoint.abstract(state), data_iter, quarantine=True)
  if start is not None:
    state = restored
    logging.info("Resumed from step %d in %s.", start, workdir)
  start = int(start or 0)
  logging.info("Training %s on %s class %s: %d steps (%d per epoch), global "
               "batch %d on %d devices.", config.method, config.data.name,
               config.data.inlier_class, run.total_steps,
               run.steps_per_epoch, config.batch_size, mesh.devices.size)

  def next_images():
    batch = next(data_iter)
    return parallel.to_global({"image": batch["image"]}, mesh)["image"]

  job = loop.Job(
      config=config, names=[""], workdirs=[workdir], managers=[mngr],
      step=step_lib.shard_step(step_lib.make_step_fn(
          run.model, methods.get(config.method), run.tx, config), mesh),
      next_images=next_images, rng=step_rng, schedule=run.schedule,
      per_model=lambda metrics: [metrics],
      save=lambda done, s: checkpoint.save(mngr, done, s, data_iter))
  with jax.set_mesh(mesh):
    state, last_step = loop.train(job, state, start, run.total_steps)
  if last_step < run.total_steps:
    return None  # A partial run (max_steps_this_run): no final evaluation.
  return evaluators.evaluate_state(config, workdir, run.model, state,
                                   run.data, mesh)
