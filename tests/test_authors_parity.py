"""benchmarks/authors_parity: the harness that runs the authors' TF2 code
beside ours. Everything here runs on synthetic inputs: no TensorFlow and no
copy of their code is needed."""
import hashlib
import json
import math
import os
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "authors_parity"))
# pylint: disable=wrong-import-position
import cifar_pickle  # noqa: E402
import compare  # noqa: E402
import patch_authors  # noqa: E402
import records  # noqa: E402
import sides  # noqa: E402
import tb_events  # noqa: E402
from oneclass_jax.data import sources  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402
from tensorboardX.proto import summary_pb2  # noqa: E402
from tensorboardX.record_writer import RecordWriter  # noqa: E402
# pylint: enable=wrong-import-position

CLASSES = {"automobile": 1, "ship": 8}


def _jpeg_folder(root, counts):
  """root/<split>/<class>/NNNN.jpg with random-noise images."""
  rng = np.random.default_rng(0)
  for (split, name), n in counts.items():
    folder = root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
      image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=80)
  return root


@pytest.fixture
def jpeg_folder(tmp_path):
  return _jpeg_folder(tmp_path / "jpeg", {
      ("train", "automobile"): 6, ("train", "ship"): 5,
      ("test", "automobile"): 3, ("test", "ship"): 2})


def _their_reader(root, names):
  """Their data/cifar.py load_from_path, reimplemented (no TF)."""
  data, labels = [], []
  for name in names:
    with open(root / name, "rb") as f:
      d = {k.decode("utf8"): v
           for k, v in pickle.load(f, encoding="bytes").items()}
    data.append(d["data"])
    labels.append(d["labels"])
  data = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return data, np.concatenate(labels)


def test_pickles_hold_our_loaders_pixels(jpeg_folder, tmp_path):
  out = tmp_path / "pickle"
  meta = cifar_pickle.convert(jpeg_folder, out, data_dir=tmp_path / "tfds")
  assert meta["counts"] == {"train": 11, "test": 5}
  for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]),
                       ("test", ["test_batch"])):
    theirs, labels = _their_reader(out, names)
    ours = sources.load("cifar10", split, data_dir=tmp_path / "tfds",
                        source_dir=jpeg_folder)
    np.testing.assert_array_equal(
        theirs, np.stack([ours.source[i]["image"]
                          for i in range(len(ours.source))]))
    np.testing.assert_array_equal(labels, ours.labels)
    # And against PIL directly: listing order, class ids of CIFAR-10.
    files = sorted((jpeg_folder / split).glob("*/*.jpg"))
    np.testing.assert_array_equal(
        theirs, np.stack([np.asarray(Image.open(p).convert("RGB"))
                          for p in files]))
    np.testing.assert_array_equal(
        labels, [CLASSES[p.parent.name] for p in files])
  with open(out / "batches.meta", "rb") as f:
    names = pickle.load(f, encoding="bytes")[b"label_names"]
  assert names[1] == b"automobile" and names[8] == b"ship" and len(names) == 10


def test_second_conversion_reuses_and_edited_source_is_refused(
    jpeg_folder, tmp_path):
  out = tmp_path / "pickle"
  first = cifar_pickle.convert(jpeg_folder, out, data_dir=tmp_path / "tfds")
  stamp = (out / "data_batch_1").stat().st_mtime_ns
  assert cifar_pickle.convert(jpeg_folder, out,
                              data_dir=tmp_path / "tfds") == first
  assert (out / "data_batch_1").stat().st_mtime_ns == stamp
  _jpeg_folder(jpeg_folder, {("train", "ship"): 6})  # One more ship image.
  with pytest.raises(ValueError, match="another source"):
    cifar_pickle.convert(jpeg_folder, out, data_dir=tmp_path / "tfds")


def test_unfinished_conversion_folder_is_refused(jpeg_folder, tmp_path):
  (tmp_path / "pickle").mkdir()
  with pytest.raises(ValueError, match="not a finished conversion"):
    cifar_pickle.convert(jpeg_folder, tmp_path / "pickle",
                         data_dir=tmp_path / "tfds")


