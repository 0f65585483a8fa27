"""Grids of training runs and the figures of Sections 5.1-5.3 (Figs 4, 5, 7, 8,
10, 11) drawn from them.

A study is a list of `RunSpec`s: a config file of `configs/`, its variant
string and dotted overrides. `run_grid` trains each one with
`single.train_and_evaluate` into `<root>/<spec.name>` (a run whose
results.json exists is not retrained; a half-finished one resumes from its
checkpoint) and then writes `analysis.json` beside it with what the plots need
beyond results.json:

* `auc_g`: the same detectors on g∘f instead of f (Fig. 4b/4c, Fig. 8);
* `mmd2`: MMD²_u between the L2-normalised embeddings (f and g∘f) of the
  test-set inliers (held-out inliers, as the paper's validation set) and as
  many uniform points on the sphere (`analysis.uniformity`);
* `clean_fit`: for contaminated training sets, the detectors refitted on
  N clean inliers only (the train images whose hidden `true_label` is 0;
  Figs. 5b/5c, 11), N in `clean_fits`.

Studies (paper scale = the configs unchanged; `cpu` scale = `CPU_SCALE`):

* `uniformity`: contrastive and contrastive (DA) over batch sizes at the
  default head depth, and over head depths at one batch size (Fig. 4, 8).
* `contamination`: RotNet, rotation (MLP head), contrastive, contrastive (DA)
  over outlier ratios, representation and detector both trained on the
  contaminated set (Figs. 5a, 10) plus clean refits (Figs. 5b/5c, 11).
* `distaug`: contrastive (DA) over accumulated distribution sets `first<n>`
  (Fig. 7); the seeds and sets feed `oneclass_jax.tools.ensemble` (Table 6).

A run's length is the config's (2,048 epochs) unless `images_per_run` is set:
then every run gets `images_per_run // batch_size` steps, i.e. the same number
of training images whatever the batch size, as fixed epochs would.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

from absl import logging
import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from oneclass_jax.analysis import captions  # noqa: E402
from oneclass_jax.analysis import uniformity  # noqa: E402
from oneclass_jax import config_lib  # noqa: E402
from oneclass_jax import detectors  # noqa: E402
from oneclass_jax import embeddings  # noqa: E402
from oneclass_jax import evaluators  # noqa: E402
from oneclass_jax import experiment  # noqa: E402
from oneclass_jax import files  # noqa: E402
from oneclass_jax import metrics  # noqa: E402
from oneclass_jax import parallel  # noqa: E402
from oneclass_jax.trainer import single  # noqa: E402
from oneclass_jax import workdir as workdir_lib  # noqa: E402

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
STUDIES = ("uniformity", "contamination", "distaug")

# CPU scale: a narrow ResNet-10 and a narrow head; per-step cosine decay
# (runs are a few hundred steps). Durations come from `images_per_run`.
CPU_SCALE = {
    "model.backbone": "resnet10",
    "model.width": 0.125,
    "model.stem_width": 8,
    "model.head_width": 64,
    "optim.learning_rate": 0.05,
    "optim.schedule_granularity": "step",
    "log_every_steps": 50,
    "checkpoint_every_steps": 100000,
    "keep_checkpoints": 1,
    "eval.batch_size": 500,
}
SCALES = {"paper": {}, "cpu": CPU_SCALE}

DEFAULTS = {
    "uniformity": dict(methods=("contrastive", "contrastive_da"),
                       batch_sizes=(8, 16, 32, 64, 128, 256, 512),
                       head_depths=(0, 1, 2, 4, 8), depth_batch_size=32,
                       detectors=("kde",)),
    "contamination": dict(methods=("rotnet", "rotation", "contrastive",
                                   "contrastive_da"),
                          ratios=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1),
                          clean_fits=(50, 100),
                          detectors=("ocsvm", "kde", "gde", "ocsvm_linear")),
    "distaug": dict(dist_sets=tuple(f"first{n}" for n in range(1, 9)),
                    detectors=("kde", "ocsvm")),
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of a grid."""
  name: str  # path under the root
  config: str  # configs/<config>.py
  arg: str  # variant string (dataset=...,inlier_class=...,seed=...)
  overrides: tuple[tuple[str, Any], ...] = ()


