"""Orbax checkpoints of the train state and the data iterator, together.

Saving both in one Orbax step means a resumed run continues with the same
parameters *and* the same data order as an uninterrupted one. Orbax writes each
step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact (the partial one is ignored and
cleaned up). Only the primary host writes; every host restores.

Beyond what Orbax guarantees: a state holding NaN or inf is never saved
(`NonFiniteState`), and a checkpoint that cannot be read back (a damaged file)
is skipped for the newest intact one, with a warning naming it
(`restore_latest`).
"""
from __future__ import annotations

import os
import time

from absl import logging
from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class NonFiniteState(FloatingPointError):
  """The train state holds NaN or inf: it is not written as a checkpoint."""


class NoIntactCheckpoint(RuntimeError):
  """Every checkpoint of a workdir failed to restore."""


def _dir(workdir: str) -> epath.Path:
  # Local paths are made absolute; gs:// URLs go to Orbax unchanged.
  root = workdir if "://" in str(workdir) else os.path.abspath(workdir)
  return epath.Path(root) / "checkpoints"


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """keep = how many checkpoints to keep; 0 keeps all of them."""
  if keep < 0:
    raise ValueError(f"keep_checkpoints must be >= 0 (0 = keep all), got "
                     f"{keep}.")
  path = _dir(workdir)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep or None, create=True,
      # Removes the temporary folder of a save that a kill interrupted.
      cleanup_tmp_directories=True,
      # Synchronous saves: small models save in well under a second and the
      # loop then knows a checkpoint is on disk before it moves on.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(path, options=options,
                               item_names=("state", "data"))


def nonfinite_leaves(state) -> list[str]:
  """Names of the floating-point leaves of `state` that hold NaN or inf."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    if not jax.dtypes.issubdtype(leaf.dtype, np.inexact):
      continue
    if not bool(np.all(np.isfinite(np.asarray(jax.device_get(leaf))))):
      bad.append(jax.tree_util.keystr(path))
  return bad


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter) -> None:
  """Saves the state and the grain iterator (one JSON file per process).

  Raises:
    NonFiniteState: some parameter, BatchNorm statistic or optimizer slot is
      NaN or inf; nothing is written, the earlier checkpoints stay.
  """
  bad = nonfinite_leaves(state)
  if bad:
    latest = mngr.latest_step()
    kept = (f"The last checkpoint, step {latest}, is kept and a restart "
            "resumes from it." if latest is not None else
            "No checkpoint was saved before this step.")
    raise NonFiniteState(
        f"The train state at step {step} holds NaN or inf in "
        f"{len(bad)} arrays (e.g. {', '.join(bad[:3])}); not saving it. "
        f"{kept} Try a lower learning rate or check the input data.")
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iter)), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state,
            data_iter):
  """Restores the state and moves `data_iter` to where it was at `step`."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  return restored.state


def restore_latest(mngr: ocp.CheckpointManager, workdir: str,
                   abstract_state, data_iter=None, *, quarantine=False):
  """(state, step) of the newest checkpoint that restores; (None, None) if none.

  A checkpoint that fails to restore (a damaged file, a bare JSONDecodeError
  or a TensorStore error from Orbax) is skipped with a warning naming it.
  With `quarantine` (training, process 0) it is moved to
  `broken_checkpoints/` so that later saves of the same step do not collide
  with it; the manager is reloaded.

  Raises:
    NoIntactCheckpoint: there are checkpoints but none restores.
  """
  broken = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      if data_iter is None:
        state = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state))).state
      else:
        state = restore(mngr, step, abstract_state, data_iter)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax raises whatever its readers raise (ValueError, OSError,
      # JSONDecodeError, TensorStore's own): all mean "unreadable here".
      first_line = (str(e).strip().splitlines() or [""])[0][:300]
      broken.append((step, f"{type(e).__name__}: {first_line}"))
      logging.warning("Checkpoint %s/%d cannot be restored (%s); trying the "
                      "next older one.", _dir(workdir), step, broken[-1][1])
      continue
    if broken:
      logging.warning("Restored step %d instead of the broken checkpoint(s) "
                      "%s.", step, ", ".join(str(s) for s, _ in broken))
      if quarantine:
        _quarantine(mngr, workdir, [s for s, _ in broken])
    return state, step
  if broken:
    raise NoIntactCheckpoint(
        f"No checkpoint in {_dir(workdir)} can be restored: " + "; ".join(
            f"step {s}: {why}" for s, why in broken) + ". Move the "
        "checkpoints folder away to start from scratch.")
  return None, None


def _quarantine(mngr, workdir, steps) -> None:
  if jax.process_index() != 0:
    return
  aside = _dir(workdir).parent / "broken_checkpoints"
  aside.mkdir(parents=True, exist_ok=True)
  for step in steps:
    target = aside / f"{step}.{int(time.time())}"
    (_dir(workdir) / str(step)).rename(target)
    logging.warning("Moved broken checkpoint %d to %s.", step, target)
  mngr.reload()


def restore_state_only(workdir: str, abstract_state):
  """For the evaluation binaries: the newest intact state, no data state."""
  missing = FileNotFoundError(
      f"No checkpoint in {_dir(workdir)}: train first with `python -m "
      "oneclass_jax.main --config=... --workdir=...`.")
  # Checked before a manager exists: Orbax's manager starts a cleanup thread
  # that, on a quick exit with this error, died with a second traceback.
  if not _dir(workdir).is_dir() or not any(_dir(workdir).iterdir()):
    raise missing
  mngr = manager(workdir, keep=0)
  try:
    state, step = restore_latest(mngr, workdir, abstract_state)
  finally:
    mngr.close()
  if step is None:
    raise missing
  return state, step


def abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
