r"""Scores a folder of new images with an exported scorer.

  python -m oneclass_jax.tools.score --model=EXPORTED_DIR --images=FOLDER \
      [--out=scores.csv] [--heatmaps=DIR]
  python -m oneclass_jax.tools.score --workdir=DIR --images=FOLDER \
      [--out=scores.csv] [--heatmaps=DIR] [--detector=kde] [--fpr=0.05] \
      [--calibration=FOLDER] [--evaluation=NAME]

--model scores with an artefact of `python -m oneclass_jax.tools.export`
(no workdir, no training data). --workdir exports one into
DIR/exported/ first, named by detector, fpr, checkpoint step, evaluation
and calibration folder, and reuses it while it matches the workdir
(`export.export_in_workdir`): either way the images go through the one
exported function. Writes one CSV row per image (path, score, verdict,
threshold); with --heatmaps, for an MVTec-style model, each image's anomaly
map as .npy and as a PNG overlay. How detector and threshold are chosen:
`oneclass_jax.export`. --evaluation=NAME takes the detector of a named
evaluation (`evaluate` with other detectors or embedding wrote
DIR/evaluations/NAME/) instead of the run's own.
"""
from absl import app
from absl import flags

from oneclass_jax import export
from oneclass_jax import scorer
from oneclass_jax import scoring

_MODEL = flags.DEFINE_string("model", None,
                             "An exported scorer folder (tools.export).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A trained and evaluated workdir (instead of --model): "
    "exported into DIR/exported/ first.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of images to score.")
_OUT = flags.DEFINE_string("out", "scores.csv", "Output CSV.")
_HEATMAPS = flags.DEFINE_string(
    "heatmaps", None, "Folder for each image's anomaly map (.npy and .png); "
    "MVTec-style models only.")
_DETECTOR = flags.DEFINE_string("detector", "kde",
                                "With --workdir: a detector fitted by "
                                "evaluate.")
_FPR = flags.DEFINE_float("fpr", 0.05, "With --workdir: target "
                          "false-positive rate on inliers.")
_CALIBRATION = flags.DEFINE_string(
    "calibration", None, "With --workdir: folder of fresh normal images "
    "whose scores set the threshold.")
_EVALUATION = flags.DEFINE_string(
    "evaluation", None, "With --workdir: a named evaluation (a folder of "
    "DIR/evaluations/) whose detector to use; default: the run's own.")
flags.mark_flags_as_required(["images"])
flags.mark_flags_as_mutual_exclusive(["model", "workdir"], required=True)
flags.register_validator("fpr", lambda fpr: 0.0 < fpr < 1.0,
                         "--fpr must be in (0, 1).")


def main(argv):
  del argv
  export_flags = [f"--{f}" for f in ("detector", "fpr", "calibration",
                                      "evaluation")
                  if flags.FLAGS[f].present]
  if _MODEL.value and export_flags:
    raise app.UsageError(
        f"{', '.join(export_flags)} set how a workdir is exported; an "
        f"exported --model carries its own: export again with "
        "`python -m oneclass_jax.tools.export`, or pass --workdir.")
  scoring.check_out(_OUT.value)
  model_dir = _MODEL.value or export.export_in_workdir(
      _WORKDIR.value, detector=_DETECTOR.value, fpr=_FPR.value,
      calibration=_CALIBRATION.value, evaluation=_EVALUATION.value)
  model = scorer.Scorer.load(model_dir)
  if _HEATMAPS.value and "maps" not in model.output_names:
    raise app.UsageError(f"--heatmaps: {model_dir} scores whole images and "
                         "has no anomaly maps (only MVTec-style models do).")
  scored = scoring.score_folder(model, _IMAGES.value)
  for problem in scored.problems:
    print(f"Skipped {problem}")
  rows = scored.rows()
  scoring.write_csv(_OUT.value, rows, scored.threshold)
  if _HEATMAPS.value:
    scoring.write_heatmaps(_HEATMAPS.value, scored, model.meta["map_range"])
  flagged = sum(v == "anomalous" for _, _, v in rows)
  print(f"Scored {len(rows)} images with {model_dir} ({flagged} anomalous "
        f"at threshold {scored.threshold:.5g}, target FPR "
        f"{model.meta['target_fpr']}); {len(scored.problems)} skipped. Wrote "
        f"{_OUT.value}{' and ' + _HEATMAPS.value if _HEATMAPS.value else ''}.")


if __name__ == "__main__":
  app.run(main)
