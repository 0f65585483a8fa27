"""Stage 2 through the binaries' code: extraction, evaluate, score."""
import csv
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as sk_metrics

from oneclass_jax import config_lib
from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import evaluators
from oneclass_jax import experiment
from oneclass_jax import export
from oneclass_jax import models
from oneclass_jax import parallel
from oneclass_jax import scorer
from oneclass_jax import scoring
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.analysis import tables
from oneclass_jax.trainer import single
from test_train import folder  # noqa: F401  (fixture)
from test_train import folder_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The named evaluation of `named`: another embedding and detector set than
# the config's (f; kde, gde, knn, rotation).
NAMED = "g-gde-kde"


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):  # noqa: F811
  tmp = tmp_path_factory.mktemp("trained")
  config = folder_config("rotation", folder, tmp)
  workdir = tmp / "wd"
  single.train_and_evaluate(config, str(workdir))
  return workdir


def _own_outputs(workdir) -> dict:
  """{path: bytes} of the run's own evaluation: results, scores, detectors."""
  paths = [workdir / "results.json", workdir / "scores.npz",
           *sorted((workdir / "detectors").iterdir())]
  return {str(p.relative_to(workdir)): p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def named(trained):
  """(own outputs before, after, results) of a second, named evaluation."""
  before = _own_outputs(trained)
  results = evaluators.evaluate_workdir(str(trained), ["kde", "gde"], "g")
  return before, _own_outputs(trained), results


def _test_images(workdir) -> np.ndarray:
  """The test images, uint8, in scores.npz order."""
  config = workdir_lib.load_config(workdir)
  test = experiment.task(config).make_data(config).test
  return np.stack([test[i]["image"] for i in range(len(test))])


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


def test_named_evaluation_leaves_the_runs_own_untouched(trained, named):
  # Old code: re-scoring with other detectors overwrote the run's own
  # results.json, scores.npz and detectors/.
  before, after, results = named
  assert after == before
  assert results["evaluation"] == NAMED
  out = trained / "evaluations" / NAMED
  saved = json.loads((out / "results.json").read_text())
  assert saved["evaluation"] == NAMED and saved["auc"] == results["auc"]
  assert saved["embedding"] == "g" and set(saved["auc"]) == {"kde", "gde"}
  assert saved["dataset"] == "image_folder" and saved["num_classes"] == 2
  assert saved["counts"] == {"fit": 48, "test": 32, "test_outliers": 16}
  with np.load(out / "scores.npz") as scores, np.load(
      trained / "scores.npz") as own:
    assert scores["labels"].sum() == 16 and scores["kde"].shape == (32,)
    # Its AUCs are of its own (g) scores, not of the run's (f) ones.
    assert saved["auc"]["gde"] == pytest.approx(
        sk_metrics.roc_auc_score(scores["labels"], scores["gde"]))
    assert not np.allclose(scores["kde"], own["kde"])
  meta = json.loads((out / "detectors" / "meta.json").read_text())
  assert (meta["detectors"], meta["embedding"]) == (["gde", "kde"], "g")
  assert not (out / "embeddings").exists()  # The cache is the workdir's.


def test_the_configs_own_set_as_flags_writes_the_top_level(trained):
  config = json.loads((trained / "config.json").read_text())
  own = config["eval"]["detectors"][::-1]  # Another order, the same set.
  (trained / "results.json").unlink()
  results = evaluators.evaluate_workdir(str(trained), own,
                                        config["eval"]["embedding"])
  assert "evaluation" not in results
  saved = json.loads((trained / "results.json").read_text())
  assert saved["auc"] == results["auc"] and "evaluation" not in saved
  assert workdir_lib.evaluation_name("f", own) not in (
      workdir_lib.evaluation_names(trained))


def test_report_lists_the_named_evaluation_beside_the_run(trained, named,
                                                          tmp_path):
  runs = {r.evaluation: r for r in tables.load_runs([trained])}
  assert runs[None].path == trained and runs[NAMED].workdir == trained
  assert runs[NAMED].auc == named[2]["auc"]
  report = tables.aggregate(list(runs.values()))
  md = tables.to_markdown(report)
  assert f"| rotation [{NAMED}] | g | gde |" in md
  assert "| rotation | f | kde |" in md
  tables.write_report(report, tmp_path, list(runs.values()))
  with open(tmp_path / "per_class.csv") as f:
    rows = {(r["evaluation"], r["embedding"], r["detector"])
            for r in csv.DictReader(f)}
  assert {(NAMED, "g", "kde"), (NAMED, "g", "gde"), ("", "f", "kde")} <= rows
  assert len(list((tmp_path / "figures").glob(f"*_{NAMED}_roc.png"))) == 1


def test_score_and_export_use_the_named_evaluations_detectors(
    trained, named, folder, tmp_path):  # noqa: F811
  del named
  with np.load(trained / "evaluations" / NAMED / "scores.npz") as npz:
    expected = {k: npz[k] for k in npz.files}
  images = _test_images(trained)
  meta = export.export_workdir(str(trained), tmp_path / "m", detector="kde",
                               fpr=0.25, platforms=("cpu",), evaluation=NAMED)
  saved = evaluators.one_class.load_detector(trained, "kde", NAMED)
  assert (meta["evaluation"], meta["embedding"]) == (NAMED, "g")
  assert meta["threshold"] == detectors.threshold_at_fpr(saved.heldout, 0.25)
  scores, _ = scorer.Scorer.load(tmp_path / "m").score(images)
  np.testing.assert_allclose(scores, expected["kde"], rtol=1e-5, atol=1e-7)
  # `score --workdir --evaluation`: exported into the workdir under a name
  # of its own, scoring as that evaluation did.
  by_pixels = dict(zip((x.tobytes() for x in images), expected["gde"]))
  proc = subprocess.run(
      [sys.executable, "-m", "oneclass_jax.tools.score",
       f"--workdir={trained}", f"--images={folder / 'test'}",
       "--detector=gde", f"--evaluation={NAMED}", "--fpr=0.25",
       f"--out={tmp_path / 'scores.csv'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  exported = trained / "exported" / f"gde_fpr0.25_step6_eval-{NAMED}"
  assert f"Scored 32 images with {exported}" in proc.stdout
  with open(tmp_path / "scores.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 32
  for row in rows:
    pixels = np.asarray(Image.open(folder / "test" / row["image"]).convert(
        "RGB")).tobytes()
    # GDE's tolerance is relative to its largest score (test_export.py).
    np.testing.assert_allclose(float(row["score"]), by_pixels[pixels],
                               rtol=1e-5,
                               atol=1e-5 * np.abs(expected["gde"]).max())


def test_refusals_come_before_any_work(trained, named, folder, tmp_path,  # noqa: F811
                                       monkeypatch):
  del named
  def restore(*args, **kwargs):
    raise AssertionError("restored a checkpoint before refusing")
  monkeypatch.setattr(experiment, "restore_run", restore)
  # Old code: restored the checkpoint, then refused (or, for [], silently
  # took the config's detectors).
  with pytest.raises(ValueError, match="Unknown detector 'svdd'; known"):
    evaluators.evaluate_workdir(str(trained), ["svdd"], "g")
  with pytest.raises(ValueError, match="--detectors is empty"):
    evaluators.evaluate_workdir(str(trained), [])
  contrastive = tmp_path / "contrastive"
  contrastive.mkdir()
  (contrastive / "config.json").write_text(json.dumps(config_lib.to_dict(
      folder_config("contrastive", folder, tmp_path))))
  with pytest.raises(ValueError, match="'rotation' score needs a rotation "
                     "model.*not method 'contrastive'"):
    evaluators.evaluate_workdir(str(contrastive), ["kde", "rotation"])
  # Readers of an evaluation refuse a name without one, naming those there.
  with pytest.raises(ValueError, match=f"No finished evaluation 'f-svdd' .*"
                     f"Its named evaluations: .*{NAMED}"):
    evaluators.one_class.load_detector(trained, "kde", "f-svdd")
  with pytest.raises(ValueError, match="No finished evaluation 'f-svdd'"):
    export.export_in_workdir(str(trained), evaluation="f-svdd")


def test_a_killed_named_evaluation_is_not_finished(trained, monkeypatch):
  class Killed(Exception):
    pass

  def killed(*args, **kwargs):
    raise Killed()

  out = trained / "evaluations" / "g-knn"
  for attempt in ("first", "after a finished one"):
    monkeypatch.setattr(workdir_lib, "write_results", killed)
    with pytest.raises(Killed):
      evaluators.evaluate_workdir(str(trained), ["knn"], "g")
    # Its other outputs are there; results.json (last) is not, even where
    # an earlier run of the same evaluation had written one.
    assert (out / "scores.npz").exists(), attempt
    assert (out / "detectors" / "meta.json").exists(), attempt
    assert not (out / "results.json").exists(), attempt
    assert "g-knn" not in workdir_lib.evaluation_names(trained)
    assert "g-knn" not in {r.evaluation for r in workdir_lib.find_runs(
        trained, evaluations=True)}
    with pytest.raises(ValueError, match="g-knn.*was interrupted"):
      evaluators.one_class.load_detector(trained, "knn", "g-knn")
    monkeypatch.undo()
    evaluators.evaluate_workdir(str(trained), ["knn"], "g")
    assert "g-knn" in workdir_lib.evaluation_names(trained)


def test_named_evaluation_baselines_use_its_embedding(trained, tmp_path):
  # Old code: the untrained network's baseline used the config's embedding
  # (f) whatever the evaluation's.
  copy = tmp_path / "wd"
  shutil.copytree(trained, copy)
  config = json.loads((copy / "config.json").read_text())
  config["eval"]["baselines"] = True
  (copy / "config.json").write_text(json.dumps(config))
  results = evaluators.evaluate_workdir(str(copy), ["kde"], "g")
  config, run, _ = experiment.restore_run(str(copy), parallel.make_mesh(1))
  variables = run.model.init(jax.random.key(config.seed + 1),
                             jnp.zeros((2, 32, 32, 3)), train=False)
  g = lambda source: np.asarray(run.model.apply(
      variables, np.stack([source[i]["image"] for i in range(len(source))]
                          ).astype(np.float32) / 255, train=False)["embeds"])
  labels = embeddings.labels_of(run.data.test)
  kde = detectors.get("kde").fit(g(run.data.fit))
  assert results["baselines"]["untrained"]["kde"] == pytest.approx(
      sk_metrics.roc_auc_score(labels, kde.score(g(run.data.test))),
      abs=1e-6)


def test_score_cli_matches_evaluation(trained, folder, tmp_path):  # noqa: F811
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
  # A named evaluation (f-kde) has no cache of its own.
  assert not list((trained / "evaluations").rglob("step_*.npz"))


def test_rotation_scores_in_results(trained):
  saved = json.loads((trained / "results.json").read_text())
  del saved
  results = evaluators.evaluate_workdir(str(trained),
                                      ["kde", "rotation"], "f")
  assert {"kde", "rot_p0", "rot_sum"} == set(results["auc"])


def test_detectors_of_an_older_format_are_refused(trained, tmp_path):
  # A format-2 OC-SVM pickle stores libsvm's rho as `offset_`, which the
  # scikit-learn API reads as -threshold_; it must be refitted, not read.
  copy = tmp_path / "wd"
  shutil.copytree(trained, copy)
  meta_path = copy / workdir_lib.DETECTORS / "meta.json"
  meta = json.loads(meta_path.read_text())
  assert meta["format"] == evaluators.one_class.DETECTORS_FORMAT == 3
  meta_path.write_text(json.dumps({**meta, "format": 2}))
  with pytest.raises(ValueError, match="detectors of format 2; this version "
                     "scores with format 3: run `python -m "
                     "oneclass_jax.tools.evaluate"):
    evaluators.one_class.load_detector(copy, "kde")


def test_errors(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match="not a workdir"):
    evaluators.evaluate_workdir(str(tmp_path))
  (tmp_path / "config.json").write_text(
      (trained / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    evaluators.evaluate_workdir(str(tmp_path))
  with pytest.raises(ValueError, match="Unknown detector 'svdd'"):
    evaluators.evaluate_workdir(str(trained), ["svdd"])
  with pytest.raises(FileNotFoundError, match="No fitted detector 'ocsvm'"):
    evaluators.one_class.load_detector(str(trained), "ocsvm")
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
