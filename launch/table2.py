r"""The jobs of the paper's Table 2 (any cells), for sweep.sh or multi-model runs.

  python launch/table2.py --datasets=cifar10 --out=jobs/table2_cifar10
  launch/sweep.sh --jobs=jobs/table2_cifar10/jobs.txt --root=gs://BUCKET/runs
  python -m oneclass_jax.tools.report gs://BUCKET/runs   # ours beside the paper

A cell is dataset × method; each cell is every inlier class × every seed
(5 seeds, as the paper). `--out` gets
- `jobs.txt`: one `DATASET CLASS METHOD SEED` line per run, the format of
  launch/sweep.sh (ROOT/DATASET/METHOD/CLASS/SEED workdirs, which
  `oneclass_jax.tools.report` reads);
- `multi.sh`: the same runs as one K-model `oneclass_jax.main` program per
  cell (`config.data.inlier_classes`, `config.seeds`; oneclass_jax/trainer/multi.py);
- `plan.md`: per cell the runs, the optimizer steps and images of one run
  (from the config: its epochs, batch and distribution-augmentation copies)
  and the projected accelerator hours at `--images_per_second`, with the
  paper's values of the cell (oneclass_jax/paper.py).
The projection is only as good as the rate given: benchmarks/RESULTS.md holds
the rates measured so far (CPU only, as of this writing; no accelerator rate).
"""
from __future__ import annotations

import pathlib
import shlex
import sys

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# pylint: disable=wrong-import-position
from oneclass_jax import config_lib  # noqa: E402
from oneclass_jax import paper  # noqa: E402
from oneclass_jax.analysis import grids  # noqa: E402
from oneclass_jax.data import datasets  # noqa: E402
from oneclass_jax.data import geometric  # noqa: E402
# pylint: enable=wrong-import-position

METHODS = ("rotnet", "rotation", "contrastive", "contrastive_da", "denoising")
# Inlier training images of one class under the one-class protocol (the
# datasets' own train splits; Cats-vs-Dogs and CelebA depend on this
# project's split: pass --train_size for those).
INLIER_TRAIN = {"cifar10": 5000, "cifar20": 2500, "cifar100": 500,
                "fashion_mnist": 6000, "mnist": 6000}

FLAGS = flags.FLAGS
flags.DEFINE_list("datasets", ["cifar10"], "Datasets (data.name).")
flags.DEFINE_list("methods", list(METHODS), "Methods (configs/<name>.py).")
flags.DEFINE_string("classes", "", "Inlier classes ('0-9'); '' = all.")
flags.DEFINE_string("seeds", "0-4", "Seeds ('0-4': the paper's 5 runs).")
flags.DEFINE_string("out", "", "Folder for jobs.txt, multi.sh, plan.md.")
flags.DEFINE_string("root", "runs", "Workdir root written into multi.sh.")
flags.DEFINE_integer("train_size", 0, "Inlier training images per class "
                     "(needed for datasets outside INLIER_TRAIN).")
flags.DEFINE_float("images_per_second", 0.0, "Measured training rate "
                   "(images/s of one run) for the projection; 0 = none.")


def cell_plan(dataset: str, method: str, classes: list[int],
              seeds: list[int], train_size: int) -> dict:
  """Runs, steps and images of one cell, from the method's own config."""
  config = grids.load_config(method, f"dataset={dataset}")
  copies = len(geometric.dist_aug_transforms(config.data.dist_aug))
  steps_per_epoch = train_size * copies // config.batch_size
  steps = config_lib.num_train_steps(config, steps_per_epoch)
  return dict(dataset=dataset, method=method, classes=classes, seeds=seeds,
              runs=len(classes) * len(seeds), steps=steps,
              batch=config.batch_size, epochs=config.total_epochs,
              images=steps * config.batch_size)


def _range(values: list[int]) -> str:
  """'0-9' for a contiguous list, else '0,3,5' (config_lib.parse_ints)."""
  if values == list(range(values[0], values[-1] + 1)) and len(values) > 1:
    return f"{values[0]}-{values[-1]}"
  return ",".join(map(str, values))


def jobs_lines(plans: list[dict]) -> list[str]:
  return [f"{p['dataset']} {c} {p['method']} {s}" for p in plans
          for c in p["classes"] for s in p["seeds"]]


def multi_lines(plans: list[dict], root: str) -> list[str]:
  lines = []
  for p in plans:
    args = ["python", "-m", "oneclass_jax.main",
            f"--config=configs/{p['method']}.py:dataset={p['dataset']}",
            f"--config.data.inlier_classes={_range(p['classes'])}",
            f"--config.seeds={_range(p['seeds'])}",
            f"--workdir={root}/{p['dataset']}/{p['method']}/multi"]
    lines.append(" ".join(shlex.quote(a) for a in args))
  return lines


def plan_markdown(plans: list[dict], images_per_second: float) -> str:
  rate = (f"{images_per_second:g} images/s per run" if images_per_second
          else "no rate given (--images_per_second)")
  lines = [f"# Table 2 plan: {sum(p['runs'] for p in plans)} runs; "
           f"projection at {rate}", "",
           "| dataset | method | runs | batch | epochs | steps/run | "
           "images/run | accelerator hours (all runs) | paper (KDE / "
           "OC-SVM / rotation) |", "|---|---|---|---|---|---|---|---|---|"]
  for p in plans:
    hours = (f"{p['runs'] * p['images'] / images_per_second / 3600:,.1f}"
             if images_per_second else "")
    cells = [paper.table2(p["dataset"], p["method"], d)
             for d in ("kde", "ocsvm", "rot_sum")]
    ref = " / ".join("-" if v is None else f"{v:.1f}" for v in cells)
    lines.append(f"| {p['dataset']} | {p['method']} | {p['runs']} | "
                 f"{p['batch']} | {p['epochs']} | {p['steps']:,} | "
                 f"{p['images']:,} | {hours} | {ref} |")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.out:
    raise app.UsageError("--out (a folder) is required.")
  seeds = config_lib.parse_ints(FLAGS.seeds)
  plans = []
  for dataset in FLAGS.datasets:
    size = FLAGS.train_size or INLIER_TRAIN.get(dataset, 0)
    if not size:
      raise app.UsageError(
          f"No inlier training size known for {dataset}; pass --train_size "
          "(images of one class in its training split).")
    num_classes = datasets.get_spec(dataset).num_classes
    classes = (config_lib.parse_ints(FLAGS.classes) if FLAGS.classes else
               list(range(num_classes)))
    for method in FLAGS.methods:
      plans.append(cell_plan(dataset, method, classes, seeds, size))
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "jobs.txt").write_text(
      "# DATASET CLASS METHOD SEED (launch/table2.py)\n" +
      "\n".join(jobs_lines(plans)) + "\n")
  (out / "multi.sh").write_text(
      "#!/usr/bin/env bash\n# One K-model program per Table 2 cell "
      "(launch/table2.py).\nset -euo pipefail\n" +
      "\n".join(multi_lines(plans, FLAGS.root)) + "\n")
  (out / "multi.sh").chmod(0o755)
  text = plan_markdown(plans, FLAGS.images_per_second)
  (out / "plan.md").write_text(text)
  print(text, end="")


if __name__ == "__main__":
  app.run(main)