# ---------------------------------------------------------------------------
# patch_authors: on a synthetic checkout with its own Patch list.

ORIGINAL = "def f(x):\n  return np.int(x)\n\nkeep = 1\n"


def _checkout(tmp_path, text=ORIGINAL):
  root = tmp_path / "checkout"
  (root / "pkg").mkdir(parents=True)
  (root / "pkg" / "a.py").write_text(text)
  (root / "pkg" / "b.py").write_text("b = 2\n")
  patches = (
      patch_authors.Patch(
          "pkg/a.py", hashlib.sha256(ORIGINAL.encode()).hexdigest(),
          (("np.int(x)", "int(x)"), ("keep = 1", "keep = 1  # patched")),
          "why a"),
      patch_authors.Patch(
          "pkg/b.py", hashlib.sha256(b"b = 2\n").hexdigest(),
          (("b = 2", "b = 3"),), "why b"))
  return root, patches


def test_patch_applies_once_and_is_idempotent(tmp_path):
  root, patches = _checkout(tmp_path)
  assert patch_authors.apply(root, patches) == {"pkg/a.py": "patched",
                                                "pkg/b.py": "patched"}
  patched = "def f(x):\n  return int(x)\n\nkeep = 1  # patched\n"
  assert (root / "pkg" / "a.py").read_text() == patched
  assert patch_authors.apply(root, patches) == {"pkg/a.py": "already",
                                                "pkg/b.py": "already"}
  assert (root / "pkg" / "a.py").read_text() == patched
  assert (root / "pkg" / "b.py").read_text() == "b = 3\n"


def test_edited_file_is_refused_and_nothing_is_written(tmp_path):
  root, patches = _checkout(tmp_path)
  (root / "pkg" / "b.py").write_text("b = 2  # edited\n")
  with pytest.raises(patch_authors.PatchError, match=r"pkg/b.py is neither"):
    patch_authors.apply(root, patches)
  assert (root / "pkg" / "a.py").read_text() == ORIGINAL  # All or nothing.


def test_missing_file_is_refused(tmp_path):
  root, patches = _checkout(tmp_path)
  (root / "pkg" / "b.py").unlink()
  with pytest.raises(patch_authors.PatchError, match="missing"):
    patch_authors.apply(root, patches)


def test_edit_must_match_exactly_once(tmp_path):
  root, _ = _checkout(tmp_path)
  twice = patch_authors.Patch(
      "pkg/a.py", hashlib.sha256(ORIGINAL.encode()).hexdigest(),
      (("x", "y"),), "x occurs twice")
  with pytest.raises(patch_authors.PatchError, match="found it 2 times"):
    patch_authors.apply(root, (_checkout(tmp_path / "other")[1][1], twice))
  assert (root / "pkg" / "b.py").read_text() == "b = 2\n"  # Not written.


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_checkout_at_another_commit_is_refused(tmp_path):
  root, patches = _checkout(tmp_path)
  git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git[:3] + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-qm", "x"], check=True)
  head = subprocess.run(git[:3] + ["rev-parse", "HEAD"], check=True,
                        capture_output=True, text=True).stdout.strip()
  with pytest.raises(patch_authors.PatchError, match="not a36feaa2"):
    patch_authors.apply(root, patches)
  assert patch_authors.apply(root, patches, commit=head)["pkg/a.py"] == (
      "patched")


def test_real_patches_are_well_formed():
  for patch in patch_authors.PATCHES:
    assert len(patch.original_sha256) == 64 and patch.why
    for old, new in patch.edits:
      assert old and old != new and old not in new, patch.path


def test_patch_script_cli_names_the_problem(tmp_path):
  proc = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "authors_parity" /
                           "patch_authors.py"), f"--checkout={tmp_path}"],
      capture_output=True, text=True, check=False)
  assert proc.returncode == 1
  assert "data/data_util.py is missing" in proc.stderr


