"""analysis/tables.py (the report tool's tables) on synthetic results.json files, against hand-computed tables."""
import csv
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from oneclass_jax import workdir as workdir_lib
from oneclass_jax.analysis import tables

# toyA: 2 classes × 3 seeds × 2 detectors. AUCs ×100 per seed 0, 1, 2.
_TOY_A = {
    "kde": {0: [90, 92, 94], 1: [80, 83, 86]},
    "ocsvm": {0: [91, 91, 94], 1: [70, 75, 77]},
}
# toyB: 3 classes, one seed, kde only.
_TOY_B = {"kde": {0: [60], 1: [70], 2: [80]}}


def _write_run(root, dataset, cls, seed, aucs, *, num_classes, step=100,
               method="clr_da"):
  d = pathlib.Path(root) / f"{dataset}_{cls}_s{seed}_step{step}"
  d.mkdir(parents=True)
  (d / "results.json").write_text(json.dumps({
      "dataset": dataset, "inlier_class": cls, "num_classes": num_classes,
      "method": method, "seed": seed, "step": step, "embedding": "f",
      "auc": aucs, "config": {"lr": 0.01}}))
  return d


def _write_toy(root, table, dataset, num_classes):
  dirs = []
  classes = table[next(iter(table))]
  for cls in classes:
    for seed in range(len(classes[cls])):
      aucs = {det: table[det][cls][seed] / 100 for det in table}
      dirs.append(_write_run(root, dataset, cls, seed, aucs,
                             num_classes=num_classes))
  return dirs


@pytest.fixture(name="root")
def fixture_root(tmp_path):
  _write_toy(tmp_path / "a", _TOY_A, "toyA", 2)
  _write_toy(tmp_path / "b", _TOY_B, "toyB", 3)
  # An earlier checkpoint of toyA/0/seed 0: superseded by step 100.
  _write_run(tmp_path / "old", "toyA", 0, 0, {"kde": 0.1, "ocsvm": 0.1},
             num_classes=2, step=50)
  return tmp_path


def _rows(rows, **match):
  return [r for r in rows if all(r[k] == v for k, v in match.items())]


def test_aggregate_matches_hand_computation(root):
  rep = tables.aggregate(tables.load_runs([root]))
  # Per class: kde/0 = 92 ± sqrt((4+0+4)/2) = 2; kde/1 = 83 ± 3;
  # ocsvm/0 = 92 ± sqrt((1+1+4)/2); ocsvm/1 = 74 ± sqrt((16+1+9)/2).
  expected = {("kde", 0): (92, 2), ("kde", 1): (83, 3),
              ("ocsvm", 0): (92, math.sqrt(3)),
              ("ocsvm", 1): (74, math.sqrt(13))}
  for (det, cls), (mean, std) in expected.items():
    (row,) = _rows(rep.per_class, dataset="toyA", detector=det,
                   inlier_class=cls)
    assert row["num_seeds"] == 3
    assert row["auc_pct_mean"] == pytest.approx(mean)
    assert row["auc_pct_std"] == pytest.approx(std)
  # Per dataset: kde seed class-means 85, 87.5, 90 -> 87.5 ± 2.5;
  # ocsvm 80.5, 83, 85.5 -> 83 ± 2.5.
  for det, mean in (("kde", 87.5), ("ocsvm", 83.0)):
    (row,) = _rows(rep.per_dataset, dataset="toyA", detector=det)
    assert row["auc_pct_mean"] == pytest.approx(mean)
    assert row["auc_pct_std"] == pytest.approx(2.5)
    assert row["num_seeds_complete"] == 3 and row["classes_present"] == 2
  (row,) = _rows(rep.per_dataset, dataset="toyB")
  assert row["auc_pct_mean"] == pytest.approx(70.0)
  assert math.isnan(row["auc_pct_std"])  # a single seed has no std
  # Mean weighted by classes: kde (2·87.5 + 3·70)/5 = 77; ocsvm only toyA.
  overall = {r["detector"]: r for r in rep.overall}
  assert overall["kde"]["auc_pct_mean"] == pytest.approx(77.0)
  assert overall["kde"]["num_classes"] == 5
  assert overall["ocsvm"]["auc_pct_mean"] == pytest.approx(83.0)

  md = tables.to_markdown(rep)
  assert "| clr_da | f | kde | 87.5 ± 2.5 | 70.0 | 77.0 |" in md
  assert "| clr_da | f | ocsvm | 83.0 ± 2.5 |  | 83.0 |" in md
  assert "| 1 | 83.0 ± 3.0 | 74.0 ± 3.6 |" in md
  assert "| mean | 87.5 ± 2.5 | 83.0 ± 2.5 |" in md


