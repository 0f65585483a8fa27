r"""Visual explanations of deep one-class classifiers (Sections 3.2.1, 5.4).

  python -m oneclass_jax.tools.explain --workdir=DIR[,DIR2,...] \
      --images=test:8 [--method=ig,gradcam] [--baselines=black,blur] \
      [--steps=64] [--out=DIR]

What is explained and how, and what is written, is in
`analysis.explanations`.
"""
from absl import app
from absl import flags

from oneclass_jax.analysis import explanations

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "Trained workdir(s); one column group "
                  "each, in this order.")
flags.DEFINE_string("images", "test:8", "test:N, test:idx=i,j,... or image "
                    "files/globs separated by commas.")
flags.DEFINE_list("method", ["ig", "gradcam"], "ig and/or gradcam.")
flags.DEFINE_list("baselines", ["black", "blur"], "IG baselines: black, "
                  "blur.")
flags.DEFINE_integer("steps", 64, "IG trapezoidal intervals.")
flags.DEFINE_float("blur_sigma", 0.0, "Blur baseline sigma in pixels "
                   "(0 = image side / 8).")
flags.DEFINE_enum("target", "normality", ["normality", "anomaly"],
                  "Explain the normality score (paper) or its negation.")
flags.DEFINE_list("scores", ["auto"], "auto, or kde and/or rotation.")
flags.DEFINE_enum("embedding", "f", ["f", "g"], "Representation the KDE is "
                  "fitted on.")
flags.DEFINE_integer("fit_max", 0, "Fit the KDE on at most this many "
                     "fit-set images (0 = all).")
flags.DEFINE_integer("seed", 0, "Draws test images and fit subsets.")
flags.DEFINE_integer("chunk", 8, "IG path points per network pass.")
flags.DEFINE_float("ig_tolerance", 0.05, "Largest accepted relative "
                   "completeness gap.")
flags.DEFINE_string("out", None, "Output dir (default: <first "
                    "workdir>/explain).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  f = FLAGS
  explanations.explain(
      f.workdir, f.images, methods=f.method, baselines=f.baselines,
      steps=f.steps, blur_sigma=f.blur_sigma or None, target=f.target,
      scores=f.scores, embedding=f.embedding, fit_max=f.fit_max, seed=f.seed,
      chunk=f.chunk, ig_tolerance=f.ig_tolerance, out=f.out)


if __name__ == "__main__":
  app.run(main)
