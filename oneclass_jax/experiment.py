"""Experiment setup: a config -> its task, data, model, optimizer, state.

Training (`trainer/`) and the evaluators rebuild the same
experiment from a config, so it lives here, below both: the trainer and the
evaluators import this module, never each other.

A *task* is the kind of experiment a config runs: one-class classification of
whole images (`one_class`, paper Section 4) or MVTec-style patches with
localization (`mvtec_patches`, Section 4.2). `TASKS` maps each task to how it
gets its data and checks its settings; `task_name` is the one place that
reads the dataset name to choose. The evaluators (`oneclass_jax.evaluators`)
are keyed by the same names. To add a task, add an entry here and an
evaluator there.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from oneclass_jax import checkpoint
from oneclass_jax import config_lib
from oneclass_jax import detectors
from oneclass_jax import workdir as workdir_lib
from oneclass_jax import methods
from oneclass_jax import models
from oneclass_jax import optim
from oneclass_jax import parallel
from oneclass_jax import provenance
from oneclass_jax.data import datasets
from oneclass_jax.data import mvtec as mvtec_reader
from oneclass_jax.data import one_class
from oneclass_jax.mvtec import data as mvtec_data


@dataclasses.dataclass(frozen=True)
class Task:
  """How one kind of experiment gets its data and checks its settings."""
  make_data: Callable[[ml_collections.ConfigDict], Any]
  # Before training, without data: can the evaluation run with these settings?
  check_eval: Callable[[ml_collections.ConfigDict], None]
  # Before training, with the data: what will the evaluation make of this
  # test set? (Fails, or warns, before any compute is spent.)
  check_test_set: Callable[[ml_collections.ConfigDict, Any], None]
  # (dataset name, model input shape) -> how a decoded uint8 HxWx3 image
  # file becomes the model's input (`score` reading new images).
  preprocess: Callable[[str, tuple], Callable[[Any], Any]]


def _check_detector_settings(config) -> None:
  detectors.check_eval_settings(config.eval.detectors, config.eval.embedding,
                                config.method)


def _nothing_to_check(*args) -> None:
  del args  # MVTec patches: the patch detectors are set by mvtec.* fields,
  # and mvtec.data checks the test set when it builds it.


def _warn_without_auc(config, data) -> None:
  """Says before training when the test set will give no AUC.

  Not an error: normal images alone train a model and fit its detectors and
  threshold (`score` needs nothing more); only the AUC is skipped.
  """
  reason = one_class.auc_skipped_reason(data.meta)
  if reason:
    logging.warning(
        "%s for %s inlier class %s: training goes ahead; the evaluation will "
        "save the detectors and the threshold and skip the AUC.", reason,
        config.data.name, config.data.inlier_class)


def _resize_to(dataset, image_shape):
  del dataset  # Every MVTec image is resized to the square the model saw.
  return functools.partial(mvtec_reader.resize_image, size=image_shape[0])


TASKS: dict[str, Task] = {
    "one_class": Task(make_data=lambda config: one_class.make(
        config.data, image_size=config.model.image_size),
                      check_eval=_check_detector_settings,
                      check_test_set=_warn_without_auc,
                      preprocess=lambda dataset, image_shape: (
                          datasets.get_spec(dataset).final_image_fn(
                              image_shape[0]))),
    "mvtec_patches": Task(make_data=mvtec_data.make,  # One category's patches.
                          check_eval=_nothing_to_check,
                          check_test_set=_nothing_to_check,
                          preprocess=_resize_to),
}


def dataset_task(dataset: str) -> str:
  """The task of a dataset: MVTec-style patches for 'mvtec'."""
  return "mvtec_patches" if dataset == "mvtec" else "one_class"


def task_name(config) -> str:
  """The task a config runs (`dataset_task` of data.name)."""
  return dataset_task(config.data.name)


def image_preprocess(dataset: str, image_shape):
  """How `score` turns a decoded image file of `dataset` into model input."""
  return TASKS[dataset_task(dataset)].preprocess(dataset, tuple(image_shape))


def task(config) -> Task:
  return TASKS[task_name(config)]


def check_test_set(config, data) -> None:
  """Fails before training when the evaluation could not score the test set."""
  task(config).check_test_set(config, data)


def build_model(config, *, bn_axis_name=None):
  """The Flax model the config asks for, with the method's extra parts."""
  method = methods.get(config.method)
  model_cfg = ml_collections.ConfigDict(config.model.to_dict())
  del model_cfg["cross_replica_bn"]  # A property of the step, not the model.
  if model_cfg.head_out_dim == 0:  # 0 in configs = no output layer (RotNet).
    model_cfg.head_out_dim = None
  model_cfg.num_classes = method.num_classes
  model_cfg.decoder = method.decoder
  model_cfg.bn_axis_name = bn_axis_name
  return models.build_model(model_cfg)


