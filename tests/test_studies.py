"""Sweeps, the analysis of a run, the figures, Table 6 ensembles and explain,
on one tiny contaminated run; plus the ensemble arithmetic on synthetic runs.
"""
import functools
import inspect
import json
import pathlib

import numpy as np
from PIL import Image
import pytest
from sklearn import metrics as sk_metrics

from oneclass_jax.analysis import captions
from oneclass_jax.analysis import grids
from oneclass_jax.analysis import study_figures
from oneclass_jax.analysis import study_records
from oneclass_jax.analysis import study_runs
from oneclass_jax.detectors import ensemble as ensemble_lib
from oneclass_jax.analysis import ensembles
from oneclass_jax.analysis import explanations
from oneclass_jax.trainer import single
from oneclass_jax.trainer import step as step_lib

CLASSES = ("a", "b", "c")
TRAIN, TEST = 24, 8
RATIO = 0.25  # 6 of class a's 24 training images become outliers


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """3 classes of 32x32 images; channel 2 is a constant, unique image id."""
  root = tmp_path_factory.mktemp("sweep_src")
  rng = np.random.default_rng(0)
  ids, next_id = {}, 1
  yy, xx = np.mgrid[:32, :32] / 31.0
  for split, n in (("train", TRAIN), ("test", TEST)):
    for label, name in enumerate(CLASSES):
      d = root / split / name
      d.mkdir(parents=True)
      base = (xx, yy, xx * yy)[label]
      for i in range(n):
        img = np.zeros((32, 32, 3), np.uint8)
        img[..., 0] = np.clip(255 * base + rng.normal(0, 20, base.shape), 0,
                              255)
        img[..., 1] = rng.integers(0, 256, (32, 32))
        img[..., 2] = next_id
        Image.fromarray(img).save(d / f"{i:02d}.png")
        ids[next_id] = (split, label)
        next_id += 1
  return root, ids


TINY = ("model.backbone=resnet10", "model.width=0.0625", "model.head_depth=1",
        "model.stem_width=4", "model.head_width=8", "model.head_out_dim=8",
        "batch_size=16", "eval.batch_size=64", "log_every_steps=1",
        "checkpoint_every_steps=100")


def tiny_build(folder, tmp_path_factory):
  root, _ = folder
  data_dir = tmp_path_factory.mktemp("sweep_tfds")
  return functools.partial(
      grids.build_config, images_per_run=64,
      extra=TINY + (f"data.source_dir={root}", f"data.data_dir={data_dir}"))


@pytest.fixture(scope="module")
def swept(folder, tmp_path_factory):
  """One contaminated contrastive run through run_grid, with a spy on the
  train step that records every argument the step receives."""
  build = tiny_build(folder, tmp_path_factory)
  specs = grids.contamination_grid(
      dataset="image_folder", classes=[0], seeds=[0],
      methods=["contrastive"], ratios=[RATIO], detectors=("kde", "gde"))
  root = tmp_path_factory.mktemp("sweep_runs")
  seen, calls = [], []
  real_shard_step = step_lib.shard_step

  def spy_shard_step(step_fn, mesh):
    compiled = real_shard_step(step_fn, mesh)

    def step(*args, **kwargs):
      assert not kwargs and len(args) == 3  # (state, images, rng), no more
      seen.append(np.asarray(args[1]))
      return compiled(*args)

    return step

  def counting_train(config, workdir):
    calls.append(workdir)
    return single.train_and_evaluate(config, workdir)

  analyze = functools.partial(study_runs.analyze_run, clean_fits=(5,))
  mp = pytest.MonkeyPatch()
  mp.setattr(step_lib, "shard_step", spy_shard_step)
  try:
    workdirs = study_runs.run_grid(specs, str(root), build=build,
                               analyze=analyze, train_fn=counting_train)
  finally:
    mp.undo()
  return dict(root=root, specs=specs, build=build, workdirs=workdirs,
              seen=seen, calls=calls, counting_train=counting_train,
              analyze=analyze)


def test_the_trainer_sees_only_unlabelled_images(swept, folder):
  _, ids = folder
  # The loss takes images, never labels.
  params = inspect.signature(step_lib.make_loss_fn(None, None, None)).parameters
  assert list(params) == ["params", "batch_stats", "images", "rng", "step",
                          "axis_name"]
  assert len(swept["seen"]) == 4  # 64 images / batch 16
  for images in swept["seen"]:
    assert images.dtype == np.uint8 and images.shape == (16, 32, 32, 3)
  seen_ids = {int(i) for b in swept["seen"] for i in b[:, 0, 0, 2]}
  train_a = {i for i, (s, c) in ids.items() if s == "train" and c == 0}
  outliers = {i for i in seen_ids if ids[i][1] != 0}
  assert all(ids[i][0] == "train" for i in seen_ids)  # no test image
  assert outliers  # the contamination reaches the learner, unlabelled
  assert len(outliers) <= round(RATIO * TRAIN)
  assert seen_ids - outliers <= train_a


