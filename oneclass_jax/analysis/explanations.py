"""Visual explanations of deep one-class classifiers (Sections 3.2.1, 5.4).

Command line: `python -m oneclass_jax.tools.explain` (see there).

For every trained workdir this builds end-to-end differentiable scores of an
image and explains them with `analysis.gradients`:

* KDE (every model): the normality KDE_γ(f(x)) of paper Eq. 6, with the
  detector fitted on the workdir's fit set exactly as `oneclass_jax.tools.evaluate`
  fits it (L2-normalised f, γ = 10 / (d·Var)); the gradient flows through
  the L2 normalisation and the network (Section 3.2.1).
* Rotation classifier (rotation models): Σ_k log p(y = k | rot_k x), the
  normality whose negation is the `rot_sum` score of Table 7. With a RotNet
  workdir both columns appear: "RotNet" (classifier) and "RotNet*" (KDE), the
  comparison of Figure 6.

`--target=anomaly` explains the negated scores instead. Integrated gradients
use the trapezoidal rule with `--steps` intervals and check completeness
(Σ attributions = s(x) − s(baseline)) per image; a relative gap above
`--ig_tolerance` is reported (raise `--steps`). GradCAM uses the last
convolutional stage (the backbone's feature map); for the rotation score each
rotated view's map is rotated back and the four are averaged.

`--images`: `test:N` (N test images, half inliers and half outliers, drawn
with `--seed`), `test:idx=3,17,42` (test-set positions), or image files /
globs separated by commas (decoded and preprocessed like the dataset; they
must come out at the model's input size).

Writes `explain_<method>.png` (rows: images; columns: the input, then one
heat-map overlay per model, score and baseline, like Figures 6 and 12-15) and
`explain.json` (scores, labels, completeness per image) to `--out`
(default `<first workdir>/explain`).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
from typing import Callable, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from oneclass_jax import config_lib  # noqa: E402
from oneclass_jax import embeddings
from oneclass_jax import experiment
from oneclass_jax import files  # noqa: E402
from oneclass_jax import parallel  # noqa: E402
from oneclass_jax import workdir as workdir_lib  # noqa: E402
from oneclass_jax.analysis import captions  # noqa: E402
from oneclass_jax.analysis import gradients  # noqa: E402
from oneclass_jax.data import augment  # noqa: E402
from oneclass_jax.data import datasets  # noqa: E402
from oneclass_jax.detectors import kde  # noqa: E402
from oneclass_jax.models import resnet  # noqa: E402

METHODS = ("ig", "gradcam")
NUM_ROTATIONS = 4


@dataclasses.dataclass
class Scorer:
  """One differentiable score of one model, and its GradCAM."""
  label: str
  score_fn: Callable[[jax.Array], jax.Array]   # [B,H,W,C] -> [B]
  gradcam_fn: Callable[[jax.Array], jax.Array]  # [B,H,W,C] -> [B,H,W]


def _apply(model, variables, images):
  return model.apply(variables, images, train=False)


def apply_from_features(model, variables, features, image_shape):
  """The model's outputs with the backbone's feature map replaced.

  Runs the model's own composition (pooling, head, classifier) on a given
  last-stage feature map, so GradCAM can differentiate a score with respect
  to that map.
  """

  def interceptor(next_fun, args, kwargs, context):
    if (isinstance(context.module, resnet.ResNet) and
        context.method_name == "__call__"):
      return {"pools": features.mean(axis=(1, 2)), "feature_map": features}
    return next_fun(*args, **kwargs)

  dummy = jnp.zeros((features.shape[0], *image_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    return _apply(model, variables, dummy)


def kde_scorer(model, variables, fit_features, *, embedding: str = "f",
               sign: float = 1.0, label: str = "KDE") -> Scorer:
  """sign · KDE_γ(e(x)) with the KDE fitted on `fit_features` of e ∈ {f, g}."""
  key = embeddings.EMBEDDING_KEYS[embedding]
  anomaly = kde.kde_score_fn(fit_features)

  def from_outputs(outputs):
    return -sign * anomaly(outputs[key])

  def score_fn(images):
    return from_outputs(_apply(model, variables, images))

  def gradcam_fn(images):
    features = _apply(model, variables, images)["feature_map"]
    return gradients.gradcam(
        lambda a: from_outputs(apply_from_features(model, variables, a,
                                                   images.shape[1:])),
        features, size=images.shape[1:3])

  return Scorer(label, score_fn, gradcam_fn)


def _rotated_views(images):
  """[B,H,W,C] -> [4B,H,W,C], view-major: rot_0(x) for all x, then rot_1..."""
  return jnp.concatenate([jnp.rot90(images, k, axes=(1, 2))
                          for k in range(NUM_ROTATIONS)])


def _correct_log_probs(logits, batch):
  """log p(y = k | rot_k x) per view row, from view-major logits [4B, 4]."""
  targets = jnp.repeat(jnp.arange(NUM_ROTATIONS), batch)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, targets[:, None], axis=1)[:, 0]


def rotation_scorer(model, variables, *, sign: float = 1.0,
                    label: str = "rot. classifier") -> Scorer:
  """sign · Σ_k log p(y = k | rot_k x) of a rotation model's classifier."""

  def score_fn(images):
    batch = images.shape[0]
    logits = _apply(model, variables, _rotated_views(images))["logits"]
    per_view = _correct_log_probs(logits, batch)
    return sign * per_view.reshape(NUM_ROTATIONS, batch).sum(axis=0)

  def gradcam_fn(images):
    batch, size = images.shape[0], images.shape[1:3]
    views = _rotated_views(images)
    features = _apply(model, variables, views)["feature_map"]

    def from_features(a):
      logits = apply_from_features(model, variables, a,
                                   images.shape[1:])["logits"]
      return sign * _correct_log_probs(logits, batch)

    maps = gradients.gradcam(from_features, features, size=size)
    maps = maps.reshape(NUM_ROTATIONS, batch, *size)
    # Each view's map lives in rotated coordinates: turn it back, average.
    return jnp.mean(jnp.stack([jnp.rot90(maps[k], -k, axes=(1, 2))
                               for k in range(NUM_ROTATIONS)]), axis=0)

  return Scorer(label, score_fn, gradcam_fn)


