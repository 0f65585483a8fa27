r"""Stage-1 training throughput: the step, its FLOPs, the input pipeline.

  # The yardstick runs (ResNet-18 width 1; CIFAR-10 JPEG copy unpacked in DIR):
  python benchmarks/train_throughput.py --methods=contrastive_da --source_dir=DIR
  python benchmarks/train_throughput.py --methods=rotation --source_dir=DIR
  # K models at once, bfloat16:
  python benchmarks/train_throughput.py --models=1,2,5,10 --dtypes=bfloat16 ...
  python benchmarks/train_throughput.py --smoke   # tiny, seconds (CI)

For each method x K (models trained at once, `trainer/multi.py`) x compute dtype, in
one process:

* step: the jitted K-model train step (`multi.build(...).step`, K = 1 is one
  model) on device-resident random images, after --warmup steps, the median
  of --steps timed windows of --window steps each. Compilation is timed
  apart.
* FLOPs per step: every convolution and matrix product of the traced step
  (forward, backward, augmentation), counted from the jaxpr as 2 x output
  elements x contraction length (zeros inserted by input dilation not
  counted); XLA's own cost analysis is printed beside it.
* ceiling: each of those products timed alone as a plain (batched) matrix
  multiply of the same GEMM shape and dtype, the times added up: what the
  step would cost if all its multiply-adds ran at this machine's matmul
  speed for these sizes and everything else were free. `step / ceiling` is
  how far the step is from it. The peak of one large square matmul is
  printed too.
* pipeline alone: K `train_loader`s (grain over the prepared array_record
  data) read, stacked and put on the devices, with no step.
* end to end: the training loop itself, the K loaders feeding the step, one
  device sync at the end, so input reading and compute overlap as in
  `trainer/`.

Prints a Markdown table (and writes --json). The load average before and
after is printed: on a shared machine, only trust runs whose load stayed low.
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from oneclass_jax.analysis import grids
from oneclass_jax.trainer import multi
from oneclass_jax.trainer import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

def make_config(method, *, num_models, dtype, width=1.0, batch=0,
                dataset="cifar10", source_dir="", data_dir="",
                num_devices=1, model_shards=1, batching="auto",
                tiny=False):
  """The config of K = num_models models (inlier classes 0..K-1)."""
  c = grids.load_config(method, f"dataset={dataset}")
  c.unlock()
  c.model.width, c.model.stem_width = width, max(1, round(64 * width))
  c.model.dtype = dtype
  if tiny:
    c.model.backbone = "resnet10"
    c.model.width, c.model.stem_width = 1 / 16, 4
    c.model.head_depth = min(c.model.head_depth, 1)
    c.model.head_width = 8
    c.model.head_out_dim = 8 if c.model.head_out_dim else 0
  if batch:
    c.batch_size = batch
  c.data.source_dir, c.data.data_dir = source_dir, data_dir
  c.data.inlier_classes = f"0-{num_models - 1}"
  # The schedule does not change the cost of a step.
  c.total_epochs, c.total_steps = -1, 1_000_000
  c.num_devices, c.num_model_shards = num_devices, model_shards
  c.model_batching = batching
  c.lock()
  return c


# ---------------------------------------------------------------------------
# FLOPs of a traced step and the GEMM ceiling.

Gemm = collections.namedtuple("Gemm", "groups m k n dtype")


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)


def _conv_gemm(eqn) -> Gemm:
  """A convolution as G batched GEMMs: 2*G*m*k*n = 2 * |out| * k / dilation.

  An input dilation (the input gradient of a strided convolution) inserts
  zeros; their products are not counted, so that convolution counts as the
  forward one it transposes (up to the image borders).
  """
  lhs, rhs = (v.aval for v in eqn.invars)
  out = eqn.outvars[0].aval
  dims = eqn.params["dimension_numbers"]
  rhs_spec, out_spec = dims.rhs_spec, dims.out_spec
  groups = max(eqn.params["feature_group_count"],
               eqn.params["batch_group_count"])
  out_features = out.shape[out_spec[1]]
  contraction = rhs.shape[rhs_spec[1]] * int(
      np.prod([rhs.shape[d] for d in rhs_spec[2:]]))
  dilation = int(np.prod(eqn.params["lhs_dilation"] or (1,)))
  m = round(int(np.prod(out.shape)) / out_features / dilation)
  return Gemm(groups, m, contraction, out_features // groups, lhs.dtype)


def _dot_gemm(eqn) -> Gemm:
  lhs, rhs = (v.aval for v in eqn.invars)
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  size = lambda shape, axes: int(np.prod([shape[a] for a in axes]))
  groups = size(lhs.shape, lb)
  k = size(lhs.shape, lc)
  m = int(np.prod(lhs.shape)) // (groups * k)
  n = int(np.prod(rhs.shape)) // (size(rhs.shape, rb) * size(rhs.shape, rc))
  return Gemm(groups, m, k, n, lhs.dtype)


def gemms(fn, *args) -> list[Gemm]:
  """Every convolution and dot_general of fn(*args), as GEMMs (per device:
  inside shard_map the shapes are the local ones)."""
  out = []
  for eqn in _eqns(jax.make_jaxpr(fn)(*args).jaxpr):
    if eqn.primitive.name == "conv_general_dilated":
      out.append(_conv_gemm(eqn))
    elif eqn.primitive.name == "dot_general":
      out.append(_dot_gemm(eqn))
  return out


def gemm_flops(g: Gemm) -> float:
  return 2.0 * g.groups * g.m * g.k * g.n


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def gemm_seconds(g: Gemm, repeats: int = 3) -> float:
  """Median time of the GEMM alone (random operands, after one call)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (g.groups, g.m, g.k), g.dtype)
  b = jax.random.normal(key_b, (g.groups, g.k, g.n), g.dtype)
  matmul = jax.jit(lambda x, y: jnp.einsum("gmk,gkn->gmn", x, y))
  jax.block_until_ready(matmul(a, b))
  return median_seconds(lambda: matmul(a, b), repeats)


