"""Feeding the trainer: grain loaders over random-access sources.

* `train_loader`: endless (or `num_epochs`) host-local batches of a fresh
  permutation per epoch, deterministic given the seed, resumable from its
  iterator state (`get_state()` / `set_state()`, or Orbax through
  `grain.checkpoint.CheckpointSave` / `CheckpointRestore`).
* `inference_batches` + `unpad`: every record exactly once, in order, in
  fixed-size padded batches with a `_mask`, the same number of batches on
  every host.

Multi-host layout of a training step: each epoch draws one permutation of the
whole source (the same on every host); global batch k is positions
[k * G, (k + 1) * G) of it, and host h reads only its rows h, h + P, ... of
that batch (P hosts, G the global batch). The union of the host batches is
therefore the same for any number of hosts.
"""
import functools
import math
from typing import Any, Iterator, Optional, Sequence

import grain
import numpy as np


def _shard(shard_options, shard_by_process: bool) -> tuple[int, int]:
  """(this host's index, number of hosts)."""
  if shard_options is None:
    if shard_by_process:
      shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    else:
      shard_options = grain.sharding.NoSharding()
  return shard_options.shard_index, shard_options.shard_count


def _grain_seed(seed: int) -> int:
  # grain reshuffles epoch e with seed + e; hashing the run seed first keeps
  # runs with seeds s and s + 1 from sharing epoch orders.
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _with_index(size: int, index: int, record: dict[str, Any]) -> dict:
  # MapDataset indices run on across epochs; the record's own position is
  # the index modulo the source size.
  return {**record, "index": index % size}


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  """Full global batches in one epoch (the remainder is dropped)."""
  return num_records // global_batch_size


def train_loader(source, *, global_batch_size: int, seed: int,
                 shard_by_process: bool = True, worker_count: int = 0,
                 num_epochs: Optional[int] = None,
                 shard_options: Optional[grain.sharding.ShardOptions] = None,
                 read_threads: int = 8) -> grain.IterDataset:
  """Shuffled host-local training batches.

  Args:
    source: random access to dict records (e.g. `OneClassData.train`).
    global_batch_size: examples per step over all hosts; each host gets
      global_batch_size // host count of them.
    seed: fixes every epoch's order.
    shard_by_process: split each global batch over `jax.process_count()`
      hosts, host h taking its h-th contiguous block (ignored when
      `shard_options` is given).
    worker_count: > 0 reads in that many grain worker processes (grain then
      reads absl flags: run inside an absl app, or after
      `flags.FLAGS.mark_as_parsed()`).
    num_epochs: None = repeat forever.
    shard_options: explicit (shard_index, shard_count), e.g. to simulate hosts.
    read_threads: threads reading batches ahead in this process.

  Returns:
    A grain IterDataset; `iter()` of it yields dicts of numpy arrays with a
    leading host-batch axis (the source's fields plus `index`, the position
    of each record in `source`) and has `get_state()` / `set_state()`.
    Every epoch is `steps_per_epoch(len(source), global_batch_size)` steps.

  Raises:
    ValueError: a global batch that does not split evenly over the hosts, or
      a source smaller than one global batch.
  """
  index, count = _shard(shard_options, shard_by_process)
  if global_batch_size <= 0 or global_batch_size % count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a "
                     f"positive multiple of the {count} hosts.")
  size = len(source)
  steps = steps_per_epoch(size, global_batch_size)
  if steps == 0:
    raise ValueError(f"the source has {size} examples, fewer than one global "
                     f"batch of {global_batch_size}; lower the batch size.")
  ds = grain.MapDataset.source(source)
  ds = ds.map_with_index(functools.partial(_with_index, size))
  ds = ds.shuffle(seed=_grain_seed(seed))
  # Host h reads the h-th contiguous block of every global batch, so the
  # global batch (and thus which examples share a device) is the same for
  # any number of hosts.
  ds = ds[:steps * global_batch_size]
  ds = ds.batch(global_batch_size // count, drop_remainder=True)[index::count]
  ds = ds.repeat(num_epochs)
  # Each read-ahead element is a whole batch: a small buffer bounds memory.
  options = grain.ReadOptions(num_threads=read_threads,
                              prefetch_buffer_size=2 * read_threads)
  loader = ds.to_iter_dataset(options)
  if worker_count > 0:
    loader = loader.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_count))
  return loader


