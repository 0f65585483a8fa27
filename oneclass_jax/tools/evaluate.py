r"""Re-evaluates a trained workdir (stage 2), with the detectors of its task.

  python -m oneclass_jax.tools.evaluate --workdir=/tmp/run [--detectors=kde,ocsvm] [--embedding=f]

Restores the newest intact checkpoint of a workdir written by
`oneclass_jax.main` and runs the evaluator of its task
(`oneclass_jax.evaluators`): for one-class runs, detectors on f (or g∘f) and
an AUC per detector; for MVTec-style runs, patch detection and localization.
Writes `results.json` and the other outputs to the workdir.
"""
from absl import app
from absl import flags

from oneclass_jax import evaluators

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "A workdir written by oneclass_jax.main.")
_DETECTORS = flags.DEFINE_list("detectors", None,
                               "Detectors (default: the config's).")
_EMBEDDING = flags.DEFINE_enum(
    "embedding", None, ["f", "g"],
    "f = pooled representation (paper), g = head output.")


def main(argv):
  del argv
  evaluators.evaluate_workdir(_WORKDIR.value, _DETECTORS.value,
                              _EMBEDDING.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
