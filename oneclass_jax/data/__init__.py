"""Data: datasets by name, the one-class protocol, loaders, MVTec AD folders.

* `sources`: `load(name, split)` -> `Split` (random access, labels, class
  names); the registry `DATASETS` and its table live there.
* `one_class`: `make(cfg)` -> `OneClassData` (train / fit / test / val sets,
  contamination, distribution augmentation).
* `pipeline`: grain loaders (`train_loader`, `inference_batches`, `unpad`,
  `prefetch`).
* `mvtec`: `MVTecCategory` for MVTec-AD-style folders.
* `augment`: view augmentations in JAX.

This package imports no model code.
"""
from oneclass_jax.data.sources import DATASETS
from oneclass_jax.data.sources import load

__all__ = ["DATASETS", "load"]