def init_state(model, tx, rng, image_shape):
  """Fresh train state: a plain dict, replicated by the caller."""
  variables = model.init(rng, jnp.zeros((2, *image_shape), jnp.float32),
                         train=False)
  params = variables["params"]
  return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "batch_stats": variables.get("batch_stats", {}),
      "opt_state": tx.init(params),
  }


@dataclasses.dataclass
class Run:
  """What training and evaluation both rebuild from a config."""
  data: one_class.OneClassData
  model: Any
  tx: Any
  schedule: Any
  steps_per_epoch: int
  total_steps: int
  init_fn: Any  # rng -> replicated fresh state.


def setup(config, mesh) -> Run:
  """Data (the one-class protocol), model, optimizer and state initialiser."""
  data = task(config).make_data(config)
  steps_per_epoch = len(data.train) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"The training set has {len(data.train)} images, fewer "
                     f"than one batch of {config.batch_size}.")
  total_steps = config_lib.num_train_steps(config, steps_per_epoch)
  image_shape = tuple(data.train[0]["image"].shape)
  if image_shape[0] != config.model.image_size:
    raise ValueError(
        f"Images of {config.data.name} are {image_shape}, but "
        f"config.model.image_size is {config.model.image_size}; set "
        f"--config.model.image_size={image_shape[0]}.")
  bn_axis = parallel.AXIS if config.model.cross_replica_bn else None
  model = build_model(config, bn_axis_name=bn_axis)
  tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch,
                                      total_steps)
  init_fn = jax.jit(functools.partial(init_state, model, tx,
                                      image_shape=image_shape),
                    out_shardings=parallel.replicated(mesh))
  return Run(data, model, tx, schedule, steps_per_epoch, total_steps, init_fn)


def validate(config) -> None:
  """Fails early, with the fix, on settings that cannot work.

  Everything that can be checked without the data is checked here, before
  the workdir is touched or anything is compiled.
  """
  methods.get(config.method)
  if config.batch_size <= 0:
    raise ValueError(f"batch_size must be a positive number of images, got "
                     f"{config.batch_size}.")
  for name in ("log_every_steps", "checkpoint_every_steps"):
    if config[name] <= 0:
      raise ValueError(f"{name} must be >= 1 (steps), got {config[name]}.")
  if config.keep_checkpoints < 0:
    raise ValueError(f"keep_checkpoints must be >= 0 (0 = keep all), got "
                     f"{config.keep_checkpoints}.")
  task(config).check_eval(config)
  if config.model.head_depth < 0 or config.model.head_width <= 0:
    raise ValueError(
        f"Head depth must be >= 0 and width > 0 (got depth "
        f"{config.model.head_depth}, width {config.model.head_width}).")
  if config.model.head_out_dim < 0:
    raise ValueError(f"model.head_out_dim must be >= 0 (0 = no output "
                     f"layer), got {config.model.head_out_dim}.")
  if config.method == "contrastive_da" and config.data.dist_aug == "none":
    raise ValueError("Method 'contrastive_da' needs a distribution "
                     "augmentation: set config.data.dist_aug (e.g. 'rot90').")


def restore_run(workdir: str, mesh):
  """(config, run, state) of a workdir's latest checkpoint."""
  config = workdir_lib.load_config(workdir)
  run = setup(config, mesh)
  abstract = checkpoint.abstract(jax.eval_shape(run.init_fn,
                                                jax.random.key(0)))
  state, _ = checkpoint.restore_state_only(workdir, abstract)
  return config, run, state


def restore_matching(workdir: str, mesh, saved_identity, what: str, *,
                     evaluation=None):
  """`restore_run`, refusing `what` when it was not made from that restore.

  `saved_identity` is the `provenance.identity` recorded with what the
  evaluation fitted (its detectors, its memory bank); `what` names it in
  the message, which names the fix (the workdir trained on after its
  evaluation, say): re-running that evaluation (`evaluation`: a named one,
  None: the run's own).
  """
  config, run, state = restore_run(workdir, mesh)
  stale = provenance.differences(
      saved_identity, provenance.identity(config, state, run.data.meta))
  if stale:
    raise ValueError(
        f"{what}: not fitted on this workdir's latest checkpoint, config "
        f"and data ({', '.join(stale)} differ): run "
        f"`{workdir_lib.evaluate_command(workdir, evaluation)}` first.")
  return config, run, state
