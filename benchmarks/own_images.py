r"""README's "Train on your own images, score new ones", run on magnetic tiles.

  python benchmarks/own_images.py --mvtec_dir=DIR/magnetic_tile [--root=/tmp/own_images]
  python benchmarks/own_images.py --smoke   # synthetic folders, tiny (tests)

Lays the magnetic-tile set (MVTec AD layout; ../shared/data) out as a user
with only good parts would have it, then runs the README's commands as
subprocesses, exactly as printed there:

  ROOT/data/train/good/        the 600 defect-free training images (nothing else)
  ROOT/calibration/            half of test/good (seeded): fresh normal images
                               for the threshold, never trained on
  ROOT/incoming/<type>/        the other half of test/good and every defective
                               image, one folder per true type (the scorer
                               never sees the folder names; they are read back
                               here only to count verdicts)

  python -m oneclass_jax.main --config=configs/quickstart.py:dataset=image_folder,inlier_class=good \
      --workdir=ROOT/run --config.data.source_dir=ROOT/data --config.model.image_size=64
  python -m oneclass_jax.tools.export --workdir=ROOT/run --detector=D --fpr=F \
      --calibration=ROOT/calibration --out=ROOT/model_D
  python -m oneclass_jax.tools.score --model=ROOT/model_D --images=ROOT/incoming --out=ROOT/scores_D.csv

Per detector: the realised false-positive rate on the incoming good images,
the fraction of each defect type flagged, and the AUC of the scores (good
against defective). The baseline beside it is the same detector on raw
pixels (the images as the model sees them, 64 x 64 x 3 flattened), fitted on
the same training images and thresholded on the same calibration images.
Resumable: training resumes from its checkpoints, an existing export or CSV
is reused. Writes benchmarks/records/own_images.json and the section "Your
own images" of benchmarks/RESULTS.md (--results_md='' prints only).
"""
from __future__ import annotations

import csv
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
from sklearn import metrics as sk_metrics

from oneclass_jax import detectors
from oneclass_jax import files
from oneclass_jax import scorer as scorer_lib
from oneclass_jax import scoring
from results_md import write_section

ROOT = pathlib.Path(__file__).resolve().parents[1]
TITLE = "Your own images: normal-only magnetic tiles (issue #16)"

_MVTEC_DIR = flags.DEFINE_string(
    "mvtec_dir", "", "A category in MVTec AD layout (train/good, test/*).")
_ROOT = flags.DEFINE_string("root", "/tmp/own_images", "Where it all goes.")
_DETECTORS = flags.DEFINE_list("detectors", ["kde", "ocsvm", "gde"],
                               "Detectors exported and scored.")
_FPR = flags.DEFINE_float("fpr", 0.05, "Target false-positive rate.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "model.image_size.")
_STEPS = flags.DEFINE_integer("steps", 0, "total_steps (0: the config's).")
_SEED = flags.DEFINE_integer("seed", 0, "Calibration split and training.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Synthetic folders, 2 steps.")
_OUT = flags.DEFINE_string(
    "out", str(ROOT / "benchmarks" / "records" / "own_images.json"),
    "JSON record.")
_RESULTS_MD = flags.DEFINE_string(
    "results_md", str(ROOT / "benchmarks" / "RESULTS.md"),
    "RESULTS.md to update ('' = print only).")

GOOD = "good"


def lay_out(mvtec_dir: pathlib.Path, root: pathlib.Path, seed: int) -> dict:
  """The user's folders from an MVTec-layout category; counts per folder."""
  done = root / "layout.json"
  if done.exists():
    return json.loads(done.read_text())
  for sub in ("data", "calibration", "incoming"):
    shutil.rmtree(root / sub, ignore_errors=True)
  train = sorted((mvtec_dir / "train" / GOOD).iterdir())
  test_good = sorted((mvtec_dir / "test" / GOOD).iterdir())
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(test_good))
  half = len(test_good) // 2
  plan = {"data/train/good": train,
          "calibration": [test_good[i] for i in order[:half]],
          "incoming/good": [test_good[i] for i in order[half:]]}
  for kind in sorted(p.name for p in (mvtec_dir / "test").iterdir()):
    if kind != GOOD:
      plan[f"incoming/{kind}"] = sorted((mvtec_dir / "test" / kind).iterdir())
  for sub, paths in plan.items():
    (root / sub).mkdir(parents=True)
    for p in paths:
      shutil.copyfile(p, root / sub / p.name)
  counts = {sub: len(paths) for sub, paths in plan.items()}
  files.write_atomic(done, json.dumps(counts, indent=1))  # Written last.
  return counts