def _host_range(size: int, index: int, count: int) -> tuple[int, int]:
  return size * index // count, size * (index + 1) // count


def inference_batches(
    source, *, batch_size: int, shard_by_process: bool = True,
    shard_options: Optional[grain.sharding.ShardOptions] = None,
    read_threads: int = 8) -> Iterator[dict[str, np.ndarray]]:
  """Yields every record of this host's part once, in order, padded.

  Host h reads the contiguous part [size * h // P, size * (h + 1) // P).
  Every host yields ceil(max part / batch_size) batches of exactly
  batch_size rows; padding rows are zeros with `_mask` False (real rows
  True), so all hosts run the same number of steps.

  Args:
    source: random access to dict records.
    batch_size: rows per batch on this host.
    shard_by_process: split over `jax.process_count()` hosts (ignored when
      `shard_options` is given).
    shard_options: explicit (shard_index, shard_count).
    read_threads: threads reading batches ahead.

  Raises:
    ValueError: an empty source or a non-positive batch size.
  """
  index, count = _shard(shard_options, shard_by_process)
  size = len(source)
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  if size == 0:
    raise ValueError("the source is empty: nothing to run inference on.")
  lo, hi = _host_range(size, index, count)
  largest = max(b - a for a, b in (_host_range(size, h, count)
                                    for h in range(count)))
  num_batches = math.ceil(largest / batch_size)
  pad = {k: np.zeros_like(np.asarray(v)) for k, v in source[0].items()}
  pad["_mask"] = np.bool_(False)
  produced = 0
  if hi > lo:
    ds = grain.MapDataset.source(source)[lo:hi].batch(batch_size)
    options = grain.ReadOptions(num_threads=read_threads,
                                prefetch_buffer_size=2 * read_threads)
    for batch in ds.to_iter_dataset(options):
      batch["_mask"] = np.ones(len(next(iter(batch.values()))), bool)
      yield _pad_batch(batch, pad, batch_size)
      produced += 1
  empty = {k: np.zeros((0,) + v.shape, v.dtype) for k, v in pad.items()}
  for _ in range(num_batches - produced):
    yield _pad_batch(empty, pad, batch_size)


def _pad_batch(batch, pad, batch_size):
  """Appends padding rows (zeros, `_mask` False) up to batch_size rows."""
  missing = batch_size - len(batch["_mask"])
  if not missing:
    return batch
  return {k: np.concatenate([np.asarray(v), np.broadcast_to(
      pad[k], (missing,) + pad[k].shape)]) for k, v in batch.items()}


def unpad(values: Sequence[np.ndarray],
          masks: Sequence[np.ndarray]) -> np.ndarray:
  """Concatenates batch outputs and keeps the rows whose mask is True.

  Args:
    values: per-batch outputs [batch, ...] (a list, or a stacked array such
      as [batches, batch, ...] or, gathered over hosts, [hosts, rows, ...]).
    masks: the matching `_mask`s (same leading shape as each value).

  Returns:
    The real rows, in order: for host-gathered arrays, host 0's part first,
    which is the source order.
  """
  rows, keep = [], []
  for value, mask in zip(values, masks, strict=True):
    value, mask = np.asarray(value), np.asarray(mask, bool)
    if value.shape[:mask.ndim] != mask.shape:
      raise ValueError(f"output of shape {value.shape} does not match its "
                       f"mask of shape {mask.shape}.")
    rows.append(value.reshape((-1,) + value.shape[mask.ndim:]))
    keep.append(mask.reshape(-1))
  return np.concatenate(rows)[np.concatenate(keep)]
