"""Tests for oneclass_jax.data.mvtec on a slice of the magnetic-tile data."""
import pathlib
import shutil
import tarfile

import numpy as np
from PIL import Image
import pytest

from oneclass_jax.data import mvtec
import conftest

TRAIN_GOOD = 6
TEST_GOOD = 3
DEFECTS = {"crack": 2, "fray": 2}


@pytest.fixture(scope="module", params=["synthetic", "magnetic_tile"])
def tile_root(request, tmp_path_factory):
  """A few train/test images and their masks: synthetic, then real ones."""
  root = tmp_path_factory.mktemp("mvtec")
  wanted = {"train/good": TRAIN_GOOD, "test/good": TEST_GOOD,
            **{f"test/{d}": n for d, n in DEFECTS.items()}}
  if request.param == "synthetic":
    return conftest.make_mvtec_category(root, "magnetic_tile", wanted)
  shared_data_dir = request.getfixturevalue("shared_data_dir")
  with tarfile.open(shared_data_dir /
                    "magnetic_tile_mvtec_layout.tar.gz") as tar:
    members = [m for m in tar.getmembers() if m.isfile()]
  by_folder = {}
  for m in members:
    by_folder.setdefault(str(pathlib.PurePosixPath(m.name).parent),
                         []).append(m)
  wanted = {"magnetic_tile/train/good": TRAIN_GOOD,
            "magnetic_tile/test/good": TEST_GOOD}
  wanted.update({f"magnetic_tile/test/{d}": n for d, n in DEFECTS.items()})
  chosen = []
  for folder, n in wanted.items():
    picked = sorted(by_folder[folder], key=lambda m: m.name)[:n]
    chosen += picked
    if "/test/" in folder and not folder.endswith("good"):
      defect = folder.rsplit("/", 1)[1]
      for m in picked:
        stem = pathlib.PurePosixPath(m.name).stem
        chosen.append(next(
            x for x in by_folder[f"magnetic_tile/ground_truth/{defect}"]
            if pathlib.PurePosixPath(x.name).stem == f"{stem}_mask"))
  with tarfile.open(shared_data_dir /
                    "magnetic_tile_mvtec_layout.tar.gz") as tar:
    tar.extractall(root, members=chosen, filter="data")
  return root


def copy_category(tile_root, tmp_path):
  shutil.copytree(tile_root / "magnetic_tile", tmp_path / "magnetic_tile")
  return tmp_path / "magnetic_tile"


def test_reads_the_slice_unchanged(tile_root):
  category = mvtec.MVTecCategory(tile_root, "magnetic_tile")
  train = category.train()
  assert len(train.images) == len(train.files) == TRAIN_GOOD
  for image, path in zip(train.images, train.files):
    grey = np.asarray(Image.open(path))  # the tiles are grey JPEGs.
    assert image.shape == grey.shape + (3,)
    for c in range(3):
      np.testing.assert_array_equal(image[:, :, c], grey)
  assert len({im.shape for im in train.images}) > 1  # differing sizes kept.

  test = category.test()
  n = TEST_GOOD + sum(DEFECTS.values())
  assert len(test.images) == len(test.masks) == len(test.files) == n
  assert test.defect_types == (("good",) * TEST_GOOD + ("crack",) * 2 +
                               ("fray",) * 2)
  np.testing.assert_array_equal(test.labels, [0] * TEST_GOOD + [1] * 4)
  for image, mask, defect, path in zip(test.images, test.masks,
                                       test.defect_types, test.files):
    assert mask.dtype == bool and mask.shape == image.shape[:2]
    if defect == "good":
      assert not mask.any()
    else:
      path = pathlib.Path(path)
      mask_file = (tile_root / "magnetic_tile" / "ground_truth" / defect /
                   f"{path.stem}_mask.png")
      expected = np.asarray(Image.open(mask_file).convert("L")) >= 128
      np.testing.assert_array_equal(mask, expected)


