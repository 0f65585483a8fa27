"""CIFAR-10 JPEG folder -> the pickled CIFAR-10 python batches the authors read.

`run.py` calls `convert` once before any cell (`run.py --prepare_only` stops
there).

Their `data/cifar.py` reads `data_batch_1..5` and `test_batch` from `--root`
(pickles of {b'data': uint8 [N, 3072] in CHW order, b'labels': [N]}). The
pixels written here are the records of OUR loader (`sources.load("cifar10",
..., source_dir=...)`: the same decoder, the same conversion), so both
implementations train and evaluate on identical images. Records keep our
loader's order (label folder, then file name); their loader filters the
inlier class and shuffles, so the order does not matter to them.

The output folder is written beside itself and renamed when complete;
`CONVERTED.json` (written last) names the split fingerprints it came from, so
a second call with the same source returns at once, and an edited source is
refused rather than silently mixed.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil

import numpy as np

from oneclass_jax.data import sources

MARKER = "CONVERTED.json"
NUM_TRAIN_BATCHES = 5  # data_batch_1 .. data_batch_5, as CIFAR-10 ships.


def _batch(images: np.ndarray, labels: np.ndarray, names: list[bytes],
           batch_label: str) -> dict:
  """One batch in CIFAR's layout: bytes keys, [N, 3072] channel-major rows."""
  images = np.asarray(images, np.uint8)
  if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
    raise ValueError(f"CIFAR batches hold 32x32x3 images, got {images.shape}.")
  return {b"batch_label": batch_label.encode(),
          b"labels": [int(v) for v in labels],
          b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
          b"filenames": names}


def _write_pickle(path: pathlib.Path, obj) -> None:
  # Bytes keys: their loader does `cPickle.load(f, encoding='bytes')` (six's
  # cPickle is Python 3's pickle), then `k.decode('utf8')` on every key.
  # Protocol 4 stores the pixel bytes as they are (protocol 2 re-encodes
  # them as latin-1 text, half as large again).
  with open(path, "wb") as f:
    pickle.dump(obj, f, protocol=4)


def _images(split) -> np.ndarray:
  return np.stack([split.source[i]["image"] for i in range(len(split.source))])


def convert(source_dir, out, data_dir=None) -> dict:
  """Writes the CIFAR-10 python batches of `source_dir` into `out`.

  Args:
    source_dir: CIFAR-10 image folder (train/<class>/*.jpg, test/<class>/*.jpg;
      class names or ids, as our loader accepts).
    out: the folder to create (its parent must exist or be creatable).
    data_dir: where our loader converts the folder (default $TFDS_DATA_DIR);
      pass the one the runs use, so the folder is converted once.

  Returns:
    The marker's contents (split fingerprints and image counts).

  Raises:
    ValueError: `out` exists but was made from another source, or is not a
      converted folder.
  """
  out = pathlib.Path(out)
  train, test = (sources.load("cifar10", split, data_dir=data_dir,
                              source_dir=source_dir)
                 for split in ("train", "test"))
  meta = {"format": 1, "source_dir": str(source_dir),
          "fingerprints": {"train": train.fingerprint,
                           "test": test.fingerprint},
          "counts": {"train": len(train.labels), "test": len(test.labels)}}
  if out.exists():
    try:
      old = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
      raise ValueError(
          f"{out} exists but holds no {MARKER}: it is not a finished "
          "conversion; remove it or pass another --out.") from None
    if old["fingerprints"] != meta["fingerprints"]:
      raise ValueError(
          f"{out} was converted from another source ({old['fingerprints']}, "
          f"now {meta['fingerprints']}); remove it or pass another --out.")
    return old
  tmp = out.with_name(f".{out.name}.incomplete")
  shutil.rmtree(tmp, ignore_errors=True)  # A killed conversion's leftover.
  tmp.mkdir(parents=True)
  label_names = list(train.class_names)

  def names(split, rows):
    return [f"{label_names[split.labels[i]]}_{i:05d}.png".encode()
            for i in rows]

  images = _images(train)
  for b, rows in enumerate(np.array_split(np.arange(len(images)),
                                          NUM_TRAIN_BATCHES)):
    _write_pickle(tmp / f"data_batch_{b + 1}", _batch(
        images[rows], train.labels[rows], names(train, rows),
        f"training batch {b + 1} of {NUM_TRAIN_BATCHES}"))
  rows = np.arange(len(test.labels))
  _write_pickle(tmp / "test_batch", _batch(
      _images(test), test.labels, names(test, rows), "testing batch 1 of 1"))
  _write_pickle(tmp / "batches.meta", {
      b"label_names": [n.encode() for n in label_names],
      b"num_cases_per_batch": int(np.ceil(len(images) / NUM_TRAIN_BATCHES)),
      b"num_vis": 3072})
  (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
  os.replace(tmp, out)
  return meta