# ----------------------------------------------------------------------------
# Workdirs and images.


@dataclasses.dataclass
class Loaded:
  """A restored workdir."""
  workdir: str
  config: object
  run: object
  variables: dict


def load_workdir(workdir: str, mesh) -> Loaded:
  config, run, state = experiment.restore_run(workdir, mesh)
  # Host copies: the explanations run unsharded on the default device,
  # whatever mesh the checkpoint was restored onto.
  variables = jax.device_get({"params": state["params"],
                              "batch_stats": state["batch_stats"]})
  return Loaded(workdir, config, run, variables)


def _has_classifier(loaded: Loaded) -> bool:
  return loaded.run.model.num_classes == NUM_ROTATIONS


def _model_name(loaded: Loaded) -> str:
  return captions.model_label(loaded.config)


def scorers_for(loaded: Loaded, mesh, *, scores: Sequence[str],
                embedding: str, sign: float, fit_max: int,
                seed: int) -> list[Scorer]:
  """The requested scores of one workdir ('auto': rotation if any, KDE)."""
  wanted = list(scores)
  if wanted == ["auto"]:
    wanted = (["rotation"] if _has_classifier(loaded) else []) + ["kde"]
  name = _model_name(loaded)
  out = []
  for score in wanted:
    if score == "rotation":
      if not _has_classifier(loaded):
        raise ValueError(f"{loaded.workdir}: score 'rotation' needs a "
                         "rotation model (configs/rotation.py or rotnet.py).")
      out.append(rotation_scorer(loaded.run.model, loaded.variables,
                                 sign=sign, label=f"{name}"))
    elif score == "kde":
      fit = loaded.run.data.fit
      if fit_max and len(fit) > fit_max:
        rows = np.sort(np.random.RandomState(seed).permutation(
            len(fit))[:fit_max])
        fit = Subset(fit, rows)
      emb = embeddings.extract(loaded.run.model, loaded.variables, fit, mesh,
                             batch_size=loaded.config.eval.batch_size)
      label = f"{name}*" if _has_classifier(loaded) else name
      out.append(kde_scorer(
          loaded.run.model, loaded.variables,
          emb[embeddings.EMBEDDING_KEYS[embedding]], embedding=embedding,
          sign=sign, label=f"{label} · KDE({embedding})"))
    else:
      raise ValueError(f"Unknown score {score!r}; use auto, kde or rotation.")
  return out


