"""The exported scorer (issue #16): tools.export writes it, scorer.py loads it.

One tiny run, evaluated with kde, ocsvm, gde and knn, is exported once per
detector; the exported function must give the test images the scores the
evaluation wrote to scores.npz. MVTec-style exports: tests/test_mvtec_export.py.
"""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from oneclass_jax import detectors
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import export
from oneclass_jax import files
from oneclass_jax import scorer
from oneclass_jax import scoring
from oneclass_jax.trainer import single
from test_train import folder  # noqa: F401  (fixture)
from test_train import folder_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DETECTORS = ("kde", "ocsvm", "gde", "knn")
# 48 held-out inliers back the threshold: at fpr 0.25 that is over 10 / fpr,
# so `threshold_at_fpr` does not warn.
FPR = 0.25
# The float32 export against the evaluation's scores.npz (rtol 1e-5 for all;
# measured here: kde 1.4e-6, ocsvm 6e-7, gde 7e-6 relative). kNN's 1 − cos
# is only resolved to float32's spacing below 1 (6e-8), so its small scores
# get an absolute tolerance (measured 1.8e-7); GDE's is relative to its
# largest score, as its two terms cancel near 0 (tests/test_detectors.py).
ATOL = {"kde": 1e-7, "ocsvm": 1e-7, "knn": 3e-7}


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):  # noqa: F811
  """(workdir, test images in scores.npz order) of an evaluated tiny run."""
  tmp = tmp_path_factory.mktemp("export")
  config = folder_config("rotation", folder, tmp,
                         **{"eval.detectors": DETECTORS})
  workdir = tmp / "wd"
  single.train_and_evaluate(config, str(workdir))
  test = experiment.task(config).make_data(config).test
  images = np.stack([test[i]["image"] for i in range(len(test))])
  return workdir, images