def test_resized_arrays_stack(tile_root):
  size = 32
  category = mvtec.MVTecCategory(tile_root, "magnetic_tile", image_size=size)
  train = category.train()
  assert train.images.shape == (TRAIN_GOOD, size, size, 3)
  assert train.images.dtype == np.uint8
  test = category.test()
  assert test.images.shape == (len(test.files), size, size, 3)
  assert test.masks.shape == (len(test.files), size, size)
  # Nearest resize of a mask: pixel (i, j) samples the source pixel whose
  # centre is nearest, floor((i + 0.5) * H / size).
  i = TEST_GOOD
  path = pathlib.Path(test.files[i])
  mask_file = (tile_root / "magnetic_tile" / "ground_truth" / "crack" /
               f"{path.stem}_mask.png")
  full = np.asarray(Image.open(mask_file).convert("L")) >= 128
  rows = np.floor((np.arange(size) + 0.5) * full.shape[0] / size).astype(int)
  cols = np.floor((np.arange(size) + 0.5) * full.shape[1] / size).astype(int)
  np.testing.assert_array_equal(test.masks[i], full[np.ix_(rows, cols)])


def test_png_images(tile_root, tmp_path):
  root = copy_category(tile_root, tmp_path)
  for jpg in sorted((root / "train" / "good").glob("*.jpg"))[:2]:
    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
  train = mvtec.MVTecCategory(tmp_path, "magnetic_tile").train()
  assert sum(f.endswith(".png") for f in train.files) == 2
  assert len(train.images) == TRAIN_GOOD


# ---------------------------------------------------------------------------
# Errors.


def test_missing_category_lists_the_present_ones(tile_root):
  with pytest.raises(FileNotFoundError, match=r"categories in .*magnetic_tile"):
    mvtec.MVTecCategory(tile_root, "bottle")


@pytest.mark.parametrize("folder", ["train/good", "test", "ground_truth"])
def test_missing_layout_part_is_named(tile_root, tmp_path, folder):
  root = copy_category(tile_root, tmp_path)
  shutil.rmtree(root / folder)
  with pytest.raises(FileNotFoundError, match=f"missing {folder}"):
    mvtec.MVTecCategory(tmp_path, "magnetic_tile")


def test_empty_train_good(tile_root, tmp_path):
  root = copy_category(tile_root, tmp_path)
  for f in (root / "train" / "good").iterdir():
    f.unlink()
  with pytest.raises(FileNotFoundError, match="holds no"):
    mvtec.MVTecCategory(tmp_path, "magnetic_tile")


def test_defect_image_without_mask(tile_root, tmp_path):
  root = copy_category(tile_root, tmp_path)
  mask = sorted((root / "ground_truth" / "fray").iterdir())[0]
  mask.unlink()
  stem = mask.name[:-len("_mask.png")]
  with pytest.raises(FileNotFoundError, match=f"{stem}.jpg has no mask"):
    mvtec.MVTecCategory(tmp_path, "magnetic_tile").test()


def test_mask_size_mismatch_names_both_files(tile_root, tmp_path):
  root = copy_category(tile_root, tmp_path)
  mask = sorted((root / "ground_truth" / "crack").iterdir())[0]
  Image.new("L", (10, 10)).save(mask)
  stem = mask.name[:-len("_mask.png")]
  with pytest.raises(ValueError, match=f"{mask.name} is 10x10 but its image "
                     f".*{stem}.jpg"):
    mvtec.MVTecCategory(tmp_path, "magnetic_tile").test()


def test_unreadable_image_is_named(tile_root, tmp_path):
  root = copy_category(tile_root, tmp_path)
  (root / "train" / "good" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  with pytest.raises(ValueError, match="cannot read image .*broken.jpg"):
    mvtec.MVTecCategory(tmp_path, "magnetic_tile").train()


def test_bad_image_size():
  with pytest.raises(ValueError, match="image_size must be positive"):
    mvtec.MVTecCategory("/nonexistent", "x", image_size=0)