# ----------------------------------------------------------------------------
# Configs.


def load_config(name: str, arg: str,
                configs_dir: pathlib.Path | str = CONFIGS_DIR
                ) -> ml_collections.ConfigDict:
  """`configs/<name>.py` get_config(arg)."""
  path = pathlib.Path(configs_dir) / f"{name}.py"
  if not path.exists():
    raise FileNotFoundError(f"Config {path} not found; pass configs_dir "
                            "(--configs_dir) pointing at the repo's configs/.")
  spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parse_override(text: str, config) -> tuple[str, Any]:
  """'a.b=value' -> ('a.b', value cast to the type of the existing field)."""
  key, sep, raw = text.partition("=")
  if not sep or not key:
    raise ValueError(f"Override {text!r} must look like key.sub=value.")
  current = _get(config, key)
  if isinstance(current, bool):
    return key, raw.lower() in ("1", "true", "yes")
  if isinstance(current, (tuple, list)):
    return key, tuple(v for v in raw.split(",") if v)
  return key, type(current)(raw)


def _get(config, key: str):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ValueError(f"Unknown config field {key!r} (no {part!r}).")
    node = node[part]
  return node


def apply_overrides(config, overrides: Iterable[tuple[str, Any]]):
  """Sets dotted fields on a copy of the (locked) config; unknown keys fail."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise ValueError(f"Unknown config field {key!r}.")
    node[leaf] = value
  config.lock()
  return config


def scale_overrides(config, scale: str) -> dict[str, Any]:
  """The overrides of a scale, adapted to the config (rotation's head)."""
  if scale not in SCALES:
    raise ValueError(f"Unknown scale {scale!r}; use {sorted(SCALES)}.")
  out = dict(SCALES[scale])
  # The rotation head ends in a layer as wide as its hidden ones (512).
  if ("model.head_width" in out and config.model.head_depth and
      config.model.head_out_dim == config.model.head_width):
    out["model.head_out_dim"] = out["model.head_width"]
  return out


def build_config(spec: RunSpec, *, scale: str = "paper",
                 images_per_run: int = 0, extra: Sequence[str] = (),
                 configs_dir=CONFIGS_DIR) -> ml_collections.ConfigDict:
  """The config of one run: file + variant, scale, grid values, extras."""
  config = load_config(spec.config, spec.arg, configs_dir)
  config = apply_overrides(config, scale_overrides(config, scale).items())
  config = apply_overrides(config, spec.overrides)
  config = apply_overrides(config, [parse_override(t, config) for t in extra])
  if images_per_run:  # last, so it sees the final batch size
    steps = max(1, images_per_run // config.batch_size)
    config = apply_overrides(config, [("total_epochs", -1),
                                      ("total_steps", steps)])
  return config


# ----------------------------------------------------------------------------
# Grids.


def _variant(dataset: str, inlier_class: int, seed: int) -> str:
  return f"dataset={dataset},inlier_class={inlier_class},seed={seed}"


def uniformity_grid(*, dataset: str, classes: Sequence[int],
                    seeds: Sequence[int], methods=None, batch_sizes=None,
                    head_depths=None, depth_methods=None,
                    depth_batch_size=None, default_depth: int = 8,
                    detectors=None) -> list[RunSpec]:
  """Batch-size runs at `default_depth` and depth runs at one batch size."""
  d = DEFAULTS["uniformity"]
  methods = methods or d["methods"]
  depth_methods = methods if depth_methods is None else depth_methods
  detectors = tuple(detectors or d["detectors"])
  depth_batch_size = depth_batch_size or d["depth_batch_size"]
  pairs = [(m, b, default_depth) for m in methods
           for b in (batch_sizes or d["batch_sizes"])]
  pairs += [(m, depth_batch_size, h) for m in depth_methods
            for h in (head_depths if head_depths is not None
                      else d["head_depths"])]
  specs = {}
  for cls in classes:
    for seed in seeds:
      for method, batch, depth in pairs:
        name = f"{method}/bs{batch}_depth{depth}/{dataset}_{cls}/seed{seed}"
        specs[name] = RunSpec(name, method,
                              _variant(dataset, cls, seed),
                              (("batch_size", batch),
                               ("model.head_depth", depth),
                               ("eval.detectors", detectors)))
  return list(specs.values())


def contamination_grid(*, dataset: str, classes: Sequence[int],
                       seeds: Sequence[int], methods=None, ratios=None,
                       detectors=None) -> list[RunSpec]:
  """Each method trained (and its detectors fitted) on contaminated sets."""
  d = DEFAULTS["contamination"]
  detectors = tuple(detectors or d["detectors"])
  specs = []
  for cls in classes:
    for seed in seeds:
      for method in methods or d["methods"]:
        for ratio in ratios if ratios is not None else d["ratios"]:
          name = (f"{method}/contam{100 * ratio:g}pct/{dataset}_{cls}/"
                  f"seed{seed}")
          dets = detectors + (("rotation",) if method in ("rotation",
                                                          "rotnet") else ())
          specs.append(RunSpec(name, method,
                               _variant(dataset, cls, seed),
                               (("data.contamination", float(ratio)),
                                ("eval.detectors", dets))))
  return specs


def distaug_grid(*, dataset: str, classes: Sequence[int],
                 seeds: Sequence[int], dist_sets=None,
                 detectors=None) -> list[RunSpec]:
  """Contrastive (DA) on accumulated distribution sets (Fig. 7, Table 6)."""
  d = DEFAULTS["distaug"]
  detectors = tuple(detectors or d["detectors"])
  specs = []
  for cls in classes:
    for seed in seeds:
      for dist in dist_sets or d["dist_sets"]:
        name = f"contrastive_da/{dist}/{dataset}_{cls}/seed{seed}"
        specs.append(RunSpec(name, "contrastive_da",
                             _variant(dataset, cls, seed),
                             (("data.dist_aug", dist),
                              ("eval.detectors", detectors))))
  return specs


# ----------------------------------------------------------------------------
# Running.


def analyze_run(workdir: str, *, mmd: bool = True, auc_g: bool = True,
                clean_fits: Sequence[int] = (), mmd_points: int = 2000,
                mesh=None) -> dict:
  """Writes `<workdir>/analysis.json` (see the module docstring)."""
  mesh = mesh or parallel.make_mesh()
  config, run, state = experiment.restore_run(workdir, mesh)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  extract = lambda src: embeddings.extract(  # noqa: E731
      run.model, variables, src, mesh, batch_size=config.eval.batch_size)
  names = [n for n in config.eval.detectors if n != detectors.ROTATION]
  fit, test = extract(run.data.fit), extract(run.data.test)
  labels = embeddings.labels_of(run.data.test)
  out: dict[str, Any] = {"detectors": names}
  if auc_g:
    out["auc_g"] = _aucs(names, fit["embeds"], test["embeds"], labels)
  if mmd:
    inliers = labels == 0
    out["mmd2"] = {
        e: uniformity.uniformity_mmd2(test[k][inliers], seed=int(config.seed),
                                      max_points=mmd_points)
        for e, k in embeddings.EMBEDDING_KEYS.items()}
    out["mmd_points"] = int(min(mmd_points, inliers.sum()))
    out["mmd_bandwidth"] = uniformity.DEFAULT_BANDWIDTH
  if clean_fits:
    key = embeddings.EMBEDDING_KEYS[config.eval.embedding]
    out["clean_fit"] = _clean_fits(run.data.fit, fit[key], test[key], labels,
                                   names, clean_fits, int(config.seed))
  files.write_json(files.path(workdir) / workdir_lib.ANALYSIS, out)
  return out


def _aucs(names, fit_features, test_features, labels) -> dict:
  scores = evaluators.one_class.fit_and_score(names, fit_features, test_features)
  return {n: float(metrics.auroc(labels, s)) for n, s in scores.items()}


def clean_rows(true_labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """n positions of true inliers (true_label 0), drawn with `seed`, sorted."""
  clean = np.flatnonzero(np.asarray(true_labels) == 0)
  if n > len(clean):
    raise ValueError(f"Asked for {n} clean inliers but the training set has "
                     f"only {len(clean)}.")
  return np.sort(np.random.RandomState(seed).permutation(clean)[:n])


def _clean_fits(fit_source, fit_features, test_features, labels, names,
                sizes, seed) -> dict:
  true = fit_source.true_labels
  if true is None:
    raise ValueError("The fit set carries no true labels; clean refits need "
                     "a run built by data.one_class.")
  out = {}
  for n in sizes:
    rows = clean_rows(true, int(n), seed)
    out[str(n)] = _aucs(names, fit_features[rows], test_features, labels)
  return out


def _check_same_config(workdir: str, config) -> None:
  """A finished run is only reused for the very config the grid asks for."""
  saved = workdir_lib.Results.read(workdir).config
  diff = config_lib.config_diff(saved, config_lib.to_dict(config),
                                ignore=("log_every_steps",
                                        "checkpoint_every_steps",
                                        "keep_checkpoints"))
  if diff:
    raise ValueError(
        f"{workdir} holds a run of a different config than the grid's:\n  "
        + "\n  ".join(diff) + "\nUse another --root or remove that run.")


def run_grid(specs: Sequence[RunSpec], root: str, *,
             build: Callable[[RunSpec], ml_collections.ConfigDict],
             analyze: Callable[[str], dict] | None = None,
             train_fn: Callable | None = None) -> list[str]:
  """Trains every spec not yet done (sequentially), then analyzes it.

  Args:
    specs: the grid.
    root: runs go to `<root>/<spec.name>`.
    build: spec -> config.
    analyze: workdir -> analysis dict, run when analysis.json is missing.
    train_fn: (config, workdir) -> results; `single.train_and_evaluate` by
      default (a parameter so tests can count calls).

  Returns:
    The workdirs, in grid order.
  """
  if train_fn is None:
    train_fn = single.train_and_evaluate
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError("Two runs of the grid share a name; the grid repeats a "
                     "setting.")
  workdirs = []
  for i, spec in enumerate(specs, start=1):
    workdir = os.path.join(root, spec.name)
    workdirs.append(workdir)
    config = build(spec)
    if workdir_lib.finished(workdir):
      _check_same_config(workdir, config)
      logging.info("[%d/%d] %s: done, skipped.", i, len(specs), spec.name)
    else:
      logging.info("[%d/%d] %s: training.", i, len(specs), spec.name)
      train_fn(config, workdir)
    if analyze is not None and not os.path.exists(
        os.path.join(workdir, workdir_lib.ANALYSIS)):
      analyze(workdir)
  return workdirs


# ----------------------------------------------------------------------------
# Reading runs back.


@dataclasses.dataclass
class Record:
  """What the plots need from one workdir."""
  workdir: str
  config: dict
  auc_f: dict
  analysis: dict

  @property
  def method(self) -> str:
    return captions.model_label(self.config)

  def get(self, key: str):
    return _get(self.config, key)


def load_records(root: str) -> list[Record]:
  """Every workdir under `root` with a results.json (analysis.json optional)."""
  records = []
  for run in workdir_lib.find_runs(root):
    analysis_path = run.path / workdir_lib.ANALYSIS
    analysis = (files.read_json(analysis_path) if analysis_path.exists()
                else {})
    records.append(Record(str(run.path), run.config, run.auc, analysis))
  return records


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def series(records: Sequence[Record], x: Callable[[Record], Any],
           value: Callable[[Record], Any],
           where: Callable[[Record], bool] = lambda r: True
           ) -> dict[str, tuple[list, list, list, list]]:
  """{model: (xs, means, stds, counts)} of value(record) grouped by x(record).

  Values are averaged over everything else that varies (seeds, classes);
  records whose value is None are left out.
  """
  groups: dict[str, dict[Any, list]] = {}
  for r in records:
    if not where(r):
      continue
    v = value(r)
    if v is None:
      continue
    groups.setdefault(r.method, {}).setdefault(x(r), []).append(v)
  out = {}
  for model, by_x in sorted(groups.items()):
    xs = sorted(by_x)
    stats = [_mean_std(by_x[x]) for x in xs]
    out[model] = (xs, [s[0] for s in stats], [s[1] for s in stats],
                  [len(by_x[x]) for x in xs])
  return out


def _auc(embedding: str, detector: str):
  def value(r: Record):
    if embedding == "f":
      v = r.auc_f.get(detector)
    else:
      v = r.analysis.get("auc_g", {}).get(detector)
    return None if v is None else 100.0 * v
  return value


def _mmd(embedding: str):
  return lambda r: r.analysis.get("mmd2", {}).get(embedding)


# ----------------------------------------------------------------------------
# Figures.


# One colour per model in every figure; line styles tell f from g∘f.
_COLORS = {"Contrastive": "tab:blue", "Contrastive (DA)": "tab:red",
           "Rotation": "tab:green", "RotNet": "tab:purple",
           "DAE": "tab:brown"}


def _errorbar(ax, data, label_suffix="", **kwargs):
  for model, (xs, means, stds, _) in data.items():
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                color=_COLORS.get(model), label=f"{model}{label_suffix}",
                **kwargs)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  fig.savefig(tmp, format="png", dpi=110)
  plt.close(fig)
  os.replace(tmp, path)
  return path


def _title(fig, what: str, records: Sequence[Record]):
  note = captions.scale_note([r.config for r in records])
  fig.suptitle(f"{what}\nscale: {note}", fontsize=8)


def plot_uniformity(records: Sequence[Record], out: pathlib.Path, *,
                    detector: str = "kde", default_depth: int = 8,
                    depth_batch_size: int = 32) -> list[pathlib.Path]:
  """Fig. 4 (MMD and AUC vs batch size, AUC vs depth) and Fig. 8."""
  batch = lambda r: r.get("batch_size")  # noqa: E731
  depth = lambda r: r.get("model.head_depth")  # noqa: E731
  at_depth = lambda r: depth(r) == default_depth  # noqa: E731
  at_batch = lambda r: batch(r) == depth_batch_size  # noqa: E731
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
  ax = axes[0]
  for emb, style in (("g", "-"), ("f", "--")):
    _errorbar(ax, series(records, batch, _mmd(emb), at_depth),
              f" {'g∘f' if emb == 'g' else 'f'}", linestyle=style)
  ax.axhline(0.0, color="grey", linewidth=0.8)
  g_dims = {r.get("model.head_out_dim") for r in records}
  if len(g_dims) == 1 and min(g_dims) > 1:
    # The top of the scale: every embedding in one direction (collapse).
    ax.axhline(uniformity.point_mass_mmd2(g_dims.pop()), color="grey",
               linestyle=":", label="point mass (collapsed g∘f)")
  ax.set(xlabel="batch size", ylabel="MMD²_u to uniform on the sphere",
         title=f"(a) uniformity (lower = more uniform), depth {default_depth}")
  ax.set_xscale("log", base=2)
  for ax, x, where, xlabel in ((axes[1], batch, at_depth, "batch size"),
                               (axes[2], depth, at_batch, "MLP head depth")):
    for emb, style in (("g", "-"), ("f", "--")):
      _errorbar(ax, series(records, x, _auc(emb, detector), where),
                f" {'g∘f' if emb == 'g' else 'f'}", linestyle=style)
    ax.set(xlabel=xlabel, ylabel=f"AUC ({detector}) ×100")
  axes[1].set_xscale("log", base=2)
  axes[1].set_title(f"(b) AUC vs batch size, depth {default_depth}")
  axes[2].set_title(f"(c) AUC vs head depth, batch {depth_batch_size}")
  for ax in axes:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  _title(fig, "Uniformity, batch size and MLP head (paper Fig. 4)", records)
  fig.tight_layout()
  paths = [_save(fig, out / "uniformity_fig4.png")]
  paths.append(plot_mmd_auc_scatter([r for r in records if at_depth(r)],
                                    out, detector=detector))
  return paths


def plot_mmd_auc_scatter(records: Sequence[Record], out: pathlib.Path, *,
                         detector: str = "kde") -> pathlib.Path:
  """Fig. 8: log MMD²(g∘f) against the AUC of g∘f and of f, Pearson r.

  The paper's points are the batch-size runs (one head depth); pass those.
  """
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
  for ax, emb in zip(axes, ("g", "f")):
    by_model: dict[str, list] = {}
    excluded = 0
    for r in records:
      m, a = _mmd("g")(r), _auc(emb, detector)(r)
      if m is None or a is None:
        continue
      if m <= 0:
        excluded += 1  # No logarithm: indistinguishable from uniform.
        continue
      by_model.setdefault(r.method, []).append(
          (math.log(m), a, f"b{r.get('batch_size')}"))
    pts = [p[:2] for v in by_model.values() for p in v]
    for model, values in sorted(by_model.items()):
      ax.scatter([v[0] for v in values], [v[1] for v in values], label=model,
                 s=18, color=_COLORS.get(model))
      for x, y, tag in values:  # the batch size of each run
        ax.annotate(tag, (x, y), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    r_text = "n < 3"
    if len(pts) >= 3:
      p = np.asarray(pts)
      r_text = f"Pearson r = {np.corrcoef(p[:, 0], p[:, 1])[0, 1]:.3f}"
    extra = f"; {excluded} run(s) with MMD² ≤ 0 not drawn" if excluded else ""
    ax.set(xlabel="log MMD²_u (g∘f)",
           ylabel=f"AUC ({detector}, {'g∘f' if emb == 'g' else 'f'}) ×100",
           title=f"{r_text} over {len(pts)} runs{extra}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  _title(fig, "Uniformity vs one-class AUC over batch sizes (paper Fig. 8)",
         records)
  fig.tight_layout()
  return _save(fig, out / "uniformity_fig8.png")


def _ratio_axis(ax, ticks):
  """Outlier ratios on a symlog axis, labelled with the ratios that ran."""
  ax.set_xscale("symlog", linthresh=0.5)
  ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
  ax.minorticks_off()
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)


def plot_contamination(records: Sequence[Record], out: pathlib.Path, *,
                       detectors: Sequence[str] = ("ocsvm", "gde",
                                                   "ocsvm_linear", "kde")
                       ) -> list[pathlib.Path]:
  """Figs. 5a/10 (contaminated fit) and 5b/5c/11 (clean refits)."""
  pct = lambda r: 100.0 * r.get("data.contamination")  # noqa: E731
  present = [d for d in detectors if any(d in r.auc_f for r in records)]
  fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 4.2),
                           squeeze=False)
  for ax, det in zip(axes[0], present):
    _errorbar(ax, series(records, pct, _auc("f", det)))
    ax.set(xlabel="outlier ratio in the training set (%)",
           ylabel=f"AUC ({det}) ×100",
           title=f"representation and {det} on contaminated data")
    ax.title.set_fontsize(8)
  ticks = sorted({pct(r) for r in records})
  for ax in axes[0]:
    _ratio_axis(ax, ticks)
  _title(fig, "Unsupervised setting (paper Figs. 5a, 10); 0% = one-class",
         records)
  fig.tight_layout()
  paths = [_save(fig, out / "contamination_fig5a_fig10.png")]

  sizes = sorted({int(n) for r in records
                  for n in r.analysis.get("clean_fit", {})})
  if sizes:
    det = "ocsvm" if "ocsvm" in present else present[0]
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.8 * len(sizes), 4.2),
                             squeeze=False)
    for ax, n in zip(axes[0], sizes):
      value = lambda r, n=n: (  # noqa: E731
          None if str(n) not in r.analysis.get("clean_fit", {}) else
          100.0 * r.analysis["clean_fit"][str(n)][det])
      _errorbar(ax, series(records, pct, value))
      ax.set(xlabel="outlier ratio in the representation's training set (%)",
             ylabel=f"AUC ({det}) ×100",
             title=f"{det} fitted on {n} clean inliers")
      _ratio_axis(ax, ticks)
    _title(fig, "Unsupervised representation, clean one-class detector "
           "(paper Figs. 5b/5c, 11)", records)
    fig.tight_layout()
    paths.append(_save(fig, out / "contamination_fig5bc_fig11.png"))
  return paths


