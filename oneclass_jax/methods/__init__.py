"""Self-supervised objectives of stage 1 (Section 3.1), one module each.

A method turns a host batch of uint8 images into model inputs (its views) and
the model outputs into a loss. Losses return a *local* sum and count; the train
step divides the psum of the first by the psum of the second, so the loss is
normalised by the global batch whatever the device count (the authors' code
scaled its loss by the number of replicas; we do not).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from oneclass_jax.methods import contrastive
from oneclass_jax.methods import denoising
from oneclass_jax.methods import rotation


@dataclasses.dataclass(frozen=True)
class Method:
  """What the trainer needs to know about an objective."""
  name: str
  # (example_keys [B], images uint8 [B,H,W,3], config) -> (inputs, targets).
  make_inputs: Callable[..., tuple[Any, Any]]
  # (outputs dict, targets, config, axis_name) -> (loss_sum, count, metrics).
  loss: Callable[..., tuple[Any, Any, dict]]
  num_classes: int = 0   # size of the classifier on g (4 for rotation).
  decoder: bool = False  # whether the model needs the image decoder.


METHODS = {
    "rotation": Method("rotation", rotation.make_inputs, rotation.loss,
                       num_classes=4),
    "contrastive": Method("contrastive", contrastive.make_inputs,
                          contrastive.loss),
    # Same objective; what differs is the training set, expanded by geometric
    # transforms as new instances (config.data.dist_aug, Section 3.1.3).
    "contrastive_da": Method("contrastive_da", contrastive.make_inputs,
                             contrastive.loss),
    "denoising": Method("denoising", denoising.make_inputs, denoising.loss,
                        decoder=True),
}


def get(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known methods: "
                     f"{sorted(METHODS)} (set config.method).")
  return METHODS[name]