def test_run_grid_writes_results_and_analysis(swept):
  (workdir,) = swept["workdirs"]
  assert workdir.endswith("contrastive/contam25pct/image_folder_0/seed0")
  results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
  assert results["config"]["data"]["contamination"] == RATIO
  assert results["counts"]["fit"] == TRAIN  # the contaminated fit set
  analysis = json.loads(
      (pathlib.Path(workdir) / "analysis.json").read_text())
  assert set(analysis["mmd2"]) == {"f", "g"}
  assert all(-0.2 < v < 0.7 for v in analysis["mmd2"].values())
  assert analysis["mmd_points"] == TEST  # the test-set inliers
  assert set(analysis["auc_g"]) == {"kde", "gde"}
  assert set(analysis["clean_fit"]["5"]) == {"kde", "gde"}
  assert all(0 <= v <= 1 for v in analysis["clean_fit"]["5"].values())


def test_finished_runs_are_skipped_and_checked(swept):
  n = len(swept["calls"])
  study_runs.run_grid(swept["specs"], str(swept["root"]), build=swept["build"],
                  analyze=swept["analyze"], train_fn=swept["counting_train"])
  assert len(swept["calls"]) == n == 1
  other = functools.partial(swept["build"], extra=swept["build"].keywords[
      "extra"] + ("optim.learning_rate=0.5",))
  with pytest.raises(ValueError, match="optim.learning_rate"):
    study_runs.run_grid(swept["specs"], str(swept["root"]), build=other,
                    train_fn=swept["counting_train"])


def test_clean_rows_are_true_inliers():
  true = np.array([0, 1, 0, 0, 1, 0, 0, 1, 0, 0])
  rows = study_runs.clean_rows(true, 4, seed=3)
  assert len(rows) == 4 == len(set(rows.tolist()))
  assert np.all(true[rows] == 0) and np.all(np.diff(rows) > 0)
  np.testing.assert_array_equal(rows, study_runs.clean_rows(true, 4, seed=3))
  with pytest.raises(ValueError, match="only 7"):
    study_runs.clean_rows(true, 8, seed=0)


def test_grids():
  specs = grids.uniformity_grid(dataset="cifar10", classes=[0, 1],
                                 seeds=[0], batch_sizes=[8, 32],
                                 head_depths=[0, 8], depth_batch_size=32)
  names = [s.name for s in specs]
  assert len(names) == len(set(names)) == 2 * 2 * (2 + 1)  # bs32/depth8 once
  assert "contrastive_da/bs32_depth0/cifar10_1/seed0" in names
  config = grids.build_config(specs[0], scale="cpu", images_per_run=6400)
  assert config.batch_size == 8 and config.total_steps == 800
  assert config.model.width == grids.CPU_SCALE["model.width"]
  rot = grids.contamination_grid(dataset="cifar10", classes=[0], seeds=[0],
                                  methods=["rotation"], ratios=[0.05])
  config = grids.build_config(rot[0], scale="cpu")
  assert config.data.contamination == 0.05
  assert config.model.head_out_dim == config.model.head_width == 64
  assert "rotation" in config.eval.detectors
  with pytest.raises(ValueError, match="Unknown config field"):
    grids.build_config(rot[0], extra=("model.depth=3",))


def test_figures_and_captions(swept, tmp_path):
  records = study_records.load_records(str(swept["root"]))
  paths = (study_figures.plot_uniformity(records, tmp_path, default_depth=1,
                                  depth_batch_size=16) +
           study_figures.plot_contamination(records, tmp_path, detectors=("kde",)) +
           [study_figures.plot_distaug(records, tmp_path)])
  for p in paths:
    assert p.stat().st_size > 1000
  note = captions.scale_note([r.config for r in records])
  assert note == ("image folder · class 0 · ResNet-10 ×0.0625 · 4 steps · "
                  "batch 16 · 1 seed")
  assert captions.dataset_label({"name": "cifar10",
                                 "source_dir": "/tmp/cifar10_jpeg"}) == (
                                     "CIFAR-10 (JPEG copy)")
  assert captions.set_label("first4") == "+hflip, +rot90, +rot90,hflip"


