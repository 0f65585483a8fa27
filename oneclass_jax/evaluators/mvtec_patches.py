"""Dense defect detection and localization (paper Sec. 4.2, App. B.2).

`evaluate_state` is the MVTec counterpart of `evaluators.one_class`:

1. Memory bank: embeddings f (or g, `eval.embedding`) of training patches on
   the evaluation grid, bounded by `mvtec.memory_bank`: 'full' (every patch),
   'random' (`memory_bank_size` patches drawn before embedding) or 'coreset'
   (greedy k-center of that size over `coreset_pool` random candidates).
2. Every P x P patch of each S x S test image at `mvtec.stride` (a 57 x 57
   grid for 256/32/4), embedded with the model in inference mode, sharded
   over the devices, and scored by the KDE of `detectors.kde` fitted on the
   bank (gamma from the bank's random candidates, see `build_memory_bank`):
   score = -KDE, higher = more anomalous. Test images go through in chunks
   of `mvtec.images_per_chunk`, so memory does not grow with the test set;
   the KDE itself runs in blocks.
3. Image score = the maximum over the grid; localization map = the grid
   upsampled by the Gaussian transposed convolution of `localize`.
4. Image AUROC, pixel AUROC and AUPRO (up to `mvtec.aupro_max_fpr`) over all
   test images and per defect type (that type's images plus all good ones).

It writes, to the workdir: `results.json` (the schema of
`evaluators.one_class`, so `oneclass_jax.tools.report` reads it, with
auc = {image_kde, pixel_kde, aupro_kde} plus `per_defect`, `timing`,
`memory_bank` and, with `eval.baselines`, the same metrics for raw-pixel
patches and an untrained network), `scores.npz` (image labels and scores,
for the report's ROC figure), `score_grids.npz` (every patch score),
`heatmaps/*.png` (input, ground truth, map) for `mvtec.heatmaps` test
images and `memory_bank.npz` (the bank, its KDE bandwidth and the identity
of the checkpoint it was embedded with), which `export` bakes into a scorer
of new images (`restore_with_memory_bank`).
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")  # Files only; no display in CI or on TPU VMs.
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from oneclass_jax import config_lib
from oneclass_jax import detectors
from oneclass_jax import embeddings
from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import metrics
from oneclass_jax import parallel
from oneclass_jax import provenance
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.detectors import kde
from oneclass_jax.mvtec import localize
from oneclass_jax.mvtec import memory_bank
from oneclass_jax.mvtec import patches

Featurizer = Callable[[np.ndarray], np.ndarray]
# Version of memory_bank.npz: `load_memory_bank` refuses another one.
MEMORY_BANK_FORMAT = 1


class SavedBank(NamedTuple):
  """memory_bank.npz, as `evaluate_state` wrote it."""
  features: np.ndarray  # [k, d] float32, L2-normalised.
  gamma: float  # The KDE bandwidth the evaluation scored with.
  meta: dict  # format, embedding, identity of the checkpoint.


def load_memory_bank(workdir) -> SavedBank:
  """The memory bank of an evaluated MVTec-style workdir; refuses none."""
  path = files.path(workdir) / workdir_lib.MEMORY_BANK
  if not path.exists():
    raise FileNotFoundError(
        f"No memory bank in {workdir} ({workdir_lib.MEMORY_BANK}; "
        "evaluations before the exported MVTec scorer did not save it): run "
        f"`python -m oneclass_jax.tools.evaluate --workdir={workdir}`.")
  arrays = files.load_npz(path)
  meta = json.loads(str(arrays["meta"]))
  if meta.get("format") != MEMORY_BANK_FORMAT:
    raise ValueError(
        f"{path} is of format {meta.get('format')}; this version reads "
        f"format {MEMORY_BANK_FORMAT}: run `python -m "
        f"oneclass_jax.tools.evaluate --workdir={workdir}` again.")
  return SavedBank(arrays["features"], float(arrays["gamma"]), meta)


def restore_with_memory_bank(workdir, mesh):
  """(config, run, state, bank): the latest checkpoint and its memory bank.

  What exporting a scorer of new images needs; refuses a bank that is
  missing or was not embedded with this checkpoint (naming the fix).
  """
  bank = load_memory_bank(workdir)
  config, run, state = experiment.restore_matching(
      workdir, mesh, bank.meta.get("identity"),
      f"The memory bank in {workdir}/{workdir_lib.MEMORY_BANK}")
  return config, run, state, bank


def network_featurizer(model, variables, mesh, *, batch_size: int,
                       embedding: str = "f") -> Featurizer:
  """uint8 patches [n, P, P, 3] -> float32 [n, d] f (or g) of the model.

  Runs `embeddings.make_embed_fn` (inference mode, sharded over the mesh) on
  global batches of `batch_size` rounded to the device count; the last batch
  is zero-padded, so one compilation serves every call. Each host feeds its
  slice of every global batch and gets the whole output back.
  """
  if embedding not in embeddings.EMBEDDING_KEYS:
    raise ValueError(f"Unknown embedding {embedding!r}; use 'f' or 'g'.")
  key = embeddings.EMBEDDING_KEYS[embedding]
  embed = embeddings.make_embed_fn(model, mesh, rotations=False)
  variables = parallel.replicate(variables, mesh)
  n_dev = mesh.devices.size
  batch = max(n_dev, batch_size // n_dev * n_dev)
  local = batch // jax.process_count()
  mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def featurize(x: np.ndarray) -> np.ndarray:
    out = []
    with jax.set_mesh(mesh):
      for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        rows = len(chunk)
        if rows < batch:
          chunk = np.concatenate(
              [chunk, np.zeros((batch - rows,) + chunk.shape[1:], chunk.dtype)])
        images = parallel.to_global({"image": chunk[mine]}, mesh)["image"]
        y = embed(variables, images)[key]
        out.append(np.asarray(
            multihost_utils.process_allgather(y, tiled=True))[:rows])
    return np.concatenate(out)

  return featurize


def pixel_featurizer(x: np.ndarray) -> np.ndarray:
  """Raw-pixel baseline: each patch flattened, scaled to [0, 1]."""
  return np.asarray(x, np.float32).reshape(len(x), -1) / 255.0


def _normalized_features(featurize: Featurizer, fit, indices,
                         rows_per_chunk: int) -> np.ndarray:
  """L2-normalised float32 features of records `indices`, chunk by chunk.

  Normalising each chunk as it comes keeps the float64 work chunk-sized.
  """
  parts = []
  for s in range(0, len(indices), rows_per_chunk):
    x = detectors.check_features(
        featurize(fit.patches(indices[s:s + rows_per_chunk])),
        "memory-bank features")
    parts.append(detectors.l2_normalize(x).astype(np.float32))
  return np.concatenate(parts)


def build_memory_bank(featurize: Featurizer, fit, cfg,
                      seed: int) -> tuple[np.ndarray, dict]:
  """L2-normalised float32 bank [k, d] of training-patch features, and info.

  info['gamma'] is the KDE bandwidth of `kde.bandwidth_gamma` computed on
  every embedded candidate: the bank itself for 'full' and 'random', the
  random pool for 'coreset', whose variance describes the training patches;
  the coreset's own variance would overstate their spread (it keeps the
  outskirts on purpose) and so widen the kernel.

  Args:
    featurize: patches -> features.
    fit: a `data.DensePatchSource` (every training patch on the grid).
    cfg: the `mvtec` config block.
    seed: draws the random subset / coreset candidates and start.
  """
  start = time.perf_counter()
  n, size = len(fit), int(cfg.memory_bank_size)
  if cfg.memory_bank == "full":
    indices = np.arange(n)
  elif cfg.memory_bank == "random":
    indices = memory_bank.random_subset(n, size, seed)
  elif cfg.memory_bank == "coreset":
    indices = memory_bank.random_subset(n, max(cfg.coreset_pool, size), seed)
  else:
    raise ValueError(f"Unknown mvtec.memory_bank {cfg.memory_bank!r}; use "
                     "'coreset', 'random' or 'full'.")
  rows_per_chunk = cfg.images_per_chunk * fit.grid[0] * fit.grid[1]
  # Normalised: the coreset is chosen in the geometry the KDE scores in.
  bank = _normalized_features(featurize, fit, indices, rows_per_chunk)
  candidates = len(bank)
  gamma = kde.bandwidth_gamma(bank)
  if cfg.memory_bank == "coreset" and size < len(bank):
    chosen = memory_bank.greedy_coreset(
        bank, size, seed=seed, projection_dim=cfg.coreset_projection or None)
    bank = bank[chosen]
  info = {"kind": cfg.memory_bank, "size": int(len(bank)),
          "candidates": int(candidates), "training_patches": int(n),
          "gamma": gamma, "seconds": time.perf_counter() - start}
  return bank, info


def score_test_images(featurize: Featurizer, detector, images: np.ndarray,
                      cfg) -> tuple[np.ndarray, dict]:
  """KDE anomaly score of every test patch: grids [N, gh, gw], and timing.

  Only one chunk of `cfg.images_per_chunk` images (their patches and
  features) is in memory at a time.
  """
  gh, gw = patches.grid_shape(images.shape[1], images.shape[2],
                              cfg.patch_size, cfg.stride)
  grids = np.empty((len(images), gh, gw), np.float32)
  seconds = []  # (images, embed s, score s) per chunk.
  for first, flat in patches.iter_patch_chunks(images, cfg.patch_size,
                                               cfg.stride,
                                               cfg.images_per_chunk):
    t0 = time.perf_counter()
    features = featurize(flat)
    t1 = time.perf_counter()
    scores = detector.score(features)
    t2 = time.perf_counter()
    count = len(flat) // (gh * gw)
    seconds.append((count, t1 - t0, t2 - t1))
    grids[first:first + count] = scores.reshape(-1, gh, gw)
  # The first chunk pays for compilation; leave it out when there are more.
  steady = np.sum(seconds[1:] if len(seconds) > 1 else seconds, axis=0)
  return grids, {"embed_seconds_per_image": steady[1] / steady[0],
                 "score_seconds_per_image": steady[2] / steady[0],
                 "patches_per_image": gh * gw}


def _three_metrics(labels, image_scores, masks, maps, max_fpr) -> dict:
  return {"image_kde": metrics.auroc(labels, image_scores),
          "pixel_kde": metrics.pixel_auroc(masks, maps),
          "aupro_kde": metrics.aupro(masks, maps, max_fpr)}


def detection_metrics(labels, defect_types, image_scores, masks, maps,
                      max_fpr: float = 0.3) -> dict:
  """{'overall': {...}, 'per_defect': {type: {..., 'images': n}}}.

  Each of image_kde (image AUROC), pixel_kde (pixel AUROC) and aupro_kde
  (AUPRO up to max_fpr); per defect type over that type's images and every
  good image.
  """
  labels = np.asarray(labels)
  defect_types = np.asarray(defect_types)
  out = {"overall": _three_metrics(labels, image_scores, masks, maps,
                                   max_fpr), "per_defect": {}}
  good = defect_types == "good"
  for defect in sorted(set(defect_types[~good].tolist())):
    keep = good | (defect_types == defect)
    out["per_defect"][defect] = {
        **_three_metrics(labels[keep], image_scores[keep], masks[keep],
                         maps[keep], max_fpr),
        "images": int(np.sum(defect_types == defect))}
  return out


@dataclasses.dataclass
class DenseResult:
  """Everything one featurizer yields on a test set."""
  grids: np.ndarray         # [N, gh, gw] patch anomaly scores.
  image_scores: np.ndarray  # [N] spatial maxima.
  maps: np.ndarray          # [N, H, W] upsampled maps.
  metrics: dict             # detection_metrics(...).
  bank: dict                # build_memory_bank info, plus gamma.
  timing: dict
  memory_bank: np.ndarray   # [k, d] the bank the KDE was fitted on.


def dense_evaluate(featurize: Featurizer, data, cfg, seed: int) -> DenseResult:
  """Memory bank, patch scores, maps and metrics for one featurizer."""
  bank, bank_info = build_memory_bank(featurize, data.fit, cfg, seed)
  detector = kde.KDE(gamma=bank_info["gamma"]).fit(bank)
  test = data.test
  grids, timing = score_test_images(featurize, detector, test.images, cfg)
  image_scores = grids.reshape(len(grids), -1).max(axis=1).astype(np.float64)
  start = time.perf_counter()
  maps = localize.upsample(grids, test.images.shape[1:3], cfg.patch_size,
                           cfg.stride, sigma=cfg.sigma,
                           normalize=cfg.normalize_map)
  timing["upsample_seconds_per_image"] = (time.perf_counter() - start) / len(
      grids)
  start = time.perf_counter()
  result = detection_metrics(test.labels, test.defect_types, image_scores,
                             test.masks, maps, cfg.aupro_max_fpr)
  timing["metrics_seconds"] = time.perf_counter() - start
  timing["memory_bank_seconds"] = bank_info.pop("seconds")
  return DenseResult(grids, image_scores, maps, result, bank_info, timing,
                     bank)


def heatmap_indices(defect_types, count: int) -> list[int]:
  """`count` test images, taken in turn from each defect type, good last."""
  defect_types = list(defect_types)
  groups = [[i for i, d in enumerate(defect_types) if d == t]
            for t in sorted(set(defect_types) - {"good"}) + ["good"]]
  chosen = []
  for rank in range(max(map(len, groups), default=0)):
    chosen += [g[rank] for g in groups if rank < len(g)]
  return chosen[:max(0, count)]


def write_heatmaps(directory: str, test, maps: np.ndarray,
                   image_scores: np.ndarray, indices) -> list[str]:
  """PNG per image: input, ground-truth mask, map over the input.

  All panels share one colour scale (median to 99.9th percentile of every
  test map), so brightness is comparable across images.
  """
  files.path(directory).mkdir(parents=True, exist_ok=True)
  sample = maps.reshape(-1)[::max(1, maps.size // 1_000_000)]
  vmin, vmax = np.percentile(sample, [50.0, 99.9])
  written = []
  for i in indices:
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    axes[0].imshow(test.images[i])
    axes[0].set_title(f"{test.defect_types[i]} #{i}", fontsize=9)
    axes[1].imshow(test.masks[i], cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth", fontsize=9)
    axes[2].imshow(test.images[i])
    shown = axes[2].imshow(maps[i], cmap="jet", alpha=0.5, vmin=vmin,
                           vmax=vmax)
    axes[2].set_title(f"anomaly map (image score {image_scores[i]:.3g})",
                      fontsize=9)
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
      ax.axis("off")
    fig.tight_layout()
    stem = os.path.splitext(os.path.basename(test.files[i]))[0]
    path = os.path.join(directory,
                        f"{i:04d}_{test.defect_types[i]}_{stem}.png")
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    files.write_atomic(path, png.getvalue())
    plt.close(fig)
    written.append(path)
  return written



def _baselines(config, model, data, mesh) -> dict:
  """The same pipeline on raw-pixel patches and on an untrained network."""
  cfg = config.mvtec
  out = {"raw_pixels": dense_evaluate(pixel_featurizer, data, cfg,
                                      config.seed)}
  size = cfg.patch_size
  variables = model.init(jax.random.key(config.seed + 1),
                         jnp.zeros((2, size, size, 3)), train=False)
  featurize = network_featurizer(model, variables, mesh,
                                 batch_size=config.eval.batch_size,
                                 embedding=config.eval.embedding)
  out["untrained"] = dense_evaluate(featurize, data, cfg, config.seed)
  return {name: {"auc": r.metrics["overall"],
                 "per_defect": r.metrics["per_defect"],
                 "memory_bank": r.bank, "timing": r.timing}
          for name, r in out.items()}


def check_flags(config, detector_names, embedding) -> None:
  """Refuses --detectors / --embedding: the config alone sets the evaluation."""
  if detector_names is not None or embedding is not None:
    raise ValueError(
        "--detectors and --embedding do not apply to MVTec-style workdirs: "
        "their evaluation always scores every test patch with the KDE on a "
        f"memory bank of training patches (mvtec.memory_bank="
        f"{config.mvtec.memory_bank!r}) embedded with the config's "
        f"eval.embedding ({config.eval.embedding!r}), and rewrites the "
        "run's own results. Drop those flags; for another embedding or "
        "memory bank, train a run with that config.")


def evaluate_state(config, workdir, model, state, data, mesh) -> dict:
  """Dense scoring of the test images with a trained model; writes results.

  Args:
    config: the run config (with the `mvtec` block).
    workdir: where results.json, scores.npz, score_grids.npz and heatmaps/
      go.
    model, state: the trained model and its train state.
    data: `mvtec.data.make(config)`.
    mesh: the device mesh.

  Returns:
    The results dict written to results.json.
  """
  cfg = config.mvtec
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  featurize = network_featurizer(model, variables, mesh,
                                 batch_size=config.eval.batch_size,
                                 embedding=config.eval.embedding)
  dense = dense_evaluate(featurize, data, cfg, int(config.seed))
  test = data.test
  results = {
      "dataset": "mvtec",
      "inlier_class": cfg.category,
      "num_classes": 1,
      "method": config.method,
      "seed": int(config.seed),
      "step": int(jax.device_get(state["step"])),
      "embedding": config.eval.embedding,
      "auc": dense.metrics["overall"],
      "per_defect": dense.metrics["per_defect"],
      "grid": list(dense.grids.shape[1:]),
      "memory_bank": dense.bank,
      "timing": dense.timing,
      "counts": {"train_patches": int(len(data.train)),
                 "fit_patches": int(len(data.fit)),
                 "test": int(len(test)),
                 "test_defective": int(np.sum(test.labels))},
      "config": config_lib.to_dict(config),
  }
  if config.eval.baselines:
    results["baselines"] = _baselines(config, model, data, mesh)
  if jax.process_index() == 0:
    _write_outputs(workdir, results, dense, test, cfg.heatmaps, {
        "embedding": config.eval.embedding,
        "identity": provenance.identity(config, state, data.meta)})
  _log_table(results)
  return results


def _write_outputs(workdir, results, dense: DenseResult, test,
                   heatmaps: int, bank_meta: dict) -> None:
  # The heatmaps first and results.json last (`workdir.write_results`), so
  # a workdir with results.json has every output.
  workdir_lib.clear_results(workdir)
  write_heatmaps(os.path.join(workdir, workdir_lib.HEATMAPS), test, dense.maps,
                 dense.image_scores, heatmap_indices(test.defect_types,
                                                     heatmaps))
  workdir_lib.write_results(workdir, results, {
      workdir_lib.MEMORY_BANK: files.npz_bytes(
          features=dense.memory_bank, gamma=np.float64(dense.bank["gamma"]),
          meta=np.asarray(json.dumps({"format": MEMORY_BANK_FORMAT,
                                      **bank_meta}, sort_keys=True))),
      workdir_lib.SCORES: files.npz_bytes(labels=test.labels,
                                          image_kde=dense.image_scores),
      workdir_lib.SCORE_GRIDS: files.npz_bytes(grids=dense.grids, labels=test.labels,
                                   defect_types=np.asarray(
                                       test.defect_types))})


def _log_table(results) -> None:
  rows = [("all", results["auc"])] + list(results["per_defect"].items())
  for name, base in results.get("baselines", {}).items():
    rows.append((f"[{name}] all", base["auc"]))
  lines = [f"{'defect':<22} image  pixel  AUPRO"]
  lines += [f"{name:<22} {100 * m['image_kde']:5.1f}  "
            f"{100 * m['pixel_kde']:5.1f}  {100 * m['aupro_kde']:5.1f}"
            for name, m in rows]
  logging.info("MVTec %s (%s, step %d):\n%s", results["inlier_class"],
               results["method"], results["step"], "\n".join(lines))
