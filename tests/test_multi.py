"""K models in one program (trainer/multi.py) against K runs trained alone.

The reference for each model is the single-model path: `experiment.setup`, its
`init_fn`, its own `train_loader` and `step_lib.shard_step` on a data mesh of the
same per-model size, so per-device BatchNorm and the contrastive gather see
the same shards.
"""
import json

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from oneclass_jax import config_lib
from oneclass_jax.data import pipeline
from oneclass_jax import experiment
from oneclass_jax import methods
from oneclass_jax import optim
from oneclass_jax import parallel
from oneclass_jax import trainer
from oneclass_jax.trainer import multi
from oneclass_jax.trainer import single as single_lib
from oneclass_jax.trainer import step as step_lib
from test_train import final_params
from test_train import folder_config
from test_train import read_metrics
from test_train_step import tiny_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """2 classes of noisy images: every BatchNorm channel sees some spread
  (test_train's smooth images leave channels near-constant, whose gradients
  are all rounding)."""
  root = tmp_path_factory.mktemp("noisy")
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32] / 31.0
  for split, n in (("train", 48), ("test", 16)):
    for label, base in (("a", xx), ("b", yy)):
      d = root / split / label
      d.mkdir(parents=True)
      for i in range(n):
        img = 0.5 * np.stack([base, 1 - base, base / 2], -1) + 0.5 * rng.uniform(
            size=(32, 32, 3))
        Image.fromarray((img * 255).astype(np.uint8)).save(d / f"{i:03d}.png")
  return root


def _reference(configs, data_devices, steps):
  """Trains each model alone; returns [(params, per-step losses)]."""
  mesh = parallel.make_mesh(data_devices)
  runs = [experiment.setup(config, mesh) for config in configs]
  # One compiled step serves every model: they share model and optimizer.
  step = step_lib.shard_step(step_lib.make_step_fn(
      runs[0].model, methods.get(configs[0].method), runs[0].tx, configs[0]),
                          mesh)
  out = []
  for config, run in zip(configs, runs):
    init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
    state = run.init_fn(init_rng)
    step_rng = parallel.replicate(step_rng, mesh)
    batches = iter(pipeline.train_loader(
        run.data.train, global_batch_size=config.batch_size,
        seed=config.seed))
    losses = []
    with jax.set_mesh(mesh):
      for _ in range(steps):
        images = parallel.to_global({"image": next(batches)["image"]}, mesh)
        state, metrics = step(state, images["image"], step_rng)
        losses.append(float(metrics["loss"]))
    out.append((jax.device_get(state["params"]), losses))
  return out


def _close(a, b, rtol=1e-4, atol=5e-5):

  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol,
      atol=atol), a, b)


def test_parse_ints():
  assert config_lib.parse_ints("0-9") == list(range(10))
  assert config_lib.parse_ints("0,3,5") == [0, 3, 5]
  assert config_lib.parse_ints(" 2-4, 7") == [2, 3, 4, 7]
  for bad, message in (("", "Bad item"), ("1-", "Bad item"), ("a", "Bad item"),
                       ("3-1", "Descending"), ("0-2,2", "twice")):
    with pytest.raises(ValueError, match=message):
      config_lib.parse_ints(bad)


def test_expand_gives_single_run_configs():
  config = tiny_config("contrastive", False)
  config.data.inlier_classes, config.seeds = "0-1", "3,5"
  config.num_model_shards, config.model_batching = 2, "vmap"
  named = multi.expand(config)
  assert [n for n, _ in named] == ["0_3", "0_5", "1_3", "1_5"]
  for name, single in named:
    cls, seed = map(int, name.split("_"))
    assert (single.data.inlier_class, single.seed, single.data.seed) == (
        cls, seed, seed)
    assert (single.data.inlier_classes, single.seeds,
            single.num_model_shards, single.model_batching) == ("", "", 1,
                                                                "auto")
    assert not multi.is_multi(single)
  assert multi.is_multi(config)
  config.data.inlier_classes, config.seeds = "", ""
  config.data.dist_augs = "rot90,hflip"
  assert [n for n, _ in multi.expand(config)] == ["0_0_rot90", "0_0_hflip"]
  config.data.dist_augs = "rot90,rot90"
  with pytest.raises(ValueError, match="distinct"):
    multi.expand(config)


