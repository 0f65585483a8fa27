"""The figures of the paper's Sections 5.1-5.3, drawn from study records.

Each figure states the scale of the runs it was drawn from.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Sequence

import matplotlib
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from oneclass_jax.analysis import captions  # noqa: E402
from oneclass_jax.analysis import grids  # noqa: E402
from oneclass_jax.analysis import study_records  # noqa: E402
from oneclass_jax.analysis import uniformity  # noqa: E402
from oneclass_jax.data import geometric  # noqa: E402


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


def _title(fig, what: str, records: Sequence[study_records.Record]):
  note = captions.scale_note([r.config for r in records])
  fig.suptitle(f"{what}\nscale: {note}", fontsize=8)


def plot_uniformity(records: Sequence[study_records.Record], out: pathlib.Path, *,
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
    _errorbar(ax, study_records.series(records, batch, study_records.mmd_of(emb), at_depth),
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
      _errorbar(ax, study_records.series(records, x, study_records.auc_of(emb, detector), where),
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


def plot_mmd_auc_scatter(records: Sequence[study_records.Record], out: pathlib.Path, *,
                         detector: str = "kde") -> pathlib.Path:
  """Fig. 8: log MMD²(g∘f) against the AUC of g∘f and of f, Pearson r.

  The paper's points are the batch-size runs (one head depth); pass those.
  """
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
  for ax, emb in zip(axes, ("g", "f")):
    by_model: dict[str, list] = {}
    excluded = 0
    for r in records:
      m, a = study_records.mmd_of("g")(r), study_records.auc_of(emb, detector)(r)
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


def plot_contamination(records: Sequence[study_records.Record], out: pathlib.Path, *,
                       detectors: Sequence[str] = ("ocsvm", "gde",
                                                   "ocsvm_linear", "kde")
                       ) -> list[pathlib.Path]:
  """Figs. 5a/10 (contaminated fit) and 5b/5c/11 (clean refits)."""
  pct = lambda r: 100.0 * r.get("data.contamination")  # noqa: E731
  present = [d for d in detectors if any(d in r.auc_f for r in records)]
  fig, axes = plt.subplots(1, len(present), figsize=(4.6 * len(present), 4.2),
                           squeeze=False)
  for ax, det in zip(axes[0], present):
    _errorbar(ax, study_records.series(records, pct, study_records.auc_of("f", det)))
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
      _errorbar(ax, study_records.series(records, pct, value))
      ax.set(xlabel="outlier ratio in the representation's training set (%)",
             ylabel=f"AUC ({det}) ×100",
             title=f"{det} fitted on {n} clean inliers")
      _ratio_axis(ax, ticks)
    _title(fig, "Unsupervised representation, clean one-class detector "
           "(paper Figs. 5b/5c, 11)", records)
    fig.tight_layout()
    paths.append(_save(fig, out / "contamination_fig5bc_fig11.png"))
  return paths


def plot_distaug(records: Sequence[study_records.Record], out: pathlib.Path, *,
                 detector: str = "kde") -> pathlib.Path:
  """Fig. 7: AUC of contrastive (DA) over accumulated distribution sets."""
  by_set: dict[str, list] = {}
  for r in records:
    a = study_records.auc_of("f", detector)(r)
    if a is not None:
      by_set.setdefault(r.get("data.dist_aug"), []).append(a)
  order = sorted(by_set, key=lambda s: len(geometric.dist_aug_transforms(s)))
  labels = [captions.set_label(s) for s in order]
  stats = [study_records.mean_std(by_set[s]) for s in order]
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
  records = study_records.load_records(root)
  if study == "uniformity":
    return plot_uniformity(records, out, **kwargs)
  if study == "contamination":
    return plot_contamination(records, out, **kwargs)
  if study == "distaug":
    return [plot_distaug(records, out, **kwargs)]
  raise ValueError(f"Unknown study {study!r}; use one of {grids.STUDIES}.")
