r"""Re-evaluates a trained workdir (stage 2), with the detectors of its task.

  python -m oneclass_jax.tools.evaluate --workdir=/tmp/run [--detectors=kde,ocsvm] [--embedding=f]

Restores the newest intact checkpoint of a workdir written by
`oneclass_jax.main` and runs the evaluator of its task
(`oneclass_jax.evaluators`): for one-class runs, detectors on f (or g∘f) and
an AUC per detector; for MVTec-style runs, patch detection and localization.
Without --detectors / --embedding (or with the config's own), it rewrites
the run's own `results.json` and other outputs at the top of the workdir.
A one-class run evaluated with another detector set or embedding gets a
named evaluation instead, `WORKDIR/evaluations/<embedding>-<sorted
detectors>/` (e.g. `g-kde-ocsvm`), and its own results stay as they were;
`report` lists both, and `score` / `export --evaluation=NAME` use its
detectors. Flags the task cannot honour (unknown or no detectors, the
rotation score of another method, any of them on an MVTec-style run) are
refused before anything is restored.
"""
from absl import app
from absl import flags

from oneclass_jax import evaluators
from oneclass_jax import workdir

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "A workdir written by oneclass_jax.main.")
_DETECTORS = flags.DEFINE_list("detectors", None,
                               "Detectors (default: the config's).")
_EMBEDDING = flags.DEFINE_enum(
    "embedding", None, ["f", "g"],
    "f = pooled representation (paper), g = head output.")


def main(argv):
  del argv
  results = evaluators.evaluate_workdir(_WORKDIR.value, _DETECTORS.value,
                                        _EMBEDDING.value)
  evaluation = results.get("evaluation")
  print(f"Wrote {workdir.evaluation_dir(_WORKDIR.value, evaluation)}" + (
      f" (named evaluation; score with --evaluation={evaluation})"
      if evaluation else " (the run's own evaluation)") + ".")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
