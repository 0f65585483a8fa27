"""The README's commands as subprocesses, on real data, at CI size.

Fashion-MNIST (the Debian package) and one class of the CIFAR-10 JPEG copy go
through `python -m oneclass_jax.main` and `python -m oneclass_jax.tools.evaluate`
exactly as a user runs them; a second `main` resumes instead of retraining.
"""
import json
import math
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

from oneclass_jax import detectors
from oneclass_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow  # Subprocesses / whole runs (README runs all).

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.backbone=resnet10", "--config.model.width=0.0625",
        "--config.model.stem_width=4", "--config.model.head_width=16",
        "--config.model.head_out_dim=8", "--config.total_steps=12",
        "--config.log_every_steps=4", "--config.checkpoint_every_steps=4",
        "--config.eval.baselines=False", "--config.data.train_cap=300"]
DETECTORS = "kde,ocsvm,ocsvm_linear,gde,knn"


def run(args, tmp_path, timeout=600):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr + proc.stdout


def check_workdir(workdir, evaluation=None):
  results = json.loads(
      (workdir_lib.evaluation_dir(workdir, evaluation) / "results.json"
       ).read_text())
  assert set(results["auc"]) == set(DETECTORS.split(","))
  assert all(math.isfinite(v) and 0 <= v <= 1
             for v in results["auc"].values())
  assert results["step"] == 12
  return results


def train_evaluate_resume(config_args, tmp_path):
  workdir = tmp_path / "wd"
  log = run(["oneclass_jax.main", *config_args, f"--workdir={workdir}",
             *TINY], tmp_path)
  assert "step 12/12" in log
  own = json.loads((workdir / "results.json").read_text())
  run(["oneclass_jax.tools.evaluate", f"--workdir={workdir}",
       f"--detectors={DETECTORS}"], tmp_path)
  # Another detector set than the config's is a named evaluation beside the
  # run's own, which stays as training wrote it.
  config = json.loads((workdir / "config.json").read_text())
  own_set = (set(detectors.split_names(config["eval"]["detectors"])) ==
             set(DETECTORS.split(",")))
  evaluation = None if own_set else workdir_lib.evaluation_name(
      "f", DETECTORS.split(","))
  results = check_workdir(workdir, evaluation)
  if evaluation:
    assert json.loads((workdir / "results.json").read_text()) == own
  steps_before = (workdir / "metrics.jsonl").read_text().count("\n")
  log = run(["oneclass_jax.main", *config_args, f"--workdir={workdir}",
             *TINY], tmp_path)
  assert "Resumed from step 12" in log
  assert (workdir / "metrics.jsonl").read_text().count("\n") == steps_before
  return results


def test_quickstart_on_fashion_mnist(tmp_path, fmnist_dir):
  del fmnist_dir  # Its presence is checked; the loader finds it itself.
  results = train_evaluate_resume(["--config=configs/quickstart.py"],
                                  tmp_path)
  assert results["dataset"] == "fashion_mnist"
  assert results["counts"]["test"] == 10000
  assert results["counts"]["test_outliers"] == 9000


def test_contrastive_da_on_one_cifar10_jpeg_class(tmp_path, shared_data_dir):
  """Class 0 (airplane): 300 train images, 50 test images per class."""
  src = tmp_path / "cifar10_slice"
  per_class = {}
  with tarfile.open(shared_data_dir / "cifar10_jpeg.tar.gz") as tar:
    for member in tar:
      parts = pathlib.PurePosixPath(member.name).parts
      if not member.isfile() or len(parts) < 3:
        continue
      split, label = parts[-3], parts[-2]
      limit = 300 if (split, label) == ("train", "airplane") else (
          50 if split == "test" else 0)
      key = (split, label)
      if per_class.get(key, 0) >= limit:
        continue
      per_class[key] = per_class.get(key, 0) + 1
      target = src / split / label / parts[-1]
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(tar.extractfile(member).read())
  assert per_class[("train", "airplane")] == 300
  assert len([k for k in per_class if k[0] == "test"]) == 10
  results = train_evaluate_resume(
      ["--config=configs/contrastive_da.py:dataset=cifar10,inlier_class=0",
       f"--config.data.source_dir={src}"], tmp_path)
  assert results["counts"] == {"fit": 300, "test": 500, "test_outliers": 450}


@pytest.mark.parametrize("bad, message", [
    ("--config.optim.learning_rat=0.1", "learning_rat"),
    ("--config=configs/contrastive.py:dataset=imagenet",
     "unknown dataset 'imagenet'; known datasets: cats_vs_dogs"),
])
def test_bad_command_lines_fail_clearly(bad, message, tmp_path):
  args = ["oneclass_jax.main", f"--workdir={tmp_path / 'wd'}"]
  args += [bad] if bad.startswith("--config=") else [
      "--config=configs/contrastive.py", bad]
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr
