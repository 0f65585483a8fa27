r"""Scores a folder of new images with a trained model and a fitted detector.

  python -m oneclass_jax.tools.score --workdir=DIR --images=FOLDER \
      --out=scores.csv [--detector=kde] [--fpr=0.05]

Writes one CSV row per image (path, score, verdict); how the detector and
the threshold are chosen is in `oneclass_jax.scoring`.
"""
from absl import app
from absl import flags

from oneclass_jax import scoring

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "A trained and evaluated workdir.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of images to score.")
_OUT = flags.DEFINE_string("out", "scores.csv", "Output CSV.")
_DETECTOR = flags.DEFINE_string("detector", "kde",
                                "A detector fitted by evaluate.")
_FPR = flags.DEFINE_float("fpr", 0.05,
                          "Target false-positive rate on inliers.")
flags.mark_flags_as_required(["workdir", "images"])


def main(argv):
  del argv
  scoring.check_out(_OUT.value)
  rows, threshold, problems = scoring.score_folder(
      _WORKDIR.value, _IMAGES.value, detector=_DETECTOR.value, fpr=_FPR.value)
  scoring.write_csv(_OUT.value, rows, threshold)
  flagged = sum(v == "anomalous" for _, _, v in rows)
  print(f"Scored {len(rows)} images ({flagged} anomalous at threshold "
        f"{threshold:.5g}, target FPR {_FPR.value}); {len(problems)} skipped. "
        f"Wrote {_OUT.value}.")


if __name__ == "__main__":
  app.run(main)
