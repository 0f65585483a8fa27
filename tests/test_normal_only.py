"""An engineer's own images (#16): normal images only, any size and mode.

Image folders with only train/<normal>/ (and optionally a test/ with or
without anomalies), images of mixed sizes and PIL modes, the inlier class by
folder name on the command line; end to end: train, save the detectors and
threshold without an AUC, report the run, score new images.
"""
import importlib.util
import json
import logging
import pathlib
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest
from PIL import Image

from oneclass_jax import config_lib
from oneclass_jax import evaluators
from oneclass_jax import export
from oneclass_jax import scorer
from oneclass_jax import scoring
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.analysis import tables
from oneclass_jax.data import datasets
from oneclass_jax.data import one_class
from oneclass_jax.data import sources
from oneclass_jax.data import splits
from oneclass_jax.trainer import single
from test_train import folder_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _save(path, array):
  """PIL picks the mode from the array: HxW L, HxWx2 LA, x3 RGB, x4 RGBA."""
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def mixed_images(folder, seed=0):
  """One image per PIL mode, each of another size; returns the paths."""
  rng = np.random.default_rng(seed)
  u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
  folder = pathlib.Path(folder)
  paths = [
      _save(folder / "rgb.png", u8(30, 40, 3)),
      _save(folder / "grey.png", u8(16, 16)),
      _save(folder / "grey_alpha.png", u8(10, 20, 2)),
      _save(folder / "rgba.png", u8(24, 24, 4)),
      _save(folder / "same_size.png", u8(16, 16, 3)),
      _save(folder / "jpeg.jpg", u8(50, 17, 3)),
  ]
  palette = Image.fromarray(u8(32, 32, 3)).convert("P")
  palette.save(folder / "palette.png")
  sixteen = folder / "sixteen.png"
  Image.fromarray(rng.integers(0, 65536, (12, 18)).astype(np.uint16)).save(
      sixteen)
  assert Image.open(sixteen).mode.startswith("I;16")
  assert Image.open(folder / "palette.png").mode == "P"
  return sorted(paths + [folder / "palette.png", sixteen])


