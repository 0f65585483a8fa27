"""Several processes of the real binary on 127.0.0.1 (CPU), via launch/local.sh.

The processes are joined by `jax.distributed` (gloo collectives on CPU); each
reads its own rows of every global batch. They must train exactly what one
process with the same global devices and batch trains, stop with a clear error
(not hang) when one of them dies, and resume when all are restarted. Runs are
tiny (a ResNet-10 of width 1/16 on a 96-image folder, 8 steps) and share a
persistent compilation cache.

Also holds the helpers test_preemption.py uses (tiny data, flags, launching,
restoring checkpoints of any topology).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from oneclass_jax import distributed
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.data import sources

pytestmark = pytest.mark.slow  # Subprocesses / whole runs (README runs all).

REPO = pathlib.Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "launch" / "local.sh"
STEPS = 8
# Bounds on every wait: generous for a loaded 2-core machine, finite so that a
# hang fails the test instead of blocking it.
RUN_TIMEOUT_S = 900
EXIT_TIMEOUT_S = 180
HEARTBEAT_S = 10


def make_folder(root: pathlib.Path) -> pathlib.Path:
  """A 2-class image folder: 48 train and 16 test 32x32 images per class."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:32, :32] / 31.0
  for split, n in (("train", 48), ("test", 16)):
    for label in ("a", "b"):
      folder = root / split / label
      folder.mkdir(parents=True)
      base = xx if label == "a" else yy
      for i in range(n):
        img = np.stack([base, 1 - base, base * 0.5], -1)
        img = img + 0.1 * rng.normal(size=img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(
            folder / f"{i:03d}.png")
  return root


def make_tiny(tmp_path_factory) -> types.SimpleNamespace:
  """The folder, converted once here so that no two processes race on it."""
  folder = make_folder(tmp_path_factory.mktemp("folder"))
  data_dir = tmp_path_factory.mktemp("tfds")
  for split in ("train", "test"):
    sources.load("image_folder", split, image_size=32, data_dir=str(data_dir),
                 source_dir=str(folder))
  cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
  return types.SimpleNamespace(folder=folder, data_dir=data_dir, cache=cache)


def config_flags(tiny, **overrides) -> list[str]:
  """The --config.* flags that make any config the tiny run on `tiny`."""
  values = {
      "data.source_dir": tiny.folder, "data.data_dir": tiny.data_dir,
      "model.backbone": "resnet10", "model.width": 0.0625,
      "model.stem_width": 4, "model.head_depth": 1, "model.head_width": 8,
      "model.head_out_dim": 8, "batch_size": 16, "total_epochs": -1,
      "total_steps": STEPS, "log_every_steps": 1,
      "checkpoint_every_steps": 2, "eval.batch_size": 64,
      "eval.detectors": "('gde',)",
  }
  values.update(overrides)
  return [f"--config.{k}={v}" for k, v in values.items()]


def main_flags(tiny, workdir, **overrides) -> list[str]:
  """Flags of oneclass_jax.main for the tiny contrastive run."""
  return ([f"--config={REPO}/configs/contrastive.py:dataset=image_folder,"
           "runlocal", f"--workdir={workdir}"] +
          config_flags(tiny, **overrides))


def run_env(tiny) -> dict:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # local.sh sets the device count.
  env.update(JAX_COMPILATION_CACHE_DIR=str(tiny.cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


class Launch:
  """`launch/local.sh` running N processes with K CPU devices each."""

  def __init__(self, tiny, workdir, processes, devices, **overrides):
    self.workdir = workdir
    logs = pathlib.Path(f"{workdir}.logs")
    logs.mkdir(parents=True, exist_ok=True)
    self.log_dir = logs / str(len(list(logs.iterdir())))  # One per launch.
    self.log_dir.mkdir()
    self._stderr = self.log_dir / "launcher.log"
    cmd = [str(LOCAL_SH), f"--num_processes={processes}",
           f"--cpu_devices={devices}", f"--heartbeat_timeout={HEARTBEAT_S}",
           f"--python={sys.executable}"]
    if processes > 1:
      cmd.append(f"--log_dir={self.log_dir}")
    cmd += ["--"] + main_flags(tiny, workdir, **overrides)
    with open(self._stderr, "w") as err:
      # With one process local.sh execs python: self.proc.pid is its pid.
      self.proc = subprocess.Popen(
          cmd, cwd=REPO, env=run_env(tiny), stdout=err, stderr=err,
          start_new_session=True)
    self.processes = processes

  def pid(self, i: int) -> int:
    """Process i's pid, as the launcher reports it."""
    if self.processes == 1:
      return self.proc.pid
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while time.monotonic() < deadline:
      for line in self._stderr.read_text().splitlines():
        if line.startswith(f"process {i}: pid "):
          return int(line.split()[-1])
      time.sleep(0.05)
    raise AssertionError(f"launcher never reported process {i}")

  def log(self, i: int = 0) -> str:
    """Process i's output so far ('' before it starts)."""
    path = (self._stderr if self.processes == 1 else
            self.log_dir / f"process_{i}.log")
    return path.read_text() if path.exists() else ""

  def wait(self, timeout=RUN_TIMEOUT_S) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()
      raise AssertionError(f"timed out after {timeout} s; logs in "
                           f"{self.log_dir}") from None

  def check(self, timeout=RUN_TIMEOUT_S) -> None:
    rc = self.wait(timeout)
    assert rc == 0, (rc, self._stderr.read_text()[-3000:],
                     self.log()[-3000:])


def read_metrics(workdir) -> dict:
  """{step: metrics}; a step logged again after a resume keeps its last line."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return {}
  lines = path.read_text().splitlines()
  return {m["step"]: m for m in map(json.loads, lines)}


def wait_for(predicate, what, proc=None, timeout=RUN_TIMEOUT_S):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"the run ended (rc {proc.returncode}) before "
                           f"{what}")
    time.sleep(0.02)
  raise AssertionError(f"timed out waiting for {what}")


def checkpoint_steps(workdir) -> list[int]:
  root = pathlib.Path(workdir) / "checkpoints"
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def restore_state(workdir, step=None) -> tuple[int, dict]:
  """(step, state) of a checkpoint, whatever topology wrote it."""
  step = checkpoint_steps(workdir)[-1] if step is None else step
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      checkpointer.metadata(path).item_metadata)
  return step, checkpointer.restore(path, target)


def assert_same_params(workdir_a, workdir_b, rtol=0.0, atol=0.0):
  step_a, a = restore_state(workdir_a)
  step_b, b = restore_state(workdir_b)
  assert step_a == step_b, (step_a, step_b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=rtol, atol=atol),
               a["params"], b["params"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return make_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
  """Complete runs, made once per module: (processes, devices) -> Launch."""
  runs = {}

  def get(processes, devices):
    if (processes, devices) not in runs:
      workdir = tmp_path_factory.mktemp(f"run_{processes}x{devices}") / "wd"
      runs[processes, devices] = Launch(tiny, workdir, processes, devices)
      runs[processes, devices].check()
    return runs[processes, devices]

  return get


def test_environment_selects_the_runtime():
  assert distributed.initialize_kwargs({}) is None
  off = {"ONECLASS_JAX_DISTRIBUTED": "0"}
  assert distributed.initialize_kwargs(off) is None
  assert distributed.initialize_kwargs({"ONECLASS_JAX_DISTRIBUTED": "1"}) == {}
  assert distributed.initialize_kwargs({
      "ONECLASS_JAX_DISTRIBUTED": "1",
      "ONECLASS_JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234",
      "ONECLASS_JAX_NUM_PROCESSES": "4", "ONECLASS_JAX_PROCESS_ID": "3",
      "ONECLASS_JAX_HEARTBEAT_TIMEOUT_S": "20"}) == {
          "coordinator_address": "10.0.0.2:1234", "num_processes": 4,
          "process_id": 3, "heartbeat_timeout_seconds": 20}
  bad = [
      ({"ONECLASS_JAX_NUM_PROCESSES": "2"}, "COORDINATOR_ADDRESS"),
      ({"ONECLASS_JAX_COORDINATOR_ADDRESS": "localhost",
        "ONECLASS_JAX_NUM_PROCESSES": "2", "ONECLASS_JAX_PROCESS_ID": "0"},
       "host:port"),
      ({"ONECLASS_JAX_COORDINATOR_ADDRESS": "h:1",
        "ONECLASS_JAX_NUM_PROCESSES": "two", "ONECLASS_JAX_PROCESS_ID": "0"},
       "NUM_PROCESSES='two'"),
      ({"ONECLASS_JAX_COORDINATOR_ADDRESS": "h:1",
        "ONECLASS_JAX_NUM_PROCESSES": "2", "ONECLASS_JAX_PROCESS_ID": "2"},
       "must be below"),
  ]
  for env, message in bad:
    with pytest.raises(ValueError, match=message):
      distributed.initialize_kwargs({"ONECLASS_JAX_DISTRIBUTED": "1", **env})


def test_finished_only_for_complete_results(tmp_path):
  done, partial, empty = (tmp_path / n for n in ("done", "partial", "empty"))
  for d in (done, partial, empty):
    d.mkdir()
  (done / "results.json").write_text(json.dumps({"auc": {"kde": 0.9}}))
  (partial / "results.json").write_text('{"auc": {"kde"')
  missing = tmp_path / "missing"
  assert workdir_lib.finished(str(done))
  for d in (partial, empty, missing):
    assert not workdir_lib.finished(str(d))
  dirs = [str(d) for d in (missing, done, partial, empty)]
  assert workdir_lib.unfinished(dirs) == [dirs[0], dirs[2], dirs[3]]


def test_two_processes_train_exactly_what_one_does(finished):
  """2 processes x 1 device == 1 process x 2 devices, bit for bit.

  With two devices every cross-device sum has two terms, so the gloo
  collectives and the in-process ones round identically.
  """
  one, two = finished(1, 2).workdir, finished(2, 1).workdir
  assert_same_params(one, two)
  metrics = [read_metrics(w) for w in (one, two)]
  for key in ("loss", "grad_norm"):
    assert ([metrics[0][s][key] for s in range(1, STEPS + 1)] ==
            [metrics[1][s][key] for s in range(1, STEPS + 1)]), key
  results = [json.loads((w / "results.json").read_text()) for w in (one, two)]
  assert results[0]["auc"] == results[1]["auc"]
  assert results[1]["step"] == STEPS
  for i in range(2):  # Every process logs its own progress.
    log = finished(2, 1).log(i)
    assert f"JAX process {i}/2" in log
    assert f"step {STEPS}/{STEPS}" in log
  # Writes to the shared workdir were atomic: no temporary files are left.
  assert not [p for p in two.rglob("*") if "tmp" in p.name]


def test_two_and_four_processes_with_several_devices_each(tiny, tmp_path):
  """2 x 4 and 4 x 2 devices == 1 process x 8 devices, to float rounding.

  Cross-process sums of more than two terms add in gloo's order, which
  differs from the in-process all-reduce in the last bits; after one step the
  parameters agree to within 1e-6 (the update itself is ~1e-2: wrong data or
  a wrong sum would show by far more). Later steps amplify the difference, so
  the comparison stops there.
  """
  workdirs = {}
  for processes, devices in ((1, 8), (2, 4), (4, 2)):
    workdir = tmp_path / f"{processes}x{devices}"
    Launch(tiny, workdir, processes, devices, max_steps_this_run=1).check()
    workdirs[processes] = workdir
  reference = read_metrics(workdirs[1])[1]
  for processes in (2, 4):
    assert_same_params(workdirs[1], workdirs[processes], rtol=1e-5, atol=1e-6)
    first = read_metrics(workdirs[processes])[1]
    np.testing.assert_allclose(first["loss"], reference["loss"], rtol=1e-6)
    np.testing.assert_allclose(first["grad_norm"], reference["grad_norm"],
                               rtol=1e-5)


def test_dead_process_stops_the_others_sigterm_saves_and_all_resume(
    tiny, finished, tmp_path):
  """SIGKILL one process: the other exits with an error; restarting both
  resumes. SIGTERM to one process: both save the same step and exit 143.
  The final parameters equal an uninterrupted 2-process run's."""
  workdir = tmp_path / "wd"
  first = Launch(tiny, workdir, 2, 1)
  wait_for(lambda: 2 in checkpoint_steps(workdir), "the step-2 checkpoint",
           first.proc)
  os.kill(first.pid(1), signal.SIGKILL)
  rc = first.wait(EXIT_TIMEOUT_S)  # No hang: the survivor gives up.
  assert rc != 0
  survivor = first.log(0)
  assert ("Restart all 2 processes with the same --workdir" in survivor or
          "another task died" in survivor), survivor[-3000:]
  assert read_metrics(workdir)  # It had trained (and logged) some steps.

  resumed_from = checkpoint_steps(workdir)[-1]
  assert resumed_from < STEPS
  second = Launch(tiny, workdir, 2, 1)
  wait_for(lambda: f"step {resumed_from + 1}/" in second.log(0),
           "a step after the resume", second.proc)
  os.kill(second.pid(1), signal.SIGTERM)  # Process 1 only.
  assert second.wait(EXIT_TIMEOUT_S) == distributed.PREEMPTED_EXIT_CODE
  saved = []
  for i in range(2):
    log = second.log(i)
    assert f"Resumed from step {resumed_from}" in log
    marker = "SIGTERM received: saving a checkpoint at step "
    assert marker in log, log[-3000:]
    saved.append(int(log.split(marker)[1].split()[0]))
  assert saved[0] == saved[1] == checkpoint_steps(workdir)[-1]
  assert not (workdir / "results.json").exists()

  Launch(tiny, workdir, 2, 1).check()
  assert_same_params(workdir, finished(2, 1).workdir)
  straight = read_metrics(finished(2, 1).workdir)
  resumed = read_metrics(workdir)
  assert [resumed[s]["loss"] for s in range(1, STEPS + 1)] == [
      straight[s]["loss"] for s in range(1, STEPS + 1)]