def synthetic(mvtec_dir: pathlib.Path):
  """A tiny MVTec-layout category: smooth good images, bright-spot defects."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for sub, n in (("train/good", 12), ("test/good", 8), ("test/spot", 4)):
    (mvtec_dir / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      image = rng.integers(90, 110, (40 + i, 48), dtype=np.uint8)
      if "spot" in sub:
        image[10:20, 10:20] = 255
      Image.fromarray(image, "L").save(mvtec_dir / sub / f"{i:03d}.jpg")


def run(args, log: pathlib.Path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  with open(log, "a") as f:
    f.write("+ " + " ".join(args) + "\n")
    f.flush()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=f,
                   stderr=subprocess.STDOUT, check=True)


def commands(root: pathlib.Path, detector: str) -> dict:
  """The README's commands for this root, as argument lists."""
  train = ["-m", "oneclass_jax.main",
           "--config=configs/quickstart.py:dataset=image_folder,"
           "inlier_class=good", f"--workdir={root}/run",
           f"--config.data.source_dir={root}/data",
           f"--config.model.image_size={_IMAGE_SIZE.value}",
           f"--config.seed={_SEED.value}"]
  if _SMOKE.value:
    train += ["--config.total_steps=2", "--config.batch_size=4",
              "--config.eval.baselines=False"]
  elif _STEPS.value:
    train += [f"--config.total_steps={_STEPS.value}"]
  model = root / f"model_{detector}"
  return dict(
      train=train,
      export=["-m", "oneclass_jax.tools.export", f"--workdir={root}/run",
              f"--detector={detector}", f"--fpr={_FPR.value}",
              f"--calibration={root}/calibration", f"--out={model}"],
      score=["-m", "oneclass_jax.tools.score", f"--model={model}",
             f"--images={root}/incoming", f"--out={root}/scores_{detector}.csv"])


def verdicts(rows) -> dict:
  """Realised rates per true type, and the AUC, from (name, score, verdict)."""
  kinds = [name.split("/")[0] for name, _, _ in rows]
  scores = np.array([s for _, s, _ in rows], np.float64)
  flagged = np.array([v == "anomalous" for _, _, v in rows])
  out = {"flagged": {}, "count": {}}
  for kind in sorted(set(kinds)):
    mask = np.array([k == kind for k in kinds])
    out["flagged"][kind] = float(flagged[mask].mean())
    out["count"][kind] = int(mask.sum())
  defective = np.array([k != GOOD for k in kinds])
  out["false_positive_rate"] = out["flagged"][GOOD]
  out["detection_rate"] = float(flagged[defective].mean())
  out["auc"] = float(sk_metrics.roc_auc_score(defective, scores))
  return out


def raw_pixels(root: pathlib.Path, model: scorer_lib.Scorer) -> dict:
  """{folder: (features, names)}: the images as the model sees them, flat."""
  out = {}
  for folder in ("data/train", "calibration", "incoming"):
    images, names, _ = scoring.read_images(
        root / folder, model.meta["run"]["dataset"], model.image_shape)
    flat = np.stack(images).reshape(len(images), -1).astype(np.float64)
    out[folder] = (flat / 255.0, names)
  return out


def raw_pixel_baseline(pixels: dict, detector: str) -> dict:
  """The same detector and calibration on raw pixels of the same images."""
  det = detectors.get(detector).fit(pixels["data/train"][0])
  threshold = detectors.threshold_at_fpr(
      det.score(pixels["calibration"][0]), _FPR.value,
      what="calibration scores")
  incoming, names = pixels["incoming"]
  scores = det.score(incoming)
  flagged = detectors.anomalous(scores, threshold)
  return verdicts([(n, s, "anomalous" if v else "normal")
                   for n, s, v in zip(names, scores, flagged)])


def table(record: dict) -> str:
  kinds = sorted(record["layout"])
  types = [k.split("/")[1] for k in kinds if k.startswith("incoming/")]
  defects = [t for t in types if t != GOOD]
  head = ("| representation | detector | threshold from | realised fpr on "
          "incoming good | flagged: " + " / ".join(defects) +
          " | all defective flagged | AUC (good vs defective) |")
  lines = [head, "|" + "---|" * 7]
  for det, res in record["detectors"].items():
    for label, r in (("learned f", res["learned"]),
                     ("raw pixels", res["raw_pixels"])):
      per_type = " / ".join(f"{100 * r['flagged'][t]:.0f}" for t in defects)
      lines.append(
          f"| {label} | {det} | {res['calibration_count']} calibration "
          f"images | {100 * r['false_positive_rate']:.1f}% "
          f"({r['count'][GOOD]} images) | {per_type} | "
          f"{100 * r['detection_rate']:.1f}% | {100 * r['auc']:.1f} |")
  return "\n".join(lines)