def reference(path, size):
  """Independent reading: 8-bit RGB, alpha dropped, whole image bicubic."""
  with Image.open(path) as im:
    if im.mode.startswith("I;16"):
      values = np.asarray(im).astype(np.int64)
      im = Image.fromarray(((values + 128) // 257).astype(np.uint8))
    rgb = im.convert("RGB")
  if rgb.size == (size, size):
    return np.asarray(rgb)
  return np.asarray(rgb.resize((size, size), Image.Resampling.BICUBIC))


# ---------------------------------------------------------------------------
# Any image sizes and modes.


def test_mixed_sizes_and_modes_are_resized_like_read_image(tmp_path):
  # Old code: the first image set the shape and any other size failed.
  paths = mixed_images(tmp_path / "src" / "train" / "good")
  split = sources.load("image_folder", "train", image_size=16,
                       data_dir=tmp_path / "d", source_dir=tmp_path / "src")
  assert split.image_shape == (16, 16, 3) and len(split.source) == len(paths)
  for i, path in enumerate(paths):  # Records follow the sorted file names.
    image = split.source[i]["image"]
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, reference(path, 16))
    # `score` and `explain` read new files with the very same function.
    np.testing.assert_array_equal(
        image, datasets.read_image(path, "image_folder", 16))
  # An image already of the target size keeps its exact pixels.
  same = paths.index(tmp_path / "src" / "train" / "good" / "same_size.png")
  np.testing.assert_array_equal(
      split.source[same]["image"],
      np.asarray(Image.open(paths[same]).convert("RGB")))


def test_alpha_is_dropped_not_composited(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 0  # Fully transparent red.
  path = _save(tmp_path / "a.png", rgba)
  np.testing.assert_array_equal(datasets.read_image(path, "image_folder", 8),
                                np.broadcast_to([200, 0, 0], (8, 8, 3)))


def test_whole_image_is_resized_not_cropped():
  # A 1-pixel-wide mark at the right border must survive (a centre crop
  # would cut it off).
  image = np.zeros((32, 64, 3), np.uint8)
  image[:, -2:] = 255
  out = datasets.resize_to_square(image, 32)
  assert out.shape == (32, 32, 3)
  assert out[:, -1].min() > 200 and out[:, 0].max() == 0


def test_changing_image_size_converts_again(tmp_path):
  mixed_images(tmp_path / "src" / "train" / "good")
  kwargs = dict(data_dir=tmp_path / "d", source_dir=tmp_path / "src")
  small = sources.load("image_folder", "train", image_size=8, **kwargs)
  large = sources.load("image_folder", "train", image_size=32, **kwargs)
  assert small.source[0]["image"].shape == (8, 8, 3)
  assert large.source[0]["image"].shape == (32, 32, 3)
  assert small.fingerprint != large.fingerprint
  assert len(list((tmp_path / "d").glob("*/*/*/labels-train.npy"))) == 2


def test_image_folder_needs_an_image_size(tmp_path):
  mixed_images(tmp_path / "src" / "train" / "good")
  with pytest.raises(ValueError, match="needs a positive integer image_size"):
    sources.load("image_folder", "train", data_dir=tmp_path / "d",
                 source_dir=tmp_path / "src")
  assert not (tmp_path / "d").exists()  # Refused before any conversion.


def test_read_images_for_score_resizes_new_images(tmp_path):
  # Old code: `score` skipped every image of another size than the model's.
  paths = mixed_images(tmp_path / "new")
  images, names, problems = scoring.read_images(tmp_path / "new",
                                                "image_folder", (16, 16, 3))
  assert not problems and len(images) == len(paths)
  for image, path in zip(images, paths):
    np.testing.assert_array_equal(image, reference(path, 16))
  assert names == [p.name for p in paths]


# ---------------------------------------------------------------------------
# Normal-only folders through the one-class protocol.


def folder_cfg(root, tmp_path, inlier_class="good"):
  return ml_collections.ConfigDict(dict(
      name="image_folder", inlier_class=inlier_class,
      data_dir=str(tmp_path / "tfds"), source_dir=str(root)))


def write_layout(root, counts, size=(12, 12)):
  """root/<split>/<label>/<i>.png for {(split, label): n}."""
  rng = np.random.default_rng(1)
  for (split, label), n in counts.items():
    for i in range(n):
      _save(pathlib.Path(root) / split / label / f"{i:02d}.png",
            rng.integers(0, 256, (*size, 3), dtype=np.uint8))
  return pathlib.Path(root)


def test_train_only_folder_has_an_empty_test_set(tmp_path):
  # Old code: "split 'test' not found".
  root = write_layout(tmp_path / "src", {("train", "good"): 5})
  data = one_class.make(folder_cfg(root, tmp_path), image_size=8)
  assert len(data.train) == len(data.fit) == 5 and len(data.test) == 0
  assert data.meta["test_split"] is False
  assert data.meta["counts"]["test"] == 0
  assert one_class.auc_skipped_reason(data.meta).startswith("No test split")


def test_one_train_folder_and_a_test_only_anomaly_folder(tmp_path):
  # Ids follow the sorted names over all splits: crack = 0, good = 1.
  root = write_layout(tmp_path / "src", {("train", "good"): 5,
                                         ("test", "good"): 3,
                                         ("test", "crack"): 2})
  data = one_class.make(folder_cfg(root, tmp_path), image_size=8)
  assert data.meta["inlier_class"] == 1 and data.meta["inlier_name"] == "good"
  assert data.meta["num_classes"] == 2
  assert len(data.train) == 5
  # The test records: crack (label folder 0) first, outliers = 1.
  assert [data.test[i]["label"] for i in range(5)] == [1, 1, 0, 0, 0]
  assert data.meta["counts"]["test_inliers"] == 3
  assert one_class.auc_skipped_reason(data.meta) is None
  same = one_class.make(folder_cfg(root, tmp_path, inlier_class=1),
                        image_size=8)
  assert same.meta["fingerprint"] == data.meta["fingerprint"]
  # The default class 0 is `crack`, which train/ lacks: say what to pass.
  with pytest.raises(ValueError, match=r"inlier class 0 \(crack\) has no "
                     r"train images.*holds \['good'\].*inlier_class=.*"
                     r"train/crack/"):
    one_class.make(folder_cfg(root, tmp_path, inlier_class=0), image_size=8)


@pytest.mark.parametrize("test_folders,reason", [
    (("good",), "No anomalies in the test set (test/ has only the inlier "
                "class 'good')"),
    (("crack",), "No inliers in the test set"),
])
def test_test_sets_without_an_auc_say_why(tmp_path, test_folders, reason):
  counts = {("train", "good"): 4}
  counts.update({("test", name): 2 for name in test_folders})
  root = write_layout(tmp_path / "src", counts)
  data = one_class.make(folder_cfg(root, tmp_path), image_size=8)
  assert len(data.test) == 2 and data.meta["test_split"] is True
  assert one_class.auc_skipped_reason(data.meta).startswith(reason)


def test_no_train_split_names_the_layout(tmp_path):
  root = write_layout(tmp_path / "src", {("test", "good"): 2})
  with pytest.raises(splits.MissingSplit,
                     match=r"split 'train' not found.*\['test'\].*"
                     r"train/<label>/ \(one folder of normal images is "
                     r"enough"):
    one_class.make(folder_cfg(root, tmp_path), image_size=8)


def test_inlier_folder_missing_from_train_names_the_layout(tmp_path):
  root = write_layout(tmp_path / "src", {("train", "good"): 2})
  with pytest.raises(ValueError, match=r"'godo' is not a class.*\['good'\]"
                     r".*src/train/godo/"):
    one_class.make(folder_cfg(root, tmp_path, inlier_class="godo"),
                   image_size=8)


@pytest.mark.parametrize("bad", [True, 0.5, None])
def test_inlier_class_of_another_type_is_refused(tmp_path, bad):
  # Old code: int(True) == 1 and int(0.5) == 0 picked a class silently.
  root = write_layout(tmp_path / "src", {("train", "good"): 2})
  with pytest.raises(ValueError, match="class id or name"):
    one_class.make(folder_cfg(root, tmp_path, inlier_class=bad),
                   image_size=8)


# ---------------------------------------------------------------------------
# The inlier class by folder name on the command line.


def load_config(name, arg):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_variant_takes_the_inlier_class_by_name():
  # Old code: int("good") failed in config_lib.parse_arg.
  config = load_config("rotnet", "dataset=image_folder,inlier_class=good")
  assert config.data.inlier_class == "good"
  assert load_config("rotnet", "inlier_class=3").data.inlier_class == 3
  assert config_lib.variant("inlier_class=07").inlier_class == 7
  assert config.data.inlier_classes == ""  # Multi-model lists untouched.


@pytest.mark.parametrize("variant,override,expected", [
    ("dataset=image_folder", "good", "good"),
    ("dataset=image_folder", "3", 3),
    ("dataset=image_folder,inlier_class=good", "2", 2),
])
def test_absl_override_takes_a_name_or_an_id(variant, override, expected,
                                             monkeypatch):
  # Old code: the int field's parser refused "good".
  argv = ["prog", f"--config={CONFIGS / 'rotnet.py'}:{variant}",
          f"--config.data.inlier_class={override}",
          "--config.data.inlier_classes=0-2"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides here.
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values,
                                  lock_config=True)
  values(argv)
  assert values.config.data.inlier_class == expected
  assert values.config.data.inlier_classes == "0-2"


# ---------------------------------------------------------------------------
# End to end: train on normal images only, save, report, score.


def normal_images(root, n, seed=0):
  """Smooth horizontal gradients (the normal look) of mixed sizes/modes."""
  rng = np.random.default_rng(seed)
  for i in range(n):
    h, w = (32, 32) if i % 3 else (40 + i % 7, 28 + i % 5)
    xx = np.broadcast_to(np.linspace(0, 1, w), (h, w))
    img = np.stack([xx, 1 - xx, 0.5 * xx], -1) + 0.05 * rng.normal(
        size=(h, w, 3))
    img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    path = pathlib.Path(root) / f"{i:03d}.png"
    _save(path, img if i % 4 else np.dstack([img, np.full((h, w), 255,
                                                         np.uint8)]))


def auc_lines(caplog):
  return [r.getMessage() for r in caplog.records
          if "AUC skipped; detectors and threshold saved" in r.getMessage()]


def test_normal_only_folder_end_to_end(tmp_path, caplog):
  root = tmp_path / "src"
  normal_images(root / "train" / "good", 48)
  config = folder_config("rotation", root, tmp_path,
                         **{"data.inlier_class": "good"})
  wd = tmp_path / "wd"
  with caplog.at_level(logging.WARNING):
    results = single.train_and_evaluate(config, str(wd))
  # Old code: the evaluation raised "AUC is undefined" (or setup refused)
  # and no detector was saved.
  assert results["auc"] is None
  assert results["auc_skipped"].startswith("No test split")
  assert len(auc_lines(caplog)) == 1
  saved = json.loads((wd / "results.json").read_text())
  assert saved["auc"] is None and saved["auc_skipped"] == results[
      "auc_skipped"]
  assert saved["inlier_class"] == 0 and saved["inlier_name"] == "good"
  assert saved["counts"] == {"fit": 48, "test": 0, "test_outliers": 0}
  meta = json.loads((wd / "detectors" / "meta.json").read_text())
  assert "kde" in meta["detectors"]
  with np.load(wd / "detectors" / "heldout_scores.npz") as heldout:
    assert heldout["kde"].shape == (48,)
  assert not (wd / "scores.npz").exists()
  assert workdir_lib.finished(wd)
  run = workdir_lib.Results.read(wd)
  assert run.auc == {} and run.auc_skipped == results["auc_skipped"]

  # New images of other sizes and modes: scored with the saved detector.
  new = tmp_path / "incoming"
  normal_images(new, 6, seed=5)
  _save(new / "odd.png", np.full((20, 50), 128, np.uint8))  # grey, wide.
  model = scorer.Scorer.load(export.export_in_workdir(
      str(wd), detector="kde", fpr=0.1, platforms=("cpu",)))
  scored = scoring.score_folder(model, new)
  rows = scored.rows()
  assert not scored.problems and len(rows) == 7
  assert np.isfinite(scored.threshold)
  assert all(np.isfinite(score) for _, score, _ in rows)

  # The report lists the run, AUC "—", beside a run that has an AUC.
  other = tmp_path / "runs" / "cifar"
  other.mkdir(parents=True)
  (other / "results.json").write_text(json.dumps({
      "dataset": "cifar10", "inlier_class": 0, "num_classes": 10,
      "method": "rotation", "seed": 0, "step": 6, "embedding": "f",
      "auc": {"kde": 0.75}}))
  report = tables.aggregate(tables.load_runs([tmp_path / "runs" / "cifar",
                                              wd]))
  assert [r["reason"] for r in report.no_auc] == [results["auc_skipped"]]
  assert {r["dataset"] for r in report.per_dataset} == {"cifar10"}
  md = tables.to_markdown(report)
  assert "## Runs without an AUC" in md and "| — | No test split" in md
  assert "| 0 (good) |" in md
  written = tables.write_report(report, tmp_path / "out",
                                tables.load_runs([wd]))
  assert (tmp_path / "out" / "no_auc.csv").read_text().count("\n") == 2
  assert not [p for p in written if p.suffix == ".png"]

  # A test/ of normal images only, then one of anomalies only: re-evaluated
  # (a named evaluation, kde alone), each without an AUC and with the test
  # scores kept.
  normal_images(root / "test" / "good", 5, seed=9)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    results = evaluators.evaluate_workdir(str(wd), ["kde"], "f")
  assert results["auc_skipped"].startswith("No anomalies in the test set")
  assert len(auc_lines(caplog)) == 1
  named = wd / "evaluations" / "f-kde"
  with np.load(named / "scores.npz") as scores:
    assert scores["labels"].tolist() == [0] * 5 and scores["kde"].shape == (5,)
  (root / "test" / "good").rename(root / "test" / "crack")
  results = evaluators.evaluate_workdir(str(wd), ["kde"], "f")
  assert results["auc"] is None
  assert results["auc_skipped"].startswith("No inliers in the test set")
  assert results["inlier_class"] == 1  # crack = 0 now sorts first.
  # test/ removed again: the scores of the old test set go too.
  for path in (root / "test" / "crack").iterdir():
    path.unlink()
  (root / "test" / "crack").rmdir()
  (root / "test").rmdir()
  results = evaluators.evaluate_workdir(str(wd), ["kde"], "f")
  assert results["auc_skipped"].startswith("No test split")
  assert not (named / "scores.npz").exists()


def test_results_without_auc_need_a_reason(tmp_path):
  record = {"dataset": "image_folder", "inlier_class": 0, "num_classes": 1,
            "method": "rotation", "seed": 0, "step": 1, "embedding": "f",
            "auc": None}
  (tmp_path / "results.json").write_text(json.dumps(record))
  with pytest.raises(ValueError, match="'auc' is null but 'auc_skipped'"):
    workdir_lib.Results.read(tmp_path)
  record["auc_skipped"] = "No test split (the source has no test/ folder)"
  (tmp_path / "results.json").write_text(json.dumps(record))
  assert workdir_lib.Results.read(tmp_path).auc_skipped.startswith("No test")