def ceiling_seconds(ops: list[Gemm]) -> float:
  """Sum over the step's GEMMs of their time alone (each shape timed once)."""
  counts = collections.Counter(ops)
  return sum(n * gemm_seconds(g) for g, n in counts.items())


def matmul_peak(dtype, size: int) -> float:
  """FLOP/s of one size^3 matmul (median of 5)."""
  g = Gemm(1, size, size, size, jnp.dtype(dtype))
  return gemm_flops(g) / gemm_seconds(g, repeats=5)


def xla_flops(compiled) -> float:
  """XLA's cost-analysis FLOPs (per device), or NaN where not reported."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


# ---------------------------------------------------------------------------
# The measurements.


def random_images(models: multi.Models, seed=0) -> jax.Array:
  """Device-resident uint8 [K, B, H, W, C] batch for the step alone."""
  rng = np.random.default_rng(seed)
  shape = tuple(models.runs[0].data.train[0]["image"].shape)
  batch = models.configs[0].batch_size // jax.process_count()
  return models.images([{"image": rng.integers(0, 256, (batch, *shape),
                                               dtype=np.uint8)}
                        for _ in models.names])


def fresh(models: multi.Models):
  init_keys, step_keys = models.keys()
  rngs = jax.random.wrap_key_data(
      models.shard(np.asarray(jax.random.key_data(step_keys))))
  return models.init(init_keys), rngs


def time_step(models: multi.Models, *, steps, window, warmup):
  """Compile time, compiled step and its median seconds per step."""
  states, rngs = fresh(models)
  images = random_images(models)
  with jax.set_mesh(models.mesh):
    start = time.perf_counter()
    compiled = models.step.lower(states, images, rngs).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
      states, _ = compiled(states, images, rngs)
    jax.block_until_ready(states)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      for _ in range(window):
        states, _ = compiled(states, images, rngs)
      jax.block_until_ready(states)
      times.append((time.perf_counter() - start) / window)
  return compile_s, compiled, statistics.median(times)


def time_pipeline(models: multi.Models, batches: int, warmup: int = 3):
  """Seconds per global K-model batch read and put on the devices."""
  iters = [iter(loader) for loader in models.loaders()]
  for _ in range(warmup):
    jax.block_until_ready(models.images([next(it) for it in iters]))
  start = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(models.images([next(it) for it in iters]))
  return (time.perf_counter() - start) / batches


def time_end_to_end(models: multi.Models, compiled, steps: int,
                    warmup: int = 2):
  """Seconds per step of the training loop (loaders -> step, no sync)."""
  states, rngs = fresh(models)
  iters = [iter(loader) for loader in models.loaders()]
  with jax.set_mesh(models.mesh):
    for _ in range(warmup):
      states, _ = compiled(states, models.images([next(it) for it in iters]),
                           rngs)
    jax.block_until_ready(states)
    start = time.perf_counter()
    for _ in range(steps):
      states, _ = compiled(states, models.images([next(it) for it in iters]),
                           rngs)
    jax.block_until_ready(states)
  return (time.perf_counter() - start) / steps


def benchmark(config, *, steps, window, warmup, pipeline_batches,
              ceiling=True) -> dict:
  """One row: method x K x dtype (see the module docstring)."""
  models = multi.build(multi.expand(config), config.num_devices or None,
                       config.num_model_shards, config.model_batching)
  k, batch = len(models.names), config.batch_size
  devices = models.mesh.devices.size
  compile_s, compiled, step_s = time_step(models, steps=steps, window=window,
                                          warmup=warmup)
  states, rngs = fresh(models)
  with jax.set_mesh(models.mesh):
    ops = gemms(models.step, states, random_images(models), rngs)
  del states
  flops = devices * sum(gemm_flops(g) for g in ops)
  row = {
      "method": config.method, "models": k, "dtype": config.model.dtype,
      "batching": step_lib.resolve_batching(config.model_batching),
      "width": config.model.width, "batch": batch, "devices": devices,
      "compile_s": compile_s, "step_s": step_s,
      "img_s": k * batch / step_s, "img_s_per_model": batch / step_s,
      "gflop_per_step": flops / 1e9,
      "xla_gflop_per_step": devices * xla_flops(compiled) / 1e9,
      "gflop_s": flops / step_s / 1e9,
  }
  if ceiling:
    row["ceiling_s"] = ceiling_seconds(ops)
    row["step_over_ceiling"] = step_s / row["ceiling_s"]
  pipe_s = time_pipeline(models, pipeline_batches)
  row["pipeline_img_s"] = k * batch / pipe_s
  e2e_s = time_end_to_end(models, compiled, pipeline_batches)
  row["e2e_img_s"] = k * batch / e2e_s
  row["e2e_img_s_per_model"] = batch / e2e_s
  row["limited_by"] = "input" if pipe_s > step_s else "step"
  return row


def markdown(rows) -> str:
  head = ("| method | K (batching) | dtype | batch | step ms | img/s (all K) "
          "| img/s per model | pipeline alone img/s | end to end img/s (per "
          "model) | "
          "GFLOP/step (XLA) | GFLOP/s | step / ceiling | compile s |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    ceiling = (f"{r['step_over_ceiling']:.2f} ({1e3 * r['ceiling_s']:.0f} "
               "ms)" if "ceiling_s" in r else "-")
    lines.append(
        f"| {r['method']} | {r['models']} ({r['batching']}) | {r['dtype']} | "
        f"{r['batch']} | "
        f"{1e3 * r['step_s']:.1f} | {r['img_s']:.1f} | "
        f"{r['img_s_per_model']:.1f} | {r['pipeline_img_s']:.0f} | "
        f"{r['e2e_img_s']:.1f} ({r['e2e_img_s_per_model']:.1f}) | "
        f"{r['gflop_per_step']:.1f} ({r['xla_gflop_per_step']:.1f}) | "
        f"{r['gflop_s']:.1f} | {ceiling} | {r['compile_s']:.1f} |")
  return "\n".join(lines)


def machine() -> str:
  cpu = platform.processor() or "unknown"
  with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
    cpu = next((line.split(":", 1)[1].strip() for line in f
                if line.startswith("model name")), cpu)
  device = jax.devices()[0]
  return (f"{device.platform} ({device.device_kind}) x {jax.device_count()}, "
          f"CPU {cpu}, nproc {os.cpu_count()}, jax {jax.__version__}")


def make_tiny_folder(root: pathlib.Path, per_class=40, classes=2) -> str:
  """A small generated image folder (smoke runs)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (("train", per_class), ("test", 8)):
    for label in range(classes):
      d = root / split / f"c{label}"
      d.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                        ).save(d / f"{i}.png")
  return str(root)


