"""launch/table2.py: Table 2's jobs, their step counts and multi-model lines."""
import pathlib
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_cifar10_column(tmp_path):
  out = tmp_path / "t2"
  subprocess.run([sys.executable, str(REPO / "launch" / "table2.py"),
                  "--datasets=cifar10", f"--out={out}", "--root=gs://b/runs",
                  "--images_per_second=1000"], check=True, cwd=tmp_path,
                 capture_output=True, text=True)
  jobs = [line.split() for line in (out / "jobs.txt").read_text().splitlines()
          if not line.startswith("#")]
  # 5 methods x 10 classes x 5 seeds, each once, in sweep.sh's 4 fields.
  assert len(jobs) == 250 and len({tuple(j) for j in jobs}) == 250
  assert {j[0] for j in jobs} == {"cifar10"}
  assert {j[1] for j in jobs} == {str(c) for c in range(10)}
  assert {j[3] for j in jobs} == {str(s) for s in range(5)}
  plan = (out / "plan.md").read_text()
  # By hand: 5,000 inliers; DA's 4 rotated copies at batch 32 for 2,048
  # epochs = 625 x 2,048 steps; RotNet 5,000 // 64 = 78 steps per epoch.
  assert ("| cifar10 | contrastive_da | 50 | 32 | 2048 | 1,280,000 | "
          "40,960,000 | 568.9 | 92.4 / 92.5 / - |") in plan
  assert "| cifar10 | rotnet | 50 | 64 | 2048 | 159,744 |" in plan
  multi = [shlex.split(line) for line in
           (out / "multi.sh").read_text().splitlines()
           if line.startswith("python")]
  assert len(multi) == 5
  assert multi[3] == [
      "python", "-m", "oneclass_jax.main",
      "--config=configs/contrastive_da.py:dataset=cifar10",
      "--config.data.inlier_classes=0-9", "--config.seeds=0-4",
      "--workdir=gs://b/runs/cifar10/contrastive_da/multi"]


def test_unknown_size_is_refused(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO / "launch" / "table2.py"),
       "--datasets=cats_vs_dogs", f"--out={tmp_path}"], capture_output=True,
      text=True)
  assert result.returncode != 0 and "--train_size" in result.stderr