def plot_distaug(records: Sequence[Record], out: pathlib.Path, *,
                 detector: str = "kde") -> pathlib.Path:
  """Fig. 7: AUC of contrastive (DA) over accumulated distribution sets."""
  from oneclass_jax.data import one_class  # pylint: disable=g-import-not-at-top
  by_set: dict[str, list] = {}
  for r in records:
    a = _auc("f", detector)(r)
    if a is not None:
      by_set.setdefault(r.get("data.dist_aug"), []).append(a)
  order = sorted(by_set, key=lambda s: len(one_class.dist_aug_transforms(s)))
  labels = [captions.set_label(s) for s in order]
  stats = [_mean_std(by_set[s]) for s in order]
  fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(order)), 4.2))
  ax.bar(range(len(order)), [s[0] for s in stats],
         yerr=[s[1] for s in stats], capsize=4, color="tab:blue")
  for i, dist in enumerate(order):  # every run, not only the mean
    ax.scatter([i] * len(by_set[dist]), by_set[dist], color="black", s=12,
               zorder=3)
  lo = min(min(v) for v in by_set.values())
  bottom = max(0.0, min(lo, min(s[0] - s[1] for s in stats)) - 5)
  ax.set_ylim(bottom, min(100.0, max(max(max(v) for v in by_set.values()),
                                     max(s[0] + s[1] for s in stats)) + 3))
  for i, (m, sd) in enumerate(stats):
    ax.text(i, bottom + 1, f"{m:.1f}±{sd:.1f}", ha="center", va="bottom",
            fontsize=7, color="white")
  ax.set_xticks(range(len(order)), labels, fontsize=7, rotation=20)
  ax.set(ylabel=f"AUC ({detector}) ×100",
         title="accumulated distributions (left to right); dots: runs")
  _title(fig, "Distribution augmentation sets (paper Fig. 7)", records)
  fig.tight_layout()
  return _save(fig, out / "distaug_fig7.png")