def test_std_uses_only_seeds_with_every_class(tmp_path):
  # Seed 2 lacks class 1: the dataset std comes from seeds 0 and 1 only
  # (class-means 85 and 87.5 -> std 2.5/sqrt(2)); the mean is the mean of
  # the class means (92 and 81.5).
  table = {"kde": {0: [90, 92, 94], 1: [80, 83]}}
  _write_toy(tmp_path, table, "toyA", 3)
  (row,) = tables.aggregate(tables.load_runs([tmp_path])).per_dataset
  assert row["num_seeds_complete"] == 2
  assert row["auc_pct_std"] == pytest.approx(2.5 / math.sqrt(2))
  assert row["auc_pct_mean"] == pytest.approx((92 + 81.5) / 2)
  md = tables.to_markdown(tables.aggregate(tables.load_runs([tmp_path])))
  assert "(2/3 classes)" in md


def test_bad_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match="No results.json"):
    tables.load_runs([tmp_path])
  d = _write_run(tmp_path, "toyA", 0, 0, {"kde": 1.5}, num_classes=2)
  with pytest.raises(ValueError, match=r"auc\['kde'\] = 1.5"):
    tables.load_runs([tmp_path])
  (d / "results.json").write_text(json.dumps({"dataset": "toyA"}))
  with pytest.raises(ValueError, match="missing key 'inlier_class'"):
    tables.load_runs([tmp_path])
  (d / "results.json").unlink()
  _write_run(tmp_path / "x", "toyA", 0, 0, {"kde": 0.5}, num_classes=2)
  _write_run(tmp_path / "y", "toyA", 0, 0, {"kde": 0.6}, num_classes=2)
  with pytest.raises(ValueError, match="both hold step 100"):
    tables.load_runs([tmp_path])


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "oneclass_jax.tools.report", *args],
                        capture_output=True, text=True, check=True)


def test_cli_writes_tables_and_figures(root, tmp_path):
  run_dir = root / "a" / "toyA_1_s2_step100"
  rng = np.random.default_rng(0)
  labels = np.r_[np.zeros(20, int), np.ones(10, int)]
  np.savez(run_dir / "scores.npz", labels=labels,
           kde=rng.normal(size=30) + labels, ocsvm=rng.normal(size=30))
  out = tmp_path / "out"
  _run_cli(str(root / "a"), str(root / "b"), f"--out={out}")
  expected_md = tables.to_markdown(tables.aggregate(tables.load_runs(
      [root / "a", root / "b"])))
  assert (out / "report.md").read_text() == expected_md
  with open(out / "per_dataset.csv") as f:
    rows = list(csv.DictReader(f))
  toy_b = [r for r in rows if r["dataset"] == "toyB"]
  assert toy_b[0]["auc_pct_std"] == "" and float(
      toy_b[0]["auc_pct_mean"]) == pytest.approx(70.0)
  figures = sorted(p.name for p in (out / "figures").iterdir())
  assert figures == ["toyA_1_clr_da_f_seed2_hist.png",
                     "toyA_1_clr_da_f_seed2_roc.png"]
  for name in figures:
    assert (out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in out.rglob("*") if ".tmp." in p.name]

  printed = _run_cli(str(root / "a"), str(root / "b")).stdout
  assert printed == expected_md


