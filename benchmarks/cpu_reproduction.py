r"""Table 2 at CPU scale: every method × detector on Fashion-MNIST and CIFAR-10.

  python benchmarks/cpu_reproduction.py --root=/tmp/oneclass_repro \
      --datasets=fashion_mnist,cifar10 --cifar10_archive=../shared/data/cifar10_jpeg.tar.gz

Runs `single.train_and_evaluate` for each (dataset, class, method) at a reduced
scale (below), one after another; a run whose results.json exists is not redone,
so the command resumes after an interruption. Then writes the comparison with
the paper's Table 2 (and Table 7's random-network rows) to
benchmarks/RESULTS.md, section "CPU-scale reproduction". CIFAR-10 numbers are
on the JPEG copy and say so.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import tarfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from oneclass_jax import paper
from results_md import write_section  # benchmarks/ is the script's path.

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("rotnet", "rotation", "contrastive", "contrastive_da", "denoising")
# The paper's Table 2 means (full scale), from the package's own table.
PAPER = paper.TABLE2
LABELS = {"fashion_mnist": "Fashion-MNIST",
          "cifar10": "CIFAR-10 (JPEG copy)"}

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "/tmp/oneclass_repro", "Where the runs go.")
flags.DEFINE_list("datasets", ["fashion_mnist", "cifar10"], "Datasets.")
flags.DEFINE_list("methods", list(METHODS), "Methods (config names).")
flags.DEFINE_list("classes", [str(i) for i in range(10)], "Inlier classes.")
flags.DEFINE_integer("seed", 0, "Seed of every run.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_float("width", 0.125, "ResNet-18 width multiplier.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "Backbone compute dtype (model.dtype); parameters stay "
                  "float32. Use another --root for bfloat16 runs.")
flags.DEFINE_string("cifar10_archive",
                    str(ROOT.parent / "shared" / "data" /
                        "cifar10_jpeg.tar.gz"), "CIFAR-10 JPEG archive.")
flags.DEFINE_string("results_md", str(ROOT / "benchmarks" / "RESULTS.md"),
                    "RESULTS.md to update ('' = print only).")
flags.DEFINE_bool("report_only", False, "Only tabulate the runs found under "
                  "--root (train nothing).")
# The paper's orderings checked class by class: (claim, (method, detector) of
# the side that should win, of the side that should lose), each with KDE and
# with OC-SVM on f.
_DETECTORS = (("KDE", "kde"), ("OC-SVM", "ocsvm"))
ORDERINGS = (
    *((f"DA > vanilla contrastive ({name})", ("contrastive_da", det),
       ("contrastive", det)) for name, det in _DETECTORS),
    *((f"{name} on f >= rotation classifier (RotNet)", ("rotnet", det),
       ("rotnet", "rot_sum")) for name, det in _DETECTORS),
    *((f"MLP head > identity head (rotation, {name})", ("rotation", det),
       ("rotnet", det)) for name, det in _DETECTORS),
    ("learned f > untrained net (contrastive DA, KDE)",
     ("contrastive_da", "kde"), ("untrained", "kde")),
)


def scaled_config(method, dataset, inlier_class, source_dir):
  """The paper's config of `method`, shrunk to the CPU scale of the flags."""
  from oneclass_jax.analysis import grids  # pylint: disable=g-import-not-at-top
  c = grids.load_config(method, f"dataset={dataset},"
                         f"inlier_class={inlier_class},seed={FLAGS.seed}")
  c.unlock()
  c.model.width = FLAGS.width
  c.model.dtype = FLAGS.dtype
  c.model.stem_width = max(4, int(64 * FLAGS.width))
  c.model.head_width = max(16, int(512 * FLAGS.width))
  if c.model.head_out_dim == 512:  # Rotation head: out = width.
    c.model.head_out_dim = c.model.head_width
  c.total_steps = FLAGS.steps
  c.optim.schedule_granularity = "step"  # Few epochs: decay per step.
  c.log_every_steps = max(1, FLAGS.steps // 4)
  c.checkpoint_every_steps = FLAGS.steps
  c.keep_checkpoints = 1
  c.eval.baselines = method == "contrastive_da"
  if source_dir:
    c.data.source_dir = str(source_dir)
  c.lock()
  return c


def cifar10_folder(root: pathlib.Path) -> pathlib.Path:
  target = root / "cifar10_jpeg"
  if not (target / "test").is_dir():
    with tarfile.open(FLAGS.cifar10_archive) as tar:
      tar.extractall(root / "cifar10_unpack", filter="data")
    found = next((root / "cifar10_unpack").rglob("test")).parent
    found.rename(target)
  return target


def run_all(root: pathlib.Path) -> None:
  from oneclass_jax.trainer import single  # pylint: disable=g-import-not-at-top
  for dataset in FLAGS.datasets:
    source = cifar10_folder(root) if dataset == "cifar10" else None
    # Class-major: an interrupted sweep leaves every method on the same
    # classes, so the orderings compare like with like.
    for cls in FLAGS.classes:
      for method in FLAGS.methods:
        workdir = root / dataset / method / cls / f"seed{FLAGS.seed}"
        if (workdir / "results.json").exists():
          continue
        config = scaled_config(method, dataset, int(cls), source)
        t0 = time.perf_counter()
        single.train_and_evaluate(config, str(workdir))
        wall = time.perf_counter() - t0
        (workdir / "wall_seconds.txt").write_text(f"{wall}")
        # The XLA:CPU setting of the run, for the report (which may run in
        # another process with other flags).
        (workdir / "xla_flags.txt").write_text(os.environ.get("XLA_FLAGS", ""))
        logging.info("%s %s %s done in %.0f s", dataset, method, cls, wall)


def collect(root: pathlib.Path):
  """{dataset: {(method, detector): {class: AUC}}} and wall times."""
  table, walls, xla_flags = {}, [], set()
  for path in sorted(root.glob("*/*/*/seed*/results.json")):
    r = json.loads(path.read_text())
    if r["dataset"] not in FLAGS.datasets:
      continue
    cell = table.setdefault(r["dataset"], {})
    cls = int(r["inlier_class"])
    for det, auc in r["auc"].items():
      cell.setdefault((r["method"], det), {})[cls] = 100 * auc
    for base, aucs in r.get("baselines", {}).items():
      for det, auc in aucs.items():
        cell.setdefault((base, det), {})[cls] = 100 * auc
    wall = path.parent / "wall_seconds.txt"
    if wall.exists():
      walls.append(float(wall.read_text()))
    flags_file = path.parent / "xla_flags.txt"
    xla_flags.add(flags_file.read_text() if flags_file.exists()
                  else "(not recorded)")
  return table, walls, xla_flags


def markdown(table, walls, xla_flags) -> str:
  lines = [
      "## CPU-scale reproduction (Table 2 cells)", "",
      f"Scale: ResNet-18 width {FLAGS.width} (stem "
      f"{max(4, int(64 * FLAGS.width))}), MLP head width "
      f"{max(16, int(512 * FLAGS.width))} (depths as the paper), "
      f"{FLAGS.steps} steps per run (batch 32; 64 for rotation models), "
      f"per-step cosine decay, seed {FLAGS.seed}, one run per class. Paper: "
      "width 1, 2,048 epochs, mean of 5 seeds. Mean AUC over the classes "
      "done (count in brackets). Names: rotnet = RotNet (identity head), "
      "rotation = rotation prediction with MLP head, contrastive = vanilla "
      "contrastive, contrastive_da = Contrastive (DA), denoising = DAE; "
      "raw_pixels and untrained (the same ResNet at initialisation) are the "
      "baselines, computed in the contrastive_da runs; rot_sum = the rotation "
      "classifier's score (summed log-likelihood of the right rotation over "
      "the four rotations), rot_p0 = its probability that the unrotated "
      "image is unrotated.", "",
      "Command: `python benchmarks/cpu_reproduction.py "
      f"--datasets={','.join(FLAGS.datasets)} --steps={FLAGS.steps} "
      f"--width={FLAGS.width}` with "
      + " or ".join(f"`XLA_FLAGS={f}`" for f in sorted(xla_flags))
      + " (as recorded by the runs; XLA:CPU's YNNPACK "
      "fusions are off when --xla_cpu_experimental_ynn_fusion_type is empty: "
      "faster, see docs/deviations.md); "
      "machine: 2-core CPU (shared); date: "
      f"{time.strftime('%Y-%m-%d')}; median wall time per run "
      f"{np.median(walls) if walls else float('nan'):.0f} s, "
      f"{sum(walls) / 3600:.1f} h for the {len(walls)} timed runs "
      "(training + evaluation).", ""]
  for dataset in (d for d in FLAGS.datasets if d in table):
    cells = table[dataset]
    label = LABELS.get(dataset, dataset)
    lines += [f"**{label}**", "", "| representation | detector | ours | "
              "paper |", "|---|---|---|---|"]
    for (method, det), values in sorted(cells.items()):
      paper = PAPER.get(dataset, {}).get((method, det))
      lines.append(f"| {method} | {det} | {np.mean(list(values.values())):.1f}"
                   f" ({len(values)}) | "
                   f"{'' if paper is None else f'{paper:.1f}'} |")
    lines += ["", f"Paper orderings on {label}, class by class (only classes "
              "both sides have):", "",
              "| claim | mean difference (AUC points) | classes where it "
              "holds |", "|---|---|---|"]
    for claim, win, lose in ORDERINGS:
      common = sorted(set(cells.get(win, {})) & set(cells.get(lose, {})))
      if not common:
        continue
      diffs = [cells[win][c] - cells[lose][c] for c in common]
      lines.append(f"| {claim} | {np.mean(diffs):+.1f} | "
                   f"{sum(d > 0 for d in diffs)} of {len(common)} |")
    lines += ["", *per_class(label, cells), ""]
  return "\n".join(lines)


# The cells of the per-class table: KDE on every representation, beside the
# rotation classifier it is meant to beat.
PER_CLASS = (("rotnet", "rot_sum"), ("rotnet", "kde"), ("rotation", "kde"),
             ("contrastive", "kde"), ("contrastive_da", "kde"),
             ("contrastive_da", "ocsvm"), ("denoising", "kde"),
             ("raw_pixels", "kde"), ("untrained", "kde"))


def per_class(label, cells) -> list[str]:
  """AUC of the PER_CLASS cells class by class (blank where a run is missing)."""
  classes = sorted({c for key in PER_CLASS for c in cells.get(key, {})})
  lines = [f"Per class on {label} (AUC):", "",
           "| representation | detector | "
           + " | ".join(str(c) for c in classes) + " |",
           "|---|---|" + "---|" * len(classes)]
  for key in PER_CLASS:
    values = cells.get(key, {})
    lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(
        f"{values[c]:.1f}" if c in values else "" for c in classes) + " |")
  return lines


def main(argv):
  del argv
  root = pathlib.Path(FLAGS.root)
  root.mkdir(parents=True, exist_ok=True)
  if not FLAGS.report_only:
    run_all(root)
  text = markdown(*collect(root))
  print(text)
  if FLAGS.results_md:
    write_section(pathlib.Path(FLAGS.results_md), text)


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  app.run(main)
