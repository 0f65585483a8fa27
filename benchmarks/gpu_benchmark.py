r"""The one-command GPU benchmark; run it through benchmarks/gpu_benchmark.sh.

  bash benchmarks/gpu_benchmark.sh                # on the GPU machine
  bash benchmarks/gpu_benchmark.sh --smoke        # anywhere, tiny (CI)

Every phase prints its table as soon as it ends, with the seconds used:

1. data: the CIFAR-10 JPEG copy unpacked and prepared once as array_record
   (`sources.load`, the trainer's own path).
2. peaks: one large float32 and one bfloat16 matmul, the rates the step is
   compared with.
3. throughput: contrastive-DA, ResNet-18 width 1, batch 32 per model, K = 1
   and K = 10 models (inlier classes 0..K-1) x float32 / bfloat16: the
   jitted step alone (median of timed windows after warm-up), images/s for
   all K models and per model, XLA's FLOPs per step and the fraction of the
   measured bfloat16 peak they reach; for K = 10 also the input pipeline
   alone and the training loop end to end.
4. training: all 10 CIFAR-10 classes at once (`multi.train_and_evaluate`,
   one model per class, seed 0) in the faster dtype, for the whole epochs
   (625 steps of 32 of the 20,000 rot90-augmented images) that fit before
   the deadline, less the measured compile time and --eval_reserve_s.
5. results: each class's KDE and OC-SVM AUC, and how long the full CIFAR-10
   column of Table 2 (10 classes x 5 seeds, 2,048 epochs) takes at the
   measured end-to-end rate.

The report is also written to --out/report.md, with --out/summary.json.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import app
from absl import flags
import jax

from oneclass_jax.data import datasets
from oneclass_jax.data import one_class
from oneclass_jax.trainer import multi
from oneclass_jax.trainer import step as step_lib

# train_throughput.py sits beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt  # noqa: E402  pylint: disable=wrong-import-position

_ARCHIVE = flags.DEFINE_string("archive", None, "cifar10_jpeg.tar.gz.")
_OUT = flags.DEFINE_string("out", None, "Where report.md and summary.json "
                           "go.")
_DEADLINE = flags.DEFINE_float("deadline", 0, "Unix time by which "
                               "everything must have ended (0: now + "
                               "--budget_s).")
_BUDGET = flags.DEFINE_float("budget_s", 450, "Seconds for the whole run "
                             "when --deadline is not given.")
_EVAL_RESERVE = flags.DEFINE_float("eval_reserve_s", 100, "Seconds kept "
                                   "for the 10 evaluations after training.")
_MODELS = flags.DEFINE_list("models", ["1", "10"], "K of the table.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Dtypes of "
                            "the table.")
_TRAIN_DTYPE = flags.DEFINE_string("train_dtype", "", "Dtype of the training "
                                   "run ('' = the faster at the largest K).")
_WINDOW = flags.DEFINE_integer("window", 10, "Steps per timed window.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed windows per table row.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny network, 2 classes of 60 "
                           "images, K = 1 and 2, a few steps: checks the "
                           "script end to end on any machine (CI).")

METHOD = "contrastive_da"
TABLE2_RUNS = 50        # CIFAR-10: 10 classes x 5 seeds.
TABLE2_EPOCHS = 2048
TRAIN_IMAGES = 5000     # Per CIFAR-10 class; x4 with rot90.


class Clock:
  """Seconds since the start and before the deadline."""

  def __init__(self, deadline: float):
    self.start, self.deadline = time.time(), deadline

  def used(self) -> float:
    return time.time() - self.start

  def left(self) -> float:
    return self.deadline - time.time()


class Report:
  """Prints each line and keeps it for report.md."""

  def __init__(self):
    self.lines = []

  def __call__(self, text=""):
    print(text, flush=True)
    self.lines.append(text)


def unpack(archive: pathlib.Path, dest: pathlib.Path, per_class: int = 0):
  """The image folder (`train/<class>/`, `test/<class>/`) of the archive.

  per_class > 0 keeps that many train images (and a fifth as many test
  images) of the first two classes only.
  """
  if not archive.is_file():
    raise FileNotFoundError(
        f"{archive} not found: copy cifar10_jpeg.tar.gz beside "
        "benchmarks/gpu_benchmark.sh or pass --archive=PATH.")
  dest.mkdir(parents=True, exist_ok=True)
  if not per_class:
    subprocess.run(["tar", "xzf", str(archive), "-C", str(dest)], check=True)
  else:
    counts = {}
    with tarfile.open(archive) as tar:
      for member in tar:
        parts = pathlib.PurePosixPath(member.name).parts
        if not member.isfile() or len(parts) < 3:
          continue
        split, label = parts[-3], parts[-2]
        limit = per_class if split == "train" else per_class // 5
        if label not in ("airplane", "automobile"):
          continue
        if counts.get((split, label), 0) >= limit:
          continue
        counts[(split, label)] = counts.get((split, label), 0) + 1
        target = dest / split / label / parts[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tar.extractfile(member).read())
  roots = [p.parent for p in dest.rglob("train") if p.is_dir()]
  if not roots:
    raise FileNotFoundError(f"{archive} holds no train/<class>/ folders.")
  return roots[0]


def configure_jax(cache_dir: pathlib.Path) -> None:
  # Evaluation compiles the same embedding function once per model; with a
  # persistent cache the identical programs after the first are loaded.
  jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def throughput(rep, clock, common, peaks, ks, smoke):
  """Phase 3: the table for K in `ks`. Returns its rows."""
  rows = []
  largest = max(ks)
  rep("| K models | dtype | step ms | img/s (all K) | img/s per model | "
      "TFLOP/step (XLA) | TFLOP/s | fraction of bf16 peak | pipeline alone "
      "img/s | end to end img/s | compile s |")
  rep("|---|---|---|---|---|---|---|---|---|---|---|")
  for k in ks:
    for dtype in _DTYPES.value:
      config = tt.make_config(METHOD, num_models=k, dtype=dtype, **common)
      models = multi.build(multi.expand(config), None, 1,
                              config.model_batching)
      window = 1 if smoke else _WINDOW.value
      compile_s, compiled, step_s = tt.time_step(
          models, steps=2 if smoke else _STEPS.value, window=window,
          warmup=window)
      batch = config.batch_size
      flops = tt.xla_flops(compiled)
      row = {"models": k, "dtype": dtype, "step_s": step_s,
             "img_s": k * batch / step_s, "img_s_per_model": batch / step_s,
             "tflop_per_step": flops / 1e12,
             "tflop_s": flops / step_s / 1e12, "compile_s": compile_s,
             "batching": step_lib.resolve_batching(config.model_batching)}
      row["fraction_of_bf16_peak"] = row["tflop_s"] * 1e12 / peaks["bfloat16"]
      pipe, e2e = "-", "-"
      if k == largest:
        batches = 4 if smoke else 30
        row["pipeline_img_s"] = k * batch / tt.time_pipeline(models, batches)
        row["e2e_img_s"] = k * batch / tt.time_end_to_end(models, compiled,
                                                          batches * 2)
        pipe, e2e = (f"{row['pipeline_img_s']:.0f}",
                     f"{row['e2e_img_s']:.0f}")
      rows.append(row)
      rep(f"| {k} ({row['batching']}) | {dtype} | {1e3 * step_s:.2f} | "
          f"{row['img_s']:.0f} | {row['img_s_per_model']:.0f} | "
          f"{row['tflop_per_step']:.3f} | {row['tflop_s']:.1f} | "
          f"{row['fraction_of_bf16_peak']:.3f} | {pipe} | {e2e} | "
          f"{compile_s:.0f} |")
      del models, compiled
  rep(f"(table done at {clock.used():.0f} s)")
  by = {(r["models"], r["dtype"]): r for r in rows}
  smallest = min(ks)
  for dtype in _DTYPES.value:
    gain = by[(largest, dtype)]["img_s"] / by[(smallest, dtype)]["img_s"]
    rep(f"- {dtype}: K = {largest} gives {gain:.1f}x the images/s of K = "
        f"{smallest} (target >= 5x with K = 10 on the GPU).")
  return rows


def train_all(rep, clock, common, rows, source, workdir, smoke):
  """Phases 4 and 5: all classes at once, then their AUCs."""
  largest = max(r["models"] for r in rows)
  candidates = [r for r in rows if r["models"] == largest]
  best = max(candidates, key=lambda r: r.get("e2e_img_s", r["img_s"]))
  dtype = _TRAIN_DTYPE.value or best["dtype"]
  row = next(r for r in candidates if r["dtype"] == dtype)
  rate = min(row.get("e2e_img_s", row["img_s"]), row["img_s"])
  num_classes = len([p for p in (source / "train").iterdir() if p.is_dir()])
  config = tt.make_config(METHOD, num_models=num_classes, dtype=dtype,
                          **common)
  config.unlock()
  config.eval.detectors = ("kde", "ocsvm")
  config.checkpoint_every_steps = 1 << 30  # Only the last step.
  config.log_every_steps = 100
  first = multi.expand(config)[0][1]
  steps_per_epoch = len(one_class.make(
      first.data, image_size=first.model.image_size).train) // config.batch_size
  budget = (clock.left() - _EVAL_RESERVE.value - row["compile_s"] - 15)
  steps = int(budget * rate / (num_classes * config.batch_size))
  if smoke:
    steps = 4
  epochs = steps // steps_per_epoch
  if epochs >= 1:
    config.total_epochs, config.total_steps = epochs, -1
    length = f"{epochs} epochs ({epochs * steps_per_epoch} steps)"
  else:
    config.total_epochs, config.total_steps = -1, max(steps, 1)
    length = (f"{config.total_steps} steps (less than one epoch of "
              f"{steps_per_epoch} fits)")
  config.lock()
  rep(f"Training {num_classes} classes at once, {dtype}, {length}, at "
      f"~{rate:.0f} img/s; {clock.left():.0f} s left.")
  start = time.time()
  results = multi.train_and_evaluate(config, str(workdir))
  rep(f"(trained and evaluated in {time.time() - start:.0f} s; "
      f"{clock.used():.0f} s used)")
  rep()
  rep("| class | KDE AUC | OC-SVM AUC |")
  rep("|---|---|---|")
  aucs = {"kde": [], "ocsvm": []}
  for name, result in results.items():
    for key in aucs:
      aucs[key].append(result["auc"][key])
    cls = result["inlier_class"]
    rep(f"| {cls} ({datasets.get_spec('cifar10').names()[cls]}) | "
        f"{100 * result['auc']['kde']:.1f} | "
        f"{100 * result['auc']['ocsvm']:.1f} |")
  rep(f"| mean | {100 * sum(aucs['kde']) / len(aucs['kde']):.1f} | "
      f"{100 * sum(aucs['ocsvm']) / len(aucs['ocsvm']):.1f} |")
  return {"dtype": dtype, "length": length, "rate_img_s": rate,
          "results": {n: r["auc"] for n, r in results.items()}}


def projection(rep, rows):
  """How long Table 2's CIFAR-10 column takes at the measured rates."""
  largest = max(r["models"] for r in rows)
  images = TABLE2_RUNS * TABLE2_EPOCHS * TRAIN_IMAGES * 4
  rep()
  rep(f"Table 2, CIFAR-10 column: {TABLE2_RUNS} runs x {TABLE2_EPOCHS} "
      f"epochs x {4 * TRAIN_IMAGES:,} images = {images:.3g} images.")
  for r in rows:
    if r["models"] != largest:
      continue
    rate = min(r.get("e2e_img_s", r["img_s"]), r["img_s"])
    hours = images / rate / 3600
    rep(f"- {r['dtype']}, K = {largest}: {rate:.0f} img/s end to end -> "
        f"{hours:.1f} h = {hours / 24:.2f} GPU-days (aim: < 1).")


