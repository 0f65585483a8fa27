"""Issue #20: no silent wrong AUC, no lost run, a clear error for bad input.

Each test pins one case that gave a wrong result, lost work or a raw crash
before the fix (the comment on each says what the old code did).
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from oneclass_jax import checkpoint
from oneclass_jax import config_lib
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import files
from oneclass_jax import metric_writers
from oneclass_jax import export
from oneclass_jax import provenance
from oneclass_jax import scoring
from oneclass_jax.data import datasets
from oneclass_jax.data import image_io
from oneclass_jax.data import local
from oneclass_jax.data import mvtec
from oneclass_jax.data import pipeline
from oneclass_jax.data import sources
from oneclass_jax.trainer import loop
from oneclass_jax.trainer import single
from test_train import final_params
from test_train import folder  # noqa: F401  (fixture)
from test_train import folder_config
from test_train import load_config
from test_train import read_metrics

# ---------------------------------------------------------------------------
# 1. Stale embeddings: the cache, detectors and results carry an identity.


def _fresh_aucs(workdir):
  """The AUCs of an evaluation that cannot use any cache."""
  shutil.rmtree(workdir / "embeddings")
  return evaluators.evaluate_workdir(str(workdir))["auc"]


def test_retrained_workdir_does_not_reuse_old_embeddings(folder, tmp_path):  # noqa: F811
  # Old code: embeddings/step_6.npz of the first run served the second one
  # (same step), so results.json held the first model's AUCs.
  wd = tmp_path / "wd"
  first = single.train_and_evaluate(
      folder_config("rotation", folder, tmp_path, seed=0), str(wd))
  shutil.rmtree(wd / "checkpoints")
  second = single.train_and_evaluate(
      folder_config("rotation", folder, tmp_path, seed=1), str(wd))
  assert second["identity"]["weights"] != first["identity"]["weights"]
  assert second["auc"] == _fresh_aucs(wd)
  saved = json.loads((wd / "results.json").read_text())
  assert saved["identity"] == second["identity"]
  meta = json.loads((wd / "detectors" / "meta.json").read_text())
  assert meta["identity"] == second["identity"]


def test_edited_image_folder_is_reconverted_and_reembedded(folder, tmp_path):  # noqa: F811
  # Old code: the edited folder was converted again, but the evaluation
  # reused the cached embeddings of the old images.
  data = tmp_path / "data"
  shutil.copytree(folder, data)
  wd = tmp_path / "wd"
  config = folder_config("rotation", data, tmp_path)
  before = single.train_and_evaluate(config, str(wd))
  # Test images of class b become copies of class a: the AUC must change.
  for target, src in zip(sorted((data / "test" / "b").iterdir()),
                         sorted((data / "test" / "a").iterdir())):
    shutil.copy(src, target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 1))
  after = evaluators.evaluate_workdir(str(wd))
  assert after["identity"]["data"] != before["identity"]["data"]
  assert after["identity"]["weights"] == before["identity"]["weights"]
  assert after["auc"] != before["auc"]
  assert after["auc"] == _fresh_aucs(wd)


def test_score_refuses_detectors_of_another_checkpoint(folder, tmp_path):  # noqa: F811
  # Old code: `score` used detectors/ whatever checkpoint had fitted them;
  # `score --workdir` now exports first, which refuses them.
  wd = tmp_path / "wd"
  single.train_and_evaluate(folder_config("contrastive", folder, tmp_path),
                           str(wd))
  meta = json.loads((wd / "detectors" / "meta.json").read_text())
  meta["identity"]["weights"] = "0" * 16
  (wd / "detectors" / "meta.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="weights differ"):
    export.export_in_workdir(str(wd), detector="kde", platforms=("cpu",))


def test_cache_without_identity_is_recomputed(tmp_path):
  ident = {"step": 3, "weights": "w", "config": "c", "data": "d"}
  old = {"fit/pools": np.zeros((2, 2)), "test/pools": np.zeros((3, 2))}
  (tmp_path / "embeddings").mkdir()
  (tmp_path / "embeddings" / "step_3.npz").write_bytes(files.npz_bytes(**old))
  new = ({"pools": np.ones((2, 2))}, {"pools": np.ones((3, 2))})
  fit, _ = embeddings.cached_embeddings(tmp_path, ident, lambda: new,
                                      need_rotations=False)
  np.testing.assert_array_equal(fit["pools"], 1)
  for changed in ("weights", "config", "data"):
    other = {**ident, changed: "x"}
    calls = []
    embeddings.cached_embeddings(tmp_path, other,
                               lambda: calls.append(1) or new,
                               need_rotations=False)
    assert calls, changed


def test_identity_follows_weights_config_and_data():
  config = config_lib.base_config(config_lib.variant(None))
  state = {"step": jnp.asarray(5), "params": {"w": jnp.ones(3)},
           "batch_stats": {"m": jnp.zeros(2)}}
  a = provenance.identity(config, state, {"fingerprint": "d1"})
  assert a == provenance.identity(config, state, {"fingerprint": "d1"})
  moved = {**state, "params": {"w": jnp.ones(3).at[0].set(1.0001)}}
  assert provenance.identity(config, moved, {"fingerprint": "d1"})[
      "weights"] != a["weights"]
  assert provenance.identity(config, state, {"fingerprint": "d2"})[
      "data"] != a["data"]
  config.seed = 7
  assert provenance.identity(config, state, {"fingerprint": "d1"})[
      "config"] != a["config"]
  config.seed = 0
  config.eval.detectors = ("kde",)  # Evaluation settings are not identity.
  assert provenance.identity(config, state, {"fingerprint": "d1"}) == a


# ---------------------------------------------------------------------------
# 2. 16-bit PNGs: rescaled to 8 bits, not clipped to white.


def _gray16(path, values):
  Image.fromarray(values.astype(np.uint16)).save(path)
  assert Image.open(path).mode.startswith("I;16")


def test_16bit_png_is_rescaled(tmp_path):
  values = np.array([[0, 257, 32896], [65535, 128, 1000]])
  _gray16(tmp_path / "a.png", values)
  expected = np.round(values / 257.0).astype(np.uint8)
  rgb = image_io.decode(tmp_path / "a.png")
  assert rgb.shape == (2, 3, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], expected)
  np.testing.assert_array_equal(image_io.decode(tmp_path / "a.png", "L"),
                                expected)
  # The readers that use it: image folders (and `score`), MVTec.
  np.testing.assert_array_equal(datasets.decode_image(tmp_path / "a.png"), rgb)
  np.testing.assert_array_equal(
      np.asarray(mvtec._open(tmp_path / "a.png", "RGB")), rgb)  # pylint: disable=protected-access


def test_16bit_image_folder_reads_like_its_8bit_copy(tmp_path):
  rng = np.random.default_rng(0)
  for kind in ("8", "16"):
    for split in ("train", "test"):
      d = tmp_path / kind / split / "a"
      d.mkdir(parents=True)
      for i in range(3):
        v8 = rng.integers(0, 256, size=(8, 8)) if kind == "8" else None
        if kind == "8":
          Image.fromarray(v8.astype(np.uint8)).save(d / f"{i}.png")
          np.save(tmp_path / f"{split}{i}.npy", v8)
        else:
          v8 = np.load(tmp_path / f"{split}{i}.npy")
          _gray16(d / f"{i}.png", v8 * 257)
  data_dir = tmp_path / "tfds"
  eight = sources.load("image_folder", "train", image_size=8, data_dir=data_dir,
                       source_dir=tmp_path / "8")
  sixteen = sources.load("image_folder", "train", image_size=8,
                         data_dir=data_dir,
                         source_dir=tmp_path / "16")
  for i in range(3):
    np.testing.assert_array_equal(sixteen.source[i]["image"],
                                  eight.source[i]["image"])


def test_float_image_is_a_clear_error(tmp_path):
  Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tiff")
  with pytest.raises(ValueError, match="f.tiff.*mode F"):
    image_io.decode(tmp_path / "f.tiff")


# ---------------------------------------------------------------------------
# 3. The workdir lock.


_HOLD = """
import sys, time
from oneclass_jax import files
with files.workdir_lock(sys.argv[1]):
  print("held", flush=True)
  time.sleep(600)
