r"""K one-class models in one program: one vmapped step, K data streams.

Table 2 alone is about a thousand runs of a small network at batch 32, which
leaves an accelerator mostly idle. Here K runs that differ only in inlier
class, seed or distribution-augmentation set train side by side: their train
states are stacked along a leading model axis and the per-device step
(`trainer/step.py`) is vmapped over that axis inside one `shard_map` over a
2-D mesh (`model`, `data`). Models are spread over the `model` devices
(`config.num_model_shards`), each model's batch over the `data` devices, so
the per-device semantics (BatchNorm statistics, gathered contrastive
negatives) are exactly those of a single run. On one device the models run
either as one wide step (`vmap`: convolutions become grouped ones, which keeps
an accelerator busy) or one after another inside the step (`sequential`:
the step's graph unrolled K times; XLA's CPU grouped convolutions are several
times slower than K plain ones, and its CPU loops slower still);
`config.model_batching='auto'` picks `sequential` on CPU, `vmap` elsewhere.

Each model keeps its own data stream (a `pipeline.train_loader` with its
seed), optimizer state, metrics, checkpoints and results, in
`<workdir>/<class>_<seed>/` (`<class>_<seed>_<dist_aug>` when several
distribution sets are trained). Each of these is laid out exactly as a single
run's workdir, with the single run's config, so `evaluate`, `report` and
`score` read it unchanged, and each model ends equal, up to float rounding, to
training it alone. `<workdir>/config.json` keeps the multi-model config and
`<workdir>/summary.json` every model's AUCs.

  python -m oneclass_jax.main --config=configs/contrastive_da.py \
      --config.data.inlier_classes=0-9 --config.seeds=0-4 --workdir=runs/da
"""
from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from oneclass_jax import checkpoint
from oneclass_jax import config_lib
from oneclass_jax.data import pipeline
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import methods
from oneclass_jax import parallel
from oneclass_jax.trainer import loop
from oneclass_jax.trainer import step as step_lib
from oneclass_jax.trainer.step import MODEL_AXIS
from oneclass_jax import workdir as workdir_lib

# What may differ between the models of one program; everything else is
# shared, so one traced step serves them all.
PER_MODEL_FIELDS = ("seed", "data.seed", "data.inlier_class", "data.dist_aug")
# The multi-model settings, reset to their defaults in each model's config.
_MULTI_DEFAULTS = {"seeds": "", "num_model_shards": 1,
                   "model_batching": "auto", "data.inlier_classes": "",
                   "data.dist_augs": ""}


def is_multi(config) -> bool:
  """Whether the config asks for several classes, seeds or dist_aug sets."""
  return bool(config.data.get("inlier_classes") or config.get("seeds") or
              config.data.get("dist_augs"))


