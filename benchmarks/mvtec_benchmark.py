r"""MVTec-style defect detection on the magnetic-tile category, at CPU scale.

  python benchmarks/mvtec_benchmark.py                 # ~20 min on 2 CPU cores
  python benchmarks/mvtec_benchmark.py --smoke         # tiny, a few minutes

Two parts, printed as Markdown (and saved as JSON in --workdir):

1. Methods. Each stage-1 method (rotation with MLP head, contrastive,
   contrastive with distribution augmentation) is trained through
   `single.train_and_evaluate` with its configs/mvtec_*.py at a reduced scale
   and evaluated densely (image AUROC, pixel AUROC, AUPRO, per defect type),
   beside the same pipeline on raw-pixel patches and on an untrained network
   (`eval.baselines`). Wall time per test image for embedding and scoring
   comes from the evaluation's own timers.
2. Cost of the shortcuts, on a small case with the trained rotation model:
   memory banks (random, greedy coreset) of several sizes against the
   exhaustive bank of every training patch, the scoring stride (4, 8, 16,
   32), and the upsampling kernel (sigma, normalisation).

The test images are a seeded, stratified subset of the test split (all of
it makes the pixel metrics alone take minutes per evaluation here); the
training images are all 600.
"""
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import tarfile
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np

from oneclass_jax import checkpoint
from oneclass_jax.detectors import kde
from oneclass_jax.evaluators import mvtec_patches
from oneclass_jax import experiment
from oneclass_jax import metrics
from oneclass_jax.mvtec import data as mvtec_data
from oneclass_jax.mvtec import localize
from oneclass_jax.mvtec import memory_bank
from oneclass_jax.mvtec import patches
from oneclass_jax import parallel
from oneclass_jax.trainer import single
from oneclass_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "magnetic_tile_mvtec_layout.tar.gz"
CATEGORY = "magnetic_tile"
METHODS = ("rotation", "contrastive", "contrastive_da")

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/mvtec_benchmark",
                               "Run directories and benchmark.json.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes, to check the script.")
_STEPS = flags.DEFINE_integer("steps", 200, "Training steps per method.")
_WIDTH = flags.DEFINE_float("width", 0.125, "ResNet-18 width multiplier.")
_STRIDE = flags.DEFINE_integer("stride", 16, "Scoring stride of part 1.")
_BANK = flags.DEFINE_integer("bank", 10_000, "Coreset memory bank, part 1.")
_POOL = flags.DEFINE_integer("pool", 40_000, "Coreset candidates, part 1.")
_TEST_GOOD = flags.DEFINE_integer("test_good", 100, "Good test images.")
_TEST_PER_DEFECT = flags.DEFINE_integer("test_per_defect", 20,
                                        "Test images per defect type.")
_SMALL_TRAIN = flags.DEFINE_integer("small_train", 150,
                                    "Training images of the small case.")
_SMALL_TEST = flags.DEFINE_integer("small_test", 40,
                                   "Test images of the small case (half good).")
_PART = flags.DEFINE_enum(
    "part", "all", ["all", "small"], "'small' reruns part 2 only, on the "
    "rotation model and benchmark.json of an earlier run in --workdir.")

# Random-projection dims for coreset selection in part 2, as the config
# default (mvtec.coreset_projection); no effect on features of <= 128 dims.
_PROJECTION = 128


def prepare_category(root: pathlib.Path, train_limit: int, test_good: int,
                     per_defect: int, seed: int = 0) -> pathlib.Path:
  """Unpacks train/good (first train_limit) and a seeded test subset."""
  rng = np.random.default_rng(seed)
  with tarfile.open(ARCHIVE) as tar:
    members = [m for m in tar.getmembers() if m.isfile()]
    folders = {}
    for m in members:
      folders.setdefault(str(pathlib.PurePosixPath(m.name).parent),
                         []).append(m)
    chosen = sorted(folders[f"{CATEGORY}/train/good"],
                    key=lambda m: m.name)[:train_limit]
    for folder in sorted(folders):
      parts = folder.split("/")
      if parts[1] != "test":
        continue
      files = sorted(folders[folder], key=lambda m: m.name)
      want = test_good if parts[2] == "good" else per_defect
      picked = [files[i] for i in np.sort(
          rng.permutation(len(files))[:want])]
      chosen += picked
      if parts[2] != "good":
        masks = {pathlib.PurePosixPath(m.name).name: m
                 for m in folders[f"{CATEGORY}/ground_truth/{parts[2]}"]}
        chosen += [masks[pathlib.PurePosixPath(m.name).stem + "_mask.png"]
                   for m in picked]
    tar.extractall(root, members=chosen, filter="data")
  return root


