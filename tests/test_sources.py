"""Tests for oneclass_jax.data.sources (and the datasets table, local
builders and splits behind it) on real data and tfds mock data."""
import dataclasses
import gzip
import pathlib
import re
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from oneclass_jax.data import datasets
from oneclass_jax.data import local
from oneclass_jax.data import sources
from oneclass_jax.data import splits

CIFAR_SLICE_CLASSES = ("cat", "dog", "ship")
CIFAR_SLICE_PER_SPLIT = 20


def read_idx_reference(path):
  """Independent IDX reader: fixed header sizes of the MNIST-style files."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  if "images" in path.name:
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)
  return np.frombuffer(data, np.uint8, offset=8)


@pytest.fixture(scope="session")
def fmnist_data_dir(tmp_path_factory):
  # A fixed name under the session's base temp: every test file of this
  # session reuses one conversion of the 70,000 images.
  return tmp_path_factory.getbasetemp() / "tfds_fmnist"


@pytest.fixture(scope="session")
def fmnist_splits(fmnist_dir, fmnist_data_dir):
  return {split: sources.load("fashion_mnist", split, data_dir=fmnist_data_dir,
                              source_dir=fmnist_dir)
          for split in ("train", "test")}


@pytest.fixture(scope="session", params=["synthetic", "cifar10_jpeg"])
def cifar_slice(request, tmp_path_factory):
  """3 classes x 20 images per split: synthetic JPEGs, then the real copy."""
  root = tmp_path_factory.mktemp("cifar_slice")
  if request.param == "synthetic":
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
      for name in CIFAR_SLICE_CLASSES:
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(CIFAR_SLICE_PER_SPLIT):
          image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
          Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=75)
    return root
  shared_data_dir = request.getfixturevalue("shared_data_dir")
  pattern = re.compile(r"(train|test)/(\w+)/(\d+)\.jpg$")
  with tarfile.open(shared_data_dir / "cifar10_jpeg.tar.gz") as tar:
    for member in tar:
      m = pattern.match(member.name)
      if (m and m.group(2) in CIFAR_SLICE_CLASSES
          and int(m.group(3)) < CIFAR_SLICE_PER_SPLIT):
        tar.extract(member, root, filter="data")
  return root


def make_folder(root, shapes, seed=0):
  """root/<split>/<label>/<i>.png with random images of the given shapes."""
  rng = np.random.RandomState(seed)
  for (split, label), shape_list in shapes.items():
    folder = pathlib.Path(root) / split / label
    folder.mkdir(parents=True, exist_ok=True)
    for i, shape in enumerate(shape_list):
      image = rng.randint(0, 256, shape, dtype=np.uint8)
      Image.fromarray(image).save(folder / f"{i:03d}.png")
  return pathlib.Path(root)


def small_folder(root):
  return make_folder(root, {("train", "a"): [(8, 8, 3)] * 4,
                            ("train", "b"): [(8, 8, 3)] * 3,
                            ("test", "a"): [(8, 8, 3)] * 2,
                            ("test", "b"): [(8, 8, 3)] * 2})


# ---------------------------------------------------------------------------
# Fashion-MNIST from the Debian IDX files.


def test_fashion_mnist_counts_labels_and_pixels(fmnist_splits, fmnist_dir):
  for split, prefix, per_class in (("train", "train", 6000),
                                   ("test", "t10k", 1000)):
    data = fmnist_splits[split]
    images = read_idx_reference(fmnist_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx_reference(fmnist_dir / f"{prefix}-labels-idx1-ubyte.gz")
    assert len(data.source) == len(images) == 10 * per_class
    np.testing.assert_array_equal(np.bincount(data.labels), [per_class] * 10)
    # The conversion keeps the file order, so labels match record by record.
    np.testing.assert_array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64
    assert data.num_classes == 10 and data.image_shape == (32, 32, 3)
    assert data.class_names[0] == "T-shirt/top"
    for i in np.random.RandomState(0).randint(0, len(images), 5):
      record = data.source[i]
      expected = np.zeros((32, 32, 3), np.uint8)
      expected[2:30, 2:30, :] = images[i][:, :, None]
      np.testing.assert_array_equal(record["image"], expected)
      assert record["label"] == labels[i]


def test_second_load_reuses_conversion_and_label_cache(
    fmnist_splits, fmnist_dir, fmnist_data_dir, monkeypatch):
  del fmnist_splits  # Makes sure the conversion exists.

  def fail(*args, **kwargs):
    raise AssertionError("the prepared copy was converted again")

  monkeypatch.setattr(local._IdxBuilder, "download_and_prepare", fail)
  monkeypatch.setattr(splits, "_read_labels", fail)
  again = sources.load("fashion_mnist", "test", data_dir=fmnist_data_dir,
                       source_dir=fmnist_dir)
  assert len(again.source) == 10000
  caches = list(fmnist_data_dir.glob("oneclass_idx/*/*/labels-test.npy"))
  assert len(caches) == 1
  np.testing.assert_array_equal(np.load(caches[0]), again.labels)


def write_idx(path, array):
  """IDX file: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, values."""
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def small_idx(root, sizes=(("train", 6), ("t10k", 4))):
  rng = np.random.RandomState(0)
  data = {}
  for prefix, n in sizes:
    images = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, n).astype(np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    data[prefix] = images, labels
  return data


def test_mnist_from_idx_source_dir(tmp_path):
  (tmp_path / "src").mkdir()
  data = small_idx(tmp_path / "src")
  for split, prefix in (("train", "train"), ("test", "t10k")):
    loaded = sources.load("mnist", split, data_dir=tmp_path / "d",
                          source_dir=tmp_path / "src")
    images, labels = data[prefix]
    np.testing.assert_array_equal(loaded.labels, labels)
    for i in range(len(images)):
      np.testing.assert_array_equal(loaded.source[i]["image"][2:30, 2:30, 1],
                                    images[i])


def test_corrupt_idx_file_is_named(tmp_path):
  (tmp_path / "src").mkdir()
  small_idx(tmp_path / "src")
  with gzip.open(tmp_path / "src" / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(b"\x00\x00\x08\x01\x00\x00\x00\x10abc")  # says 16, holds 3.
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
    sources.load("mnist", "test", data_dir=tmp_path / "d",
                 source_dir=tmp_path / "src")


# ---------------------------------------------------------------------------
# Image folders: the CIFAR-10 JPEG copy and generated folders.


def test_cifar_jpeg_slice_as_image_folder(cifar_slice, tmp_path):
  split = sources.load("image_folder", "train", image_size=32,
                       data_dir=tmp_path,
                       source_dir=cifar_slice)
  assert split.class_names == CIFAR_SLICE_CLASSES
  assert split.num_classes == 3 and split.image_shape == (32, 32, 3)
  np.testing.assert_array_equal(np.bincount(split.labels),
                                [CIFAR_SLICE_PER_SPLIT] * 3)
  # Records follow the sorted listing: label folder, then file name.
  for i in (0, 27, 59):
    label, number = divmod(i, CIFAR_SLICE_PER_SPLIT)
    path = (cifar_slice / "train" / CIFAR_SLICE_CLASSES[label] /
            f"{number:04d}.jpg")
    expected = np.asarray(Image.open(path).convert("RGB"))
    record = split.source[i]
    np.testing.assert_array_equal(record["image"], expected)
    assert record["label"] == label


def test_cifar10_from_jpeg_folder_keeps_original_ids(cifar_slice, tmp_path):
  split = sources.load("cifar10", "test", data_dir=tmp_path,
                       source_dir=cifar_slice)
  assert split.num_classes == 10 and len(split.class_names) == 10
  counts = np.bincount(split.labels, minlength=10)
  expected = np.zeros(10, int)
  expected[[3, 5, 8]] = CIFAR_SLICE_PER_SPLIT  # cat, dog, ship
  np.testing.assert_array_equal(counts, expected)
  assert [split.source[i]["label"] for i in (0, 20, 40)] == [3, 5, 8]


def test_two_folders_do_not_collide(tmp_path):
  first = small_folder(tmp_path / "one")
  second = make_folder(tmp_path / "two", {("train", "a"): [(8, 8, 3)] * 2,
                                          ("test", "a"): [(8, 8, 3)]})
  data_dir = tmp_path / "tfds"
  a = sources.load("image_folder", "train", image_size=8, data_dir=data_dir,
                   source_dir=first)
  b = sources.load("image_folder", "train", image_size=8, data_dir=data_dir,
                   source_dir=second)
  assert (len(a.source), len(b.source)) == (7, 2)
  # Editing a folder makes a new conversion instead of reusing the old one.
  make_folder(first, {("train", "a"): [(8, 8, 3)] * 5}, seed=1)
  edited = sources.load("image_folder", "train", image_size=8,
                        data_dir=data_dir,
                        source_dir=first)
  assert len(edited.source) == 8


def test_grey_png_becomes_three_channels(tmp_path):
  root = make_folder(tmp_path / "src", {("train", "x"): [(6, 6)] * 2})
  split = sources.load("image_folder", "train", image_size=6,
                       data_dir=tmp_path / "d",
                       source_dir=root)
  grey = np.asarray(Image.open(root / "train" / "x" / "001.png"))
  image = split.source[1]["image"]
  assert image.shape == (6, 6, 3)
  for c in range(3):
    np.testing.assert_array_equal(image[:, :, c], grey)


def test_missing_label_cache_is_rebuilt(tmp_path):
  root = small_folder(tmp_path / "src")
  first = sources.load("image_folder", "train", image_size=8,
                       data_dir=tmp_path / "d",
                       source_dir=root)
  (cache,) = (tmp_path / "d").glob("*/*/*/labels-train.npy")
  cache.unlink()
  again = sources.load("image_folder", "train", image_size=8,
                       data_dir=tmp_path / "d",
                       source_dir=root)
  np.testing.assert_array_equal(again.labels, [0, 0, 0, 0, 1, 1, 1])
  np.testing.assert_array_equal(again.labels, first.labels)
  np.testing.assert_array_equal(np.load(cache), again.labels)


def test_interrupted_conversion_never_reads_as_complete(tmp_path,
                                                        monkeypatch):
  root = small_folder(tmp_path / "src")
  original = local._FolderBuilder._examples

  def interrupted(self, split):
    for n, example in enumerate(original(self, split)):
      if n == 2:
        raise RuntimeError("simulated interruption")
      yield example

  monkeypatch.setattr(local._FolderBuilder, "_examples", interrupted)
  with pytest.raises(RuntimeError, match="simulated interruption"):
    sources.load("image_folder", "train", image_size=8, data_dir=tmp_path / "d",
                 source_dir=root)
  assert not list((tmp_path / "d").glob("**/dataset_info.json"))
  assert not list((tmp_path / "d").glob("**/labels-*.npy"))
  monkeypatch.setattr(local._FolderBuilder, "_examples", original)
  split = sources.load("image_folder", "train", image_size=8,
                       data_dir=tmp_path / "d",
                       source_dir=root)
  np.testing.assert_array_equal(split.labels, [0, 0, 0, 0, 1, 1, 1])


# ---------------------------------------------------------------------------
# Preprocessing against independent references.


def test_pad_28_to_32():
  image = np.random.RandomState(0).randint(0, 256, (28, 28), np.uint8)
  out = datasets.pad_28_to_32(image)
  assert out.shape == (32, 32, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[2:30, 2:30, c], image)
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert not out[border].any()


def test_resize_shorter_center_crop_is_area_average():
  # 128x192 -> shorter side 64 is an exact 2x shrink: box = 2x2 block means.
  rng = np.random.RandomState(1)
  image = rng.randint(0, 256, (128, 192, 3)).astype(np.uint8)
  out = datasets.resize_shorter_center_crop_64(image)
  blocks = image.astype(np.float64).reshape(64, 2, 96, 2, 3).mean(axis=(1, 3))
  expected = blocks[:, 16:80]  # centre 64 of 96 columns.
  assert out.shape == (64, 64, 3)
  assert np.abs(out - expected).max() <= 1.0  # PIL rounds to uint8.


def test_celeba_crop_excludes_the_border():
  image = np.full((218, 178, 3), 255, np.uint8)
  image[40:-20, 10:-10] = 7  # inside the crop
  out = datasets.celeba_crop_resize_64(image)
  assert out.shape == (64, 64, 3)
  np.testing.assert_array_equal(out, 7)  # no border pixel leaks in.


# ---------------------------------------------------------------------------
# tfds catalog datasets through mock data (no TensorFlow needed).


def test_catalog_datasets_with_mock_data(tmp_path, monkeypatch):
  monkeypatch.setitem(datasets.DATASETS, "fashion_mnist", dataclasses.replace(
      datasets.DATASETS["fashion_mnist"], local_dir=None))
  expected = {"cifar10": (32, 10), "cifar20": (32, 20), "cifar100": (32, 100),
              "fashion_mnist": (32, 10), "mnist": (32, 10),
              "celeba_eyeglasses": (64, 2)}
  with tfds.testing.mock_data(num_examples=12):
    for name, (size, num_classes) in expected.items():
      split = sources.load(name, "test", data_dir=tmp_path)
      assert len(split.source) == 12 and split.num_classes == num_classes
      assert split.image_shape == (size, size, 3)
      assert len(split.class_names) == num_classes
      record = split.source[3]
      assert record["image"].shape == (size, size, 3)
      assert record["image"].dtype == np.uint8
      assert record["label"] == split.labels[3]
      assert 0 <= split.labels.min() and split.labels.max() < num_classes
    # cifar20 reads the coarse label, celeba the Eyeglasses attribute.
    raw = tfds.data_source("cifar100", split="test", data_dir=tmp_path)
    coarse = sources.load("cifar20", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(
        coarse.labels, [raw[i]["coarse_label"] for i in range(12)])
    raw = tfds.data_source("celeb_a", split="test", data_dir=tmp_path)
    glasses = sources.load("celeba_eyeglasses", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(
        glasses.labels, [int(raw[i]["attributes"]["Eyeglasses"])
                         for i in range(12)])
  assert not list(tmp_path.glob("**/*.npy"))  # nothing cached for mocks.


def test_cats_vs_dogs_split_is_fixed_and_disjoint(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    train = sources.load("cats_vs_dogs", "train", data_dir=tmp_path)
    test = sources.load("cats_vs_dogs", "test", data_dir=tmp_path)
    again = sources.load("cats_vs_dogs", "test", data_dir=tmp_path)
    raw = tfds.data_source("cats_vs_dogs", split="train", data_dir=tmp_path)
    raw_labels = np.array([raw[i]["label"] for i in range(len(raw))])
  np.testing.assert_array_equal(test.source.rows, again.source.rows)
  rows = np.concatenate([train.source.rows, test.source.rows])
  np.testing.assert_array_equal(np.sort(rows), np.arange(40))
  for c in (0, 1):  # at most half of each class (2,500 on the real data).
    n = np.sum(raw_labels == c)
    assert np.sum(test.labels == c) == min(2500, n // 2)
  np.testing.assert_array_equal(train.labels, raw_labels[train.source.rows])
  assert train.source[0]["image"].shape == (64, 64, 3)


# ---------------------------------------------------------------------------
# Errors.


def test_unknown_dataset_lists_the_known_ones():
  with pytest.raises(ValueError, match="known datasets: .*cifar10"):
    sources.load("imagenet", "train")


def test_missing_source_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.load("image_folder", "train", data_dir=tmp_path,
                 source_dir=tmp_path / "nothere")


def test_empty_source_dir(tmp_path):
  (tmp_path / "src" / "train" / "cat").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="no images found"):
    sources.load("image_folder", "train", image_size=8, data_dir=tmp_path / "d",
                 source_dir=tmp_path / "src")


def test_image_folder_needs_source_dir():
  with pytest.raises(FileNotFoundError, match="source_dir"):
    sources.load("image_folder", "train")


def test_unknown_split(tmp_path):
  root = small_folder(tmp_path / "src")
  with pytest.raises(ValueError, match="split 'val' not found"):
    sources.load("image_folder", "val", image_size=8, data_dir=tmp_path / "d",
                 source_dir=root)


def test_corrupt_image_is_named_and_nothing_is_left_complete(tmp_path):
  root = small_folder(tmp_path / "src")
  bad = root / "train" / "b" / "zzz.png"
  bad.write_bytes(b"not a png")
  with pytest.raises(ValueError, match="cannot read image .*zzz.png"):
    sources.load("image_folder", "train", image_size=8, data_dir=tmp_path / "d",
                 source_dir=root)
  assert not list((tmp_path / "d").glob("**/dataset_info.json"))


def test_wrong_image_shape_for_a_named_dataset_is_named(tmp_path):
  # (image_folder resizes every image: tests/test_normal_only.py.)
  root = make_folder(tmp_path / "c10", {("train", "cat"): [(30, 32, 3)]})
  with pytest.raises(ValueError, match=r"cat/000.png is \(30, 32, 3\) after "
                     r"preprocessing, but cifar10 expects \(32, 32, 3\)"):
    sources.load("cifar10", "train", data_dir=tmp_path / "d",
                 source_dir=root)


def test_foreign_label_folder_for_named_dataset(tmp_path):
  root = make_folder(tmp_path / "src", {("train", "kitten"): [(32, 32, 3)]})
  with pytest.raises(ValueError, match="'kitten' .* not a class of cifar10"):
    sources.load("cifar10", "train", data_dir=tmp_path / "d",
                 source_dir=root)


def test_missing_catalog_data_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setitem(datasets.DATASETS, "fashion_mnist", dataclasses.replace(
      datasets.DATASETS["fashion_mnist"], local_dir=str(tmp_path / "no_apt")))
  with pytest.raises(FileNotFoundError) as info:
    sources.load("fashion_mnist", "train", data_dir=tmp_path)
  message = str(info.value)
  for needed in ("apt-get install -y dataset-fashion-mnist",
                 "tfds build fashion_mnist", "oneclass_jax[tf]",
                 "source_dir", "data_dir", "<split>/<label>"):
    assert needed in message


# ---------------------------------------------------------------------------
# Prepared copies for workers without the original source (issue #17).


def _pixels_and_labels(split):
  return (np.stack([split.source[i]["image"] for i in range(len(split.source))]),
          split.labels)


def test_prepared_copy_reads_without_the_original(tmp_path):
  original = small_folder(tmp_path / "src")
  from_original = {}
  for s in ("train", "test"):
    split = sources.load("image_folder", s, image_size=8,
                         data_dir=tmp_path / "tfds", source_dir=original)
    from_original[s] = (split, _pixels_and_labels(split))
  meta = sources.prepare("image_folder", tmp_path / "copy", image_size=8,
                         source_dir=original)
  assert meta["splits"] == ["test", "train"] and meta["class_names"] == ["a", "b"]
  # The worker has only the copy: the original and the converting machine's
  # data_dir are gone, and its own data_dir is empty.
  moved = tmp_path / "worker" / "prepared"
  moved.parent.mkdir()
  (tmp_path / "copy").rename(moved)
  for path in (original, tmp_path / "tfds"):
    for p in sorted(path.rglob("*"), reverse=True):
      p.unlink() if p.is_file() else p.rmdir()
    path.rmdir()
  for s, (reference, (ref_images, ref_labels)) in from_original.items():
    copy = sources.load("image_folder", s, image_size=8,
                        data_dir=tmp_path / "worker" / "tfds",
                        source_dir=moved)
    images, labels = _pixels_and_labels(copy)
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(labels, ref_labels)
    # Same identity: caches made on the original stay valid on the copy.
    assert copy.fingerprint == reference.fingerprint
    assert copy.class_names == reference.class_names
  assert not (tmp_path / "worker" / "tfds").exists()  # Nothing converted.


def test_prepared_idx_copy(tmp_path):
  (tmp_path / "src").mkdir()
  small_idx(tmp_path / "src")
  reference = sources.load("mnist", "test", data_dir=tmp_path / "d",
                           source_dir=tmp_path / "src")
  sources.prepare("mnist", tmp_path / "copy", source_dir=tmp_path / "src")
  copy = sources.load("mnist", "test", source_dir=tmp_path / "copy")
  np.testing.assert_array_equal(_pixels_and_labels(copy)[0],
                                _pixels_and_labels(reference)[0])
  assert copy.fingerprint == reference.fingerprint


def test_prepared_copy_refuses_mismatches(tmp_path):
  original = small_folder(tmp_path / "src")
  copy = tmp_path / "copy"
  sources.prepare("image_folder", copy, image_size=8, source_dir=original)
  with pytest.raises(ValueError, match=r"holds 8x8 images, but the config "
                     r"asks for 16x16"):
    sources.load("image_folder", "train", image_size=16, source_dir=copy)
  with pytest.raises(ValueError, match="prepared copy of 'image_folder', not "
                     "'cifar10'"):
    sources.load("cifar10", "train", source_dir=copy)
  with pytest.raises(ValueError, match="already a prepared copy"):
    sources.prepare("image_folder", tmp_path / "again", image_size=8,
                    source_dir=copy)
  other = tmp_path / "busy"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="exists and is not a prepared copy"):
    sources.prepare("image_folder", other, image_size=8, source_dir=original)
  # A partial copy (the marker without the records) is named, not misread.
  partial = tmp_path / "partial"
  partial.mkdir()
  (partial / local.PREPARED).write_bytes((copy / local.PREPARED).read_bytes())
  with pytest.raises(FileNotFoundError, match="the copy is partial"):
    sources.load("image_folder", "train", image_size=8, source_dir=partial)


def test_catalog_dataset_has_nothing_to_prepare(tmp_path):
  with pytest.raises(ValueError, match="tfds build cifar10"):
    sources.prepare("cifar10", tmp_path / "copy")