def expand(config) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(name, single-run config) of every class x seed x dist_aug of `config`.

  Each model's config is the one a single run of it would have: the lists
  are replaced by its own `data.inlier_class`, `seed` (= `data.seed`) and
  `data.dist_aug`.
  """
  classes = (config_lib.parse_ints(config.data.inlier_classes)
             if config.data.get("inlier_classes") else
             [config.data.inlier_class])
  seeds = (config_lib.parse_ints(config.seeds) if config.get("seeds")
           else [config.seed])
  dist_augs = [config.data.dist_aug]
  if config.data.get("dist_augs"):
    dist_augs = [d.strip() for d in config.data.dist_augs.split(",")]
    if not all(dist_augs) or len(set(dist_augs)) != len(dist_augs):
      raise ValueError(f"data.dist_augs {config.data.dist_augs!r} must be "
                       "distinct comma-separated names, e.g. 'rot90,hflip'.")
  named = []
  for cls in classes:
    for seed in seeds:
      for dist_aug in dist_augs:
        single = copy.deepcopy(config)
        for key, value in _MULTI_DEFAULTS.items():
          _set(single, key, value)
        single.data.inlier_class = cls
        if config.get("seeds"):
          single.seed = single.data.seed = seed
        single.data.dist_aug = dist_aug
        name = f"{cls}_{single.seed}"
        if len(dist_augs) > 1:
          name += f"_{dist_aug}"
        named.append((name, single))
  return named


def _set(config, dotted: str, value) -> None:
  node = config
  *parents, leaf = dotted.split(".")
  for key in parents:
    node = node[key]
  if leaf in node:
    node[leaf] = value


def make_mesh(num_devices: int | None = None,
              model_shards: int = 1) -> jax.sharding.Mesh:
  """(model, data) mesh: `model_shards` rows of data-parallel devices."""
  data_mesh = parallel.make_mesh(num_devices)
  devices = data_mesh.devices.ravel()
  if model_shards < 1 or len(devices) % model_shards:
    raise ValueError(f"num_model_shards={model_shards} must divide the "
                     f"{len(devices)} devices.")
  if model_shards > 1 and jax.process_count() > 1:
    raise ValueError("num_model_shards > 1 needs a single process; with "
                     "several hosts spread the batch instead (set it to 1).")
  return jax.sharding.Mesh(
      devices.reshape(model_shards, -1), (MODEL_AXIS, parallel.AXIS),
      axis_types=(jax.sharding.AxisType.Explicit,) * 2)


@dataclasses.dataclass
class Models:
  """K models built for one program (see `build`)."""
  names: list[str]
  configs: list[Any]
  runs: list[experiment.Run]       # Each model's data, model, optimizer.
  mesh: jax.sharding.Mesh     # (model, data): training.
  data_mesh: jax.sharding.Mesh  # data only: checkpoints and evaluation.
  step: Callable              # (states, images, rngs) -> (states, metrics).
  init: Callable              # stacked init keys [K] -> stacked fresh states.

  @property
  def model(self):
    return self.runs[0].model

  @property
  def total_steps(self) -> int:
    return self.runs[0].total_steps

  def keys(self):
    """Per-model (init keys, step keys) [K], as a single run draws them."""
    pairs = [jax.random.split(jax.random.key(c.seed)) for c in self.configs]
    return (jnp.stack([p[0] for p in pairs]),
            jnp.stack([p[1] for p in pairs]))

  def shard(self, tree):
    """Puts host (or single-mesh) values [K, ...] on the model axis."""
    return jax.device_put(tree, NamedSharding(self.mesh, P(MODEL_AXIS)))

  def images(self, batches) -> jax.Array:
    """K host-local batches (dicts with 'image') -> global [K, B, ...]."""
    stacked = np.stack([np.asarray(b["image"]) for b in batches])
    sharding = NamedSharding(self.mesh, P(MODEL_AXIS, parallel.AXIS))
    return jax.make_array_from_process_local_data(sharding, stacked)

  def loaders(self) -> list:
    return [pipeline.train_loader(run.data.train,
                                  global_batch_size=config.batch_size,
                                  seed=config.seed)
            for run, config in zip(self.runs, self.configs)]


def build(named_configs, num_devices: int | None = None,
          model_shards: int = 1, batching: str = "auto") -> Models:
  """Data, models and the vmapped step for K compatible single-run configs.

  Raises:
    ValueError: configs that differ in more than PER_MODEL_FIELDS, or whose
      data give different image shapes or numbers of steps, a model count
      not divisible by `model_shards`, a batch that does not split over the
      data devices, or an unknown `batching` (see step.BATCHING).
  """
  names = [name for name, _ in named_configs]
  configs = [config for _, config in named_configs]
  if not configs:
    raise ValueError("No model to train: the class / seed lists are empty.")
  if len(set(names)) != len(names):
    raise ValueError(f"Model names must be distinct, got {names}.")
  for config in configs:
    experiment.validate(config)
  _check_shared(names, configs)
  mesh = make_mesh(num_devices, model_shards)
  data_mesh = parallel.make_mesh(num_devices)
  if len(configs) % model_shards:
    raise ValueError(f"{len(configs)} models do not split over "
                     f"num_model_shards={model_shards} devices.")
  data_devices = mesh.shape[parallel.AXIS]
  batch = configs[0].batch_size
  if batch % data_devices or batch % jax.process_count():
    raise ValueError(f"Batch size {batch} is not divisible by the "
                     f"{data_devices} data devices (and "
                     f"{jax.process_count()} processes) of the mesh.")
  runs = [experiment.setup(config, data_mesh) for config in configs]
  _check_same_steps(names, configs, runs)
  first, config = runs[0], configs[0]
  method = methods.get(config.method)
  step = step_lib.shard_models_step(
      step_lib.make_step_fn(first.model, method, first.tx, config), mesh,
      step_lib.resolve_batching(batching))
  image_shape = tuple(first.data.train[0]["image"].shape)
  init = jax.jit(
      jax.vmap(functools.partial(experiment.init_state, first.model, first.tx,
                                 image_shape=image_shape)),
      out_shardings=NamedSharding(mesh, P(MODEL_AXIS)))
  return Models(names, configs, runs, mesh, data_mesh, step, init)


def _check_shared(names, configs) -> None:
  """Everything but PER_MODEL_FIELDS must agree, so one step fits all."""
  first = config_lib.to_dict(configs[0])
  for name, config in zip(names[1:], configs[1:]):
    diff = [d for d in config_lib.config_diff(first, config_lib.to_dict(config))
            if d.split(":", 1)[0] not in PER_MODEL_FIELDS]
    if diff:
      raise ValueError(
          f"Model {name!r} differs from {names[0]!r} in more than "
          f"{PER_MODEL_FIELDS}; train it separately:\n  " + "\n  ".join(diff))
  if (configs[0].augment.authors_code and
      len({c.seed for c in configs}) > 1):
    # The frozen jitter order is drawn from the seed at trace time.
    raise ValueError("augment.authors_code freezes the jitter order per "
                     "seed, so models with different seeds cannot share one "
                     "step: train one seed per program.")


def _check_same_steps(names, configs, runs) -> None:
  shapes = {tuple(r.data.train[0]["image"].shape) for r in runs}
  if len(shapes) > 1:
    raise ValueError(f"The models' images differ in shape: {sorted(shapes)}.")
  optim_cfg = configs[0].optim
  # The optimizer is traced once; its schedule depends on steps_per_epoch
  # only with per-epoch granularity.
  per_epoch = (optim_cfg.schedule == "cosine" and
               optim_cfg.schedule_granularity == "epoch")
  keys = [(r.total_steps, r.steps_per_epoch if per_epoch else 0)
          for r in runs]
  if len(set(keys)) > 1:
    detail = ", ".join(f"{n}: {r.total_steps} steps, {r.steps_per_epoch} per "
                       "epoch" for n, r in zip(names, runs))
    raise ValueError(
        "The models' training sets give different schedules (" + detail +
        "); group models with equal training-set sizes, or set "
        "config.total_steps and optim.schedule_granularity='step'.")


def unstack(host_states, index: int, mesh):
  """Model `index` of host-side stacked states, replicated on `mesh`."""
  return parallel.replicate(jax.tree.map(lambda x: x[index], host_states),
                            mesh)


def _restore(mngr, workdir, step, abstract, data_iter):
  """One model's checkpoint `step`; a clear error naming it if it is broken.

  K models resume from one common step, so there is no per-model fallback
  to an older checkpoint here (the single-model loop has one).
  """
  try:
    return checkpoint.restore(mngr, step, abstract, data_iter)
  except Exception as e:  # pylint: disable=broad-except
    raise checkpoint.NoIntactCheckpoint(
        f"Checkpoint {workdir}/checkpoints/{step} cannot be restored "
        f"({type(e).__name__}: {str(e).strip()[:300]}). Move it out of "
        "checkpoints/ to resume all models from their previous common "
        "step.") from e


def _common_start(mngrs, names):
  """The latest checkpoint step every model has (None: fresh start)."""
  steps = [set(m.all_steps()) for m in mngrs]
  if not any(steps):
    return None
  common = set.intersection(*steps)
  if not common:
    have = {n: sorted(s) for n, s in zip(names, steps)}
    raise ValueError(
        f"The models' checkpoints share no step ({have}); remove the "
        "workdirs of the models without checkpoints, or train them apart.")
  return max(common)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains every model of `config` together, then evaluates each.

  Returns:
    {model name: its results dict}, or None after a partial run
    (`max_steps_this_run`).
  """
  workdir = workdir_lib.check_name(workdir)
  with workdir_lib.lock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir):
  named = expand(config)
  for _, cfg in named:  # Before anything is written.
    experiment.validate(cfg)
  root = epath.Path(workdir)
  workdir_lib.prepare(workdir, config)
  models = build(named, config.get("num_devices") or None,
                 config.get("num_model_shards", 1),
                 config.get("model_batching", "auto"))
  for cfg, run in zip(models.configs, models.runs):
    experiment.check_test_set(cfg, run.data)
  workdirs = [str(root / name) for name in models.names]
  for wd, cfg in zip(workdirs, models.configs):
    workdir_lib.prepare(wd, cfg)
  results = _train(models, workdirs, config)
  if results is not None and jax.process_index() == 0:
    summary = {name: {"inlier_class": r["inlier_class"], "seed": r["seed"],
                      "dist_aug": cfg.data.dist_aug, "step": r["step"],
                      "auc": r["auc"]}
               for (name, r), cfg in zip(results.items(), models.configs)}
    files.write_json(root / workdir_lib.SUMMARY, summary)
  return results


