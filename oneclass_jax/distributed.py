r"""Multi-process runs, preemption and finished-run checks.

The distributed engine is JAX's own multi-process runtime (`jax.distributed`);
this module only decides how to start it and how the training loop reacts to
preemption.

* `initialize()`: reads the environment a launcher sets. Nothing happens
  unless `ONECLASS_JAX_DISTRIBUTED=1`. With `ONECLASS_JAX_COORDINATOR_ADDRESS`
  (host:port of process 0), `ONECLASS_JAX_NUM_PROCESSES` and
  `ONECLASS_JAX_PROCESS_ID` set (`launch/local.sh`: N processes on one
  machine, or hosts without a cluster manager) they are passed to
  `jax.distributed.initialize`; without them JAX detects the cluster itself
  (Cloud TPU VMs, SLURM, Open MPI). `ONECLASS_JAX_HEARTBEAT_TIMEOUT_S` bounds
  how long survivors wait before giving up on a dead process (JAX: 100 s).
* `PreemptionGuard`: SIGTERM (the preemption notice on Cloud TPU and most
  schedulers) asks the training loop to save a checkpoint and stop. In a
  multi-process run JAX's preemption service catches the signal and agrees
  on one step for every process (`reached_preemption_sync_point`), so all of
  them save the same step; a single process uses a Python signal handler.
  After the checkpoint the loop raises `Preempted`, a `SystemExit` with
  status 143, so the binary ends like a process killed by SIGTERM.
* `failure_exit()`: when one process of a multi-process run fails (often
  because another one died), logs what to do and exits at once instead of
  waiting for the runtime's shutdown barrier.

CPU collectives between processes go through gloo, the default of
`jax_cpu_collectives_implementation` in JAX 0.10; no setting is needed.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Optional

import jax
from absl import logging
from jax.experimental import multihost_utils

ENABLE = "ONECLASS_JAX_DISTRIBUTED"
COORDINATOR_ADDRESS = "ONECLASS_JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES = "ONECLASS_JAX_NUM_PROCESSES"
PROCESS_ID = "ONECLASS_JAX_PROCESS_ID"
HEARTBEAT_TIMEOUT = "ONECLASS_JAX_HEARTBEAT_TIMEOUT_S"

# Exit status of a run stopped by SIGTERM after saving its checkpoint: the
# shell's code for "terminated by SIGTERM", so supervisors see an unfinished
# run and restart it.
PREEMPTED_EXIT_CODE = 143
# Exit status of a process that left a failed multi-process run.
FAILED_EXIT_CODE = 1

def _int_var(environ: Mapping[str, str], name: str, minimum: int) -> int:
  value = environ.get(name, "")
  try:
    number = int(value)
  except ValueError:
    number = None
  if number is None or number < minimum:
    raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}. "
                     "Set it (or unset the other ONECLASS_JAX_* variables "
                     "to let JAX detect the cluster).")
  return number


def initialize_kwargs(environ: Mapping[str, str]) -> Optional[dict]:
  """Arguments for `jax.distributed.initialize`, or None for one process.

  Args:
    environ: the environment (variables named in the module docstring).

  Returns:
    None when `ONECLASS_JAX_DISTRIBUTED` is unset or 0; else the keyword
    arguments (empty for JAX's cluster auto-detection).

  Raises:
    ValueError: a partial or malformed explicit setting.
  """
  if environ.get(ENABLE, "0") in ("", "0"):
    return None
  kwargs = {}
  explicit = (COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID)
  given = [name for name in explicit if environ.get(name)]
  if given:
    if len(given) < len(explicit):
      missing = sorted(set(explicit) - set(given))
      raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} "
                       "not: set all three, or none (cluster "
                       "auto-detection).")
    address = environ[COORDINATOR_ADDRESS]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"{COORDINATOR_ADDRESS}={address!r}: expected "
                       "host:port of process 0, e.g. 127.0.0.1:12355.")
    kwargs["coordinator_address"] = address
    kwargs["num_processes"] = _int_var(environ, NUM_PROCESSES, 1)
    kwargs["process_id"] = _int_var(environ, PROCESS_ID, 0)
    if kwargs["process_id"] >= kwargs["num_processes"]:
      raise ValueError(f"{PROCESS_ID}={kwargs['process_id']} must be below "
                       f"{NUM_PROCESSES}={kwargs['num_processes']}.")
  if environ.get(HEARTBEAT_TIMEOUT):
    kwargs["heartbeat_timeout_seconds"] = _int_var(environ,
                                                   HEARTBEAT_TIMEOUT, 1)
  return kwargs


def initialize(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Starts JAX's multi-process runtime if the environment asks for it.

  Must run before anything touches a JAX backend. Returns True when the
  runtime was started.
  """
  kwargs = initialize_kwargs(os.environ if environ is None else environ)
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs)
  return True


class Preempted(SystemExit):
  """Raised after the checkpoint that SIGTERM asked for: stop, unfinished."""

  def __init__(self, step: int):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step

  def __str__(self) -> str:
    return (f"Stopped by SIGTERM after saving step {self.step}; run the same "
            "command again to resume.")


class PreemptionGuard:
  """Tells a training loop when to save and stop after SIGTERM.

  Use as a context manager around the loop and call `should_stop(step)`
  after every step, in every process. Outside the `with` block SIGTERM
  terminates the process as usual (e.g. during the final evaluation, which a
  restart simply redoes).
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    self._multiprocess = False
    self.stopped_at: Optional[int] = None

  def __enter__(self) -> "PreemptionGuard":
    # JAX's preemption service installed its own SIGTERM handler in
    # `jax.distributed.initialize`; a Python handler would replace it.
    self._multiprocess = jax.distributed.is_initialized()
    if not self._multiprocess:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    previous = self._previous if self._previous is not None else signal.SIG_DFL
    signal.signal(signal.SIGTERM, previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._event.set()

  def should_stop(self, step: int) -> bool:
    """True once SIGTERM arrived; every process gets True at the same step."""
    if self._multiprocess:
      stop = multihost_utils.reached_preemption_sync_point(step)
    else:
      stop = self._event.is_set()
    if stop and self.stopped_at is None:
      self.stopped_at = step
      logging.warning("SIGTERM received: saving a checkpoint at step %d and "
                      "stopping. Run the same command again to resume.", step)
    return stop


def failure_exit(error: BaseException) -> None:
  """Leaves a failed multi-process run now, saying how to resume it.

  Once a collective has failed the runtime cannot recover, and JAX's exit
  path would wait up to the heartbeat timeout at its shutdown barrier and
  then abort; exiting directly keeps the failure quick and readable. Returns
  (the caller re-raises) in a single-process run.
  """
  if not jax.distributed.is_initialized():
    return
  logging.exception(
      "Process %d/%d stopped: %s: %s\nA multi-process run stops as a whole "
      "when one process fails; the usual cause is another process that died "
      "or was preempted (see its log). Restart all %d processes with the same "
      "--workdir: they resume from the last checkpoint.",
      jax.process_index(), jax.process_count(), type(error).__name__, error,
      jax.process_count(), exc_info=error)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(FAILED_EXIT_CODE)  # pylint: disable=protected-access
