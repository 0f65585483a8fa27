"""Preemption of the real binary (one process, 2 CPU devices).

SIGTERM makes the run save a checkpoint and exit with status 143; SIGKILL at
varying points (between steps, during checkpoint saves, during the final
evaluation) leaves only intact files. Every resume continues from the last
checkpoint and ends with the parameters, losses and AUCs of an uninterrupted
run, bit for bit. The multi-process cases are in test_multiprocess.py, whose
helpers this file uses.
"""
import json
import os
import signal
import time

import numpy as np
import pytest

import test_multiprocess as mp
from oneclass_jax import checkpoint
from oneclass_jax import distributed

pytestmark = pytest.mark.slow  # Subprocesses / whole runs (README runs all).

DEVICES = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return mp.make_tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
  """The uninterrupted run every interrupted one must reproduce."""
  workdir = tmp_path_factory.mktemp("straight") / "wd"
  mp.Launch(tiny, workdir, 1, DEVICES).check()
  return workdir


def assert_matches_straight(workdir, straight):
  mp.assert_same_params(workdir, straight)
  expected, got = mp.read_metrics(straight), mp.read_metrics(workdir)
  assert sorted(got) == list(range(1, mp.STEPS + 1))
  assert [got[s]["loss"] for s in got] == [expected[s]["loss"] for s in got]
  results = [json.loads((w / "results.json").read_text())
             for w in (workdir, straight)]
  assert results[0]["auc"] == results[1]["auc"]


def assert_intact(workdir):
  """Every file a killed run left is whole: JSON parses, checkpoints load."""
  if (workdir / "config.json").exists():
    json.loads((workdir / "config.json").read_text())
  mp.read_metrics(workdir)  # Parses every line.
  results = workdir / "results.json"
  if results.exists():
    assert "auc" in json.loads(results.read_text())
  steps = mp.checkpoint_steps(workdir)
  for step in steps:
    restored_step, state = mp.restore_state(workdir, step)
    assert int(np.asarray(state["step"])) == restored_step == step
  # Orbax itself ignores what a kill interrupted (temporary directories).
  latest = checkpoint.manager(str(workdir), 3).latest_step()
  assert latest == (steps[-1] if steps else None)
  return latest


def test_guard_turns_sigterm_into_a_stop_request():
  previous = signal.getsignal(signal.SIGTERM)
  with distributed.PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.should_stop(2)
    assert guard.should_stop(3)
  assert guard.stopped_at == 2
  assert signal.getsignal(signal.SIGTERM) == previous
  stop = distributed.Preempted(2)
  assert isinstance(stop, SystemExit) and stop.code == 143
  assert "after saving step 2" in str(stop)


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tiny, straight,
                                                          tmp_path):
  workdir = tmp_path / "wd"
  # No periodic checkpoints: the only one is the one SIGTERM asks for.
  flags = {"checkpoint_every_steps": 1000}
  run = mp.Launch(tiny, workdir, 1, DEVICES, **flags)
  mp.wait_for(lambda: "step 3/" in run.log(), "step 3", run.proc)
  os.kill(run.pid(0), signal.SIGTERM)
  assert run.wait(mp.EXIT_TIMEOUT_S) == distributed.PREEMPTED_EXIT_CODE
  steps = mp.checkpoint_steps(workdir)
  assert len(steps) == 1 and 3 <= steps[0] < mp.STEPS, steps
  assert f"saving a checkpoint at step {steps[0]}" in run.log()
  assert not (workdir / "results.json").exists()
  assert sorted(mp.read_metrics(workdir)) == list(range(1, steps[0] + 1))

  rerun = mp.Launch(tiny, workdir, 1, DEVICES, **flags)
  rerun.check()
  assert f"Resumed from step {steps[0]}" in rerun.log()
  assert_matches_straight(workdir, straight)


def test_sigkill_at_random_points_then_resume(tiny, straight, tmp_path):
  rng = np.random.default_rng(0)
  workdir = tmp_path / "wd"
  # Two kills at random steps (plus a random delay, so some land inside a
  # checkpoint save), then one during the final evaluation.
  kill_after = sorted(rng.choice(np.arange(1, mp.STEPS - 1), 2, replace=False))
  kill_after.append("eval")
  latest = None
  for point in kill_after:
    run = mp.Launch(tiny, workdir, 1, DEVICES)
    if point == "eval":
      mp.wait_for(lambda r=run: f"Trained to step {mp.STEPS}" in r.log(),
                  "the end of training", run.proc)
    else:
      # A step this run trained itself (earlier runs logged some already).
      step = max(point, (latest or 0) + 1)
      mp.wait_for(lambda r=run, s=step: f"step {s}/" in r.log(),
                  f"step {step}", run.proc)
      time.sleep(rng.uniform(0.0, 0.5))
    os.kill(run.pid(0), signal.SIGKILL)
    assert run.wait(mp.EXIT_TIMEOUT_S) == -signal.SIGKILL
    if latest is not None:
      assert f"Resumed from step {latest}" in run.log()
    latest = assert_intact(workdir)
  assert latest == mp.STEPS  # The last kill came after training.

  final = mp.Launch(tiny, workdir, 1, DEVICES)
  final.check()
  assert f"Resumed from step {mp.STEPS}" in final.log()
  assert_matches_straight(workdir, straight)