def test_k_models_equal_single_runs_and_resume(folder, tmp_path):
  """4 models (2 classes x 2 seeds), 2 per device row on a 2x4 mesh,
  stopped after 2 steps and resumed, against each model trained alone.

  Steps 1-2 run the models as one vmapped step, step 3 (after resuming)
  one after another: both must give each model's own training.

  The vmapped step sums in another order than the single one; this tiny
  network's training is chaotic enough to amplify those roundings ~10x per
  step, hence a low learning rate and 3 steps.
  """
  config = folder_config("contrastive_da", folder, tmp_path, **{
      "data.inlier_classes": "0-1", "seeds": "0,1", "num_model_shards": 2,
      "total_steps": 3, "max_steps_this_run": 2, "eval.detectors": ("kde",),
      "optim.learning_rate": 1e-3, "model_batching": "vmap"})
  workdir = tmp_path / "multi"
  assert multi.train_and_evaluate(config, str(workdir)) is None
  config.unlock()
  config.max_steps_this_run = -1
  config.model_batching = "sequential"
  config.lock()
  results = multi.train_and_evaluate(config, str(workdir))
  assert list(results) == ["0_0", "0_1", "1_0", "1_1"]
  summary = json.loads((workdir / "summary.json").read_text())
  named = multi.expand(config)
  references = _reference([single for _, single in named], 4, 3)
  for (name, single), (ref_params, ref_losses) in zip(named, references):
    wd = workdir / name
    # The workdir is a single run's: its config, its checkpoints, results.
    assert json.loads((wd / "config.json").read_text()) == (
        config_lib.to_dict(single))
    saved = json.loads((wd / "results.json").read_text())
    assert saved["auc"] == results[name]["auc"] == summary[name]["auc"]
    assert (saved["step"], saved["inlier_class"], saved["seed"]) == (
        3, single.data.inlier_class, single.seed)
    step, params = final_params(wd)
    assert step == 3
    _close(params, ref_params)
    losses = [m["loss"] for m in read_metrics(wd)]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  # evaluate (and score, report) read a model's workdir as a single run's.
  _, _, restored = experiment.restore_run(str(workdir / "1_1"),
                                        parallel.make_mesh(4))
  _close(restored["params"], final_params(workdir / "1_1")[1], 0, 0)
  # Different classes and seeds trained different models.
  p00, p11 = final_params(workdir / "0_0")[1], final_params(workdir / "1_1")[1]
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p00, p11)
  assert max(jax.tree.leaves(diffs)) > 1e-3


def test_bfloat16_switch_keeps_float32_parameters():
  """model.dtype=bfloat16: the backbone convolves in bf16, parameters and
  optimizer state stay float32, and the loss is the float32 one up to bf16
  rounding."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config("contrastive", False)
    config.model.dtype = dtype
    model = experiment.build_model(config)
    tx = optim.make_optimizer(config.optim, 10, 100)[0]
    state = experiment.init_state(model, tx, jax.random.key(0), (32, 32, 3))
    step = jax.jit(step_lib.make_step_fn(model, methods.get(config.method), tx,
                                      config), static_argnums=3)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3),
                                               dtype=np.uint8)
    new_state, metrics = step(state, images, jax.random.key(1), None)
    for tree in (new_state["params"], new_state["opt_state"],
                 new_state["batch_stats"]):
      assert {x.dtype for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.floating)} == {
                  np.dtype("float32")}
    variables = {"params": state["params"],
                 "batch_stats": state["batch_stats"]}
    jaxpr = jax.make_jaxpr(lambda v: model.apply(
        v, images.astype(np.float32), train=True, mutable=["batch_stats"]))(
            variables)
    conv_dtypes = {str(e.invars[0].aval.dtype) for e in _eqns(jaxpr.jaxpr)
                   if e.primitive.name == "conv_general_dilated"}
    assert conv_dtypes == {dtype}
    losses[dtype] = float(metrics["loss"])
  assert np.isfinite(losses["bfloat16"])
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def test_incompatible_models_fail_clearly(folder, tmp_path):
  base = folder_config("contrastive", folder, tmp_path)
  other = folder_config("contrastive", folder, tmp_path,
                        **{"optim.learning_rate": 0.5,
                           "data.inlier_class": 1})
  with pytest.raises(ValueError, match="optim.learning_rate: 0.01 -> 0.5"):
    multi.build([("a", base), ("b", other)])
  # rot90 quadruples the training set: another number of steps.
  mixed = folder_config("contrastive_da", folder, tmp_path, **{
      "data.dist_augs": "rot90,hflip", "total_steps": -1,
      "total_epochs": 1})
  with pytest.raises(ValueError, match="different schedules"):
    multi.build(multi.expand(mixed))
  with pytest.raises(ValueError, match="do not split over"):
    multi.build([("a", base)], 8, model_shards=2)
  with pytest.raises(ValueError, match="must divide"):
    multi.make_mesh(8, model_shards=3)
  with pytest.raises(ValueError, match="distinct"):
    multi.build([("a", base), ("a", base)])
  with pytest.raises(ValueError, match="model_batching must be one of"):
    multi.build([("a", base)], batching="pmap")


def test_main_dispatches_lists_to_multi(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(multi, "train_and_evaluate",
                      lambda c, w: calls.append(("multi", w)))
  monkeypatch.setattr(single_lib, "train_and_evaluate",
                      lambda c, w: calls.append(("single", w)))
  for lists, expected in (({"seeds": "0-4"}, "multi"), ({}, "single")):
    config = tiny_config("contrastive", False)
    for key, value in lists.items():
      config[key] = value
    trainer.train_and_evaluate(config, str(tmp_path))
    assert calls[-1] == (expected, str(tmp_path))