def _define_flags():
  """Flags live here, not at import: gpu_benchmark.py imports this file."""
  flags.DEFINE_list("methods", ["contrastive_da"],
                    "configs/<method>.py to time.")
  flags.DEFINE_list("models", ["1"], "Numbers K of models trained at once "
                    "(one inlier class each: 0..K-1).")
  flags.DEFINE_list("dtypes", ["float32"], "Backbone compute dtypes "
                    "(model.dtype): float32, bfloat16.")
  flags.DEFINE_float("width", 1.0, "ResNet width multiplier (the stem gets "
                     "64 x width channels).")
  flags.DEFINE_integer("batch", 0, "Batch per model (0: the config's: 32 "
                       "contrastive, 64 rotation).")
  flags.DEFINE_integer("num_devices", 1, "Devices (0 = all).")
  flags.DEFINE_integer("model_shards", 1, "Devices along the model axis.")
  flags.DEFINE_enum("batching", "auto", list(step_lib.BATCHING),
                    "How the K models share a device (trainer/multi.py).")
  flags.DEFINE_string("dataset", "cifar10", "Dataset name.")
  flags.DEFINE_string("source_dir", "", "Local source (e.g. the unpacked "
                      "CIFAR-10 JPEG copy).")
  flags.DEFINE_string("data_dir", "", "tfds data dir (where the source is "
                      "prepared once).")
  flags.DEFINE_integer("steps", 20, "Timed windows of the step.")
  flags.DEFINE_integer("window", 1, "Steps per timed window.")
  flags.DEFINE_integer("warmup", 3, "Untimed steps first.")
  flags.DEFINE_integer("pipeline_batches", 40, "Batches (per model) read to "
                       "time the pipeline and the end-to-end loop.")
  flags.DEFINE_bool("ceiling", True, "Time the step's GEMMs alone.")
  flags.DEFINE_string("json", "", "Also write the rows here.")
  flags.DEFINE_bool("smoke", False, "Tiny network, tiny generated data, 2 "
                    "steps: checks that it runs (CI).")