def main(argv):
  del argv
  deadline = _DEADLINE.value or time.time() + _BUDGET.value
  clock = Clock(deadline)
  rep = Report()
  smoke = _SMOKE.value
  out = pathlib.Path(_OUT.value or tempfile.mkdtemp(prefix="gpu_bench_out"))
  out.mkdir(parents=True, exist_ok=True)
  scratch = pathlib.Path(tempfile.mkdtemp(prefix="gpu_bench_"))
  try:
    configure_jax(scratch / "xla_cache")
    device = jax.devices()[0]
    rep(f"# GPU benchmark ({'smoke, ' if smoke else ''}"
        f"{time.strftime('%Y-%m-%d %H:%M')})")
    rep(f"Device: {device.device_kind} x {jax.device_count()} "
        f"({device.platform}), jax {jax.__version__}, Python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"{clock.left():.0f} s budget.")
    source = unpack(pathlib.Path(_ARCHIVE.value), scratch / "cifar10",
                    per_class=60 if smoke else 0)
    common = dict(width=1.0, batch=32, dataset="cifar10",
                  source_dir=str(source), data_dir=str(scratch / "tfds"),
                  num_devices=0, tiny=smoke)
    if smoke:
      common["batch"] = 16
    # Preparing the data once here keeps it out of every timing below.
    multi.build(multi.expand(tt.make_config(
        METHOD, num_models=1, dtype="float32", **common)))
    rep(f"Data prepared ({clock.used():.0f} s used).")
    size = 256 if smoke else 8192
    peaks = {d: tt.matmul_peak(d, size) for d in ("float32", "bfloat16")}
    rep(f"Matmul peaks ({size}^3): float32 {peaks['float32'] / 1e12:.1f} "
        f"TFLOP/s, bfloat16 {peaks['bfloat16'] / 1e12:.1f} TFLOP/s.")
    rep()
    # The smoke data has 2 classes.
    ks = [1, 2] if smoke else [int(k) for k in _MODELS.value]
    rows = throughput(rep, clock, common, peaks, ks, smoke)
    projection(rep, rows)
    rep()
    trained = train_all(rep, clock, common, rows, source, scratch / "runs",
                        smoke)
    rep()
    rep(f"Total {clock.used():.0f} s.")
    (out / "summary.json").write_text(json.dumps(
        {"rows": rows, "peaks": peaks, "training": trained}, indent=2))
    (out / "report.md").write_text("\n".join(rep.lines) + "\n")
    print(f"Report: {out / 'report.md'}")
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
