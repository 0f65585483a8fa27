"""Real-data tests skip on a user's clone and fail in CI when data is gone."""
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
TESTS = pathlib.Path(__file__).resolve().parent


def _run(tmp_path, require: bool):
  env = {**os.environ, "ONECLASS_SHARED_DATA": str(tmp_path / "missing")}
  env.pop("ONECLASS_REQUIRE_SHARED_DATA", None)
  if require:
    env["ONECLASS_REQUIRE_SHARED_DATA"] = "1"
  return subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       str(TESTS / "test_sources.py"), "-k", "keeps_original_ids"],
      env=env, capture_output=True, text=True, cwd=TESTS.parent, check=False)


def test_without_shared_data_real_variant_skips_synthetic_runs(tmp_path):
  done = _run(tmp_path, require=False)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "1 passed, 1 skipped" in done.stdout, done.stdout


def test_ci_fails_when_shared_data_is_missing(tmp_path):
  done = _run(tmp_path, require=True)
  assert done.returncode != 0, done.stdout
  assert "ONECLASS_REQUIRE_SHARED_DATA=1" in done.stdout, done.stdout
