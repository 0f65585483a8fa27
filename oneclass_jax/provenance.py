"""The identity of what a derived file was computed from.

Embedding caches, fitted detectors, scores and results.json carry it, so a
cache is reused only for the very checkpoint, config and data that made it:
a workdir retrained from scratch at the same step, or an image folder edited
in place, gives another identity and the cache is rebuilt.
"""
from __future__ import annotations

import hashlib
import json

import jax
import numpy as np

from oneclass_jax import config_lib


def tree_digest(tree) -> str:
  """sha256 (16 hex digits) of a pytree's leaf paths, dtypes, shapes, bytes."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  for path, leaf in leaves:
    array = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}{array.dtype.str}"
             f"{array.shape}".encode())
    h.update(array.tobytes())
  return h.hexdigest()[:16]


def config_digest(config) -> str:
  """Digest of the fields that decide what is trained (not eval, logging)."""
  trained = {k: v for k, v in config_lib.to_dict(config).items()
             if k not in config_lib.RESUMABLE_FIELDS}
  text = json.dumps(trained, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity(config, state, data_meta: dict) -> dict:
  """{step, weights, config, data} of an evaluation's inputs."""
  return {
      "step": int(jax.device_get(state["step"])),
      "weights": tree_digest({"params": state["params"],
                              "batch_stats": state["batch_stats"]}),
      "config": config_digest(config),
      "data": str(data_meta.get("fingerprint", "")),
  }


def differences(saved: dict | None, current: dict) -> list[str]:
  """The identity fields that differ ('absent' when nothing was recorded)."""
  if not saved:
    return ["absent"]
  return [k for k in sorted(current) if saved.get(k) != current[k]]