def _train(models: Models, workdirs, config):
  """K models through the one loop (`trainer/loop.py`)."""
  names, configs, k = models.names, models.configs, len(models.names)
  init_keys, step_keys = models.keys()
  # Typed keys cannot be put on other processes' devices; their data can.
  step_rngs = jax.random.wrap_key_data(
      models.shard(np.asarray(jax.random.key_data(step_keys))))
  iters = [iter(loader) for loader in models.loaders()]
  mngrs = [checkpoint.manager(wd, c.keep_checkpoints)
           for wd, c in zip(workdirs, configs)]
  start = _common_start(mngrs, names)
  if start is None:
    states = models.init(init_keys)
  else:
    abstract = checkpoint.abstract(jax.eval_shape(models.runs[0].init_fn,
                                                  jax.random.key(0)))
    states = [_restore(m, wd, start, abstract, it)
              for m, wd, it in zip(mngrs, workdirs, iters)]
    states = models.shard(jax.tree.map(
        lambda *xs: np.stack([np.asarray(x) for x in xs]), *states))
    logging.info("Resumed %d models from step %d.", k, start)
  start = int(start or 0)
  total = models.total_steps
  logging.info("Training %d %s models (%s) on %s: %d steps, batch %d each, "
               "mesh %s, models %s.", k, config.method, ", ".join(names),
               config.data.name, total, configs[0].batch_size,
               dict(models.mesh.shape),
               step_lib.resolve_batching(config.get("model_batching", "auto")))

  def save(done, states):
    host = jax.device_get(states)
    for i, (mngr, it) in enumerate(zip(mngrs, iters)):
      checkpoint.save(mngr, done, unstack(host, i, models.data_mesh), it)

  job = loop.Job(
      config=config, names=names, workdirs=workdirs, managers=mngrs,
      step=models.step,
      next_images=lambda: models.images([next(it) for it in iters]),
      rng=step_rngs, schedule=models.runs[0].schedule,
      per_model=lambda m: [{key: v[i] for key, v in m.items()}
                           for i in range(k)],
      save=save)
  with jax.set_mesh(models.mesh):
    states, last_step = loop.train(job, states, start, total)
  if last_step < total:
    return None
  return _evaluate_all(models, workdirs, jax.device_get(states))


def _evaluate_all(models: Models, workdirs, host_states) -> dict:
  """Stage 2 for each model, into its own workdir."""
  results = {}
  for i, (name, config, run, wd) in enumerate(zip(
      models.names, models.configs, models.runs, workdirs)):
    state = unstack(host_states, i, models.data_mesh)
    results[name] = evaluators.evaluate_state(config, wd, run.model, state,
                                              run.data, models.data_mesh)
  return results
