"""The 1-D `data` mesh and moving host-local batches onto it.

Stage 1 runs a per-device step (`jax.shard_map` over this mesh: pmap
semantics with the modern API); parameters are replicated (`P()`), batches are
split along their leading axis (`P('data')`). The same helpers serve one CPU,
8 fake CPU devices in tests, a GPU host and a multi-host TPU slice.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (default: all, all hosts)."""
  devices = jax.devices()
  if num_devices is not None:
    if not 0 < num_devices <= len(devices):
      raise ValueError(f"Asked for {num_devices} devices; {len(devices)} exist.")
    devices = devices[:num_devices]
  # Explicit axis types: the default changed once already (JAX 0.9); naming
  # it keeps the sharding of every array spelled out.
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,),
                           axis_types=(jax.sharding.AxisType.Explicit,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def check_batch_size(global_batch_size: int, mesh) -> int:
  """Per-device batch size; a clear error when the batch does not divide."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n:
    raise ValueError(
        f"Batch size {global_batch_size} is not divisible by the {n} devices "
        f"of the mesh: use a multiple of {n} (e.g. "
        f"{max(n, global_batch_size // n * n)}), or fewer devices.")
  if global_batch_size % jax.process_count():
    raise ValueError(f"Batch size {global_batch_size} is not divisible by "
                     f"the {jax.process_count()} processes.")
  return global_batch_size // n


def to_global(local_batch: dict, mesh) -> dict:
  """Host-local numpy batch -> global arrays sharded along `data`.

  Each process passes its own slice (its rows of the global batch);
  `make_array_from_process_local_data` assembles them without a gather.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)


def replicate(tree, mesh):
  """Puts a pytree on every device of the mesh (e.g. fresh or restored state)."""
  return jax.device_put(tree, replicated(mesh))