# ---------------------------------------------------------------------------
# Event files: TF2's tensor scalars (their side), tensorboardX's (ours).


def _tf2_event_file(tb_dir, scalars, torn=False):
  """Writes (tag, step, wall_time, value) as TF2's tf.summary.scalar does."""
  tb_dir.mkdir(parents=True, exist_ok=True)
  path = tb_dir / "events.out.tfevents.1.host.1.0.v2"
  writer = RecordWriter(str(path))
  for i, (tag, step, wall, value) in enumerate(scalars):
    value_proto = summary_pb2.Summary.Value(tag=tag)
    value_proto.tensor.dtype = 1  # DT_FLOAT
    if i % 2:
      value_proto.tensor.tensor_content = struct.pack("<f", value)
    else:
      value_proto.tensor.float_val.append(value)
    event = event_pb2.Event(wall_time=wall, step=step,
                            summary=summary_pb2.Summary(value=[value_proto]))
    writer.write(event.SerializeToString())
  writer.close()
  if torn:
    with open(path, "ab") as f:
      f.write(struct.pack("<Q", 100) + b"\0\0")  # A write cut short.
  return path


def test_reads_tf2_tensor_scalars_and_drops_a_torn_record(tmp_path):
  _tf2_event_file(tmp_path / "tb", [("loss/xe", 20, 100.0, 1.5),
                                    ("loss/xe", 40, 110.0, 1.25),
                                    ("pool/kde", 40, 150.0, 61.5)], torn=True)
  scalars = tb_events.read_scalars(tmp_path / "tb")
  assert scalars["loss/xe"] == [tb_events.Scalar(20, 100.0, 1.5),
                                tb_events.Scalar(40, 110.0, 1.25)]
  assert scalars["pool/kde"][0].value == 61.5


def test_corrupt_record_is_an_error(tmp_path):
  path = _tf2_event_file(tmp_path / "tb", [("a", 1, 1.0, 1.0)])
  data = bytearray(path.read_bytes())
  data[-6] ^= 0xFF  # Inside the last record's body.
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="CRC"):
    tb_events.read_scalars(tmp_path / "tb")


def test_reads_tensorboardx_scalars(tmp_path):
  writer = SummaryWriter(str(tmp_path / "tb"))
  writer.add_scalar("loss", 0.5, 10)
  writer.add_scalar("loss", 0.25, 20)
  writer.close()
  values = [(x.step, x.value) for x in
            tb_events.read_scalars(tmp_path / "tb")["loss"]]
  assert values == [(10, 0.5), (20, 0.25)]


def test_no_event_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TensorBoard event file"):
    tb_events.read_scalars(tmp_path)


# ---------------------------------------------------------------------------
# sides: the same fields from both implementations' outputs.

SETTING = sides.Setting(width=0.125, steps=60, batch_size=64, log_every=20)


def test_images_per_second_leaves_out_the_first_window():
  summary = sides.train_summary([(40, 1.2, 2.0), (20, 1.4, 0.1),
                                 (60, 1.0, 4.0)], SETTING)
  assert summary["loss_steps"] == [20, 40, 60]
  assert summary["loss"] == [1.4, 1.2, 1.0]
  # Windows 2 and 3: 2 x 20 steps x 64 images in 20/2 + 20/4 = 15 s.
  assert summary["train_images_per_s"] == pytest.approx(2 * 20 * 64 / 15)


def test_unfinished_windows_and_bad_settings_are_refused():
  with pytest.raises(ValueError, match="did not finish"):
    sides.train_summary([(20, 1.0, 1.0), (40, 1.0, 1.0)], SETTING)
  with pytest.raises(ValueError, match="multiple of"):
    sides.Setting(0.125, 50, 64, 20)
  with pytest.raises(ValueError, match="two"):
    sides.Setting(0.125, 20, 64, 20)


