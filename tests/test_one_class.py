"""Tests for oneclass_jax.data.one_class (the paper's one-class protocol)."""
import pathlib

import ml_collections
import numpy as np
from PIL import Image
import pytest

from oneclass_jax.data import geometric
from oneclass_jax.data import one_class

CLASSES = ("a", "b", "c", "d")
TRAIN_PER_CLASS = 20
TEST_PER_CLASS = 10
SIZE = 6


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
  """4 classes; channel 2 of every image is a constant, unique image id.

  Rotations and flips keep a constant channel constant, so the id of any
  (transformed) record tells which source image and class it came from.
  """
  root = tmp_path_factory.mktemp("one_class_src")
  rng = np.random.RandomState(0)
  ids = {}
  next_id = 0
  for split, per_class in (("train", TRAIN_PER_CLASS),
                           ("test", TEST_PER_CLASS)):
    for label, name in enumerate(CLASSES):
      directory = root / split / name
      directory.mkdir(parents=True)
      for i in range(per_class):
        image = rng.randint(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
        image[:, :, 2] = next_id
        Image.fromarray(image).save(directory / f"{i:02d}.png")
        ids[next_id] = (split, label)
        next_id += 1
  return root, ids


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("one_class_tfds")


def config(folder, data_dir, **overrides):
  root, _ = folder
  fields = dict(
      name="image_folder", inlier_class=0, data_dir=str(data_dir),
      source_dir=str(root), seed=0, validation=False, contamination=0.0,
      fit_cap=0, dist_aug="none")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def make(cfg):
  """one_class.make on the SIZE x SIZE fixture, at its own size."""
  return one_class.make(cfg, image_size=SIZE)


def image_id(record):
  return int(record["image"][0, 0, 2])


def all_records(source):
  return [source[i] for i in range(len(source))]


# ---------------------------------------------------------------------------
# Geometric transforms.


def rot90_reference(x):
  """Counter-clockwise quarter turn by explicit indexing: out[i, j] =
  x[j, W - 1 - i]."""
  h, w = x.shape[:2]
  out = np.empty((w, h) + x.shape[2:], x.dtype)
  for i in range(w):
    for j in range(h):
      out[i, j] = x[j, w - 1 - i]
  return out


def test_apply_geometric_matches_explicit_indexing():
  x = np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8)
  rotated = [x]
  for _ in range(3):
    rotated.append(rot90_reference(rotated[-1]))
  for t in range(8):
    expected = rotated[t // 2]
    if t % 2:  # flip the width axis after rotating (authors' order).
      expected = expected[:, [expected.shape[1] - 1 - j
                              for j in range(expected.shape[1])]]
    np.testing.assert_array_equal(geometric.apply_geometric(x, t), expected)


def test_apply_geometric_matches_authors_batch_code():
  # The authors' geotrans_array_deterministic on a B x H x W x C batch.
  batch = np.random.RandomState(1).rand(3, 4, 4, 2)
  rot_list = [batch] + [np.rot90(batch, k=k, axes=(1, 2)) for k in range(1, 4)]
  authors = [item for r in rot_list for item in (r, np.flip(r, axis=2))]
  for t in range(8):
    for b in range(3):
      np.testing.assert_array_equal(
          geometric.apply_geometric(batch[b], t), authors[t][b])


def test_apply_geometric_is_exactly_invertible():
  x = np.random.RandomState(2).randint(0, 256, (6, 6, 3)).astype(np.uint8)
  inverse = {0: 0, 2: 6, 4: 4, 6: 2}  # flips (odd t) are their own inverse.
  for t in range(8):
    back = geometric.apply_geometric(geometric.apply_geometric(x, t),
                                     inverse.get(t, t))
    np.testing.assert_array_equal(back, x)
  images = {geometric.apply_geometric(x, t).tobytes() for t in range(8)}
  assert len(images) == 8  # eight distinct transforms of a generic image.


def test_dist_aug_names():
  assert geometric.dist_aug_transforms("none") == (0,)
  assert geometric.dist_aug_transforms("rot90") == (0, 2, 4, 6)
  assert geometric.dist_aug_transforms("hflip") == (0, 1)
  assert geometric.dist_aug_transforms("rot90+hflip") == tuple(range(8))
  assert geometric.dist_aug_transforms("first3") == (0, 1, 2)
  for bad in ("rot45", "first0", "first9", "first"):
    with pytest.raises(ValueError, match="unknown dist_aug"):
      geometric.dist_aug_transforms(bad)


# ---------------------------------------------------------------------------
# The sets.


def test_basic_sets(folder, data_dir):
  _, ids = folder
  data = make(config(folder, data_dir, inlier_class=1))
  train = all_records(data.train)
  assert len(train) == TRAIN_PER_CLASS
  assert {ids[image_id(r)] for r in train} == {("train", 1)}
  assert all(r["label"] == 0 and r["true_label"] == 0 for r in train)
  assert [r["index"] for r in train] == list(range(TRAIN_PER_CLASS))
  test = all_records(data.test)
  assert len(test) == len(CLASSES) * TEST_PER_CLASS
  for r in test:
    split, label = ids[image_id(r)]
    assert split == "test" and r["label"] == int(label != 1)
  assert data.val is None
  assert data.meta["counts"]["test_inliers"] == TEST_PER_CLASS
  assert data.meta["inlier_class"] == 1 and data.meta["inlier_name"] == "b"


def test_inlier_class_by_name(folder, data_dir):
  data = make(config(folder, data_dir, inlier_class="c"))
  assert data.meta["inlier_class"] == 2


@pytest.mark.parametrize("dist_aug,copies", [
    ("none", 1), ("rot90", 4), ("hflip", 2), ("rot90+hflip", 8),
    ("first3", 3), ("first8", 8)])
def test_distribution_augmented_sizes(folder, data_dir, dist_aug, copies):
  data = make(config(folder, data_dir, dist_aug=dist_aug))
  transforms = geometric.dist_aug_transforms(dist_aug)
  assert data.dist_sets == list(transforms)
  assert len(data.train) == copies * TRAIN_PER_CLASS
  assert len(data.fit) == TRAIN_PER_CLASS  # fit stays un-augmented.
  fit = all_records(data.fit)
  for i in range(0, len(data.train), 7):
    t, j = divmod(i, TRAIN_PER_CLASS)
    record = data.train[i]
    np.testing.assert_array_equal(
        record["image"],
        geometric.apply_geometric(fit[j]["image"], transforms[t]))
    assert record["index"] == i


def test_contamination_keeps_size_and_hides_labels(folder, data_dir):
  _, ids = folder
  data = make(config(folder, data_dir, contamination=0.1,
                               dist_aug="rot90"))
  train = all_records(data.train)
  assert len(train) == 4 * TRAIN_PER_CLASS  # size unchanged by contamination
  true = np.array([r["true_label"] for r in train])
  assert true.sum() == 4 * 2  # 10% of 20, in each of the 4 copies
  assert all(r["label"] == 0 for r in train)  # the learner sees no outlier.
  for r, t in zip(train, true):
    split, label = ids[image_id(r)]
    assert split == "train" and int(label != 0) == t
  np.testing.assert_array_equal(data.train.true_labels, true)
  # fit holds the same (contaminated) images, without augmentation.
  fit = all_records(data.fit)
  assert sorted(image_id(r) for r in fit) == sorted(
      image_id(r) for r in train[:TRAIN_PER_CLASS])
  assert sum(r["true_label"] for r in fit) == 2
  assert data.meta["counts"]["train_outliers"] == 2
  # Outliers are mixed in, not appended after the inliers.
  assert list(np.flatnonzero(true[:TRAIN_PER_CLASS])) != [18, 19]


def test_validation_split(folder, data_dir):
  _, ids = folder
  data = make(config(folder, data_dir, validation=True, seed=1))
  n_val = TRAIN_PER_CLASS // 10
  assert len(data.train) == TRAIN_PER_CLASS - n_val
  val = all_records(data.val)
  assert len(val) == 2 * n_val
  assert [r["label"] for r in val] == [0] * n_val + [1] * n_val
  for r in val:
    split, label = ids[image_id(r)]
    assert split == "train" and int(label != 0) == r["label"]
  train_ids = {image_id(r) for r in all_records(data.train)}
  val_ids = {image_id(r) for r in val}
  assert not train_ids & val_ids
  class0 = {i for i, (s, c) in ids.items() if s == "train" and c == 0}
  assert train_ids | {image_id(r) for r in val[:n_val]} == class0
  # The authors' draw: np.random.seed(1); permute the inliers; last 10% held.
  rng = np.random.RandomState(1)
  perm = rng.permutation(TRAIN_PER_CLASS)
  first_id = min(class0)
  assert sorted(val_ids & class0) == sorted(first_id + perm[18:])
  assert data.meta["counts"]["val"] == 2 * n_val


def test_validation_and_contamination_use_different_outliers(folder,
                                                             data_dir):
  data = make(config(folder, data_dir, validation=True,
                               contamination=0.5, seed=3))
  train = all_records(data.train)
  val_outliers = {image_id(r) for r in all_records(data.val)
                  if r["label"] == 1}
  train_outliers = {image_id(r) for r in train if r["true_label"] == 1}
  assert len(train_outliers) == 9 and len(train) == 18
  assert not val_outliers & train_outliers


def test_fit_cap(folder, data_dir):
  data = make(config(folder, data_dir, fit_cap=5))
  fit_ids = [image_id(r) for r in all_records(data.fit)]
  train_ids = {image_id(r) for r in all_records(data.train)}
  assert len(fit_ids) == 5 == len(set(fit_ids))
  assert set(fit_ids) <= train_ids
  with pytest.warns(UserWarning, match="fit_cap 100 exceeds"):
    data = make(config(folder, data_dir, fit_cap=100))
  assert len(data.fit) == TRAIN_PER_CLASS


def test_same_seed_same_sets(folder, data_dir):
  kwargs = dict(validation=True, contamination=0.2, fit_cap=7, seed=5)
  first = make(config(folder, data_dir, **kwargs))
  second = make(config(folder, data_dir, **kwargs))
  for name in ("train", "fit", "val"):
    a = all_records(getattr(first, name))
    b = all_records(getattr(second, name))
    assert [image_id(r) for r in a] == [image_id(r) for r in b]


def test_fashion_mnist_counts(fmnist_dir, tmp_path_factory):
  # Same data_dir name as tests/test_sources.py: one conversion per session.
  data_dir = tmp_path_factory.getbasetemp() / "tfds_fmnist"
  cfg = ml_collections.ConfigDict(dict(
      name="fashion_mnist", inlier_class=0, data_dir=str(data_dir),
      source_dir=str(fmnist_dir), seed=1, validation=False))
  data = one_class.make(cfg)
  assert len(data.train) == len(data.fit) == 6000
  assert len(data.test) == 10000
  assert int(np.sum(data.test.labels == 0)) == 1000
  assert data.train[0]["image"].shape == (32, 32, 3)
  cfg.validation = True
  data = one_class.make(cfg)
  assert len(data.train) == 5400 and len(data.val) == 1200


# ---------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("overrides,message", [
    (dict(inlier_class=7), "out of range"),
    (dict(inlier_class=-1), "out of range"),
    (dict(inlier_class="zebra"), "not a class"),
    (dict(contamination=1.0), r"contamination must be in \[0, 1\)"),
    (dict(contamination=-0.1), r"contamination must be in \[0, 1\)"),
    (dict(dist_aug="rot45"), "unknown dist_aug"),
    (dict(fit_cap=-1), "fit_cap must be >= 0"),
])
def test_bad_config(folder, data_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    make(config(folder, data_dir, **overrides))


def test_class_without_train_images(tmp_path):
  root = tmp_path / "src"
  for split, name in (("train", "a"), ("test", "a"), ("test", "b")):
    (root / split / name).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(
        root / split / name / "0.png")
  cfg = ml_collections.ConfigDict(dict(
      name="image_folder", inlier_class="b", data_dir=str(tmp_path / "d"),
      source_dir=str(root)))
  with pytest.raises(ValueError, match="has no train images"):
    one_class.make(cfg, image_size=4)


def test_non_square_images_become_square_so_rotations_apply(tmp_path):
  # Old code: 4x6 images stayed 4x6 and dist_aug rot90 was refused.
  root = pathlib.Path(tmp_path / "src")
  for split in ("train", "test"):
    (root / split / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(
        root / split / "a" / "0.png")
  cfg = ml_collections.ConfigDict(dict(
      name="image_folder", inlier_class=0, data_dir=str(tmp_path / "d"),
      source_dir=str(root), dist_aug="rot90"))
  data = one_class.make(cfg, image_size=4)
  assert len(data.train) == 4
  assert data.train[1]["image"].shape == (4, 4, 3)


def test_train_cap_limits_the_representation_set_only(tmp_path):
  """Figure 9: fewer training images for f, the detector still sees all."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from oneclass_jax.data import one_class as oc  # pylint: disable=g-import-not-at-top
  root = tmp_path / "folder"
  rng = np.random.default_rng(0)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, n in (("train", 30), ("test", 4)):
    for label in ("a", "b"):
      (root / split / label).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            root / split / label / f"{i}.png")
  cfg = ml_collections.ConfigDict(dict(
      name="image_folder", inlier_class=0, source_dir=str(root),
      data_dir=str(tmp_path / "tfds"), seed=3, train_cap=12,
      dist_aug="rot90"))
  data = oc.make(cfg, image_size=8)
  assert len(data.train) == 12 * 4 and len(data.fit) == 30
  assert data.meta["counts"]["train_images"] == 12
  cfg.train_cap = -1
  with pytest.raises(ValueError, match="train_cap must be >= 0"):
    oc.make(cfg, image_size=8)