@pytest.fixture(scope="module")
def artefacts(trained, tmp_path_factory):
  """{detector: artefact folder}; kde through the binary, as a user runs it."""
  workdir, _ = trained
  out = tmp_path_factory.mktemp("artefacts")
  proc = subprocess.run(
      [sys.executable, "-m", "oneclass_jax.tools.export",
       f"--workdir={workdir}", "--detector=kde", f"--fpr={FPR}",
       f"--out={out / 'kde'}", "--platforms=cpu"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"Wrote {out / 'kde'}: kde on f" in proc.stdout
  for name in DETECTORS[1:]:  # For the default platforms, cpu and cuda.
    export.export_workdir(str(workdir), out / name, detector=name, fpr=FPR)
  return {name: out / name for name in DETECTORS}


@pytest.mark.parametrize("name", DETECTORS)
def test_scores_equal_the_evaluation(name, trained, artefacts):
  workdir, images = trained
  model = scorer.Scorer.load(artefacts[name])
  scores, verdicts = model.score(images)
  expected = files.load_npz(workdir / "scores.npz")[name]
  assert scores.shape == verdicts.shape == (len(images),)
  atol = ATOL.get(name, 1e-5 * np.abs(expected).max())
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=atol)
  np.testing.assert_array_equal(verdicts,
                                scores > np.float32(model.threshold))
  # And the verdicts of the evaluation's float64 scores, but for any score
  # within that tolerance of the threshold.
  near = np.isclose(expected, model.threshold, rtol=1e-5, atol=atol)
  np.testing.assert_array_equal(verdicts[~near],
                                (expected > model.threshold)[~near])
  assert 0 < verdicts.sum() < len(verdicts)


@pytest.mark.parametrize("name", DETECTORS)
def test_metadata(name, trained, artefacts):
  workdir, images = trained
  meta = json.loads((artefacts[name] / scorer.META).read_text())
  saved = evaluators.one_class.load_detector(workdir, name)
  assert meta["format"] == scorer.FORMAT
  assert meta["image_shape"] == list(images.shape[1:])
  assert (meta["detector"], meta["embedding"]) == (name, "f")
  assert meta["threshold"] == detectors.threshold_at_fpr(saved.heldout, FPR)
  assert meta["target_fpr"] == FPR
  assert meta["task"] == "one_class"
  assert meta["outputs"] == ["scores", "verdicts"]
  assert meta["calibration"] == {
      "source": export.HELDOUT, "count": 48, "warning": None,
      "realised_fpr": np.mean(saved.heldout > meta["threshold"])}
  assert len(saved.heldout) == 48
  assert meta["run"]["identity"] == saved.meta["identity"]
  assert meta["run"]["dataset"] == "image_folder"
  assert meta["platforms"] == (["cpu"] if name == "kde" else
                               list(export.PLATFORMS))
  assert set(meta["versions"]) == {"jax", "jaxlib", "oneclass_jax"}


def test_batch_size_independence_and_chunks(trained, artefacts):
  _, images = trained
  # Chunks of 8: 32 images are 4 calls, 7 are one padded call.
  model = scorer.Scorer.load(artefacts["kde"], max_batch=8)
  every, every_verdicts = model.score(images)
  single_image, _ = model.score(images[3])  # [H, W, C]: one row.
  seven, seven_verdicts = model.score(images[:7])
  assert single_image.shape == (1,)
  np.testing.assert_allclose(single_image, every[3:4], rtol=1e-6)
  np.testing.assert_allclose(seven, every[:7], rtol=1e-6)
  np.testing.assert_array_equal(seven_verdicts, every_verdicts[:7])
  empty, empty_verdicts = model.score(images[:0])
  assert empty.shape == empty_verdicts.shape == (0,)


def test_wrong_images_are_refused(trained, artefacts):
  _, images = trained
  model = scorer.Scorer.load(artefacts["kde"])
  expected = r"\[n, 32, 32, 3\] or \[32, 32, 3\]"
  with pytest.raises(ValueError, match=f"uint8 images {expected}.*float32"):
    model.score(images.astype(np.float32) / 255)
  with pytest.raises(ValueError, match=f"{expected}.*shape \\(2, 32, 32\\)"):
    model.score(images[:2, ..., 0])
  with pytest.raises(ValueError, match=f"{expected}.*shape \\(2, 16, 16, 3"):
    model.score(images[:2, :16, :16])


def test_calibration_on_a_folder_of_normal_images(trained, folder, tmp_path):  # noqa: F811
  workdir, _ = trained
  normal = folder / "test" / "a"  # The 16 test inliers (class 0).
  meta = export.export_workdir(str(workdir), tmp_path / "m", fpr=FPR,
                               calibration=normal, platforms=("cpu",))
  model = scorer.Scorer.load(tmp_path / "m")
  images = np.stack(scoring.read_images(normal, "image_folder",
                                        (32, 32, 3))[0])
  scores, verdicts = model.score(images)
  # Those images' scores through the artefact set the threshold: their
  # quantile, their realised rate, the evaluation's scores of them.
  assert meta["threshold"] == pytest.approx(np.quantile(scores, 1 - FPR),
                                            rel=1e-6)
  calibration = meta["calibration"]
  assert (calibration["source"], calibration["folder"], calibration["count"]
          ) == (export.FOLDER, str(normal), 16)
  assert calibration["identity"] == scoring.folder_digest(normal)
  assert calibration["realised_fpr"] == np.mean(verdicts) == 4 / 16
  # 16 < 10 / 0.25 scores: the warning is in meta.json.
  assert calibration["warning"].startswith(
      "Only 16 calibration scores back the threshold for fpr=0.25")
  with pytest.raises(FileNotFoundError, match="No images"):
    export.export_workdir(str(workdir), tmp_path / "n", calibration=tmp_path)


def test_few_heldout_scores_warn_in_the_metadata(trained, tmp_path):
  workdir, _ = trained
  meta = export.export_workdir(str(workdir), tmp_path / "m", fpr=0.05,
                               platforms=("cpu",))
  assert meta["calibration"]["count"] == 48
  assert meta["calibration"]["warning"].startswith(
      "Only 48 held-out training-inlier scores back the threshold for "
      "fpr=0.05 (fewer than 10/fpr = 200)")


def test_score_through_the_workdir_exports_once(trained, folder, tmp_path):  # noqa: F811
  # `score --workdir` scores through an artefact exported into the workdir,
  # reused while it matches: the second call exports nothing.
  workdir, _ = trained
  images = folder / "test"
  command = [sys.executable, "-m", "oneclass_jax.tools.score",
             f"--workdir={workdir}", f"--images={images}", "--fpr=0.25",
             f"--out={tmp_path / 'scores.csv'}"]
  exported = workdir / "exported" / "kde_fpr0.25_step6"
  written = []
  for _ in range(2):
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Scored 32 images with {exported}" in proc.stdout
    written.append((exported / scorer.META).stat().st_mtime_ns)
  assert written[0] == written[1]
  rows = (tmp_path / "scores.csv").read_text().splitlines()[1:]
  model = scorer.Scorer.load(exported)
  expected, _ = model.score(np.stack(scoring.read_images(
      images, "image_folder", (32, 32, 3))[0]))
  assert [float(r.split(",")[1]) for r in rows] == pytest.approx(
      expected.tolist(), rel=1e-6)
  # And an exported model does not take the export's flags.
  proc = subprocess.run(
      [sys.executable, "-m", "oneclass_jax.tools.score",
       f"--model={exported}", f"--images={images}", "--fpr=0.1"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "--fpr set how a workdir is exported" in proc.stderr


def test_refusals(trained, artefacts, tmp_path):
  workdir, _ = trained
  with pytest.raises(FileNotFoundError, match="No fitted detector 'ocsvm_lin"
                     "ear'.*tools.evaluate .*--detectors=ocsvm_linear"):
    export.export_workdir(str(workdir), tmp_path / "a",
                          detector="ocsvm_linear")
  (tmp_path / "notes.txt").write_text("not an artefact")
  with pytest.raises(ValueError, match="is not an exported scorer; the "
                     "export replaces"):
    export.export_workdir(str(workdir), tmp_path, detector="kde")
  # A copy whose detectors are of an old format, then stale (fitted on
  # other weights than the latest checkpoint).
  copy = tmp_path / "wd"
  shutil.copytree(workdir, copy)
  meta_path = copy / "detectors" / evaluators.one_class.DETECTORS_META
  meta = json.loads(meta_path.read_text())
  meta_path.write_text(json.dumps({**meta, "format": 1}))
  with pytest.raises(ValueError, match="format 1; this version scores with "
                     "format 3.*tools.evaluate"):
    export.export_workdir(str(copy), tmp_path / "a", detector="kde")
  meta["identity"] = {**meta["identity"], "weights": "0" * 16}
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="not fitted on this workdir's latest "
                     "checkpoint.*weights differ.*tools.evaluate"):
    export.export_workdir(str(copy), tmp_path / "a", detector="kde")
  assert not (tmp_path / "a").exists()
  # The loader: not an artefact, another platform, another format.
  with pytest.raises(FileNotFoundError, match="not an exported scorer"):
    scorer.Scorer.load(tmp_path)
  export.export_workdir(str(workdir), tmp_path / "tpu", fpr=FPR,
                        platforms=("tpu",))
  with pytest.raises(ValueError, match="exported for tpu; this process runs "
                     "on cpu: export it again with --platforms=cpu"):
    scorer.Scorer.load(tmp_path / "tpu")
  old = tmp_path / "old"
  shutil.copytree(artefacts["kde"], old)
  meta = json.loads((old / scorer.META).read_text())
  (old / scorer.META).write_text(json.dumps({**meta, "format": 0}))
  with pytest.raises(ValueError, match="format 0; this version loads format"):
    scorer.Scorer.load(old)


_LOAD_AND_SCORE = """
import json, sys
import numpy as np
from oneclass_jax import scorer
model = scorer.Scorer.load(sys.argv[1])
scores, _ = model.score(np.zeros((3, *model.image_shape), np.uint8))
assert scores.shape == (3,)
print(json.dumps(sorted(sys.modules)))
"""


def test_scorer_imports_neither_flax_nor_the_training_code(artefacts):
  # Loading and scoring, in a fresh process: nothing imported lazily either.
  proc = subprocess.run(
      [sys.executable, "-c", _LOAD_AND_SCORE, str(artefacts["gde"])],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  modules = json.loads(proc.stdout)
  assert "jax" in modules and "oneclass_jax.scorer" in modules
  forbidden = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets",
               "grain", "sklearn")
  ours = {"oneclass_jax", "oneclass_jax.scorer"}
  offenders = [m for m in modules if m.split(".")[0] in forbidden or (
      m.startswith("oneclass_jax") and m not in ours)]
  assert not offenders, offenders
