"""Data: datasets by name, the one-class protocol, loaders, MVTec AD folders.

* `datasets`: the table `DATASETS` of `DatasetSpec`s (class names, final-image
  preprocessing, where each dataset comes from), `decode_image`; imports no
  tensorflow-datasets.
* `sources`: `load(name, split)` -> `splits.Split`, from a local source or a
  prepared tfds catalog dataset.
* `splits`: `Split` and `SplitSource` (random access, labels, class names).
* `local`: local tfds builders converting IDX files and image folders once.
* `one_class`: `make(cfg)` -> `OneClassData` (train / fit / test / val sets,
  contamination, distribution augmentation).
* `pipeline`: grain loaders (`train_loader`, `inference_batches`, `unpad`).
* `mvtec`: `MVTecCategory` for MVTec-AD-style folders.
* `augment`: view augmentations in JAX.
* `image_io`: decoding image files (16-bit rescaled).

This package imports no model code, and importing it loads none of its
modules (so `data.augment` does not pull in tensorflow-datasets).
"""