def main(argv):
  del argv
  f = flags.FLAGS
  settings = dict(steps=f.steps, window=f.window,
                  warmup=f.warmup,
                  pipeline_batches=f.pipeline_batches,
                  ceiling=f.ceiling)
  common = dict(width=f.width, batch=f.batch,
                dataset=f.dataset, source_dir=f.source_dir,
                data_dir=f.data_dir, num_devices=f.num_devices,
                model_shards=f.model_shards, batching=f.batching)
  with tempfile.TemporaryDirectory() as tmp:
    if f.smoke:
      settings = dict(steps=2, window=1, warmup=1, pipeline_batches=2,
                      ceiling=True)
      common.update(dataset="image_folder", batch=16, tiny=True,
                    source_dir=make_tiny_folder(pathlib.Path(tmp) / "src"),
                    data_dir=str(pathlib.Path(tmp) / "tfds"))
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} "
          "(1 min) at start.")
    peak_dtypes = sorted(set(f.dtypes))
    size = 256 if f.smoke else 2048
    for dtype in peak_dtypes:
      print(f"Matmul peak {dtype} ({size}^3): "
            f"{matmul_peak(dtype, size) / 1e9:.1f} GFLOP/s")
    rows = []
    for method in f.methods:
      for k in (int(v) for v in f.models):
        for dtype in f.dtypes:
          config = make_config(method, num_models=k, dtype=dtype, **common)
          rows.append(benchmark(config, **settings))
          print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  print()
  print(markdown(rows))
  print(f"\nLoad average {os.getloadavg()[0]:.2f} (1 min) at the end; "
        f"{datetime.datetime.now().isoformat(timespec='minutes')}.")
  if f.json:
    pathlib.Path(f.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
