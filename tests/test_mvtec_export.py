"""MVTec-style exports (issue #16): the exported function of a patch run gives
new images the image scores, patch grids and anomaly maps the evaluator
gives its test images, and `score` writes their heatmaps.

One tiny run on a synthetic MVTec-layout category (tests/test_mvtec_e2e.py's
config: a 15 x 15 grid at stride 16), calibrated on fresh normal images of
the same synthetic law.
"""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import conftest
from oneclass_jax import export
from oneclass_jax import files
from oneclass_jax import scorer
from oneclass_jax.data import mvtec as mvtec_reader
from oneclass_jax.evaluators import mvtec_patches
from oneclass_jax.mvtec import data as mvtec_data
from oneclass_jax.mvtec import localize
from oneclass_jax.trainer import single
from test_mvtec_e2e import CATEGORY
from test_mvtec_e2e import WANTED
from test_mvtec_e2e import tiny_config

pytestmark = pytest.mark.slow  # Whole runs and subprocesses.

ROOT = pathlib.Path(__file__).resolve().parents[1]
FPR = 0.1
FRESH = 12  # Calibration images: fewer than 10 / FPR, so it warns.


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, config, test set, calibration folder, artefact, meta)."""
  tmp = tmp_path_factory.mktemp("mvtec_export")
  root = conftest.make_mvtec_category(tmp / "data", CATEGORY, WANTED)
  fresh = conftest.make_mvtec_category(tmp / "fresh", CATEGORY,
                                       {"train/good": FRESH}, seed=1)
  calibration = fresh / CATEGORY / "train" / "good"
  config = tiny_config(root)
  config.eval.baselines = False
  workdir = tmp / "wd"
  single.train_and_evaluate(config, str(workdir))
  test = mvtec_data.make(config).test
  meta = export.export_workdir(str(workdir), tmp / "model", fpr=FPR,
                               calibration=calibration, platforms=("cpu",))
  return workdir, config, test, calibration, tmp / "model", meta


def test_exported_scores_grids_and_maps_equal_the_evaluation(run):
  workdir, config, test, _, artefact, _ = run
  model = scorer.Scorer.load(artefact, max_batch=4)  # 7 images: 2 calls.
  out = model.outputs(test.images)
  grids = files.load_npz(workdir / "score_grids.npz")["grids"]
  image_scores = files.load_npz(workdir / "scores.npz")["image_kde"]
  assert out["grids"].shape == grids.shape == (7, 15, 15)
  # float32 normalisation in the export, float64 in the evaluator's KDE.
  np.testing.assert_allclose(out["grids"], grids, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["scores"], image_scores, rtol=1e-5,
                             atol=1e-6)
  cfg = config.mvtec
  expected_maps = localize.upsample(grids, (256, 256), cfg.patch_size,
                                    cfg.stride, sigma=cfg.sigma,
                                    normalize=cfg.normalize_map)
  assert out["maps"].shape == (7, 256, 256)
  np.testing.assert_allclose(out["maps"], expected_maps, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(
      out["verdicts"], out["scores"] > np.float32(model.threshold))


def test_calibration_metadata(run):
  _, _, _, calibration, artefact, meta = run
  model = scorer.Scorer.load(artefact)
  images = np.stack([mvtec_reader.resize_image(
      np.asarray(Image.open(p).convert("RGB")), 256)
      for p in sorted(calibration.iterdir())])
  scores, verdicts = model.score(images)
  assert meta["task"] == "mvtec_patches"
  assert meta["outputs"] == ["scores", "verdicts", "grids", "maps"]
  assert meta["image_shape"] == [256, 256, 3]
  assert meta["patches"]["grid"] == [15, 15]
  assert meta["patches"]["memory_bank"]["size"] == 300
  assert meta["threshold"] == pytest.approx(np.quantile(scores, 1 - FPR),
                                            rel=1e-6)
  assert meta["calibration"]["count"] == FRESH
  assert meta["calibration"]["realised_fpr"] == np.mean(verdicts)
  assert meta["calibration"]["warning"].startswith(
      f"Only {FRESH} calibration scores back the threshold for fpr={FPR}")
  low, high = meta["map_range"]
  assert low < high
  with pytest.raises(ValueError, match=r"\[n, 256, 256, 3\].*shape "
                     r"\(1, 128, 128, 3\)"):
    model.score(np.zeros((1, 128, 128, 3), np.uint8))


def test_score_writes_heatmaps_of_new_images(run, tmp_path):
  workdir, _, test, _, artefact, _ = run
  folder = pathlib.Path(test.files[0]).parents[1]  # <category>/test
  proc = subprocess.run(
      [sys.executable, "-m", "oneclass_jax.tools.score",
       f"--model={artefact}", f"--images={folder}",
       f"--out={tmp_path / 'scores.csv'}", f"--heatmaps={tmp_path / 'maps'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [line.split(",") for line in
          (tmp_path / "scores.csv").read_text().splitlines()[1:]]
  # The original files, read and resized by `score` as the evaluator did.
  by_name = {str(pathlib.Path(f).relative_to(folder)): i
             for i, f in enumerate(test.files)}
  assert sorted(r[0] for r in rows) == sorted(by_name)
  image_scores = files.load_npz(workdir / "scores.npz")["image_kde"]
  for name, score, _, _ in rows:
    assert float(score) == pytest.approx(image_scores[by_name[name]],
                                         rel=1e-5, abs=1e-6)
  maps = scorer.Scorer.load(artefact).outputs(test.images)["maps"]
  for name, i in by_name.items():
    stem = str(pathlib.Path(name).with_suffix("")).replace("/", "__")
    np.testing.assert_allclose(np.load(tmp_path / "maps" / f"{stem}.npy"),
                               maps[i], rtol=1e-6, atol=1e-7)
    with Image.open(tmp_path / "maps" / f"{stem}.png") as im:
      assert im.size == (256, 256) and im.mode == "RGB"


def test_refusals(run, tmp_path):
  workdir, _, _, calibration, _, _ = run
  with pytest.raises(ValueError, match="MVTec-style run: its memory bank "
                     "holds patches of every training image.*--calibration"):
    export.export_workdir(str(workdir), tmp_path / "a")
  with pytest.raises(ValueError, match="KDE on its memory bank, not 'gde'"):
    export.export_workdir(str(workdir), tmp_path / "a", detector="gde",
                          calibration=calibration)
  copy = tmp_path / "wd"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("embeddings"))
  bank = files.load_npz(copy / "memory_bank.npz")
  meta = json.loads(str(bank["meta"]))
  meta["identity"]["weights"] = "0" * 16
  (copy / "memory_bank.npz").write_bytes(files.npz_bytes(
      **{**bank, "meta": np.asarray(json.dumps(meta))}))
  with pytest.raises(ValueError, match="memory bank in .*: not fitted on "
                     "this workdir's latest checkpoint.*weights differ"):
    export.export_workdir(str(copy), tmp_path / "a", calibration=calibration)
  (copy / "memory_bank.npz").unlink()
  with pytest.raises(FileNotFoundError, match="No memory bank in .*tools."
                     "evaluate"):
    mvtec_patches.load_memory_bank(copy)
  assert not (tmp_path / "a").exists()


def test_score_workdir_path_exports_into_the_workdir_once(run):
  workdir, _, _, calibration, _, meta = run
  out = pathlib.Path(export.export_in_workdir(
      str(workdir), fpr=FPR, calibration=calibration, platforms=("cpu",)))
  digest = meta["calibration"]["identity"]
  assert out == workdir / "exported" / f"kde_fpr{FPR:g}_step3_cal{digest}"
  written = (out / scorer.META).stat().st_mtime_ns
  assert json.loads((out / scorer.META).read_text())["threshold"] == (
      meta["threshold"])
  assert pathlib.Path(export.export_in_workdir(
      str(workdir), fpr=FPR, calibration=calibration,
      platforms=("cpu",))) == out
  assert (out / scorer.META).stat().st_mtime_ns == written
