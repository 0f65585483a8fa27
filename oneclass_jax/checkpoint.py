"""Orbax checkpoints of the train state and the data iterator, together.

Saving both in one Orbax step means a resumed run continues with the same
parameters *and* the same data order as an uninterrupted one. Orbax writes each
step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact (the partial one is ignored and
cleaned up). Only the primary host writes; every host restores.
"""
from __future__ import annotations

import os

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  # Local paths are made absolute; gs:// URLs go to Orbax unchanged.
  root = workdir if "://" in str(workdir) else os.path.abspath(workdir)
  path = epath.Path(root) / "checkpoints"
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True,
      # Removes the temporary folder of a save that a kill interrupted.
      cleanup_tmp_directories=True,
      # Synchronous saves: small models save in well under a second and the
      # loop then knows a checkpoint is on disk before it moves on.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(path, options=options,
                               item_names=("state", "data"))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter) -> None:
  """Saves the state and the grain iterator (one JSON file per process)."""
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


def restore_state_only(workdir: str, abstract_state, step: int | None = None):
  """For the evaluation binaries: the latest (or given) state, no data state."""
  mngr = manager(workdir, keep=1 << 30)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in {os.path.join(workdir, 'checkpoints')}: train first "
        "with `python -m oneclass_jax.main --config=... --workdir=...`.")
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))
  return restored.state, step


def abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
