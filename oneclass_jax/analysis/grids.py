"""Study grids of the paper's Sections 5.1-5.3: which runs, with which configs.

A study is a list of `RunSpec`s: a config file of `configs/`, its variant
string and dotted overrides (`build_config` makes the config). The runs are
trained and analysed by `analysis.study_runs`, read back by
`analysis.study_records` and drawn by `analysis.study_figures`
(Figs 4, 5, 7, 8, 10, 11); `python -m oneclass_jax.tools.study` does all.

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
import pathlib
from typing import Any, Iterable, Sequence

import ml_collections



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
  current = get_field(config, key)
  if isinstance(current, bool):
    return key, raw.lower() in ("1", "true", "yes")
  if isinstance(current, (tuple, list)):
    return key, tuple(v for v in raw.split(",") if v)
  return key, type(current)(raw)


def get_field(config, key: str):
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