def test_paper_column_beside_ours(tmp_path):
  # CIFAR-10 contrastive_da: 2 of 10 classes, KDE 80 and 90; the paper: 92.4.
  for cls, auc in ((0, 0.8), (1, 0.9)):
    _write_run(tmp_path, "cifar10", cls, 0, {"kde": auc, "weird": 0.5},
               num_classes=10, method="contrastive_da")
  rep = tables.aggregate(tables.load_runs([tmp_path]))
  rows = {r["detector"]: r for r in rep.per_dataset}
  assert rows["kde"]["paper_auc_pct"] == 92.4
  assert math.isnan(rows["weird"]["paper_auc_pct"])  # Not in the paper.
  md = tables.to_markdown(rep)
  assert ("| cifar10 | contrastive_da | f | kde | 85.0 (2/10 classes) | 92.4 "
          "| -7.4 |") in md
  assert "| weird |" not in md.split("## Beside the paper")[1].split("##")[0]


def _add_paper_and_no_auc_runs(root):
  """A run beside the paper (cifar10) and one without an AUC, in `root`."""
  _write_run(root / "c", "cifar10", 0, 0, {"kde": 0.8}, num_classes=10,
             method="contrastive_da")
  d = _write_run(root / "d", "toyA", 1, 7, None, num_classes=2)
  record = json.loads((d / "results.json").read_text())
  (d / "results.json").write_text(json.dumps(
      {**record, "auc_skipped": "No test split"}))


# What the report wrote for `root` and `_add_paper_and_no_auc_runs` before
# named evaluations existed (<ROOT>: the root folder).
_BEFORE_NAMED_EVALUATIONS = {
    "no_auc.csv": """\
dataset,inlier_class,inlier_name,method,embedding,seed,step,reason,path
toyA,1,,clr_da,f,7,100,No test split,<ROOT>/d/toyA_1_s7_step100
""",
    "overall.csv": """\
method,embedding,detector,datasets,num_classes,auc_pct_mean
clr_da,f,kde,toyA toyB,5,77.0
clr_da,f,ocsvm,toyA,2,83.0
contrastive_da,f,kde,cifar10,10,80.0
""",
    "per_class.csv": """\
dataset,method,embedding,detector,inlier_class,num_seeds,auc_pct_mean,auc_pct_std
cifar10,contrastive_da,f,kde,0,1,80.0,
toyA,clr_da,f,kde,0,3,92.0,2.0
toyA,clr_da,f,kde,1,3,83.0,3.0
toyA,clr_da,f,ocsvm,0,3,92.0,1.7320508075688772
toyA,clr_da,f,ocsvm,1,3,74.0,3.605551275463989
toyB,clr_da,f,kde,0,1,60.0,
toyB,clr_da,f,kde,1,1,70.0,
toyB,clr_da,f,kde,2,1,80.0,
""",
    "per_dataset.csv": """\
dataset,method,embedding,detector,num_classes,classes_present,num_seeds_complete,auc_pct_mean,auc_pct_std,paper_auc_pct
cifar10,contrastive_da,f,kde,10,1,1,80.0,,92.4
toyA,clr_da,f,kde,2,2,3,87.5,2.5,
toyA,clr_da,f,ocsvm,2,2,3,83.0,2.5,
toyB,clr_da,f,kde,3,3,1,70.0,,
""",
    "report.md": """\
# One-class classification AUROC

AUC ×100. Per class: mean ± sample std (ddof=1) over seeds. Per dataset: mean over classes of the per-class means ± sample std over seeds of each seed's class-mean (seeds with every class only). Mean: average over datasets weighted by their number of classes. No std means a single seed.

## Summary (Table 2 layout)

| method | embedding | detector | cifar10 | toyA | toyB | Mean |
|---|---|---|---|---|---|---|
| clr_da | f | kde |  | 87.5 ± 2.5 | 70.0 | 77.0 |
| clr_da | f | ocsvm |  | 83.0 ± 2.5 |  | 83.0 |
| contrastive_da | f | kde | 80.0 (1/10 classes) |  |  | 80.0 |

## Beside the paper (Table 2: ResNet-18 width 1, 2,048 epochs, 5 seeds)

| dataset | method | embedding | detector | ours | paper | ours − paper |
|---|---|---|---|---|---|---|
| cifar10 | contrastive_da | f | kde | 80.0 (1/10 classes) | 92.4 | -12.4 |

## cifar10: per-class AUROC (Tables 8-11 layout)

| class | contrastive_da/f/kde |
|---|---|
| 0 | 80.0 |
| mean | 80.0 |

## toyA: per-class AUROC (Tables 8-11 layout)

| class | clr_da/f/kde | clr_da/f/ocsvm |
|---|---|---|
| 0 | 92.0 ± 2.0 | 92.0 ± 1.7 |
| 1 | 83.0 ± 3.0 | 74.0 ± 3.6 |
| mean | 87.5 ± 2.5 | 83.0 ± 2.5 |

## toyB: per-class AUROC (Tables 8-11 layout)

| class | clr_da/f/kde |
|---|---|
| 0 | 60.0 |
| 1 | 70.0 |
| 2 | 80.0 |
| mean | 70.0 |

## Runs without an AUC (detectors and threshold saved)

| dataset | class | method | embedding | seed | step | AUC | reason | workdir |
|---|---|---|---|---|---|---|---|---|
| toyA | 1 () | clr_da | f | 7 | 100 | — | No test split | <ROOT>/d/toyA_1_s7_step100 |
""",
}


