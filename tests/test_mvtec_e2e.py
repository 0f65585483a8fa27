"""End to end on a slice of the magnetic-tile set, and bad MVTec input.

The run trains a tiny contrastive model for a few steps on 32x32 crops, then
scores the test images densely at stride 16 (a 15 x 15 grid) through the
same `single.train_and_evaluate` that `oneclass_jax.main` calls.
"""
import importlib.util
import json
import pathlib
import shutil
import tarfile
import types

import ml_collections
import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as sk_metrics

from oneclass_jax import experiment
from oneclass_jax.evaluators import mvtec_patches
from oneclass_jax.analysis import tables
import conftest
from oneclass_jax.mvtec import data as mvtec_data
from oneclass_jax.trainer import single
from oneclass_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Subprocesses / whole runs (README runs all).

ROOT = pathlib.Path(__file__).resolve().parents[1]
CATEGORY = "magnetic_tile"
WANTED = {"train/good": 8, "test/good": 3, "test/crack": 2, "test/fray": 2}


@pytest.fixture(scope="module", params=["synthetic", "magnetic_tile"])
def tile_root(request, tmp_path_factory):
  """A few train/test images and the defects' masks: synthetic, then real."""
  root = tmp_path_factory.mktemp("mvtec_e2e")
  if request.param == "synthetic":
    return conftest.make_mvtec_category(root, CATEGORY, WANTED)
  shared_data_dir = request.getfixturevalue("shared_data_dir")
  archive = shared_data_dir / "magnetic_tile_mvtec_layout.tar.gz"
  with tarfile.open(archive) as tar:
    members = [m for m in tar.getmembers() if m.isfile()]
  by_folder = {}
  for m in members:
    by_folder.setdefault(str(pathlib.PurePosixPath(m.name).parent),
                         []).append(m)
  chosen = []
  for folder, n in WANTED.items():
    picked = sorted(by_folder[f"{CATEGORY}/{folder}"],
                    key=lambda m: m.name)[:n]
    chosen += picked
    defect = folder.split("/")[1]
    if folder.startswith("test/") and defect != "good":
      masks = {pathlib.PurePosixPath(m.name).name: m
               for m in by_folder[f"{CATEGORY}/ground_truth/{defect}"]}
      chosen += [masks[pathlib.PurePosixPath(m.name).stem + "_mask.png"]
                 for m in picked]
  with tarfile.open(archive) as tar:
    tar.extractall(root, members=chosen, filter="data")
  return root


def load_config(name, arg):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_config(root, name="mvtec_contrastive"):
  c = load_config(name, f"root={root},runlocal")
  c.model.backbone = "resnet10"
  c.model.width, c.model.stem_width = 1 / 16, 4
  c.model.head_depth, c.model.head_width, c.model.head_out_dim = 1, 8, 8
  c.batch_size = 16
  c.total_steps = 3
  c.log_every_steps = c.checkpoint_every_steps = 3
  c.mvtec.patches_per_image = 4
  c.mvtec.stride = 16
  c.mvtec.memory_bank_size = 300
  c.mvtec.coreset_pool = 1000
  c.mvtec.heatmaps = 3
  c.eval.batch_size = 256
  c.eval.baselines = True
  return c


def test_end_to_end(tile_root, tmp_path):
  config = tiny_config(tile_root)
  results = single.train_and_evaluate(config, str(tmp_path))
  n_test = WANTED["test/good"] + WANTED["test/crack"] + WANTED["test/fray"]

  for aucs in [results["auc"]] + [results["baselines"][b]["auc"]
                                  for b in ("raw_pixels", "untrained")]:
    assert set(aucs) == {"image_kde", "pixel_kde", "aupro_kde"}
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in aucs.values())
  assert set(results["per_defect"]) == {"crack", "fray"}
  assert results["per_defect"]["crack"]["images"] == 2
  assert results["grid"] == [15, 15]
  assert results["memory_bank"]["size"] == 300
  assert results["memory_bank"]["training_patches"] == 8 * 15 * 15

  # Files: results.json readable by the report, scores, grids, heatmaps.
  run = workdir_lib.Results.read(tmp_path)
  assert (run.dataset, run.inlier_class, run.num_classes) == (
      "mvtec", CATEGORY, 1)
  assert tables.aggregate([run]).per_dataset
  with np.load(tmp_path / "scores.npz") as npz:
    labels, scores = npz["labels"], npz["image_kde"]
  np.testing.assert_array_equal(labels, [0] * 3 + [1] * 4)
  assert results["auc"]["image_kde"] == pytest.approx(
      sk_metrics.roc_auc_score(labels, scores))
  with np.load(tmp_path / "score_grids.npz") as npz:
    grids = npz["grids"]
  assert grids.shape == (n_test, 15, 15)
  np.testing.assert_allclose(scores, grids.reshape(n_test, -1).max(axis=1),
                             rtol=1e-6)
  heatmaps = sorted((tmp_path / "heatmaps").glob("*.png"))
  assert len(heatmaps) == 3
  # One image of each defect type, then a good one (indices 3, 5 and 0).
  assert [p.name.split("_", 2)[:2] for p in heatmaps] == [
      ["0000", "good"], ["0003", "crack"], ["0005", "fray"]]
  with Image.open(heatmaps[0]) as im:
    assert im.size[0] > im.size[1] > 100
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["auc"] == results["auc"]


