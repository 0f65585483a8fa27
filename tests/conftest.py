"""Test-wide JAX setup: CPU only, 8 fake devices so sharding runs every time.

The XLA flag must be set before the JAX backend starts; setting it here (and in
the README's test command) means `pytest tests` alone exercises 8 devices.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests are dominated by XLA compile time of tiny models; skipping most
# optimisation passes roughly halves the suite's CPU time (it changes no
# semantics). Subprocesses started by tests inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(os.environ.get(
    "ONECLASS_SHARED_DATA",
    pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))
FMNIST_DIR = pathlib.Path(os.environ.get(
    "ONECLASS_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


# CI (.ci/run) sets this: there the real-data tests must run, never vanish.
REQUIRE_SHARED_DATA = os.environ.get("ONECLASS_REQUIRE_SHARED_DATA") == "1"


@pytest.fixture(scope="session")
def shared_data_dir():
  """../shared/data (CIFAR-10 JPEG copy, magnetic tiles).

  A user's clone has no ../shared: there the real-data variants are skipped
  (the synthetic fixtures below cover the same readers); in CI
  (ONECLASS_REQUIRE_SHARED_DATA=1) a missing folder fails the suite.
  """
  if not SHARED_DATA.is_dir():
    message = (f"{SHARED_DATA} is missing: the real-data tests need the "
               "project's shared/ folder beside the checkout.")
    if REQUIRE_SHARED_DATA:
      pytest.fail(message + " (ONECLASS_REQUIRE_SHARED_DATA=1)")
    pytest.skip(message)
  return SHARED_DATA


def make_mvtec_category(root, category, counts, seed=0):
  """A synthetic MVTec-AD-layout category: grey JPEG tiles of differing sizes.

  `counts` maps 'train/good', 'test/good', 'test/<defect>' to image counts.
  Like the magnetic-tile set: landscape images with longest side 256, a
  defect is a bright blob, its mask `ground_truth/<defect>/<stem>_mask.png`
  is 255 on the blob.
  """
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)
  for folder, n in counts.items():
    split, kind = folder.split("/")
    out = root / category / split / kind
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
      height = int(rng.integers(150, 200))
      yy, xx = np.mgrid[:height, :256]
      image = 110 + 30 * np.sin(xx / 9.0 + i) * np.cos(yy / 13.0)
      image = image + rng.normal(0, 6, image.shape)
      stem = f"{i:03d}"
      if kind != "good":
        cy, cx = rng.integers(30, height - 30), rng.integers(30, 226)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2
        image[blob] = 235
        masks = root / category / "ground_truth" / kind
        masks.mkdir(parents=True, exist_ok=True)
        Image.fromarray((blob * 255).astype(np.uint8)).save(
            masks / f"{stem}_mask.png")
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
          out / f"{stem}.jpg", quality=90)
  return root


@pytest.fixture(scope="session")
def fmnist_dir():
  """Fashion-MNIST IDX files from the Debian package. Fails loudly if absent."""
  if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"Fashion-MNIST not found in {FMNIST_DIR}: run "
                "`apt-get install -y dataset-fashion-mnist`.")
  return FMNIST_DIR


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: subprocess, multi-process and end-to-end tests "
      "(`pytest -m 'not slow'` is the fast inner loop; the README's command "
      "runs everything)")