"""


def test_second_run_on_a_locked_workdir_fails_naming_the_holder(
    folder, tmp_path):  # noqa: F811
  # Old code: both runs went on (Orbax crash, duplicated work, mixed configs).
  wd = tmp_path / "wd"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(wd)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(files.WorkdirBusy, match=f"pid {holder.pid} on host"):
      single.train_and_evaluate(folder_config("contrastive", folder, tmp_path),
                               str(wd))
    assert not (wd / "config.json").exists()
  finally:
    holder.send_signal(signal.SIGKILL)  # A killed holder leaves no stale lock.
    holder.wait()
  with files.workdir_lock(wd):
    pass


# ---------------------------------------------------------------------------
# 4. results.json is the last word.


def test_results_json_is_written_after_scores_and_detectors(folder, tmp_path,  # noqa: F811
                                                           monkeypatch):
  # Old code: results.json came first, so a kill before detectors/ left a
  # run that sweeps treat as finished and `score` cannot use.
  wd = tmp_path / "wd"
  config = folder_config("contrastive", folder, tmp_path)

  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed while saving the detectors")

  monkeypatch.setattr(evaluators.one_class, "save_detectors", killed)
  with pytest.raises(KeyboardInterrupt):
    single.train_and_evaluate(config, str(wd))
  assert (wd / "scores.npz").exists()
  assert not (wd / "results.json").exists()


# ---------------------------------------------------------------------------
# 5-7. Checkpoints: keep 0 = all, damaged ones skipped, no NaN saved.


class _Records:

  def __len__(self):
    return 16

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 3), i, np.uint8), "label": 0}


def _tiny_state(value=1.0):
  return {"step": jnp.asarray(0), "params": {"w": jnp.full((3,), value)},
          "batch_stats": {"mean": jnp.zeros(2)}, "opt_state": {}}


def _iterator():
  return iter(pipeline.train_loader(_Records(), global_batch_size=4, seed=0))


def _save_steps(workdir, steps, keep=0):
  mngr = checkpoint.manager(str(workdir), keep)
  it = _iterator()
  for step in steps:
    next(it)
    checkpoint.save(mngr, step, _tiny_state(float(step)), it)
  return mngr


def test_keep_checkpoints_zero_keeps_all(tmp_path):
  # Old code: max_to_keep=0 deleted every checkpoint, the final one too.
  mngr = _save_steps(tmp_path, [1, 2, 3, 4], keep=0)
  assert mngr.all_steps() == [1, 2, 3, 4]
  with pytest.raises(ValueError, match="keep_checkpoints must be >= 0"):
    checkpoint.manager(str(tmp_path), -1)


def _damage(workdir, step, how):
  root = pathlib.Path(workdir) / "checkpoints" / str(step)
  if how == "data_json":
    for p in (root / "data").rglob("*"):
      if p.is_file():
        p.write_text("{not json")
  else:  # The tensor files of the state.
    for p in (root / "state").rglob("*"):
      if p.is_file() and p.stat().st_size > 0 and "metadata" not in p.name:
        p.write_bytes(b"\0garbage" * 3)


@pytest.mark.parametrize("how", ["data_json", "state_files"])
def test_damaged_latest_checkpoint_falls_back_to_the_older_one(tmp_path, how):
  # Old code: a bare JSONDecodeError or a TensorStore traceback, no step
  # named, no fallback.
  _save_steps(tmp_path, [2, 4]).close()
  _damage(tmp_path, 4, how)
  mngr = checkpoint.manager(str(tmp_path), 0)
  abstract = checkpoint.abstract(_tiny_state())
  state, step = checkpoint.restore_latest(mngr, str(tmp_path), abstract,
                                          _iterator(), quarantine=True)
  assert step == 2
  np.testing.assert_array_equal(state["params"]["w"], 2.0)
  assert mngr.all_steps() == [2]  # The broken one was moved aside.
  assert [p.name.split(".")[0] for p in
          (tmp_path / "broken_checkpoints").iterdir()] == ["4"]
  # Saving step 4 again (the resumed run reaching it) works.
  checkpoint.save(mngr, 4, _tiny_state(4.0), _iterator())
  assert mngr.all_steps() == [2, 4]


def test_no_intact_checkpoint_names_every_step(tmp_path):
  _save_steps(tmp_path, [2, 4]).close()
  _damage(tmp_path, 2, "data_json")
  _damage(tmp_path, 4, "data_json")
  mngr = checkpoint.manager(str(tmp_path), 0)
  with pytest.raises(checkpoint.NoIntactCheckpoint, match="step 4.*step 2"):
    checkpoint.restore_latest(mngr, str(tmp_path),
                              checkpoint.abstract(_tiny_state()), _iterator())


def test_training_resumes_bit_identically_past_a_damaged_checkpoint(
    folder, tmp_path):  # noqa: F811
  config = folder_config("contrastive", folder, tmp_path,
                         keep_checkpoints=0)
  single.train_and_evaluate(config, str(tmp_path / "straight"))
  partial = folder_config("contrastive", folder, tmp_path,
                          keep_checkpoints=0, max_steps_this_run=4)
  single.train_and_evaluate(partial, str(tmp_path / "resumed"))
  _damage(tmp_path / "resumed", 4, "state_files")
  single.train_and_evaluate(config, str(tmp_path / "resumed"))
  step_a, params_a = final_params(tmp_path / "straight")
  step_b, params_b = final_params(tmp_path / "resumed")
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  steps = [m["step"] for m in read_metrics(tmp_path / "resumed")]
  assert steps == [1, 2, 3, 4, 5, 6]  # Steps 3-4 once, from the rerun.


def test_non_finite_state_is_never_saved(tmp_path):
  # Old code: only the loss (computed before the update) was checked, so a
  # checkpoint could hold inf BatchNorm statistics.
  mngr = checkpoint.manager(str(tmp_path), 0)
  bad = _tiny_state()
  bad["batch_stats"]["mean"] = jnp.array([0.0, jnp.inf])
  with pytest.raises(checkpoint.NonFiniteState,
                     match=r"step 1 .*\['batch_stats'\]\['mean'\].*No "
                     "checkpoint was saved"):
    checkpoint.save(mngr, 1, bad, _iterator())
  assert mngr.all_steps() == []
  checkpoint.save(mngr, 1, _tiny_state(), _iterator())
  with pytest.raises(checkpoint.NonFiniteState, match="step 1, is kept"):
    checkpoint.save(mngr, 2, bad, _iterator())
  assert mngr.all_steps() == [1]


def test_non_finite_loss_message_says_whether_a_checkpoint_exists():
  history = [(3, {"loss": np.float32(np.nan)})]
  with pytest.raises(FloatingPointError, match="No checkpoint had been saved"):
    loop.check_finite(history, None)  # pylint: disable=protected-access
  with pytest.raises(FloatingPointError, match="step 2, is kept"):
    loop.check_finite(history, 2)  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# 8-9. Bad input: a clear error before any work.


@pytest.mark.parametrize("workdir", ["", "  "])
def test_empty_workdir_is_refused(folder, tmp_path, monkeypatch, workdir):  # noqa: F811
  # Old code: a whole run written into the current directory.
  monkeypatch.chdir(tmp_path)
  config = folder_config("contrastive", folder, tmp_path / "x")
  with pytest.raises(ValueError, match="--workdir is empty"):
    single.train_and_evaluate(config, workdir)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("override, message", [
    ({"log_every_steps": 0}, "log_every_steps must be >= 1"),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps must be >= 1"),
    ({"batch_size": 0}, "batch_size must be a positive"),
    ({"batch_size": -8}, "batch_size must be a positive"),
    ({"keep_checkpoints": -1}, "keep_checkpoints must be >= 0"),
    ({"eval.detectors": ("kde", "svdd")}, "Unknown detector 'svdd'"),
    ({"eval.embedding": "h"}, "Unknown embedding 'h'"),
])
def test_bad_settings_fail_before_the_workdir_is_written(
    folder, tmp_path, override, message):  # noqa: F811
  config = folder_config("contrastive", folder, tmp_path, **override)
  with pytest.raises(ValueError, match=message):
    single.train_and_evaluate(config, str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def test_empty_class_folder_is_an_error_not_a_shift(tmp_path):
  # Old code: the empty folder was dropped and later classes changed ids.
  for label in ("a", "b", "c"):
    (tmp_path / "d" / "train" / label).mkdir(parents=True)
  for label in ("a", "c"):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        tmp_path / "d" / "train" / label / "0.png")
  with pytest.raises(ValueError, match=r"train/b.*class ids"):
    sources.load("image_folder", "train", image_size=8,
                 data_dir=tmp_path / "tfds",
                 source_dir=tmp_path / "d")


def test_score_out_into_a_missing_folder_fails_first(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    scoring.check_out(tmp_path / "missing" / "scores.csv")
  scoring.check_out(tmp_path / "scores.csv")


def test_copied_checkpoints_without_config_are_refused(folder, tmp_path):  # noqa: F811
  # Old code: they resumed under whatever config was given.
  wd = tmp_path / "wd"
  config = folder_config("contrastive", folder, tmp_path, max_steps_this_run=2)
  single.train_and_evaluate(config, str(wd))
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  shutil.copytree(wd / "checkpoints", fresh / "checkpoints")
  with pytest.raises(ValueError, match="no config.json"):
    single.train_and_evaluate(config, str(fresh))


def test_metrics_keep_each_step_once_after_a_resume(tmp_path, monkeypatch):
  # Old code: the steps after the checkpoint appeared twice.
  class Stub:
    def __init__(self, *a, **k):
      pass

    def add_scalar(self, *a):
      pass

    def close(self):
      pass

  monkeypatch.setattr("tensorboardX.SummaryWriter", Stub)
  writer = metric_writers.MetricWriter(str(tmp_path), enabled=True,
                                       resume_step=0)
  for step in range(1, 7):
    writer.write_scalars(step, {"loss": float(step)})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "lo')  # A line torn by a kill.
  resumed = metric_writers.MetricWriter(str(tmp_path), enabled=True,
                                        resume_step=4)
  for step in (5, 6):
    resumed.write_scalars(step, {"loss": -float(step)})
  resumed.close()
  rows = read_metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[-1]["loss"] == -6.0


def test_killed_conversion_leftover_is_removed(tmp_path):
  # Old code: a 29 MB incomplete.* folder stayed for good.
  d = tmp_path / "d" / "train" / "a"
  d.mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "0.png")
  spec = datasets.get_spec("image_folder")
  builder = local._folder_builder(  # pylint: disable=protected-access
      spec, tmp_path / "d", tmp_path / "tfds", 8)
  leftover = pathlib.Path(builder.data_dir).parent / "incomplete.ABC_1.0.0"
  leftover.mkdir(parents=True)
  (leftover / "shard").write_bytes(b"x" * 1000)
  split = sources.load("image_folder", "train", image_size=8,
                       data_dir=tmp_path / "tfds",
                       source_dir=tmp_path / "d")
  assert len(split.source) == 1
  assert not leftover.exists()


def test_mvtec_evaluate_refuses_flags_it_ignores(tmp_path):
  # Old code: --detectors and --embedding were silently ignored.
  config = load_config("mvtec_rotation", f"root={tmp_path},runlocal")
  (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
  for flags in ((["kde"], None), (None, "g")):
    with pytest.raises(ValueError, match="do not apply to MVTec.*every test "
                       "patch with the KDE on a memory bank"):
      evaluators.evaluate_workdir(str(tmp_path), *flags)
  # Nor does an MVTec-style run have named evaluations to export.
  with pytest.raises(ValueError, match="only its own evaluation.*drop "
                     "--evaluation"):
    export.export_in_workdir(str(tmp_path), evaluation="g-kde")


def test_no_checkpoint_is_reported_before_orbax_starts(tmp_path, monkeypatch):
  # Item 9: with no checkpoint, the Orbax manager's cleanup thread could die
  # at exit with a second traceback ("cannot schedule new futures after
  # interpreter shutdown"), depending on timing. No manager is made at all now.
  def no_manager(*args, **kwargs):
    raise AssertionError("a CheckpointManager was created")
  monkeypatch.setattr(checkpoint, "manager", no_manager)
  (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
  for wd in (tmp_path / "none", tmp_path / "empty"):
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
      checkpoint.restore_state_only(str(wd), None)


def test_host_waits_for_the_step_two_back(folder, tmp_path, monkeypatch):
  # The host dispatched a whole log window ahead of a slow device, so a
  # SIGTERM save waited for up to 100 queued steps (8 minutes on 2 CPU cores,
  # past a Spot VM's 30 s notice). Now every step waits for the one two back.
  waited = []
  real = jax.block_until_ready
  monkeypatch.setattr(jax, "block_until_ready",
                      lambda x: waited.append(x) or real(x))
  history = [(s, {"loss": jnp.float32(s)}) for s in range(1, 6)]
  loop.bound_run_ahead(history)
  assert len(waited) == 1 and float(waited[0]["loss"]) == 3.0
  loop.bound_run_ahead(history[:2])  # Nothing two back yet.
  assert len(waited) == 1

  calls = []
  real_bound = loop.bound_run_ahead
  monkeypatch.setattr(loop, "bound_run_ahead",
                      lambda h: calls.append(h[-1][0]) or real_bound(h))
  config = folder_config("contrastive", folder, tmp_path,
                         total_steps=5, log_every_steps=100,
                         checkpoint_every_steps=100)
  single.train_and_evaluate(config, str(tmp_path / "wd"))
  assert calls == [1, 2, 3, 4, 5]