def test_output_without_named_evaluations_is_unchanged(root, tmp_path):
  _add_paper_and_no_auc_runs(root)
  out = tmp_path / "out"
  tables.write_report(tables.aggregate(tables.load_runs([root])), out)
  for name, expected in _BEFORE_NAMED_EVALUATIONS.items():
    assert (out / name).read_text().replace(str(root), "<ROOT>") == expected


def _write_named(workdir, name, embedding, aucs):
  """A named evaluation of `workdir`, as `evaluate` writes it."""
  record = json.loads((workdir / "results.json").read_text())
  d = workdir / workdir_lib.EVALUATIONS / name
  d.mkdir(parents=True)
  (d / "results.json").write_text(json.dumps(
      {**record, "embedding": embedding, "auc": aucs, "evaluation": name}))
  return d


def test_named_evaluations_are_rows_of_their_own(root, tmp_path):
  without = tables.aggregate(tables.load_runs([root / "a"]))
  wd = root / "a" / "toyA_0_s0_step100"
  named = _write_named(wd, "g-kde", "g", {"kde": 0.5})
  # The other readers (ensembles, study grids) see the runs' own only.
  assert not [r for r in workdir_lib.find_runs(root / "a") if r.evaluation]
  runs = tables.load_runs([root / "a"])
  (run,) = [r for r in runs if r.evaluation]
  assert (run.evaluation, run.path, run.workdir) == ("g-kde", named, wd)
  rep = tables.aggregate(runs)
  (row,) = [r for r in rep.per_class if r["evaluation"]]
  assert (row["evaluation"], row["embedding"], row["detector"],
          row["inlier_class"], row["auc_pct_mean"]) == ("g-kde", "g", "kde",
                                                        0, 50.0)
  # The runs' own rows are those of a report without it.
  assert [r for r in rep.per_class if not r["evaluation"]] == without.per_class
  assert [r for r in rep.per_dataset if not r["evaluation"]
          ] == without.per_dataset
  md = tables.to_markdown(rep)
  assert "| clr_da [g-kde] | g | kde | 50.0 (1/2 classes) | 50.0 |" in md
  assert "| class | clr_da/f/kde | clr_da/f/ocsvm | clr_da [g-kde]/g/kde |" in md
  tables.write_report(rep, tmp_path / "out", runs)
  with open(tmp_path / "out" / "per_class.csv") as f:
    reader = csv.DictReader(f)
    rows = list(reader)
  assert reader.fieldnames[:3] == ["dataset", "method", "evaluation"]
  assert [r["evaluation"] for r in rows] == [""] * 4 + ["g-kde"]


def test_named_results_out_of_place_are_refused(root, tmp_path):
  named = _write_named(root / "a" / "toyA_0_s0_step100", "g-kde", "g",
                       {"kde": 0.5})
  (tmp_path / "x").mkdir()
  shutil.copy(named / "results.json", tmp_path / "x" / "results.json")
  with pytest.raises(ValueError, match="named evaluation 'g-kde', which "
                     "belong in <workdir>/evaluations/g-kde/"):
    tables.load_runs([tmp_path / "x"])
