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

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
FMNIST_DIR = pathlib.Path(os.environ.get(
    "ONECLASS_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def shared_data_dir():
  """../shared/data (CIFAR-10 JPEG copy, magnetic tiles). Fails loudly if absent."""
  if not SHARED_DATA.is_dir():
    pytest.fail(f"{SHARED_DATA} is missing: the real-data tests need the "
                "project's shared/ folder beside the checkout.")
  return SHARED_DATA


@pytest.fixture(scope="session")
def fmnist_dir():
  """Fashion-MNIST IDX files from the Debian package. Fails loudly if absent."""
  if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
    pytest.fail(f"Fashion-MNIST not found in {FMNIST_DIR}: run "
                "`apt-get install -y dataset-fashion-mnist`.")
  return FMNIST_DIR