def test_explain_writes_figures(swept, tmp_path):
  (workdir,) = swept["workdirs"]
  out = explanations.explain([workdir], "test:2", methods=("ig", "gradcam"),
                        baselines=("black",), steps=16, out=str(tmp_path))
  assert (tmp_path / "explain_ig.png").stat().st_size > 1000
  assert (tmp_path / "explain_gradcam.png").stat().st_size > 1000
  saved = json.loads((tmp_path / "explain.json").read_text())
  assert saved["images"] == out["images"] and len(saved["images"]) == 2
  (ig,) = [v for k, v in saved["columns"].items() if k.startswith("ig")]
  check = ig["completeness"]
  np.testing.assert_allclose(check["gap"], np.subtract(check["sum"],
                                                       check["delta"]))
  with pytest.raises(ValueError, match="test:N"):
    explanations.explain([workdir], "test:zero", out=str(tmp_path))


# ----------------------------------------------------------------------------
# Table 6 arithmetic on synthetic runs.


def write_run(root, dataset, cls, dist, seed, labels, scores):
  d = root / dataset / str(cls) / dist / f"seed{seed}"
  d.mkdir(parents=True)
  config = {"seed": seed, "method": "contrastive_da", "batch_size": 32,
            "total_steps": 10, "total_epochs": -1,
            "data": {"name": dataset, "inlier_class": cls, "seed": seed,
                     "dist_aug": dist},
            "model": {"backbone": "resnet10", "width": 1.0},
            "eval": {"batch_size": 7 + seed}}
  (d / "results.json").write_text(json.dumps({
      "dataset": dataset, "inlier_class": cls, "num_classes": 10,
      "method": "contrastive_da", "seed": seed, "step": 10,
      "embedding": "f", "config": config, "auc": {"kde": 0.5}}))
  np.savez(d / "scores.npz", labels=labels, kde=scores, other=-scores)


def zscore_mean(vectors):
  return np.mean([(v - v.mean()) / v.std() for v in vectors], axis=0)


def test_table6_arithmetic(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1], [30, 50])
  sets, seeds, classes = ("first2", "first3"), (0, 1, 2), (0, 1)
  scores = {}
  for cls in classes:
    for dist in sets:
      for seed in seeds:
        s = rng.normal(size=80) * rng.uniform(0.5, 5) + labels * 0.8
        scores[cls, dist, seed] = s
        write_run(tmp_path, "toy", cls, dist, seed, labels, s)
  tables = ensembles.dataset_tables(ensembles.load_models(tmp_path, "kde"))
  t = tables["toy"]
  assert t["columns"] == ["+hflip", "+hflip, +rot90"]
  auc = lambda s: 100 * sk_metrics.roc_auc_score(labels, s)  # noqa: E731
  for j, dist in enumerate(sets):
    per_seed = [np.mean([auc(scores[c, dist, s]) for c in classes])
                for s in seeds]
    assert t["single"][j][0] == pytest.approx(np.mean(per_seed))
    assert t["single"][j][1] == pytest.approx(np.std(per_seed, ddof=1))
    seed_ens = np.mean([auc(zscore_mean([scores[c, dist, s] for s in seeds]))
                        for c in classes])
    assert t["ensemble"][j] == pytest.approx(seed_ens)
  cross = [np.mean([auc(zscore_mean([scores[c, d, s] for d in sets]))
                    for c in classes]) for s in seeds]
  assert t["cross_single"][0] == pytest.approx(np.mean(cross))
  assert t["cross_single"][1] == pytest.approx(np.std(cross, ddof=1))
  every = np.mean([auc(zscore_mean([scores[c, d, s] for d in sets
                                    for s in seeds])) for c in classes])
  assert t["all_models"] == pytest.approx(every)
  md = ensembles.to_markdown(tables, "kde")
  assert "| ensemble of 3 models |" in md and "Ensemble of 2" in md
  assert "Scale: toy · classes 0,1 · ResNet-10 · 10 steps" in md
  # The ensemble helper is the one the table uses.
  np.testing.assert_allclose(
      ensemble_lib.ensemble_scores([scores[0, "first2", s] for s in seeds]),
      zscore_mean([scores[0, "first2", s] for s in seeds]))


def test_table6_refuses_mismatched_runs(tmp_path):
  labels = np.repeat([0, 1], [5, 5])
  write_run(tmp_path, "toy", 0, "first2", 0, labels, np.arange(10.0))
  write_run(tmp_path, "toy", 0, "first2", 1, labels[::-1], np.arange(10.0))
  with pytest.raises(ValueError, match="test labels differ"):
    ensembles.dataset_tables(ensembles.load_models(tmp_path, "kde"))
  with pytest.raises(ValueError, match="no scores of 'ocsvm'"):
    ensembles.load_models(tmp_path, "ocsvm")
  with pytest.raises(FileNotFoundError):
    ensembles.load_models(tmp_path / "nothing", "kde")