def plot_study(study: str, root: str, out: pathlib.Path,
               **kwargs) -> list[pathlib.Path]:
  """The figures of one study from every run under `root`."""
  records = load_records(root)
  if study == "uniformity":
    return plot_uniformity(records, out, **kwargs)
  if study == "contamination":
    return plot_contamination(records, out, **kwargs)
  if study == "distaug":
    return [plot_distaug(records, out, **kwargs)]
  raise ValueError(f"Unknown study {study!r}; use one of {STUDIES}.")


def summary_rows(records: Sequence[Record]) -> list[Mapping[str, Any]]:
  """One flat row per run (for a CSV beside the figures)."""
  rows = []
  for r in records:
    row = {"workdir": r.workdir, "model": r.method,
           "batch_size": r.get("batch_size"),
           "head_depth": r.get("model.head_depth"),
           "dist_aug": r.get("data.dist_aug"),
           "contamination": r.get("data.contamination"),
           "seed": r.get("seed"), "inlier_class": r.get("data.inlier_class")}
    row.update({f"auc_f_{k}": v for k, v in r.auc_f.items()})
    row.update({f"auc_g_{k}": v
                for k, v in r.analysis.get("auc_g", {}).items()})
    row.update({f"mmd2_{k}": v
                for k, v in r.analysis.get("mmd2", {}).items()})
    for n, aucs in r.analysis.get("clean_fit", {}).items():
      row.update({f"clean{n}_{k}": v for k, v in aucs.items()})
    rows.append(row)
  return rows
