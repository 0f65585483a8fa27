"""Stage-2 evaluators, one per task (`experiment.TASKS`), chosen from the config.

`one_class`: detectors on embeddings of whole images, AUC per detector.
`mvtec_patches`: dense patch scoring, detection and localization metrics.
Each writes the run's `results.json` and its other outputs to the workdir
(one-class runs evaluated with other detectors or another embedding: to a
named evaluation in it, `workdir.evaluation_dir`).
The trainer and `python -m oneclass_jax.tools.evaluate` go through
`evaluate_state` / `evaluate_workdir` here and never name a task.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from oneclass_jax import experiment
from oneclass_jax import files
from oneclass_jax import parallel
from oneclass_jax import workdir as workdir_lib
from oneclass_jax.evaluators import mvtec_patches
from oneclass_jax.evaluators import one_class


@dataclasses.dataclass(frozen=True)
class Evaluator:
  # (config, workdir, model, state, data, mesh, **overrides) -> results.
  evaluate_state: Callable[..., dict]
  # (config, detector_names, embedding): raises ValueError for --detectors /
  # --embedding values the task cannot honour (None: not given).
  check_flags: Callable[..., object]


EVALUATORS: dict[str, Evaluator] = {
    "one_class": Evaluator(one_class.evaluate_state,
                           one_class.evaluation_settings),
    "mvtec_patches": Evaluator(mvtec_patches.evaluate_state,
                               mvtec_patches.check_flags),
}


def for_config(config) -> Evaluator:
  return EVALUATORS[experiment.task_name(config)]


def _overrides(config, detector_names, embedding) -> dict:
  for_config(config).check_flags(config, detector_names, embedding)
  if detector_names is None and embedding is None:
    return {}
  return {"detector_names": detector_names, "embedding": embedding}


def evaluate_state(config, workdir, model, state, data, mesh, *,
                   detector_names=None, embedding=None) -> dict:
  """Evaluates a trained state with the config's task's evaluator."""
  overrides = _overrides(config, detector_names, embedding)
  return for_config(config).evaluate_state(config, workdir, model, state,
                                           data, mesh, **overrides)


def evaluate_workdir(workdir: str, detector_names=None, embedding=None):
  """Re-evaluates a workdir's newest intact checkpoint (workdir locked).

  None for `detector_names` / `embedding`: the config's. A one-class run
  evaluated with other ones gets a named evaluation (results["evaluation"],
  `workdir.evaluation_dir`); its own results stay as they are.
  """
  # Flags the task cannot honour fail before anything is restored.
  _overrides(workdir_lib.load_config(workdir), detector_names, embedding)
  mesh = parallel.make_mesh()
  with files.workdir_lock(workdir):
    config, run, state = experiment.restore_run(workdir, mesh)
    return evaluate_state(config, workdir, run.model, state, run.data, mesh,
                          detector_names=detector_names, embedding=embedding)
