r"""Trains a study grid and draws its figures (paper Sections 5.1-5.3).

  # Paper scale (an accelerator; configs unchanged, 2,048 epochs per run):
  python -m oneclass_jax.tools.study --study=uniformity --root=runs/uniformity \
      --dataset=cifar10 --classes=0,1,2,3,4,5,6,7,8,9 --seeds=0,1,2,3,4
  python -m oneclass_jax.tools.study --study=contamination --root=runs/contam \
      --dataset=cifar10 --classes=0,1,2,3,4,5,6,7,8,9 --seeds=0,1,2,3,4
  python -m oneclass_jax.tools.study --study=distaug --root=runs/distaug \
      --dataset=cifar10 --classes=0,1,2,3,4,5,6,7,8,9 --seeds=0,1,2,3,4
  # CPU scale (narrow ResNet-10, every run sees --images_per_run images):
  python -m oneclass_jax.tools.study --study=uniformity --root=/tmp/uni --scale=cpu \
      --dataset=fashion_mnist --classes=0 --seeds=0 \
      --batch_sizes=8,16,32,64,128 --head_depths=0,2,8 --images_per_run=6400
  # Figures only, from runs already there:
  python -m oneclass_jax.tools.study --study=uniformity --root=/tmp/uni --plot_only \
      --out=docs/figures

Runs go to `<root>/<model>/<setting>/<dataset>_<class>/seed<seed>`; a run whose
results.json exists is skipped (so an interrupted sweep continues where it
stopped), then `analysis.json` is added (see `analysis/study_runs.py`; not for
`distaug`, whose Table 6 comes from `python -m oneclass_jax.tools.ensemble ROOT`).
Figures go to `--out` (default `<root>/figures`), with `summary_<study>.csv`
of every run.
Each figure states the scale of the runs it was drawn from.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import pathlib

from absl import app
from absl import flags
from absl import logging

from oneclass_jax import files
from oneclass_jax import parallel
from oneclass_jax.analysis import grids
from oneclass_jax.analysis import study_figures
from oneclass_jax.analysis import study_records
from oneclass_jax.analysis import study_runs



flags.DEFINE_enum("study", None, list(grids.STUDIES), "Which grid.")
flags.DEFINE_string("root", None, "Directory of the study's workdirs.")
flags.DEFINE_string("dataset", "cifar10", "Dataset of every run.")
flags.DEFINE_list("classes", ["0"], "Inlier classes.")
flags.DEFINE_list("seeds", ["0"], "Seeds.")
flags.DEFINE_enum("scale", "paper", list(grids.SCALES),
                  "paper: configs unchanged; cpu: grids.CPU_SCALE.")
flags.DEFINE_integer("images_per_run", 0, "> 0: every run trains on this "
                     "many images (steps = images // batch size); 0: the "
                     "config's epochs.")
flags.DEFINE_list("methods", None, "Models (configs/<name>.py); default: "
                  "the study's.")
flags.DEFINE_list("batch_sizes", None, "uniformity: batch sizes.")
flags.DEFINE_list("head_depths", None, "uniformity: MLP head depths.")
flags.DEFINE_list("depth_methods", None, "uniformity: models of the depth "
                  "runs (default: --methods).")
flags.DEFINE_integer("depth_batch_size", 32, "uniformity: batch size of "
                     "the depth runs.")
flags.DEFINE_integer("default_depth", 8, "uniformity: head depth of the "
                     "batch-size runs.")
flags.DEFINE_list("ratios_pct", None, "contamination: outlier ratios in %.")
flags.DEFINE_list("clean_fits", None, "contamination: clean-inlier counts "
                  "for the refitted detectors.")
flags.DEFINE_list("dist_sets", None, "distaug: dist_aug values "
                  "(first1..first8, rot90, ...).")
flags.DEFINE_list("detectors", None, "Detectors of every run (default: "
                  "the study's).")
flags.DEFINE_string("plot_detector", None, "Detector drawn in the plots.")
flags.DEFINE_multi_string("override", None, "Extra config override "
                          "key.sub=value (repeatable).")
flags.DEFINE_string("configs_dir", str(grids.CONFIGS_DIR),
                    "The repo's configs/ directory.")
flags.DEFINE_integer("mmd_points", 2000, "At most this many test inliers "
                     "in the MMD.")
flags.DEFINE_bool("plot_only", False, "Only draw figures from --root.")
flags.DEFINE_bool("dry_run", False, "Print the grid and stop.")
flags.DEFINE_string("out", None, "Figures directory (default "
                    "<root>/figures).")
flags.mark_flags_as_required(["study", "root"])

def _ints(values):
  return [int(v) for v in values] if values else None


def _specs(f) -> list[grids.RunSpec]:
  common = dict(dataset=f.dataset, classes=_ints(f.classes),
                seeds=_ints(f.seeds), detectors=f.detectors or None)
  if f.study == "uniformity":
    return grids.uniformity_grid(
        methods=f.methods or None, batch_sizes=_ints(f.batch_sizes),
        head_depths=_ints(f.head_depths),
        depth_methods=f.depth_methods or None,
        depth_batch_size=f.depth_batch_size, default_depth=f.default_depth,
        **common)
  if f.study == "contamination":
    ratios = ([float(r) / 100.0 for r in f.ratios_pct]
              if f.ratios_pct else None)
    return grids.contamination_grid(methods=f.methods or None,
                                     ratios=ratios, **common)
  return grids.distaug_grid(dist_sets=f.dist_sets or None, **common)


def _analyze_fn(f):
  """What each study adds to results.json (Table 6 needs only scores.npz)."""
  if f.study == "distaug":
    return None
  clean = _ints(f.clean_fits) or list(
      grids.DEFAULTS["contamination"]["clean_fits"])
  kwargs = {
      "uniformity": dict(mmd=True, auc_g=True),
      "contamination": dict(mmd=False, auc_g=False, clean_fits=clean),
  }[f.study]
  return functools.partial(study_runs.analyze_run, mesh=parallel.make_mesh(),
                           mmd_points=f.mmd_points, **kwargs)


def _plot_kwargs(f) -> dict:
  if f.study == "uniformity":
    return dict(detector=f.plot_detector or "kde",
                default_depth=f.default_depth,
                depth_batch_size=f.depth_batch_size)
  if f.study == "distaug":
    return dict(detector=f.plot_detector or "kde")
  return {}


def _write_summary(root: str, out: pathlib.Path, study: str) -> pathlib.Path:
  rows = study_records.summary_rows(study_records.load_records(root))
  columns = sorted({k for r in rows for k in r},
                   key=lambda k: (k.startswith(("auc", "mmd", "clean")), k))
  path = out / f"summary_{study}.csv"
  out.mkdir(parents=True, exist_ok=True)
  buffer = io.StringIO(newline="")
  writer = csv.DictWriter(buffer, columns)
  writer.writeheader()
  writer.writerows(rows)
  files.write_atomic(path, buffer.getvalue())
  return path


def main(argv):
  del argv
  f = flags.FLAGS
  out = pathlib.Path(f.out or os.path.join(f.root, "figures"))
  if not f.plot_only:
    specs = _specs(f)
    if f.dry_run:
      for spec in specs:
        print(spec.name, spec.config, dict(spec.overrides))
      return
    build = functools.partial(grids.build_config, scale=f.scale,
                              images_per_run=f.images_per_run,
                              extra=f.override or (),
                              configs_dir=f.configs_dir)
    study_runs.run_grid(specs, f.root, build=build, analyze=_analyze_fn(f))
  for path in study_figures.plot_study(f.study, f.root, out, **_plot_kwargs(f)):
    logging.info("Wrote %s", path)
  logging.info("Wrote %s", _write_summary(f.root, out, f.study))


if __name__ == "__main__":
  app.run(main)