@pytest.mark.parametrize("name,method,copies", [
    ("mvtec_rotation", "rotation", 1), ("mvtec_contrastive", "contrastive", 1),
    ("mvtec_contrastive_da", "contrastive_da", 4)])
def test_configs_build_the_patch_sets(tile_root, name, method, copies):
  config = load_config(name, f"root={tile_root},category={CATEGORY},seed=3")
  assert config.method == method and config.model.image_size == 32
  assert (config.mvtec.image_size, config.mvtec.patch_size,
          config.mvtec.stride) == (256, 32, 4)
  assert config.data.inlier_class == CATEGORY
  experiment.validate(config)
  data = mvtec_data.make(config)
  per_image = config.mvtec.patches_per_image
  assert len(data.train) == WANTED["train/good"] * per_image * copies
  assert data.train[0]["image"].shape == (32, 32, 3)
  assert data.fit.grid == (57, 57)
  assert len(data.fit) == WANTED["train/good"] * 57 * 57
  assert data.test.images.shape == (7, 256, 256, 3)
  assert data.test.masks.shape == (7, 256, 256)
  assert data.test.defect_types == ("good",) * 3 + ("crack",) * 2 + (
      "fray",) * 2


# ---------------------------------------------------------------------------
# Bad input: each fails in mvtec.data.make, before any training.


def _copy(tile_root, tmp_path):
  shutil.copytree(tile_root / CATEGORY, tmp_path / CATEGORY)
  return tmp_path / CATEGORY


def _make(root, **overrides):
  config = load_config("mvtec_contrastive", f"root={root}")
  for key, value in overrides.items():
    setattr(config.mvtec, key, value)
  return mvtec_data.make(config)


def test_layout_problem_names_what_is_missing(tile_root, tmp_path):
  folder = _copy(tile_root, tmp_path)
  shutil.rmtree(folder / "ground_truth")
  with pytest.raises(FileNotFoundError, match="missing ground_truth"):
    _make(tmp_path)
  with pytest.raises(FileNotFoundError, match="categories in"):
    _make(tmp_path, category="bottle")


def test_empty_train_good(tile_root, tmp_path):
  folder = _copy(tile_root, tmp_path)
  for f in (folder / "train" / "good").iterdir():
    f.unlink()
  with pytest.raises(FileNotFoundError, match="train/good holds no"):
    _make(tmp_path)


def test_defect_without_mask_and_mask_of_wrong_size(tile_root, tmp_path):
  folder = _copy(tile_root, tmp_path)
  mask = sorted((folder / "ground_truth" / "crack").iterdir())[0]
  Image.new("L", (10, 12)).save(mask)
  with pytest.raises(ValueError, match=f"{mask.name} is 10x12 but its image"):
    _make(tmp_path)
  mask.unlink()
  with pytest.raises(FileNotFoundError, match="has no mask"):
    _make(tmp_path)


def test_images_smaller_than_a_patch(tile_root, tmp_path):
  folder = _copy(tile_root, tmp_path)
  Image.new("L", (24, 20)).save(folder / "train" / "good" / "tiny.png")
  with pytest.raises(ValueError, match="tiny.png is 24x20, smaller than one "
                     "32x32 patch"):
    _make(tmp_path)
  with pytest.raises(ValueError, match="image_size 16 is smaller than one "
                     "32x32 patch"):
    _make(tile_root, image_size=16)


def test_bad_settings(tile_root, tmp_path):
  with pytest.raises(ValueError, match="mvtec.root is not set"):
    _make("")
  with pytest.raises(ValueError, match="memory_bank must be one of"):
    _make(tile_root, memory_bank="kmeans")
  config = ml_collections.ConfigDict(
      load_config("mvtec_rotation", f"root={tile_root}").to_dict())
  config.model.image_size = 64  # A hand-built config without the reference.
  with pytest.raises(ValueError, match="model.image_size=32"):
    mvtec_data.make(config)
  folder = _copy(tile_root, tmp_path)
  for defect in ("crack", "fray"):
    shutil.rmtree(folder / "test" / defect)
    shutil.rmtree(folder / "ground_truth" / defect)
  with pytest.raises(ValueError, match="holds no defective image"):
    _make(tmp_path)


def test_results_json_is_written_after_every_other_output(tmp_path,
                                                          monkeypatch):
  # results.json means "finished" to sweeps and launch/sweep.sh; the MVTec
  # evaluator used to write it first, so a kill while writing the heatmaps
  # left a "finished" workdir without them.
  def killed(*args, **kwargs):
    raise KeyboardInterrupt("killed while writing the heatmaps")

  monkeypatch.setattr(mvtec_patches, "write_heatmaps", killed)
  test = types.SimpleNamespace(labels=np.array([0, 1]),
                               defect_types=["good", "crack"])
  dense = types.SimpleNamespace(image_scores=np.array([0.1, 0.9]),
                                grids=np.zeros((2, 3, 3)),
                                maps=np.zeros((2, 8, 8)))
  with pytest.raises(KeyboardInterrupt):
    # pylint: disable-next=protected-access
    mvtec_patches._write_outputs(str(tmp_path), {"auc": {"kde": 0.5}},
                                 dense, test, heatmaps=2, bank_meta={})
  assert not workdir_lib.finished(tmp_path)
  assert not (tmp_path / workdir_lib.RESULTS).exists()
