r"""Deployment cost: the exported scorer against `score --workdir` per call.

  python benchmarks/scorer_benchmark.py --workdir=DIR [--detector=kde] \
      [--fpr=0.05] [--calibration=FOLDER] [--batch=256] [--repeats=5]

For one trained and evaluated workdir (an MVTec-style one needs
--calibration), prints one JSON object:

* export_seconds: `export.export_workdir` into a temporary folder (restore,
  lowering; with --calibration also scoring that folder), in this process.
* scorer: in a fresh process (no jit cache), `cold_start_seconds` =
  `Scorer.load` + the first call on --batch images (deserialise, compile,
  run), `import_seconds` (numpy, jax and oneclass_jax.scorer), and
  `warm_images_per_second`: --batch images / median of --repeats further
  calls.
* cli: wall seconds of whole `python -m oneclass_jax.tools.score` processes
  on a folder of --batch images: `workdir_first` (--workdir with no cached
  artefact: restore + export + compile + score, what every call of the old
  `score` paid in restore + compile), `workdir_cached` (the same again: the
  artefact in DIR/exported/ reused) and `model` (--model=the artefact).
  These run on a copy of the workdir without its caches (embeddings/,
  exported/, tb/, heatmaps/), so DIR itself is not written to.

Images are uniform random uint8 pixels of the artefact's shape (the cost
does not depend on their content), written as PNG for the CLI. Timing
numbers belong in benchmarks/RESULTS.md only when measured on an idle
machine.
"""
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

from oneclass_jax import export

_WORKDIR = flags.DEFINE_string("workdir", None,
                               "A trained and evaluated workdir.")
_DETECTOR = flags.DEFINE_string("detector", "kde",
                                "A detector evaluate fitted.")
_FPR = flags.DEFINE_float("fpr", 0.05, "Target false-positive rate.")
_CALIBRATION = flags.DEFINE_string(
    "calibration", None, "Folder of normal images for the threshold "
    "(required for MVTec-style workdirs).")
_BATCH = flags.DEFINE_integer("batch", 256, "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed warm calls.")
flags.mark_flag_as_required("workdir")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Not copied for the CLI runs: caches and logs the score path never reads.
_NOT_COPIED = ("embeddings", "exported", "tb", "heatmaps")

# Run in a fresh interpreter: the import, the load and the first call are
# what a serving process pays once.
_SCORER_TIMING = """
import json, statistics, sys, time
start = time.perf_counter()
import jax
import numpy as np
from oneclass_jax import scorer
imported = time.perf_counter()
artefact, batch, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = scorer.Scorer.load(artefact, max_batch=batch)
images = np.random.default_rng(0).integers(
    0, 256, (batch, *model.image_shape), np.uint8)
model.score(images)
cold = time.perf_counter()
warm = []
for _ in range(repeats):
  t = time.perf_counter()
  model.score(images)
  warm.append(time.perf_counter() - t)
print(json.dumps({"import_seconds": imported - start,
                  "cold_start_seconds": cold - imported,
                  "warm_seconds_per_call": statistics.median(warm),
                  "warm_images_per_second": batch / statistics.median(warm),
                  "device": str(jax.devices()[0])}))
"""


def _env():
  # This checkout's package, installed or not.
  return dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _run(args) -> tuple[float, str]:
  start = time.perf_counter()
  proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True,
                        text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
  return seconds, proc.stdout


def _write_images(folder: pathlib.Path, count: int, shape) -> None:
  folder.mkdir(parents=True)
  rng = np.random.default_rng(1)
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(
        folder / f"{i:05d}.png")


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    start = time.perf_counter()
    meta = export.export_workdir(_WORKDIR.value, tmp / "model",
                                 detector=_DETECTOR.value, fpr=_FPR.value,
                                 calibration=_CALIBRATION.value)
    export_seconds = time.perf_counter() - start
    _, out = _run([sys.executable, "-c", _SCORER_TIMING, str(tmp / "model"),
                   str(_BATCH.value), str(_REPEATS.value)])
    timing = json.loads(out.splitlines()[-1])

    images = tmp / "images"
    _write_images(images, _BATCH.value, tuple(meta["image_shape"]))
    copy = tmp / "workdir"
    shutil.copytree(_WORKDIR.value, copy,
                    ignore=shutil.ignore_patterns(*_NOT_COPIED))
    score = [sys.executable, "-m", "oneclass_jax.tools.score",
             f"--images={images}", f"--out={tmp / 'scores.csv'}"]
    workdir_flags = [f"--workdir={copy}", f"--detector={_DETECTOR.value}",
                     f"--fpr={_FPR.value}"] + (
                         [f"--calibration={_CALIBRATION.value}"]
                         if _CALIBRATION.value else [])
    cli = {"workdir_first": _run(score + workdir_flags)[0],
           "workdir_cached": _run(score + workdir_flags)[0],
           "model": _run(score + [f"--model={tmp / 'model'}"])[0]}
  print(json.dumps({
      "workdir": _WORKDIR.value, "task": meta["task"],
      "detector": meta["detector"], "image_shape": meta["image_shape"],
      "batch": _BATCH.value, "repeats": _REPEATS.value,
      "export_seconds": export_seconds, "scorer": timing,
      "cli_seconds": cli, "host": platform.node(),
      "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", "")}, indent=2))


if __name__ == "__main__":
  app.run(main)
