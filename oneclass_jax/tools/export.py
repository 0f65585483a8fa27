r"""Exports a trained, evaluated workdir as one self-contained scorer folder.

  python -m oneclass_jax.tools.export --workdir=DIR --out=model/ \
      [--detector=kde] [--fpr=0.05] [--calibration=FOLDER] \
      [--platforms=cpu,cuda] [--evaluation=NAME]

The folder holds a `jax.export` function (uint8 images in; anomaly scores
and verdicts out, and for an MVTec-style run the patch-score grids and
anomaly maps; network, preprocessing, detector or memory bank and threshold
inside) and its meta.json; `oneclass_jax.scorer.Scorer.load(out)` scores
with it using numpy and jax only, and `python -m oneclass_jax.tools.score
--model=out` scores a folder. The threshold is the (1 − fpr) quantile of
the evaluation's held-out training-inlier scores, or with --calibration of
the scores of that folder's normal images (required for MVTec-style runs).
--evaluation=NAME exports the detector of a named evaluation
(DIR/evaluations/NAME/, written by `evaluate` with other detectors or
embedding) instead of the run's own. What is inside: `oneclass_jax.export`.
"""
from absl import app
from absl import flags

from oneclass_jax import export

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "A trained and evaluated workdir.")
_OUT = flags.DEFINE_string("out", None, "The artefact folder to write.")
_DETECTOR = flags.DEFINE_string("detector", "kde",
                                "A detector fitted by evaluate.")
_FPR = flags.DEFINE_float("fpr", 0.05,
                          "Target false-positive rate on inliers.")
_CALIBRATION = flags.DEFINE_string(
    "calibration", None, "Folder of fresh normal images whose scores set the "
    "threshold (default: the held-out training-inlier scores).")
_EVALUATION = flags.DEFINE_string(
    "evaluation", None, "A named evaluation (a folder of DIR/evaluations/) "
    "whose detector to export; default: the run's own.")
_PLATFORMS = flags.DEFINE_list("platforms", list(export.PLATFORMS),
                               "jax.export platforms (cpu, cuda, rocm, tpu).")
flags.mark_flags_as_required(["workdir", "out"])
# Checked before the run is restored, which takes a while.
flags.register_validator("fpr", lambda fpr: 0.0 < fpr < 1.0,
                         "--fpr must be in (0, 1).")


def main(argv):
  del argv
  meta = export.export_workdir(_WORKDIR.value, _OUT.value,
                               detector=_DETECTOR.value, fpr=_FPR.value,
                               calibration=_CALIBRATION.value,
                               platforms=_PLATFORMS.value,
                               evaluation=_EVALUATION.value)
  calibration = meta["calibration"]
  evaluation = (f" (evaluation {meta['evaluation']})" if meta["evaluation"]
                else "")
  print(f"Wrote {_OUT.value}: {meta['detector']} on {meta['embedding']}"
        f"{evaluation}, "
        f"images {'x'.join(map(str, meta['image_shape']))} uint8, outputs "
        f"{','.join(meta['outputs'])}, threshold {meta['threshold']:.5g} "
        f"(target FPR {meta['target_fpr']}, {calibration['realised_fpr']:.4f} "
        f"on {calibration['count']} {calibration['source']} scores"
        f"{'; ' + calibration['warning'] if calibration['warning'] else ''}"
        f"), platforms {','.join(meta['platforms'])}.")


if __name__ == "__main__":
  app.run(main)
