"""Stage 2 through the binaries' code: extraction, evaluate, score."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import export
from oneclass_jax import models
from oneclass_jax import parallel
from oneclass_jax import scorer
from oneclass_jax import scoring
from oneclass_jax.trainer import single
from test_train import folder  # noqa: F401  (fixture)
from test_train import folder_config


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):  # noqa: F811
  tmp = tmp_path_factory.mktemp("trained")
  config = folder_config("rotation", folder, tmp)
  workdir = tmp / "wd"
  single.train_and_evaluate(config, str(workdir))
  return workdir


def test_extract_sharded_equals_single_device_for_odd_sizes():
  model = models.build_model(dict(
      backbone="resnet10", width=1 / 16, stem_width=4, head_depth=1,
      head_width=8, head_out_dim=8, image_size=32, num_classes=4))
  variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)),
                         train=False)
  rng = np.random.default_rng(0)
  images = list(rng.integers(0, 256, (1001, 32, 32, 3), dtype=np.uint8))
  source = [{"image": image, "label": 0} for image in images]
  out8 = embeddings.extract(model, variables, source, parallel.make_mesh(8),
                          batch_size=96, rotations=True)
  out1 = embeddings.extract(model, variables, source, parallel.make_mesh(1),
                          batch_size=50)
  assert out8["pools"].shape == (1001, 32) and out8["rot_logits"].shape == (
      4, 1001, 4)
  np.testing.assert_allclose(out8["pools"], out1["pools"], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out8["embeds"], out1["embeds"], rtol=1e-5,
                             atol=1e-6)
  # And both equal a plain forward pass, row by row (no row lost or moved).
  direct = model.apply(variables, jnp.asarray(np.stack(images[-7:])) / 255.0,
                       train=False)
  np.testing.assert_allclose(out8["pools"][-7:], direct["pools"], rtol=1e-5,
                             atol=1e-6)
  rotated = model.apply(variables, jnp.rot90(
      jnp.asarray(np.stack(images[:5])) / 255.0, 1, axes=(1, 2)),
                        train=False)
  np.testing.assert_allclose(out8["rot_logits"][1, :5], rotated["logits"],
                             rtol=1e-5, atol=1e-6)


def test_evaluate_workdir_rescoring(trained):
  results = evaluators.evaluate_workdir(str(trained), ["kde", "gde"], "g")
  saved = json.loads((trained / "results.json").read_text())
  assert saved["embedding"] == "g" and set(saved["auc"]) == {"kde", "gde"}
  assert saved["auc"] == results["auc"]
  assert saved["dataset"] == "image_folder" and saved["num_classes"] == 2
  assert saved["counts"] == {"fit": 48, "test": 32, "test_outliers": 16}
  scores = np.load(trained / "scores.npz")
  assert scores["labels"].sum() == 16 and scores["kde"].shape == (32,)


def test_score_cli_matches_evaluation(trained, folder, tmp_path):  # noqa: F811
  results = evaluators.evaluate_workdir(str(trained), ["kde"], "f")
  del results
  # Map every test image (lossless PNG) to the score the evaluation gave it.
  mesh = parallel.make_mesh()
  config, run, state = experiment.restore_run(str(trained), mesh)
  del config, state
  eval_scores = np.load(trained / "scores.npz")["kde"]
  by_pixels = {run.data.test[i]["image"].tobytes(): eval_scores[i]
               for i in range(len(run.data.test))}
  images = tmp_path / "incoming"
  images.mkdir()
  test_files = sorted((folder / "test").rglob("*.png"))
  for i, path in enumerate(test_files):
    (images / f"{i:03d}.png").write_bytes(path.read_bytes())
  (images / "broken.png").write_bytes(b"not an image")
  # `score --workdir`'s path: an artefact exported into the workdir.
  model = scorer.Scorer.load(export.export_in_workdir(
      str(trained), detector="kde", fpr=0.1, platforms=("cpu",)))
  scored = scoring.score_folder(model, images)
  rows, threshold, problems = scored.rows(), scored.threshold, scored.problems
  assert len(rows) == len(test_files)
  assert len(problems) == 1 and "broken.png" in problems[0]
  for (name, value, verdict), path in zip(rows, test_files):
    pixels = np.asarray(Image.open(path).convert("RGB")).tobytes()
    # The float32 export against the float64 evaluation (test_export.py).
    np.testing.assert_allclose(value, by_pixels[pixels], rtol=1e-5)
    assert verdict == ("anomalous" if value > np.float32(threshold)
                       else "normal")
  out = tmp_path / "scores.csv"
  scoring.write_csv(out, rows, threshold)
  assert out.read_text().splitlines()[0] == "image,score,verdict,threshold"


def test_embeddings_are_cached_per_step(trained, monkeypatch):
  cache = sorted((trained / "embeddings").glob("step_*.npz"))
  assert [p.name for p in cache] == ["step_6.npz"]
  with np.load(cache[0]) as arrays:
    assert arrays["fit/pools"].shape[0] == 48
    assert arrays["test/embeds"].shape[0] == 32
  calls = []
  original = embeddings.extract
  monkeypatch.setattr(embeddings, "extract",
                      lambda *a, **k: calls.append(1) or original(*a, **k))
  evaluators.evaluate_workdir(str(trained), ["kde"], "f")
  assert not calls  # Served from the cache: the network did not run.


def test_rotation_scores_in_results(trained):
  saved = json.loads((trained / "results.json").read_text())
  del saved
  results = evaluators.evaluate_workdir(str(trained),
                                      ["kde", "rotation"], "f")
  assert {"kde", "rot_p0", "rot_sum"} == set(results["auc"])


def test_errors(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a workdir"):
    evaluators.evaluate_workdir(str(tmp_path))
  (tmp_path / "config.json").write_text(
      (trained / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    evaluators.evaluate_workdir(str(tmp_path))
  with pytest.raises(ValueError, match="Unknown detector 'svdd'"):
    evaluators.evaluate_workdir(str(trained), ["svdd"])
  with pytest.raises(FileNotFoundError, match="No fitted detector 'knn'"):
    evaluators.one_class.load_detector(str(trained), "knn")
  with pytest.raises(ValueError, match="NaN"):
    evaluators.one_class.fit_and_score(["kde"], np.full((5, 3), np.nan), np.ones((2, 3)))


def test_contrastive_model_refuses_rotation_score(folder, tmp_path):  # noqa: F811
  config = folder_config("contrastive", folder, tmp_path,
                         **{"eval.detectors": ("kde", "rotation")})
  with pytest.raises(ValueError, match="needs a rotation model"):
    single.train_and_evaluate(config, str(tmp_path / "wd"))


def test_image_list_reads_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    scoring.read_images(tmp_path / "nope", "cifar10", (32, 32, 3))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="No images"):
    scoring.read_images(tmp_path / "empty", "cifar10", (32, 32, 3))
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "s.png")
  images, names, problems = scoring.read_images(tmp_path, "cifar10",
                                              (32, 32, 3))
  assert not images and "model expects (32, 32, 3)" in problems[0]
  del names
  assert pathlib.Path(tmp_path / "s.png").exists()
