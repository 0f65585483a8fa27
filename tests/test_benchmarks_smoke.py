"""The benchmarks run end to end in their --smoke modes (no timing is
checked), their FLOP counting agrees with hand-counted shapes, and the
reproduction report tabulates recorded runs correctly."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_throughput  # noqa: E402  pylint: disable=wrong-import-position
from oneclass_jax.trainer import single  # noqa: E402
from test_train import folder  # noqa: E402,F401  (fixture)
from test_train import folder_config  # noqa: E402

pytestmark = pytest.mark.slow  # Subprocesses / whole runs (README runs all).


def _run(args, tmp_path, timeout=600):
  # One CPU device, as the benchmarks are meant to run (not the 8 fake
  # devices of the other tests).
  # The scripts import oneclass_jax from this checkout, installed or not.
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"), XLA_FLAGS="",
             PYTHONPATH=os.pathsep.join(
                 filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def test_train_throughput_smoke(tmp_path):
  out = _run([sys.executable, "benchmarks/train_throughput.py", "--smoke",
              "--models=1,2", f"--json={tmp_path / 'rows.json'}"], tmp_path)
  rows = [line for line in out.splitlines()
          if line.startswith("| contrastive_da |")]
  assert len(rows) == 4  # Printed as measured, then in the final table.
  assert "| 2 (sequential) | float32 |" in rows[1]
  assert "Matmul peak float32" in out


def test_gpu_benchmark_smoke(tmp_path, shared_data_dir):
  # The fixture's folder (ONECLASS_SHARED_DATA or ../shared/data), not the
  # script's own search, so a relocated data folder is the one tested.
  out = _run(["bash", "benchmarks/gpu_benchmark.sh", "--smoke",
              f"--archive={shared_data_dir / 'cifar10_jpeg.tar.gz'}",
              f"--out={tmp_path / 'out'}"], tmp_path)
  for expected in ("| 1 (", "| 2 (", "Table 2, CIFAR-10 column",
                   "| mean |", "Report:"):
    assert expected in out, expected
  report = (tmp_path / "out" / "report.md").read_text()
  assert "| 0 (airplane) |" in report and "| 1 (automobile) |" in report


def test_gemm_flops_of_a_convolution_and_a_dense_layer():
  """2 x multiply-adds, counted by hand for a strided conv, a grouped conv
  (as vmap makes of K models) and a matmul, forward and backward."""

  def loss(w_conv, w_group, w_dense, x):
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(x, w_conv, (2, 2), "VALID",
                                     dimension_numbers=dims)
    z = jax.lax.conv_general_dilated(y, w_group, (1, 1), "VALID",
                                     dimension_numbers=dims,
                                     feature_group_count=2)
    return jnp.sum(z.reshape(z.shape[0], -1) @ w_dense)

  x = jnp.ones((4, 33, 33, 3))
  w_conv = jnp.ones((3, 3, 3, 8))      # -> [4, 16, 16, 8]
  w_group = jnp.ones((1, 1, 4, 6))     # 2 groups of 4 -> 3 channels
  w_dense = jnp.ones((16 * 16 * 6, 5))
  forward = train_throughput.gemms(loss, w_conv, w_group, w_dense, x)
  assert {(g.groups, g.m, g.k, g.n) for g in forward} == {
      (1, 4 * 256, 27, 8), (2, 4 * 256, 4, 3), (1, 4, 16 * 16 * 6, 5)}
  conv = 2 * (4 * 16 * 16 * 8) * (3 * 3 * 3)
  group = 2 * (4 * 16 * 16 * 6) * 4
  dense = 2 * 4 * (16 * 16 * 6) * 5
  assert sorted(train_throughput.gemm_flops(g) for g in forward) == sorted(
      [conv, group, dense])
  # With the gradients of all inputs every product comes twice more; the
  # strided conv's input gradient also covers the border row and column
  # the forward conv skipped (33 = 2 * 16 + 1): 6% more here.
  backward = train_throughput.gemms(jax.grad(loss, argnums=(0, 1, 2, 3)),
                                    w_conv, w_group, w_dense, x)
  total = sum(train_throughput.gemm_flops(g) for g in backward)
  np.testing.assert_allclose(total, 3 * (conv + group + dense), rtol=0.05)


def test_cpu_reproduction_report_from_recorded_runs(tmp_path):
  """--report_only tabulates results.json files: means, the orderings class
  by class on the classes both sides have, the per-class table, and replaces
  only its own section of RESULTS.md."""
  rng = np.random.default_rng()
  auc = {}  # (method, detector) -> {class: AUC in [0, 1]}
  runs = {"contrastive": [0, 1, 2], "contrastive_da": [0, 1, 2],
          "rotnet": [1, 2]}
  for method, classes in runs.items():
    for cls in classes:
      dets = ("kde", "ocsvm") + (("rot_sum",) if method == "rotnet" else ())
      result = {"dataset": "fashion_mnist", "method": method,
                "inlier_class": cls,
                "auc": {d: float(rng.uniform(0.5, 1)) for d in dets}}
      if method == "contrastive_da":
        result["baselines"] = {"untrained": {"kde": float(rng.uniform())}}
        auc.setdefault(("untrained", "kde"), {})[cls] = (
            result["baselines"]["untrained"]["kde"])
      for d, v in result["auc"].items():
        auc.setdefault((method, d), {})[cls] = v
      workdir = tmp_path / "runs" / "fashion_mnist" / method / str(cls) / "seed0"
      workdir.mkdir(parents=True)
      (workdir / "results.json").write_text(json.dumps(result))
      (workdir / "wall_seconds.txt").write_text("60")
      (workdir / "xla_flags.txt").write_text("--some_flag=1")
  results_md = tmp_path / "RESULTS.md"
  results_md.write_text("# Benchmark results\n\n## CPU-scale reproduction\n"
                        "stale text\n\n## Other section\nkept\n")
  _run([sys.executable, "benchmarks/cpu_reproduction.py", "--report_only",
        f"--root={tmp_path / 'runs'}", "--datasets=fashion_mnist",
        f"--results_md={results_md}"], tmp_path)
  text = results_md.read_text()
  assert "stale text" not in text and "## Other section\nkept" in text
  assert "`XLA_FLAGS=--some_flag=1`" in text
  assert "median wall time per run 60 s, 0.1 h for the 8 timed runs" in text

  def mean_row(method, det, paper=""):
    values = list(auc[(method, det)].values())
    return (f"| {method} | {det} | {100 * np.mean(values):.1f} "
            f"({len(values)}) | {paper} |")

  assert mean_row("contrastive_da", "kde", "94.5") in text
  assert mean_row("rotnet", "rot_sum", "87.4") in text
  assert mean_row("untrained", "kde", "89.4") in text

  def ordering(claim, win, lose):
    common = sorted(set(auc[win]) & set(auc[lose]))
    diffs = [100 * (auc[win][c] - auc[lose][c]) for c in common]
    return (f"| {claim} | {np.mean(diffs):+.1f} | "
            f"{sum(d > 0 for d in diffs)} of {len(common)} |")

  assert ordering("DA > vanilla contrastive (KDE)", ("contrastive_da", "kde"),
                  ("contrastive", "kde")) in text
  assert ordering("KDE on f >= rotation classifier (RotNet)",
                  ("rotnet", "kde"), ("rotnet", "rot_sum")) in text
  assert "MLP head > identity head" not in text  # No `rotation` runs.
  per_class = ("| rotnet | kde |  | "
               + " | ".join(f"{100 * auc[('rotnet', 'kde')][c]:.1f}"
                            for c in (1, 2)) + " |")
  assert per_class in text


def test_cpu_recipe_report_against_numpy(tmp_path):
  """The recipe table: per-class rows, means over classes, summed attempts."""
  rng = np.random.default_rng(1)
  kde = {}
  for cls in (1, 8):
    wd = tmp_path / "runs" / "cifar10" / str(cls) / "seed0"
    wd.mkdir(parents=True)
    auc = {d: float(rng.uniform()) for d in ("kde", "ocsvm", "gde", "rot_sum")}
    kde[cls] = auc["kde"]
    (wd / "results.json").write_text(json.dumps({
        "auc": auc, "inlier_class": cls, "inlier_name": f"c{cls}", "seed": 0,
        "baselines": {"raw_pixels": {"kde": 0.5}, "untrained": {"kde": 0.6}}}))
    (wd / "attempts.jsonl").write_text("".join(json.dumps(
        {"start": "2026-12-02T00:00:00Z", "load_before": "1", "load_after":
         "2", "wall_seconds": 600}) + "\n" for _ in range(2)))
  results_md = tmp_path / "RESULTS.md"
  results_md.write_text("# R\n\n## CPU recipe: old\nstale\n\n## Next\nkept\n")
  _run([sys.executable, "benchmarks/cpu_recipe.py", "--report_only",
        f"--records={tmp_path / 'runs'}", f"--results_md={results_md}"],
       tmp_path)
  text = results_md.read_text()
  assert "stale" not in text and "## Next\nkept" in text
  assert f"| 1 c1 | {100 * kde[1]:.1f} |" in text
  assert f"| mean of 2 | **{100 * np.mean(list(kde.values())):.1f}** |" in text
  assert "| 50.0 | 60.0 | 20 | 0 |" in text  # Two 10-minute attempts.


def test_stage2_benchmark_smoke(tmp_path):
  out = _run([sys.executable, "benchmarks/stage2_benchmark.py", "--smoke",
              f"--out={tmp_path / 's.jsonl'}"], tmp_path)
  records = [json.loads(line)
             for line in (tmp_path / "s.jsonl").read_text().splitlines()]
  assert {r["kind"] for r in records} == {"libsvm", "grid"}
  assert {r["detector"] for r in records if r["kind"] == "grid"} == {
      "kde", "ocsvm", "gde", "knn"}
  lib = next(r for r in records if r["kind"] == "libsvm")
  assert lib["support_equal"] and lib["decisions_equal"]
  assert "| 150 × 16 |" in out
  # A second call finds every case done and runs nothing again.
  _run([sys.executable, "benchmarks/stage2_benchmark.py", "--smoke",
        f"--out={tmp_path / 's.jsonl'}"], tmp_path)
  assert len((tmp_path / "s.jsonl").read_text().splitlines()) == len(records)


def test_eval_benchmark_smoke(tmp_path):
  out_file = tmp_path / "eval.jsonl"
  _run([sys.executable, "benchmarks/eval_benchmark.py", "--smoke",
        "--methods=rotation", f"--root={tmp_path / 'runs'}",
        f"--out={out_file}"], tmp_path)
  (record,) = [json.loads(line) for line in out_file.read_text().splitlines()]
  assert record["method"] == "rotation" and record["evaluate_seconds"] > 0
  # The phases are read from the evaluation's own progress lines: the
  # extraction with its four rotated views and each detector's fit.
  assert any("4 rotations each" in name for name in record["phases"])
  assert any(name.startswith("Fitting kde") for name in record["phases"])


def test_scorer_benchmark_smoke(folder, tmp_path):  # noqa: F811
  workdir = tmp_path / "wd"
  single.train_and_evaluate(folder_config("rotation", folder, tmp_path),
                            str(workdir))
  before = sorted(p.name for p in workdir.iterdir())
  out = _run([sys.executable, "benchmarks/scorer_benchmark.py",
              f"--workdir={workdir}", "--fpr=0.25", "--batch=8",
              "--repeats=2"], tmp_path)
  record = json.loads(out)
  assert (record["task"], record["batch"]) == ("one_class", 8)
  assert record["image_shape"] == [32, 32, 3]
  assert record["scorer"]["warm_images_per_second"] > 0
  assert set(record["cli_seconds"]) == {"workdir_first", "workdir_cached",
                                        "model"}
  # The CLI runs used a copy: the workdir gained no exported/ folder.
  assert sorted(p.name for p in workdir.iterdir()) == before


def test_own_images_smoke(tmp_path):
  # The README's normal-only commands (train, export --calibration, score)
  # on a synthetic category; the record's rates are read back from the CSVs.
  out = _run([sys.executable, "benchmarks/own_images.py", "--smoke",
              f"--root={tmp_path / 'own'}", "--detectors=kde,gde"], tmp_path)
  record = json.loads(out[:out.rindex("}") + 1])
  assert record["layout"] == {"data/train/good": 12, "calibration": 4,
                              "incoming/good": 4, "incoming/spot": 4}
  for det in ("kde", "gde"):
    res = record["detectors"][det]
    assert res["calibration_count"] == 4
    for part in ("learned", "raw_pixels"):
      assert res[part]["count"] == {"good": 4, "spot": 4}
      assert 0.0 <= res[part]["auc"] <= 1.0
  rows = (tmp_path / "own" / "scores_kde.csv").read_text().splitlines()
  assert rows[0] == "image,score,verdict,threshold" and len(rows) == 9
  flagged_good = sum(r.startswith("good/") and ",anomalous," in r
                     for r in rows[1:])
  assert record["detectors"]["kde"]["learned"]["flagged"]["good"] == (
      flagged_good / 4)