def test_authors_result_from_their_outputs(tmp_path):
  run = tmp_path / "run"
  rows = []
  for i, step in enumerate((20, 40, 60)):
    wall = 100.0 + 10 * i
    rows += [("loss/xe", step, wall, 1.5 - 0.25 * i),
             ("monitor/step_per_second", step, wall, [0.1, 2.0, 4.0][i])]
  # The final evaluation logs the last window again, then the AUCs.
  rows += [("loss/xe", 60, 190.0, 1.0), ("pool/kde", 60, 190.0, 61.0)]
  _tf2_event_file(run / "tb", rows)
  (run / "stats").mkdir()
  (run / "stats" / "summary.json").write_text(json.dumps(
      {"pool.kde": 61.0, "pool.kocsvm": 63.5, "embed.kde": 50.0}))
  result = sides.authors_result(tmp_path, SETTING)
  assert result["loss"] == [1.5, 1.25, 1.0]
  assert result["auc"] == {"kde": 61.0, "ocsvm": 63.5}
  assert result["eval_seconds"] == pytest.approx(190.0 - 120.0)
  assert result["train_images_per_s"] == pytest.approx(2 * 20 * 64 / 15)


def test_ours_result_from_our_workdir(tmp_path):
  writer = SummaryWriter(str(tmp_path / "tb"))
  for step, loss, rate in ((20, 1.4, 0.1), (40, 1.2, 2.0), (60, 1.0, 4.0)):
    writer.add_scalar("loss", loss, step)
    writer.add_scalar("steps_per_sec", rate, step)
  writer.close()
  last = tb_events.read_scalars(tmp_path / "tb")["loss"][-1].wall_time
  results = tmp_path / "results.json"
  results.write_text(json.dumps({"auc": {"kde": 0.61, "ocsvm": 0.635,
                                         "gde": 0.5}}))
  os.utime(results, (last + 42.0, last + 42.0))
  result = sides.ours_result(tmp_path, SETTING)
  assert result["loss"] == pytest.approx([1.4, 1.2, 1.0])
  assert result["auc"] == pytest.approx({"kde": 61.0, "ocsvm": 63.5})
  assert result["eval_seconds"] == pytest.approx(42.0, abs=1e-3)


def test_steps_for_epochs_round_up_to_whole_windows():
  # 5 x 5,000 / 64 = 390.6 -> 391 steps -> 4 windows of 100.
  assert sides.steps_for_epochs(5, 5000, "rotnet_head", 64, 100) == 400
  # Rotation DA: 4 x 5,000 images; 5 x 20,000 / 32 = 3,125 -> 3,200.
  assert sides.steps_for_epochs(5, 5000, "contrastive_da", 32, 100) == 3200
  assert sides.steps_for_epochs(0.01, 5000, "rotnet_head", 64, 100) == 200


def test_commands_match_the_setting():
  theirs = sides.authors_command("py", "/c", "rotnet_head", 8, 2, SETTING,
                                 "/p", "/r")
  assert {"--category=8", "--seed=2", "--net_width=0.125", "--num_batch=20",
          "--num_epoch=3", "--batch_size=64", "--sched_freq=step",
          "--learning_rate=0.01", "--latent_dim=4"} <= set(theirs)
  ours = sides.ours_command("py", "rotnet_head", 8, 2, SETTING, "/d", "/w",
                            paper_aug=False)
  assert {"--config.model.width=0.125", "--config.model.stem_width=64",
          "--config.total_steps=60", "--config.log_every_steps=20",
          "--config.batch_size=64", "--config.augment.authors_code=True",
          "--config.optim.schedule_granularity=step"} <= set(ours)
  assert ours[3].endswith("configs/rotation.py:dataset=cifar10,"
                          "inlier_class=8,seed=2")
  paper = sides.ours_command("py", "contrastive_da", 1, 1, SETTING, "/d",
                             "/w", paper_aug=True)
  assert "--config.augment.authors_code=False" in paper


