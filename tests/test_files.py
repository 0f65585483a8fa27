"""Workdir files: atomic local writes, and gs:// workdirs through epath.

gs:// is served here by fsspec's in-memory file system registered under the
gs/gcs protocols (what gcsfs provides on a real machine), so every read and
write of our own code goes through etils.epath's object-store backend.
Orbax's checkpoints (tensorstore's own GCS driver) and tensorboardX's GCS
writer are those libraries' and are not exercised here.
"""
import importlib
import json

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import ml_collections
import numpy as np
import pytest

from oneclass_jax.detectors import kde
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import files
from oneclass_jax import metric_writers
from oneclass_jax import workdir as workdir_lib


class _FakeGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  store = {}
  pseudo_dirs = [""]


@pytest.fixture(name="bucket")
def _bucket():
  saved = {p: importlib.import_module("fsspec.registry")._registry.get(p)  # pylint: disable=protected-access
           for p in _FakeGCS.protocol}
  for protocol in _FakeGCS.protocol:
    fsspec.register_implementation(protocol, _FakeGCS, clobber=True)
  _FakeGCS.store.clear()
  yield "gs://bucket/runs/r1"
  _FakeGCS.store.clear()
  for protocol, cls in saved.items():
    if cls is None:
      registry = importlib.import_module("fsspec.registry")
      registry._registry.pop(protocol, None)  # pylint: disable=protected-access
    else:
      fsspec.register_implementation(protocol, cls, clobber=True)


class _StubSummaryWriter:
  """tensorboardX's GCS writer needs google-cloud-storage; not ours to test."""

  def __init__(self, logdir):
    self.logdir = logdir

  def add_scalar(self, *args):
    pass

  def close(self):
    pass


def test_write_atomic_keeps_the_old_file_when_a_write_fails(tmp_path,
                                                            monkeypatch):
  target = tmp_path / "results.json"
  files.write_json(target, {"auc": 0.9})
  assert json.loads(target.read_text()) == {"auc": 0.9}

  def broken(p, data):
    p.write_text(data[:3])   # Part written, then the "kill".
    raise KeyboardInterrupt

  monkeypatch.setattr(files, "_write", broken)
  with pytest.raises(KeyboardInterrupt):
    files.write_json(target, {"auc": 0.1})
  assert json.loads(target.read_text()) == {"auc": 0.9}
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_write_dir_atomic_replaces_the_whole_set(tmp_path):
  root = tmp_path / "detectors"
  files.write_dir_atomic(root, {"a.pkl": b"1", "b.pkl": b"2", "meta.json": "x"})
  files.write_dir_atomic(root, {"c.pkl": b"3", "meta.json": "y"})
  assert sorted(p.name for p in root.iterdir()) == ["c.pkl", "meta.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["detectors"]


def test_remote_dir_marker_is_removed_first_and_written_last(bucket,
                                                            monkeypatch):
  root = files.path(bucket) / "detectors"
  files.write_dir_atomic(root, {"a.pkl": b"1", "meta.json": "old"})
  seen = []
  real = files._write  # pylint: disable=protected-access

  def record(p, data):
    seen.append((p.name, (root / "meta.json").exists()))
    real(p, data)

  monkeypatch.setattr(files, "_write", record)
  files.write_dir_atomic(root, {"a.pkl": b"2", "meta.json": "new"})
  # While a.pkl was rewritten there was no marker; the marker came last.
  assert seen == [("a.pkl", False), ("meta.json", False)]
  assert (root / "meta.json").read_text() == "new"


def test_gs_workdir_config_embeddings_detectors_results_metrics(
    bucket, monkeypatch):
  rng = np.random.default_rng(0)
  config = ml_collections.ConfigDict({"method": "contrastive", "seed": 3})
  workdir_lib.prepare(bucket, config)
  assert workdir_lib.load_config(bucket).to_dict() == config.to_dict()

  fit = {"pools": rng.normal(size=(20, 4)).astype(np.float32)}
  test = {"pools": rng.normal(size=(7, 4)).astype(np.float32)}
  ident = {"step": 5, "weights": "w", "config": "c", "data": "d"}
  computed = embeddings.cached_embeddings(bucket, ident, lambda: (fit, test),
                                        need_rotations=False)
  again = embeddings.cached_embeddings(
      bucket, ident, lambda: pytest.fail("recomputed"), need_rotations=False)
  np.testing.assert_array_equal(again[1]["pools"], computed[1]["pools"])

  det = kde.KDE().fit(fit["pools"])
  heldout = {"kde": rng.normal(size=5)}
  evaluators.one_class.save_detectors(bucket, {"kde": det}, heldout, "f", ident)
  loaded, meta, held = evaluators.one_class.load_detector(bucket, "kde")
  assert meta == {"format": evaluators.one_class.DETECTORS_FORMAT, "embedding": "f",
                  "step": 5, "identity": ident, "detectors": ["kde"]}
  np.testing.assert_array_equal(held, heldout["kde"])
  np.testing.assert_allclose(loaded.score(test["pools"]),
                             det.score(test["pools"]))

  monkeypatch.setattr("tensorboardX.SummaryWriter", _StubSummaryWriter)
  writer = metric_writers.MetricWriter(bucket, enabled=True)
  writer.write_scalars(1, {"loss": 2.0})
  writer.close()
  resumed = metric_writers.MetricWriter(bucket, enabled=True)  # A resume.
  resumed.write_scalars(2, {"loss": 1.5})
  resumed.close()
  lines = (files.path(bucket) / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