def method_config(method: str, root: pathlib.Path, smoke: bool):
  """configs/mvtec_<method>.py at the benchmark's scale."""
  name = f"mvtec_{method}"
  spec = importlib.util.spec_from_file_location(
      name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(f"root={root},category={CATEGORY}")
  c.model.width, c.model.stem_width = _WIDTH.value, 8
  c.model.head_width = 128
  if method == "rotation":
    c.model.head_out_dim = 128
    c.batch_size = 32  # 128 rotated views a step; 64 doubles the CPU time.
  c.total_epochs, c.total_steps = -1, _STEPS.value
  c.log_every_steps = 50
  c.checkpoint_every_steps = _STEPS.value
  c.mvtec.stride = _STRIDE.value
  c.mvtec.memory_bank = "coreset"
  c.mvtec.memory_bank_size = _BANK.value
  c.mvtec.coreset_pool = _POOL.value
  c.mvtec.heatmaps = 10
  c.eval.batch_size = 512
  c.eval.baselines = method == "rotation"
  if smoke:
    c.model.backbone, c.model.width, c.model.stem_width = "resnet10", 1 / 16, 4
    c.model.head_depth, c.model.head_width = 1, 16
    c.model.head_out_dim = 16
    c.batch_size = 16
    c.mvtec.patches_per_image = 4
  return c


def run_methods(root, workdir, smoke) -> dict:
  out = {}
  for method in METHODS:
    config = method_config(method, root, smoke)
    start = time.perf_counter()
    results = single.train_and_evaluate(config, str(workdir / method))
    results["wall_seconds"] = time.perf_counter() - start
    out[method] = results
  return out


# ---------------------------------------------------------------------------
# Part 2: the small case.


def _normalized(featurize, x):
  x = featurize(x)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _dense_features(featurize, images, stride, per_chunk=8):
  """L2-normalised features [N, gh, gw, d] of every patch of `images`."""
  gh, gw = patches.grid_shape(images.shape[1], images.shape[2], 32, stride)
  feats = np.concatenate([
      _normalized(featurize, flat) for _, flat in
      patches.iter_patch_chunks(images, 32, stride, per_chunk)])
  return feats.reshape(len(images), gh, gw, -1)


def _scores(bank, test_feats, gamma=None):
  """Patch scores and KDE seconds per image (timed after a compiling call)."""
  det = kde.KDE(gamma=gamma).fit(bank)
  n, gh, gw, d = test_feats.shape
  flat = test_feats.reshape(-1, d)
  det.score(flat)
  start = time.perf_counter()
  s = det.score(flat).reshape(n, gh, gw)
  return s.astype(np.float32), (time.perf_counter() - start) / n


def _metrics(grids, test, stride, sigma=localize.DEFAULT_SIGMA,
             normalize=True):
  maps = localize.upsample(grids, test.images.shape[1:3], 32, stride,
                           sigma=sigma, normalize=normalize)
  image_scores = grids.reshape(len(grids), -1).max(axis=1)
  return {"image": metrics.auroc(test.labels, image_scores),
          "pixel": metrics.pixel_auroc(test.masks, maps),
          "aupro": metrics.aupro(test.masks, maps)}


class _Subset:
  """A few test images, half good and half defective (evenly spread)."""

  def __init__(self, test, count):
    good = np.flatnonzero(test.labels == 0)
    bad = np.flatnonzero(test.labels == 1)
    pick = lambda idx, k: idx[np.linspace(0, len(idx) - 1, k).astype(int)]
    rows = np.concatenate([pick(good, count // 2),
                           pick(bad, count - count // 2)])
    self.images = test.images[rows]
    self.masks = test.masks[rows]
    self.labels = test.labels[rows]


def _bank_rows(featurize, train_images, test, smoke, projection):
  """Random and coreset banks against every training patch (stride 16)."""
  stride = 16
  bank_full = _dense_features(featurize, train_images, stride)
  bank_full = bank_full.reshape(-1, bank_full.shape[-1])
  test16 = _dense_features(featurize, test.images, stride)
  grids, score_full = _scores(bank_full, test16)
  rows = [{"bank": "full", "size": len(bank_full), "select_s": 0.0,
           "score_s_per_image": score_full, "coverage_radius": 0.0,
           **_metrics(grids, test, stride)}]
  # As evaluate_state: the coreset's gamma from its candidates (here every
  # training patch), random's from itself; "coreset (own gamma)" shows what
  # the coreset's own, wider spread would do.
  gamma_full = kde.bandwidth_gamma(bank_full)
  for size in (200, 1000) if smoke else (500, 2000, 8000):
    start = time.perf_counter()
    core = memory_bank.greedy_coreset(bank_full, size, seed=0,
                                      projection_dim=projection)
    core_s = time.perf_counter() - start
    rand = memory_bank.random_subset(len(bank_full), size, seed=0)
    radius = {"random": memory_bank.coverage_radius(bank_full,
                                                    bank_full[rand]),
              "coreset": memory_bank.coverage_radius(bank_full,
                                                     bank_full[core])}
    for kind, idx, gamma, select in (
        ("random", rand, None, 0.0), ("coreset", core, gamma_full, core_s),
        ("coreset (own gamma)", core, None, core_s)):
      grids, score_s = _scores(bank_full[idx], test16, gamma)
      rows.append({"bank": kind, "size": size, "select_s": select,
                   "score_s_per_image": score_s,
                   "coverage_radius": radius[kind.split()[0]],
                   **_metrics(grids, test, stride)})
  return rows


def _stride_rows(featurize, train_images, test, bank_size, pool,
                 projection):
  """Each stride with a coreset bank of one size from that grid."""
  rows, grids16 = [], None
  for stride in (32, 16, 8, 4):
    fit = mvtec_data.DensePatchSource(train_images, 32, stride)
    cand = _normalized(featurize, fit.patches(
        memory_bank.random_subset(len(fit), pool, 0))).astype(np.float32)
    bank = cand[memory_bank.greedy_coreset(cand, bank_size,
                                           projection_dim=projection)]
    detector = kde.KDE(gamma=kde.bandwidth_gamma(cand)).fit(bank)
    cfg = ml_collections.ConfigDict(dict(patch_size=32, stride=stride,
                                         images_per_chunk=4))
    grids, timing = mvtec_patches.score_test_images(featurize, detector,
                                                     test.images, cfg)
    rows.append({"stride": stride, "grid": fit.grid[0],
                 "embed_s_per_image": timing["embed_seconds_per_image"],
                 "score_s_per_image": timing["score_seconds_per_image"],
                 **_metrics(grids, test, stride)})
    if stride == 16:
      grids16 = grids
  return rows, grids16


def _restore_rotation(workdir, root, mesh):
  """The trained rotation run, reading its data from `root`."""
  config = workdir_lib.load_config(str(workdir / "rotation"))
  config.mvtec.root = str(root)  # The earlier run's data folder may be gone.
  run = experiment.setup(config, mesh)
  abstract = checkpoint.abstract(jax.eval_shape(run.init_fn,
                                                jax.random.key(0)))
  state, _ = checkpoint.restore_state_only(str(workdir / "rotation"),
                                           abstract)
  return run, state


def run_small_case(workdir, root, smoke) -> dict:
  """Banks, strides and upsampling, for raw pixels and the rotation model."""
  mesh = parallel.make_mesh()
  run, state = _restore_rotation(workdir, root, mesh)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  featurizers = {
      "raw pixels": mvtec_patches.pixel_featurizer,
      "rotation network": mvtec_patches.network_featurizer(
          run.model, variables, mesh, batch_size=512)}
  train_images = run.data.fit.images[:_SMALL_TRAIN.value]
  test = _Subset(run.data.test, _SMALL_TEST.value)
  bank_size, pool = (1000, 4000) if smoke else (2000, 16_000)
  out = {"train_images": len(train_images), "test_images": len(test.images),
         "bank_stride": 16, "projection": _PROJECTION,
         "stride_bank": {"size": bank_size, "pool": pool}, "featurizers": {}}
  for name, featurize in featurizers.items():
    logging.info("Small case: %s.", name)
    banks = _bank_rows(featurize, train_images, test, smoke, _PROJECTION)
    strides, grids16 = _stride_rows(featurize, train_images, test, bank_size,
                                    pool, _PROJECTION)
    upsampling = [{"sigma": sigma, "normalize": norm,
                   **_metrics(grids16, test, 16, sigma=sigma, normalize=norm)}
                  for sigma in (4.0, 10.0) for norm in (True, False)]
    out["featurizers"][name] = {"banks": banks, "strides": strides,
                                "upsampling": upsampling}
  return out


# ---------------------------------------------------------------------------
# Markdown.


def _pct(x):
  return f"{100 * x:.1f}"


def markdown(parts: dict, meta: dict) -> str:
  lines = [
      "## MVTec-style defect detection (magnetic tile)", "",
      f"Command (from the repository root, {meta['date']}):", "",
      "```", meta["command"], "```", "",
      f"Machine: {meta['machine']}. JAX {meta['jax']} on the CPU backend. "
      "The cores were shared with other jobs, so times are indicative.", "",
      meta["scale"], "",
      "### Detection and localization (AUC x100)", "",
      "| representation | image AUROC | pixel AUROC | AUPRO (FPR<=0.3) | "
      "embed s/image | score s/image | train+eval wall s |",
      "|---|---|---|---|---|---|---|"]
  methods = parts["methods"]
  for name, r in methods.items():
    t = r["timing"]
    lines.append(f"| {name} (step {r['step']}) | {_pct(r['auc']['image_kde'])}"
                 f" | {_pct(r['auc']['pixel_kde'])} | "
                 f"{_pct(r['auc']['aupro_kde'])} | "
                 f"{t['embed_seconds_per_image']:.3f} | "
                 f"{t['score_seconds_per_image']:.3f} | "
                 f"{r['wall_seconds']:.0f} |")
  for name, b in methods["rotation"].get("baselines", {}).items():
    t = b["timing"]
    lines.append(f"| {name} | {_pct(b['auc']['image_kde'])} | "
                 f"{_pct(b['auc']['pixel_kde'])} | "
                 f"{_pct(b['auc']['aupro_kde'])} | "
                 f"{t['embed_seconds_per_image']:.3f} | "
                 f"{t['score_seconds_per_image']:.3f} | |")
  lines += ["", "Per defect type (image / pixel AUROC / AUPRO, x100):", "",
            "| representation | " + " | ".join(
                sorted(methods["rotation"]["per_defect"])) + " |",
            "|---|" + "---|" * len(methods["rotation"]["per_defect"])]
  rows = [(n, r["per_defect"]) for n, r in methods.items()]
  rows += [(n, b["per_defect"]) for n, b in
           methods["rotation"].get("baselines", {}).items()]
  for name, per in rows:
    cells = [f"{_pct(m['image_kde'])} / {_pct(m['pixel_kde'])} / "
             f"{_pct(m['aupro_kde'])}" for _, m in sorted(per.items())]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")

  small = parts["small"]
  sb = small["stride_bank"]
  lines += [
      "", "### Cost of the shortcuts (small case)", "",
      f"Command: `{meta['small_command']}` ({meta['small_date']}, "
      f"{meta['small_minutes']:.1f} min). The trained rotation model above "
      f"and raw-pixel patches; {small['train_images']} training images, "
      f"{small['test_images']} test images (half good). Memory banks at "
      f"stride {small['bank_stride']}; 'full' is every training patch on that "
      "grid (the exhaustive bank). Coreset selection on a "
      f"{small['projection']}-d random projection when the features have "
      "more dimensions (raw pixels: 3072). Covering radius: largest distance "
      "from a training patch (L2-normalised) to its nearest bank entry.", ""]
  for name, part in small["featurizers"].items():
    lines += [f"**{name}: memory banks**", "",
              "| bank | size | image AUROC | pixel AUROC | AUPRO | "
              "covering radius | select s | score s/image |",
              "|---|---|---|---|---|---|---|---|"]
    for r in part["banks"]:
      lines.append(f"| {r['bank']} | {r['size']} | {_pct(r['image'])} | "
                   f"{_pct(r['pixel'])} | {_pct(r['aupro'])} | "
                   f"{r['coverage_radius']:.3f} | {r['select_s']:.1f} | "
                   f"{r['score_s_per_image']:.4f} |")
    lines += ["", f"**{name}: strides** (coreset bank of {sb['size']} from "
              f"{sb['pool']} random candidates on each grid)", "",
              "| stride | grid | image AUROC | pixel AUROC | AUPRO | "
              "embed s/image | score s/image |",
              "|---|---|---|---|---|---|---|"]
    for r in part["strides"]:
      lines.append(f"| {r['stride']} | {r['grid']}x{r['grid']} | "
                   f"{_pct(r['image'])} | {_pct(r['pixel'])} | "
                   f"{_pct(r['aupro'])} | {r['embed_s_per_image']:.3f} | "
                   f"{r['score_s_per_image']:.4f} |")
    lines += ["", f"**{name}: upsampling** of the stride-16 grids (image "
              "AUROC unchanged)", "", "| sigma | normalised | pixel AUROC | "
              "AUPRO |", "|---|---|---|---|"]
    for r in part["upsampling"]:
      lines.append(f"| {r['sigma']:g} | {'yes' if r['normalize'] else 'no'} "
                   f"| {_pct(r['pixel'])} | {_pct(r['aupro'])} |")
    lines.append("")
  return "\n".join(lines)


def _machine() -> str:
  model = ""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return (f"{os.cpu_count()}-core CPU ({model or platform.processor()}), "
          f"{platform.system()} {platform.machine()}")


def _scale(methods: dict, minutes: float) -> str:
  c = methods["rotation"]["config"]
  grid = patches.grid_size(256, 32, c["mvtec"]["stride"])
  n_train = methods["rotation"]["counts"]["fit_patches"] // grid ** 2
  return (
      f"Scale: {c['model']['backbone']} width {c['model']['width']} (stem "
      f"{c['model']['stem_width']}, f = {int(512 * c['model']['width'])}-d), "
      f"MLP head width {c['model']['head_width']}, {c['total_steps']} steps "
      f"of batch {c['batch_size']} per method (x4 rotated views for "
      f"rotation, x2 views for contrastive), "
      f"{c['mvtec']['patches_per_image']} crops per training image; "
      f"{n_train} train/good images; test: {_TEST_GOOD.value} good + "
      f"{_TEST_PER_DEFECT.value} per defect type (seeded subset); stride "
      f"{c['mvtec']['stride']} (a {grid}x{grid} grid); coreset bank "
      f"{c['mvtec']['memory_bank_size']} from {c['mvtec']['coreset_pool']} "
      f"random candidates (selected on a "
      f"{c['mvtec']['coreset_projection']}-d random projection when the "
      f"features have more dims: raw pixels); sigma {c['mvtec']['sigma']:g}, "
      f"normalised maps. Wall time of this part: {minutes:.1f} min.")


def main(argv):
  del argv
  smoke = _SMOKE.value
  if smoke:
    flags.FLAGS.steps, flags.FLAGS.bank, flags.FLAGS.pool = 6, 500, 2000
    flags.FLAGS.test_good, flags.FLAGS.test_per_defect = 6, 2
    flags.FLAGS.small_train, flags.FLAGS.small_test = 10, 8
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  command = "python benchmarks/mvtec_benchmark.py" + (
      " --smoke" if smoke else "")
  today = datetime.date.today().isoformat()
  with tempfile.TemporaryDirectory() as tmp:
    root = prepare_category(pathlib.Path(tmp),
                            60 if smoke else 10_000, _TEST_GOOD.value,
                            _TEST_PER_DEFECT.value)
    if _PART.value == "all":
      start = time.perf_counter()
      methods = run_methods(root, workdir, smoke)
      meta = {"date": today, "command": command, "machine": _machine(),
              "jax": jax.__version__,
              "scale": _scale(methods, (time.perf_counter() - start) / 60)}
      for r in methods.values():
        r.pop("config")
    else:
      previous = json.loads((workdir / "benchmark.json").read_text())
      methods, meta = previous["methods"], previous["meta"]
    start = time.perf_counter()
    small = run_small_case(workdir, root, smoke)
  if _PART.value == "small":
    command += " --part=small"
  meta.update(small_command=command, small_date=today,
              small_minutes=(time.perf_counter() - start) / 60)
  parts = {"methods": methods, "small": small}
  (workdir / "benchmark.json").write_text(json.dumps(
      {"meta": meta, **parts}, indent=2, default=float))
  print(markdown(parts, meta))


if __name__ == "__main__":
  app.run(main)