# ---------------------------------------------------------------------------
# records: the resumable sweep; compare: the statistics and tables.


def _result(kde, ocsvm=50.0):
  return {"auc": {"kde": kde, "ocsvm": ocsvm}, "train_images_per_s": 10.0,
          "eval_seconds": 5.0, "wall_seconds": 20.0, "loss_steps": [20, 40],
          "loss": [1.0, 0.5]}


def _cells(setting=None):
  setting = setting or {"width": 0.125}
  return [records.Cell("rotnet_head", 1, seed, impl, setting)
          for seed in (1, 2) for impl in ("authors", "ours")]


def test_killed_sweep_resumes_without_a_finished_looking_record(tmp_path):
  path = tmp_path / "r.jsonl"
  calls = []

  def killed_at_third(cell):
    calls.append(cell.key())
    if len(calls) == 3:
      raise KeyboardInterrupt  # The sweep is killed during its third run.
    return _result(60.0 + len(calls))

  with pytest.raises(KeyboardInterrupt):
    records.sweep(path, _cells(), killed_at_third)
  assert [(r["seed"], r["implementation"]) for r in records.read(path)] == [
      (1, "authors"), (1, "ours")]
  assert not list(tmp_path.glob(".*tmp"))
  calls.clear()
  assert records.sweep(path, _cells(), lambda cell: (
      calls.append(cell.key()), _result(70.0))[1]) == 2
  assert calls == [("rotnet_head", 1, 2, "authors"),
                   ("rotnet_head", 1, 2, "ours")]
  assert len(records.read(path)) == 4
  assert records.sweep(path, _cells(), None) == 0  # Nothing left to run.


def test_sweep_refuses_records_of_another_setting(tmp_path):
  path = tmp_path / "r.jsonl"
  records.sweep(path, _cells()[:1], lambda cell: _result(60.0))
  with pytest.raises(ValueError, match="another setting"):
    records.sweep(path, _cells({"width": 0.25}), lambda cell: _result(1.0))


def test_difference_within_two_standard_errors():
  a, b = [60.0, 62.0, 64.0], [61.0, 65.0, 66.0]
  diff, se, within = compare.difference(a, b)
  assert diff == pytest.approx(np.mean(a) - np.mean(b))
  assert se == pytest.approx(math.sqrt(np.var(a, ddof=1) / 3 +
                                       np.var(b, ddof=1) / 3))
  assert within is True  # |-2| <= 2 x 1.80.
  assert compare.difference([60.0, 60.5, 61.0], [70.0, 70.5, 71.0])[2] is False
  assert compare.difference([60.0], [70.0, 71.0])[2] is None


def _rows():
  return [{**_result(kde), "method": "rotnet_head", "inlier_class": 1,
           "seed": seed, "implementation": impl}
          for impl, kdes in (("authors", (60.0, 62.0)), ("ours", (61.0, 65.0)))
          for seed, kde in zip((1, 2), kdes)]


def test_markdown_tables():
  text = compare.markdown(_rows(), ("authors", "ours", "ours_paper_aug"), "T")
  assert "| rotnet_head | 1 | authors | 1,2 | 61.0 ± 1.4 | 50.0 ± 0.0 |" in text
  assert "| rotnet_head | 1 | +2.0 ± 4.5 | yes | +0.0 ± 0.0 | yes |" in text
  assert "| rotnet_head | 1 | 40 | 0.500 | 0.500 |  |" in text


def test_loss_figure_has_a_curve_per_implementation():
  rows = _rows()
  rows[0] = {**rows[0], "loss": [3.0, 1.0]}  # authors, seed 1.
  fig = compare.loss_figure(rows, ("authors", "ours", "ours_paper_aug"))
  (ax,) = fig.axes
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert sorted(lines) == ["authors", "ours"]
  np.testing.assert_allclose(lines["authors"].get_ydata(), [2.0, 0.75])
  np.testing.assert_allclose(lines["authors"].get_xdata(), [20, 40])