def results_section(record: dict) -> str:
  counts = ", ".join(f"{k}: {v}" for k, v in sorted(record["layout"].items()))
  cmds = "\n".join(" ".join(["python", *c]) for c in record["commands"])
  seconds = record["train_seconds"]
  train_line = ("Training and its evaluation (the first command) "
                f"{seconds:.0f} s." if seconds is not None else
                "Trained by an earlier call (time not measured here).")
  return f"""## {TITLE}

Date {record['date']}; machine {record['machine']}; load before
{record['load_before']}, after {record['load_after']}; seed {record['seed']};
target fpr {record['fpr']}. Magnetic tile defects (MVTec AD layout, ../shared/data)
laid out as normal-only training data plus fresh images ({counts}). Model:
`configs/quickstart.py` (RotNet, ResNet-18 width 1/8, {record['steps']} steps of
batch 32) at image size {record['image_size']}, trained on the good images only;
the thresholds come from the calibration folder through the exported scorer.
{train_line} Redo:
`python benchmarks/own_images.py --mvtec_dir=DIR/magnetic_tile`, which runs

```
{cmds}
```

Flagged fractions are in percent of each incoming folder.

{table(record)}
"""


def main(argv):
  del argv
  root = pathlib.Path(_ROOT.value)
  root.mkdir(parents=True, exist_ok=True)
  if _SMOKE.value:
    mvtec_dir = root / "synthetic"
    synthetic(mvtec_dir)
  else:
    if not _MVTEC_DIR.value:
      raise app.UsageError("--mvtec_dir is required (or --smoke).")
    mvtec_dir = pathlib.Path(_MVTEC_DIR.value).expanduser()
  layout = lay_out(mvtec_dir, root, _SEED.value)
  log = root / "log.txt"
  load_before = os.getloadavg()
  start = datetime.datetime.now(datetime.timezone.utc)
  cmds = [commands(root, d) for d in _DETECTORS.value]
  train_seconds = None  # None: trained by an earlier call (resumed).
  if not (root / "run" / "results.json").exists():
    t0 = time.monotonic()
    run(cmds[0]["train"], log)
    train_seconds = time.monotonic() - t0
  results, pixels = {}, None
  for det, c in zip(_DETECTORS.value, cmds):
    if not (root / f"model_{det}" / "meta.json").exists():
      run(c["export"], log)
    csv_path = root / f"scores_{det}.csv"
    if not csv_path.exists():
      run(c["score"], log)
    with open(csv_path) as f:
      rows = [(r["image"], float(r["score"]), r["verdict"])
              for r in csv.DictReader(f)]
    model = scorer_lib.Scorer.load(root / f"model_{det}")
    # Every export has the run's image shape: read the raw pixels once.
    pixels = pixels or raw_pixels(root, model)
    results[det] = dict(
        learned=verdicts(rows),
        raw_pixels=raw_pixel_baseline(pixels, det),
        calibration_count=model.meta["calibration"]["count"],
        threshold=model.threshold)
  config = json.loads((root / "run" / "config.json").read_text())
  record = dict(
      date=start.isoformat(timespec="seconds"), seed=_SEED.value,
      machine=f"{platform.node()}, {os.cpu_count()} CPUs",
      load_before=[round(x, 2) for x in load_before],
      load_after=[round(x, 2) for x in os.getloadavg()],
      fpr=_FPR.value, image_size=_IMAGE_SIZE.value,
      steps=config["total_steps"], train_seconds=train_seconds,
      layout=layout, smoke=_SMOKE.value,
      commands=[cmds[0]["train"]] + [x for c in cmds
                                     for x in (c["export"], c["score"])],
      detectors=results)
  text = json.dumps(record, indent=1)
  print(text)
  if not _SMOKE.value:
    files.write_atomic(_OUT.value, text)
    if _RESULTS_MD.value:
      write_section(pathlib.Path(_RESULTS_MD.value), results_section(record),
                    TITLE)
  print(table(record))


if __name__ == "__main__":
  app.run(main)
