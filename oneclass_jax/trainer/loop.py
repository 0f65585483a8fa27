"""The one training loop, for a single model and for K models in one program.

Everything with side effects lives here: the log / checkpoint cadence, the
NaN check, metric writers, checkpoints, the run-ahead bound and preemption.
The step it runs is pure (`trainer/step.py`); what differs between one model
and K models (how a batch is assembled, how a state is saved, how metrics
split per model) comes in as a `Job`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from absl import logging

from oneclass_jax import distributed
from oneclass_jax import metric_writers

# Warn when a run would take over a day.
LONG_RUN_SECONDS = 24 * 3600

# Steps the host may dispatch ahead of the device. JAX dispatches
# asynchronously and nothing else waits between log steps, so on a slow
# device the host queued a whole log window (100 steps: 8 minutes on these 2
# CPU cores) and a SIGTERM save had to wait for all of it, far beyond a Spot
# VM's 30 s notice. Two keep the device fed.
RUN_AHEAD_STEPS = 2


class NonFiniteLoss(FloatingPointError):
  """A loss became NaN or inf; the message names the step and the model."""


@dataclasses.dataclass
class Job:
  """What the loop needs from a run of one or K models.

  Attributes:
    config: the program's config (cadence, batch size, max_steps_this_run).
    names: one name per model, for messages ('' for a single run).
    workdirs: one workdir per model (metric writers).
    managers: one checkpoint manager per model.
    step: jitted `(state, images, rng) -> (state, metrics)`.
    next_images: the next global batch of images.
    rng: the step key(s).
    schedule: step -> learning rate.
    per_model: host-side metrics of one step -> one {name: value} per model.
    save: `(step, state)` -> writes every model's checkpoint.
  """
  config: Any
  names: Sequence[str]
  workdirs: Sequence[str]
  managers: Sequence[Any]
  step: Callable
  next_images: Callable[[], Any]
  rng: Any
  schedule: Callable[[int], Any]
  per_model: Callable[[dict], list[dict]]
  save: Callable[[int, Any], None]


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


def bound_run_ahead(history: list) -> None:
  """Waits for the step RUN_AHEAD_STEPS back in `history` [(step, metrics)]."""
  if len(history) > RUN_AHEAD_STEPS:
    jax.block_until_ready(history[-1 - RUN_AHEAD_STEPS][1])


def check_finite(history, last_saved, name: str = "") -> None:
  """Raises NonFiniteLoss naming the first step whose loss is NaN or inf."""
  for step, metrics in history:
    if not np.isfinite(metrics["loss"]):
      kept = (f"The last checkpoint, step {last_saved}, is kept and a "
              "restart resumes from it." if last_saved is not None else
              "No checkpoint had been saved yet.")
      raise NonFiniteLoss(
          (f"Model {name}: " if name else "") +
          f"Loss is {metrics['loss']} at step {step}; stopping. {kept} Try a "
          "lower learning rate or check the input data.")


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"


def train(job: Job, state, start: int, total_steps: int):
  """Runs steps `start` .. `run_until(...)`; returns (state, last step).

  Raises:
    NonFiniteLoss: a model's loss became NaN or inf (its last checkpoint is
      kept).
    distributed.Preempted: SIGTERM; every model saved the same step.
  """
  config = job.config
  last_step = run_until(config, start, total_steps)
  writers = [metric_writers.MetricWriter(wd, resume_step=start)
             for wd in job.workdirs]
  history, t_window, n_window = [], time.perf_counter(), 0
  t_start, warned_eta = t_window, False
  guard = distributed.PreemptionGuard()
  with guard:
    for step in range(start, last_step):
      state, metrics = job.step(state, job.next_images(), job.rng)
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
      per_step = [(s, job.per_model(jax.device_get(m))) for s, m in history]
      for i, (name, mngr) in enumerate(zip(job.names, job.managers)):
        check_finite([(s, models[i]) for s, models in per_step],
                     mngr.latest_step(), name)
      if is_log:
        elapsed = time.perf_counter() - t_window
        rate = n_window / elapsed
        eta = (total_steps - done) / max(rate, 1e-9)
        _log_window(job, writers, per_step, done, total_steps,
                    float(job.schedule(step)), rate, eta)
        if not warned_eta and eta > LONG_RUN_SECONDS and done > start + 1:
          warned_eta = True  # Once, from a window past the compilation.
          logging.warning(
              "This run's ETA is %s (%d steps left at %.2f steps/s on %s). "
              "Paper-scale configs are meant for an accelerator; on a CPU, "
              "shorten the run (--config.total_steps=...) or see "
              "configs/cifar10_cpu.py.", format_eta(eta), total_steps - done,
              rate, jax.devices()[0].platform.upper())
        history, t_window, n_window = [], time.perf_counter(), 0
      if is_ckpt:
        job.save(done, state)
        t_window = time.perf_counter()  # Saving is not training time.
      if stop:
        break
  for writer in writers:
    writer.close()
  for mngr in job.managers:
    mngr.close()
  if guard.stopped_at is not None:
    raise distributed.Preempted(guard.stopped_at)  # Exit status 143.
  logging.info("Trained to step %d in %.1f s.", last_step,
               time.perf_counter() - t_start)
  return state, last_step


def _log_window(job, writers, per_step, done, total, lr, steps_per_sec, eta):
  """Writes each model's window means; one log line for all models."""
  batch = job.config.batch_size
  k = len(job.names)
  means = [{key: float(np.mean([models[i][key] for _, models in per_step]))
            for key in per_step[-1][1][i]} for i in range(k)]
  for writer, scalars in zip(writers, means):
    writer.write_scalars(done, {**scalars, "learning_rate": lr,
                                "steps_per_sec": steps_per_sec,
                                "examples_per_sec": steps_per_sec * batch})
  if k == 1:
    logging.info("step %d/%d  loss %.4f  lr %.5f  %.1f img/s  ETA %s", done,
                 total, means[0]["loss"], lr, steps_per_sec * batch,
                 format_eta(eta))
    return
  loss = [m["loss"] for m in means]
  logging.info(
      "step %d/%d  loss %.4f (min %.4f, max %.4f over %d models)  lr %.5f  "
      "%.1f img/s per model, %.1f img/s in all  ETA %s", done, total,
      float(np.mean(loss)), min(loss), max(loss), k, lr,
      steps_per_sec * batch, steps_per_sec * batch * k, format_eta(eta))
