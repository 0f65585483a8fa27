"""Stage 1: the train step, the one training loop and its two callers.

* `step`: the pure per-device step and how it runs on a mesh (one model,
  or K models vmapped over a `model` axis).
* `loop`: the one loop (cadence, NaN check, writers, checkpoints,
  preemption), given a `loop.Job`.
* `single`: one model's run; `multi`: K models (classes, seeds,
  distribution-augmentation sets) in one program.

`train_and_evaluate(config, workdir)` picks between the two from the config,
as `oneclass_jax.main` does.
"""
from oneclass_jax.trainer import multi
from oneclass_jax.trainer import single


def train_and_evaluate(config, workdir: str):
  """One model, or K models when the config lists classes, seeds or sets.

  Returns:
    The results dict (one model) or {model name: results} (K models); None
    after a partial run (`max_steps_this_run`).
  """
  if multi.is_multi(config):  # --config.data.inlier_classes=0-9 etc.
    return multi.train_and_evaluate(config, workdir)
  return single.train_and_evaluate(config, workdir)
