"""Datasets by name: `load(name, split)` -> `Split` of one split.

The datasets are the table in `datasets`; a `Split` (`splits`) gives random
access to its preprocessed records and the labels of every record.

Where the data comes from, in this order:
  1. a local source: `source_dir` if given, else a known local copy (the
     Debian Fashion-MNIST IDX files), converted ONCE into `data_dir` as
     array_record (`local`; label folders of a named dataset must be its
     class names or ids).
  2. a tfds catalog dataset already prepared as array_record in `data_dir`.
  3. otherwise FileNotFoundError saying how to get the data.
`data_dir` defaults to `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`. Nothing
here downloads anything.

A dataset with `holdout_per_class` (Cats-vs-Dogs) has one source split; its
"test" is a fixed per-class draw from it and "train" the rest (`datasets`).
"""
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from oneclass_jax.data import datasets
from oneclass_jax.data import local
from oneclass_jax.data import splits


def _default_data_dir(data_dir) -> pathlib.Path:
  if data_dir is not None:
    return pathlib.Path(data_dir).expanduser()
  env = os.environ.get("TFDS_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path("~/tensorflow_datasets").expanduser()


# ----------------------------------------------------------------------------
# tfds catalog datasets.


def _missing_message(spec: datasets.DatasetSpec, data_dir: pathlib.Path) -> str:
  lines = [f"no data found for {spec.name!r}."]
  if spec.local_dir:
    lines.append(f"Looked for the IDX files in {spec.local_dir}: install "
                 "them with `apt-get install -y dataset-fashion-mnist`.")
  lines.append(
      f"Looked for the tfds dataset {spec.tfds_name!r} prepared as "
      f"array_record in {data_dir}: build it (with internet) with `tfds build "
      f"{spec.tfds_name} --file_format=array_record --data_dir={data_dir}` "
      "(some catalog builders need TensorFlow: `pip install oneclass_jax[tf]`)"
      ", or pass data_dir= where it is prepared.")
  lines.append(f"Or pass source_dir= with {local.layout_help(spec)}.")
  return " ".join(lines)


def _load_catalog(spec, split, data_dir) -> splits.Split:
  builder = tfds.builder(spec.tfds_name, data_dir=str(data_dir))
  tfds_split = {"train": spec.train_split, "test": spec.test_split}.get(
      split, split)
  if builder.is_prepared() and tfds_split not in builder.info.splits:
    raise ValueError(f"split {tfds_split!r} not in tfds {spec.tfds_name}; "
                     f"it has {list(builder.info.splits)}.")
  try:
    data_source = builder.as_data_source(split=tfds_split)
  except (NotImplementedError, FileNotFoundError, AssertionError,
          KeyError) as e:
    raise FileNotFoundError(_missing_message(spec, data_dir)) from e
  info_dir = pathlib.Path(data_source.dataset_info.data_dir)
  cache = None
  if (info_dir / "dataset_info.json").is_file():
    cache = info_dir / (f"oneclass-labels-{tfds_split}-"
                        f"{'.'.join(spec.label_key)}.npy")
  class_names = spec.class_names
  if class_names is None:
    class_names = tuple(builder.info.features[spec.label_key[0]].names)
  return splits.Split(
      source=splits.SplitSource(data_source, preprocess=spec.preprocess,
                                label_key=spec.label_key,
                                image_shape=spec.image_shape),
      labels=splits.cached_labels(cache, data_source, spec.label_key),
      num_classes=spec.num_classes,
      image_shape=spec.image_shape,
      class_names=tuple(class_names),
      fingerprint=(f"tfds/{spec.tfds_name}/{builder.version}/{tfds_split}/"
                   f"{len(data_source)}@{info_dir}"))


# ----------------------------------------------------------------------------
# Entry point.


def _holdout_rows(labels: np.ndarray, per_class: int, split: str) -> np.ndarray:
  """Fixed per-class test draw (seed 0, like the authors); train = the rest."""
  rng = np.random.RandomState(0)
  rows = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    perm = rng.permutation(len(members))
    n_test = min(per_class, len(members) // 2)
    rows.append(members[perm[:n_test] if split == "test" else perm[n_test:]])
  return np.sort(np.concatenate(rows))


def load(name: str, split: str, *, data_dir=None, source_dir=None,
         image_size=None) -> splits.Split:
  """Loads one split of a registered dataset (see the module docstring).

  Args:
    name: a key of `datasets.DATASETS`.
    split: "train" or "test" (a folder source may have other split folders;
      a catalog dataset may have other tfds splits).
    data_dir: where prepared tfds data lives and local sources are converted
      to; default `$TFDS_DATA_DIR`, else ~/tensorflow_datasets.
    source_dir: a local source (IDX files or an image folder) to use.
    image_size: side of the final images of a dataset without a fixed size
      (image_folder, where it is required: `datasets.final_image_fn`).

  Returns:
    The `Split`.

  Raises:
    ValueError: unknown dataset or split (`splits.MissingSplit` for a local
      source without it), unreadable image, wrong image shape, image_folder
      without image_size.
    FileNotFoundError: no data, or a missing or empty source folder.
  """
  spec = datasets.get_spec(name)
  data_dir = _default_data_dir(data_dir)
  holdout = spec.holdout_per_class and split in ("train", "test")
  raw_split = "train" if holdout else split
  root = local.find_root(spec, source_dir)
  if root is not None:
    result = local.load_split(spec, raw_split, root, data_dir, image_size)
  elif spec.tfds_name is None:
    raise FileNotFoundError(
        f"{name} reads only local folders: pass source_dir= with "
        f"{local.layout_help(spec)}.")
  else:
    result = _load_catalog(spec, raw_split, data_dir)
  if holdout:
    result = result.subset(
        _holdout_rows(result.labels, spec.holdout_per_class, split))
  return result


def prepare(name: str, out, *, source_dir=None, image_size=None) -> dict:
  """Converts a local source once into `out`, for workers without it.

  The prepared copy is read as `source_dir=out` (`local.prepare_copy`).

  Raises:
    ValueError: `name` has no local source (a tfds catalog dataset: prepare
      that with `tfds build` and point workers at its `data_dir`).
  """
  spec = datasets.get_spec(name)
  root = local.find_root(spec, source_dir)
  if root is None:
    raise ValueError(
        f"{name} has no local source to prepare (no source_dir given"
        f"{'' if spec.tfds_name is None else ', and it is a tfds catalog dataset'})."
        f" Pass source_dir=, or build the catalog dataset once with `tfds "
        f"build {spec.tfds_name} --file_format=array_record --data_dir=DIR` "
        "and give every worker data_dir=DIR.")
  return local.prepare_copy(spec, root, out, image_size)