class Subset:
  """Records `rows` of a source, re-indexed 0..len-1 (what `extract` needs)."""

  def __init__(self, source, rows):
    self._source = source
    self._rows = np.asarray(rows, np.int64)

  def __len__(self):
    return len(self._rows)

  def __getitem__(self, index):
    record = dict(self._source[int(self._rows[index])])
    record["index"] = int(index)
    return record


def select_images(spec: str, loaded: Loaded, seed: int
                  ) -> tuple[np.ndarray, list[str]]:
  """uint8 images [N, H, W, 3] and a caption per image for `--images`."""
  test = loaded.run.data.test
  if spec.startswith("test:"):
    if not len(test):
      raise ValueError(f"--images={spec}: this run has no test images (its "
                       "data has no test split); give image files or globs.")
    what = spec[len("test:"):]
    labels = test.labels
    if what.startswith("idx="):
      try:
        rows = [int(i) for i in what[4:].split(",") if i]
      except ValueError as e:
        raise ValueError(f"--images={spec}: give integer test positions, "
                         "e.g. test:idx=3,17,42.") from e
      bad = [r for r in rows if not 0 <= r < len(test)]
      if bad or not rows:
        raise ValueError(f"--images={spec}: positions {bad or rows} are not "
                         f"in the test set (0..{len(test) - 1}).")
    elif what.isdigit() and int(what) > 0:
      n = int(what)
      rng = np.random.RandomState(seed)
      inl, outl = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
      rows = list(rng.permutation(inl)[:(n + 1) // 2]) + list(
          rng.permutation(outl)[:n // 2])
    else:
      raise ValueError(f"--images={spec}: use test:N (N > 0), "
                       "test:idx=i,j,... or image files.")
    images = np.stack([test[int(r)]["image"] for r in rows])
    captions_ = [("inlier" if labels[r] == 0 else "outlier") + f" #{r}"
                 for r in rows]
    return images, captions_
  return _image_files(spec, loaded)


def _image_files(spec: str, loaded: Loaded):
  paths = []
  for pattern in (p.strip() for p in spec.split(",") if p.strip()):
    found = sorted(glob.glob(pattern))
    if not found:
      raise FileNotFoundError(f"--images: no file matches {pattern!r}; give "
                              "image files, globs, test:N or test:idx=...")
    paths += found
  name = loaded.config.data.name
  size = loaded.config.model.image_size
  images = []
  for path in paths:
    if name in datasets.DATASETS:
      # Exactly as the training images were converted.
      image = datasets.read_image(pathlib.Path(path), name, size)
    else:  # MVTec patches: the files must already be patch-sized.
      image = datasets.to_rgb(datasets.decode_image(pathlib.Path(path)))
    if image.shape != (size, size, 3):
      raise ValueError(f"{path}: preprocessed to {image.shape}, but the "
                       f"model takes {size}x{size}x3 images; resize it.")
    images.append(image)
  return np.stack(images), [os.path.basename(p) for p in paths]


# ----------------------------------------------------------------------------
# Computing and drawing.


@dataclasses.dataclass
class Column:
  """One heat-map column of the figure."""
  title: str
  maps: np.ndarray  # [N, H, W] in [0, 1]
  scores: np.ndarray
  completeness: dict | None = None


def run_ig(scorer: Scorer, images: jax.Array, baseline_name: str, *,
           steps: int, blur_sigma: float | None, chunk: int) -> Column:
  kwargs = {"sigma": blur_sigma} if baseline_name == "blur" else {}
  baseline = gradients.make_baseline(baseline_name, images, **kwargs)
  ig = jax.jit(lambda x, b: gradients.integrated_gradients(
      scorer.score_fn, x, b, steps=steps, chunk=chunk))
  attributions = ig(images, baseline)
  check = gradients.completeness_gap(jax.jit(scorer.score_fn), images,
                                     baseline, attributions)
  return Column(f"{scorer.label}\nIG ({baseline_name})",
                gradients.attribution_heatmap(attributions),
                np.asarray(scorer.score_fn(images), np.float64),
                {k: v.tolist() for k, v in check.items()})


def run_gradcam(scorer: Scorer, images: jax.Array) -> Column:
  maps = jax.jit(scorer.gradcam_fn)(images)
  return Column(f"{scorer.label}\nGradCAM", gradients.normalize_maps(maps),
                np.asarray(scorer.score_fn(images), np.float64))


def render(images: np.ndarray, row_labels: Sequence[str],
           columns: Sequence[Column], title: str, path: pathlib.Path):
  """Input column + one overlay column each; rows are images."""
  n, ncols = len(images), 1 + len(columns)
  fig, axes = plt.subplots(n, ncols, figsize=(1.7 * ncols, 1.7 * n + 0.9),
                           squeeze=False)
  grey = images.astype(np.float64).mean(axis=-1) / 255.0
  for i in range(n):
    axes[i, 0].imshow(images[i])
    axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
    for j, col in enumerate(columns, start=1):
      axes[i, j].imshow(grey[i], cmap="gray", vmin=0, vmax=1)
      axes[i, j].imshow(col.maps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title("input", fontsize=7)
  for j, col in enumerate(columns, start=1):
    axes[0, j].set_title(col.title, fontsize=6)
  fig.suptitle(title, fontsize=7)
  fig.tight_layout()
  tmp = path.with_name(f".{path.name}.tmp")
  fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def _results_note(loaded: Sequence[Loaded]) -> str:
  parts = []
  for item in loaded:
    if workdir_lib.finished(item.workdir):
      auc = workdir_lib.Results.read(item.workdir).auc
      shown = {k: v for k, v in auc.items() if k in ("kde", "rot_sum")}
      parts.append(f"{_model_name(item)}: " + ", ".join(
          f"{k} AUC {100 * v:.1f}" for k, v in sorted(shown.items())))
  return "; ".join(parts)


def explain(workdirs: Sequence[str], images_spec: str, *,
            methods: Sequence[str] = METHODS,
            baselines: Sequence[str] = ("black", "blur"), steps: int = 64,
            blur_sigma: float | None = None, target: str = "normality",
            scores: Sequence[str] = ("auto",), embedding: str = "f",
            fit_max: int = 0, seed: int = 0, chunk: int = 8,
            ig_tolerance: float = 0.05, out: str | None = None) -> dict:
  """Computes the explanations, writes the PNGs and explain.json."""
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"Unknown --method {m!r}; use ig and/or gradcam.")
  if target not in ("normality", "anomaly"):
    raise ValueError(f"--target must be normality or anomaly, got {target!r}.")
  if not workdirs:
    raise ValueError("Give at least one --workdir.")
  sign = 1.0 if target == "normality" else -1.0
  mesh = parallel.make_mesh()
  loaded = [load_workdir(w, mesh) for w in workdirs]
  shapes = {tuple(item.run.data.meta["image_shape"]) for item in loaded}
  if len(shapes) > 1:
    raise ValueError(f"The workdirs take different image shapes {shapes}; "
                     "explain models of one dataset together.")
  images_u8, row_labels = select_images(images_spec, loaded[0], seed)
  images = augment.to_float(jnp.asarray(images_u8))
  scorers = [s for item in loaded for s in scorers_for(
      item, mesh, scores=scores, embedding=embedding, sign=sign,
      fit_max=fit_max, seed=seed)]

  out_dir = pathlib.Path(out or os.path.join(workdirs[0], "explain"))
  out_dir.mkdir(parents=True, exist_ok=True)
  note = captions.scale_note([config_lib.to_dict(i.config)
                              for i in loaded])
  results = {"images": row_labels, "target": target, "steps": steps,
             "scale": note, "columns": {}}
  for method in methods:
    columns = []
    for scorer in scorers:
      if method == "ig":
        columns += [run_ig(scorer, images, b, steps=steps,
                           blur_sigma=blur_sigma, chunk=chunk)
                    for b in baselines]
      else:
        columns.append(run_gradcam(scorer, images))
    for col in columns:
      key = f"{method}: {col.title.replace(chr(10), ' ')}"
      results["columns"][key] = {"score": col.scores.tolist(),
                                 "completeness": col.completeness}
      if col.completeness is not None:
        worst = max(col.completeness["relative"])
        if worst > ig_tolerance:
          logging.warning(
              "%s: IG completeness gap %.3g of |s(x) - s(baseline)| exceeds "
              "--ig_tolerance=%g; raise --steps.", key, worst, ig_tolerance)
    title = (f"{method.upper() if method == 'ig' else 'GradCAM'} of the "
             f"{target} score · scale: {note}\n{_results_note(loaded)}")
    path = out_dir / f"explain_{method}.png"
    render(images_u8, row_labels, columns, title, path)
    logging.info("Wrote %s", path)
  files.write_atomic(out_dir / "explain.json", json.dumps(results, indent=2))
  return results
