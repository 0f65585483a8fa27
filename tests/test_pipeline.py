"""Tests for oneclass_jax.data.pipeline (grain loaders)."""
from absl import flags
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from oneclass_jax.data import pipeline


def make_source(size, shape=(2, 2, 3)):
  """In-memory records whose image and label encode their position."""
  return [{"image": np.full(shape, i % 251, np.uint8), "label": i % 3,
           "value": np.int64(i)} for i in range(size)]


def shard(index, count):
  return grain.sharding.ShardOptions(index, count, drop_remainder=True)


def take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]


def test_batches_are_host_local_dicts_with_index():
  source = make_source(50)
  (batch,) = take(pipeline.train_loader(source, global_batch_size=8, seed=0),
                  1)
  assert batch["image"].shape == (8, 2, 2, 3)
  assert batch["image"].dtype == np.uint8
  np.testing.assert_array_equal(batch["index"], batch["value"])
  np.testing.assert_array_equal(batch["label"], batch["value"] % 3)


def test_deterministic_given_seed_and_different_across_seeds():
  source = make_source(64)
  def order(seed):
    return np.concatenate([b["index"] for b in take(
        pipeline.train_loader(source, global_batch_size=8, seed=seed), 16)])
  np.testing.assert_array_equal(order(3), order(3))
  assert not np.array_equal(order(3), order(4))


def test_each_epoch_is_a_fresh_permutation():
  size, batch, epochs = 103, 10, 3
  loader = pipeline.train_loader(make_source(size), global_batch_size=batch,
                                 seed=0, num_epochs=epochs)
  batches = list(loader)
  steps = pipeline.steps_per_epoch(size, batch)
  assert steps == 10 and len(batches) == epochs * steps
  orders = [np.concatenate([b["index"] for b in batches[e * steps:
                                                       (e + 1) * steps]])
            for e in range(epochs)]
  for order in orders:  # 100 distinct examples, 3 dropped (the remainder).
    assert len(order) == 100 == len(set(order.tolist()))
    assert order.min() >= 0 and order.max() < size
  assert not np.array_equal(orders[0], orders[1])
  assert not np.array_equal(orders[1], orders[2])


def test_resume_from_saved_state_repeats_the_same_batches():
  loader = pipeline.train_loader(make_source(37), global_batch_size=4,
                                 seed=7)
  it = iter(loader)
  for _ in range(11):  # past the end of the first epoch (9 steps).
    next(it)
  state = it.get_state()
  expected = [next(it)["index"] for _ in range(12)]
  resumed = iter(loader)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["index"], want)


def test_orbax_checkpoint_of_iterator_state(tmp_path):
  loader = pipeline.train_loader(make_source(40), global_batch_size=4,
                                 seed=1)
  it = iter(loader)
  for _ in range(5):
    next(it)
  manager = ocp.CheckpointManager(tmp_path / "ckpt",
                                  item_names=("params", "data"))
  params = {"w": np.arange(3.0)}
  manager.save(5, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it)["index"] for _ in range(6)]
  fresh = iter(loader)
  restored = manager.restore(5, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(params),
      data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored["params"]["w"], params["w"])
  for want in expected:
    np.testing.assert_array_equal(next(fresh)["index"], want)
  manager.close()


def test_hosts_split_each_global_batch():
  size, global_batch, steps = 90, 12, 14
  single = take(pipeline.train_loader(make_source(size),
                                      global_batch_size=global_batch,
                                      seed=2, shard_options=shard(0, 1)),
                steps)
  hosts = [take(pipeline.train_loader(make_source(size),
                                      global_batch_size=global_batch,
                                      seed=2, shard_options=shard(h, 3)),
                steps) for h in range(3)]
  for step in range(steps):
    parts = [hosts[h][step]["index"] for h in range(3)]
    assert all(len(p) == global_batch // 3 for p in parts)
    joined = np.concatenate(parts)
    assert len(set(joined.tolist())) == global_batch  # hosts never overlap.
    # Host blocks side by side are the single-host batch, in order.
    np.testing.assert_array_equal(joined, single[step]["index"])


def test_worker_processes_give_the_same_batches():
  # grain's worker processes read absl flags; an absl app has parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  source = make_source(40)
  inline = list(pipeline.train_loader(source, global_batch_size=4, seed=0,
                                      num_epochs=2))
  workers = list(pipeline.train_loader(source, global_batch_size=4, seed=0,
                                       num_epochs=2, worker_count=2))
  assert len(inline) == len(workers) == 20
  for a, b in zip(inline, workers):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_train_loader_errors():
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.train_loader(make_source(5), global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="multiple of the 3 hosts"):
    pipeline.train_loader(make_source(50), global_batch_size=8, seed=0,
                          shard_options=shard(0, 3))


@pytest.mark.parametrize("size,batch,hosts", [
    (1001, 64, 1), (1001, 64, 2), (1001, 64, 3), (5, 4, 8), (64, 64, 1),
    (7, 1, 2)])
def test_inference_padding_and_unpadding_is_exact(size, batch, hosts):
  source = make_source(size)
  per_host = [list(pipeline.inference_batches(
      source, batch_size=batch, shard_options=shard(h, hosts)))
              for h in range(hosts)]
  counts = {len(batches) for batches in per_host}
  assert len(counts) == 1  # the same number of steps on every host.
  for batches in per_host:
    for b in batches:
      assert b["image"].shape == (batch, 2, 2, 3)
      assert b["_mask"].shape == (batch,) and b["_mask"].dtype == bool
      assert not b["image"][~b["_mask"]].any()  # padding rows are zeros.
  # Each host unpads its own part; host parts in order give the source order.
  parts = [pipeline.unpad([b["value"] for b in batches],
                          [b["_mask"] for b in batches])
           for batches in per_host]
  np.testing.assert_array_equal(np.concatenate(parts), np.arange(size))
  # The same through arrays gathered over hosts: [hosts, rows].
  gathered = np.stack([np.concatenate([b["value"] for b in batches])
                       for batches in per_host])
  masks = np.stack([np.concatenate([b["_mask"] for b in batches])
                    for batches in per_host])
  np.testing.assert_array_equal(pipeline.unpad(gathered, masks),
                                np.arange(size))


def test_unpad_checks_shapes():
  with pytest.raises(ValueError, match="does not match its mask"):
    pipeline.unpad([np.zeros((4, 2))], [np.ones(3, bool)])


def test_inference_errors():
  with pytest.raises(ValueError, match="empty"):
    list(pipeline.inference_batches([], batch_size=4))
  with pytest.raises(ValueError, match="batch_size must be positive"):
    list(pipeline.inference_batches(make_source(3), batch_size=0))
