"""The sharded train step against single-device references.

- cross-replica BatchNorm: 8 devices == one device on the same global batch;
- per-device BatchNorm: 8 devices == the same per-device step vmapped over 8
  chunks on one device (pmap semantics, emulated with a named vmap axis).
"""
import functools

import jax
import ml_collections
import numpy as np
import pytest

from oneclass_jax import config_lib
from oneclass_jax import experiment
from oneclass_jax import methods
from oneclass_jax import optim
from oneclass_jax import parallel
from oneclass_jax.trainer import step as step_lib

METHOD_CONFIG = {"rotation": "rotation", "contrastive": "contrastive",
                 "denoising": "denoising"}


def tiny_config(method, cross_replica_bn):
  arg = config_lib.variant("runlocal")
  c = config_lib.base_config(arg)
  c.method = method
  c.model.backbone = "resnet10"
  c.model.width, c.model.stem_width = 1 / 16, 4
  c.model.head_depth, c.model.head_width, c.model.head_out_dim = 1, 8, 8
  c.model.cross_replica_bn = cross_replica_bn
  c.optim.learning_rate = 0.01  # The paper's; larger rates amplify roundoff.
  c.batch_size = 16
  return c


def _setup(config, mesh_devices):
  mesh = parallel.make_mesh(mesh_devices)
  method = methods.get(config.method)
  bn_axis = parallel.AXIS if config.model.cross_replica_bn else None
  model = experiment.build_model(config, bn_axis_name=bn_axis)
  tx, _ = optim.make_optimizer(config.optim, 10, 100)
  step_fn = step_lib.make_step_fn(model, method, tx, config)
  state = experiment.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  return mesh, step_fn, state


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3),
                                              dtype=np.uint8)


def _run_sharded(config, devices, batches):
  mesh, step_fn, state = _setup(config, devices)
  step = step_lib.shard_step(step_fn, mesh)
  state = parallel.replicate(state, mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  with jax.set_mesh(mesh):
    for images in batches:
      state, metrics = step(state, parallel.to_global(
          {"image": images}, mesh)["image"], rng)
  return jax.device_get(state), jax.device_get(metrics)


def _run_vmapped(config, batches):
  """Per-device semantics on one device, written independently of shard_map.

  The per-device loss is vmapped over 8 chunks with a named axis (so BN and
  the contrastive gather see 8 "devices"), and differentiated *outside* the
  vmap, where the gradient of the global loss is unambiguous.
  """
  _, _, state = _setup(config, 1)
  method = methods.get(config.method)
  model = experiment.build_model(config, bn_axis_name=None)
  tx, _ = optim.make_optimizer(config.optim, 10, 100)
  loss_fn = step_lib.make_loss_fn(model, method, config)

  @jax.jit
  def step(state, chunks, rng):
    def global_loss(params):
      loss, aux = jax.vmap(
          functools.partial(loss_fn, axis_name=parallel.AXIS),
          in_axes=(None, None, 0, None, None), axis_name=parallel.AXIS)(
              params, state["batch_stats"], chunks, rng, state["step"])
      return loss[0], aux
    grads, (sums, batch_stats) = jax.grad(global_loss, has_aux=True)(
        state["params"])
    first = lambda t: jax.tree.map(lambda x: x[0], t)
    batch_stats = jax.tree.map(lambda x: x.mean(0), batch_stats)
    return step_lib.apply_gradients(state, grads, batch_stats, first(sums), tx)

  rng = jax.random.key(1)
  for images in batches:
    state, metrics = step(state, images.reshape(8, -1, *images.shape[1:]),
                          rng)
  return jax.device_get(state), jax.device_get(metrics)


def _assert_trees_close(a, b, rtol=2e-4, atol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol,
      atol=atol), a, b)


@pytest.mark.parametrize("method", sorted(METHOD_CONFIG))
@pytest.mark.parametrize("cross_replica_bn", [True, False])
def test_sharded_step_equals_single_device(method, cross_replica_bn):
  config = tiny_config(method, cross_replica_bn)
  batches = [_images(16, seed) for seed in range(2)]
  sharded_state, sharded_metrics = _run_sharded(config, 8, batches)
  if cross_replica_bn:
    ref_state, ref_metrics = _run_sharded(config, 1, batches)
  else:
    ref_state, ref_metrics = _run_vmapped(config, batches)
  assert int(sharded_state["step"]) == 2
  _assert_trees_close(sharded_state["params"], ref_state["params"])
  _assert_trees_close(sharded_state["batch_stats"], ref_state["batch_stats"])
  np.testing.assert_allclose(sharded_metrics["loss"], ref_metrics["loss"],
                             rtol=1e-4)
  # The step moved the parameters (the comparison is not vacuous).
  _, _, fresh = _setup(config, 1)
  moved = jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))),
                       sharded_state["params"], jax.device_get(
                           fresh["params"]))
  assert max(jax.tree.leaves(moved)) > 5 * 2e-5  # Well above the atol.


def test_step_compiles_once():
  config = tiny_config("contrastive", False)
  mesh, step_fn, state = _setup(config, 8)
  traces = []

  def counting(*args, **kwargs):
    traces.append(1)
    return step_fn(*args, **kwargs)

  step = step_lib.shard_step(counting, mesh)
  state = parallel.replicate(state, mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  with jax.set_mesh(mesh):
    for seed in range(3):
      state, _ = step(state, parallel.to_global(
          {"image": _images(16, seed)}, mesh)["image"], rng)
  assert len(traces) == 1


def test_batch_not_divisible_by_devices():
  mesh = parallel.make_mesh(8)
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    parallel.check_batch_size(12, mesh)


def test_bad_head_and_method():
  config = tiny_config("contrastive", False)
  config.model.head_width = 0
  with pytest.raises(ValueError, match="width > 0"):
    experiment.validate(config)
  config = tiny_config("contrastive", False)
  config.model.head_depth = -1
  with pytest.raises(ValueError, match="depth must be >= 0"):
    experiment.validate(config)
  config = tiny_config("simclr", False)
  with pytest.raises(ValueError, match="Unknown method"):
    experiment.validate(config)
  config = tiny_config("contrastive_da", False)
  with pytest.raises(ValueError, match="distribution augmentation"):
    experiment.validate(config)


def test_config_diff_names_fields():
  a = config_lib.to_dict(tiny_config("contrastive", False))
  b = config_lib.to_dict(tiny_config("contrastive", False))
  b["optim"]["learning_rate"] = 0.5
  b["log_every_steps"] = 3  # Allowed to change on resume.
  diff = config_lib.config_diff(a, b)
  assert diff == ["optim.learning_rate: 0.01 -> 0.5"]


def test_parse_arg_rejects_unknown_keys():
  assert config_lib.variant("dataset=mnist,inlier_class=3").inlier_class == 3
  with pytest.raises(ValueError, match="Unknown config argument 'clas'"):
    config_lib.variant("clas=3")


def test_durations_in_one_place():
  c = ml_collections.ConfigDict({"total_epochs": 3, "total_steps": -1})
  assert config_lib.num_train_steps(c, 7) == 21
  c = ml_collections.ConfigDict({"total_epochs": -1, "total_steps": 5})
  assert config_lib.num_train_steps(c, 7) == 5
  c = ml_collections.ConfigDict({"total_epochs": 2, "total_steps": 5})
  assert config_lib.num_train_steps(c, 7) == 5  # Steps win.
  c = ml_collections.ConfigDict({"total_epochs": -1, "total_steps": 0})
  with pytest.raises(ValueError, match="total_epochs or config.total_steps"):
    config_lib.num_train_steps(c, 7)
