"""train_and_evaluate end to end (in process): every config trains, a resumed
run ends identical to an uninterrupted one, bad settings fail clearly."""
import importlib.util
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from oneclass_jax import checkpoint
from oneclass_jax.trainer import single

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name, arg="runlocal"):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def shrink(config, steps=6, batch=16):
  """The smallest model that still runs every code path."""
  config.unlock()
  config.model.backbone = "resnet10"
  config.model.width, config.model.stem_width = 1 / 16, 4
  config.model.head_depth = min(config.model.head_depth, 1)
  config.model.head_width = 8
  if config.model.head_out_dim:
    config.model.head_out_dim = 8
  config.batch_size = batch
  config.total_epochs, config.total_steps = -1, steps
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval.batch_size = 64
  config.eval.detectors = tuple(
      d for d in config.eval.detectors if d not in ("ocsvm", "ocsvm_linear"))
  config.lock()
  return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A tiny image-folder dataset: 2 classes, smooth class-specific images."""
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32] / 31.0
  for split, n in (("train", 48), ("test", 16)):
    for label in ("a", "b"):
      d = root / split / label
      d.mkdir(parents=True)
      for i in range(n):
        base = xx if label == "a" else yy
        img = np.stack([base, 1 - base, base * 0.5], -1)
        img = img + 0.1 * rng.normal(size=img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(
            d / f"{i:03d}.png")
  return root


def folder_config(name, folder, tmp_path, **overrides):
  config = shrink(load_config(name, "dataset=image_folder,runlocal"))
  config.unlock()
  config.data.source_dir = str(folder)
  config.data.data_dir = str(tmp_path / "tfds")
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


def read_metrics(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def final_params(workdir, step=None):
  mngr = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints")
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  return step, restored.state["params"]


@pytest.mark.parametrize("name", ["rotation", "rotnet", "contrastive",
                                  "contrastive_da", "denoising"])
def test_every_config_trains_on_mock_data(name, tmp_path):
  """A few steps of each config on tfds mock CIFAR-10: results written."""
  config = shrink(load_config(name, "dataset=cifar10,runlocal"), steps=12)
  config.unlock()
  config.data.data_dir = str(tmp_path / "tfds")
  config.optim.learning_rate = 0.05
  config.lock()
  with tfds.testing.mock_data(num_examples=300):
    results = single.train_and_evaluate(config, str(tmp_path / "wd"))
  metrics = read_metrics(tmp_path / "wd")
  assert [m["step"] for m in metrics] == list(range(1, 13))
  losses = np.array([m["loss"] for m in metrics])
  assert np.all(np.isfinite(losses))
  # Falling loss: the last steps below the first ones (training works).
  assert losses[-4:].mean() < losses[:4].mean(), losses
  assert all(np.isfinite(v) for v in results["auc"].values())
  saved = json.loads((tmp_path / "wd" / "results.json").read_text())
  assert saved["auc"] == results["auc"] and saved["step"] == 12
  if name in ("rotation", "rotnet"):
    assert {"rot_p0", "rot_sum"} <= set(results["auc"])


def test_resume_matches_uninterrupted(folder, tmp_path):
  config = folder_config("contrastive_da", folder, tmp_path)
  single.train_and_evaluate(config, str(tmp_path / "straight"))
  # The same run, stopped after 4 steps (its checkpoint), then restarted.
  config.unlock()
  config.max_steps_this_run = 4
  config.lock()
  assert single.train_and_evaluate(config, str(tmp_path / "resumed")) is None
  assert final_params(tmp_path / "resumed")[0] == 4
  config.unlock()
  config.max_steps_this_run = -1
  config.lock()
  single.train_and_evaluate(config, str(tmp_path / "resumed"))
  step_a, params_a = final_params(tmp_path / "straight")
  step_b, params_b = final_params(tmp_path / "resumed")
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  # The resumed run logged steps 5 and 6 with the same losses.
  straight = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "straight")}
  resumed = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "resumed")}
  assert resumed == straight


def test_refuses_to_resume_a_different_config(folder, tmp_path):
  config = folder_config("contrastive", folder, tmp_path,
                         max_steps_this_run=2)
  single.train_and_evaluate(config, str(tmp_path / "wd"))
  other = folder_config("contrastive", folder, tmp_path,
                        max_steps_this_run=2, **{"optim.learning_rate": 0.5,
                                                 "batch_size": 8})
  with pytest.raises(ValueError, match="different config") as err:
    single.train_and_evaluate(other, str(tmp_path / "wd"))
  assert "optim.learning_rate: 0.01 -> 0.5" in str(err.value)
  assert "batch_size: 16 -> 8" in str(err.value)


def test_unwritable_workdir(folder, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  config = folder_config("contrastive", folder, tmp_path)
  with pytest.raises(PermissionError, match="not writable"):
    single.train_and_evaluate(config, str(blocker / "wd"))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(folder, tmp_path):
  config = folder_config("denoising", folder, tmp_path,
                         **{"optim.learning_rate": 1e30,
                            "optim.schedule": "constant"})
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    single.train_and_evaluate(config, str(tmp_path / "wd"))
  mngr = checkpoint.manager(str(tmp_path / "wd"), 3)
  for step in mngr.all_steps():  # Whatever was saved holds finite numbers.
    _, params = final_params(tmp_path / "wd", step)
    assert all(np.isfinite(np.asarray(x)).all()
               for x in jax.tree.leaves(params)), step


def test_unknown_config_key_fails():
  config = load_config("contrastive")
  with pytest.raises(AttributeError):
    config.optim.learning_rat = 0.1  # Locked: a typo is an error.


def test_quickstart_variants():
  rotnet = load_config("quickstart", "")
  assert (rotnet.method, rotnet.method_label, rotnet.model.head_depth,
          rotnet.model.head_out_dim) == ("rotation", "rotnet", 0, 0)
  assert "rotation" in rotnet.eval.detectors and rotnet.eval.baselines
  da = load_config("quickstart", "method=contrastive_da")
  assert (da.method, da.data.dist_aug, da.model.head_depth) == (
      "contrastive_da", "rot90", 2)
  assert rotnet.data.name == da.data.name == "fashion_mnist"
  with pytest.raises(ValueError, match="quickstart method must be one of"):
    load_config("quickstart", "method=simclr")
