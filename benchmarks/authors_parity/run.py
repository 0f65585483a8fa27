r"""The authors' TF2 code and ours, side by side, cell by cell (issue #14).

  nice -n 10 python benchmarks/authors_parity/run.py \
      --authors_checkout=/tmp/authors_code \
      --authors_python=/tmp/authors_venv/bin/python --source_dir=/tmp/data \
      --methods=contrastive_da,rotnet_head --classes=1,8,3 --seeds=1-3 \
      --width=0.25 --epochs=5 --log_every=50 --tag=w025_e5
  python benchmarks/authors_parity/run.py --report_only --tag=w025_e5

For each (method, class, seed) it runs each of --implementations one after
the other on this machine (never two at once, so their speeds compare):
their code in its own virtualenv (patched first, `patch_authors.py`; their
data from the pickled batches `cifar_pickle.py` writes from the same JPEG
folder), ours with the matched overrides (`sides.ours_command`), and ours
once more with the paper's augmentations. README.md beside this file says
how to set up their side.

Resumable (`records.sweep`): a finished run is one line of
`<records>/<tag>.jsonl`, added only after the run exited 0 and its outputs
were read; a run killed midway leaves no line and is redone from scratch
(its folder under --work is emptied first). A tag holds one setting per
method; records of another setting under the same tag are refused. The
comparison tables go to `<records>/<tag>.md` and stdout, the loss curves to
`<records>/<tag>_loss.png`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
# pylint: disable=g-import-not-at-top,wrong-import-position
import compare
import patch_authors
import records
import sides
from oneclass_jax import config_lib
from oneclass_jax.data import sources
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_list("methods", ["contrastive_da", "rotnet_head"],
                  f"Methods, of {sorted(sides.METHODS)}.")
flags.DEFINE_string("classes", "1,8", "CIFAR-10 inlier classes ('1,8', '0-2').")
flags.DEFINE_string("seeds", "1", "Seeds ('1-3'). Their code seeds nothing "
                    "at --seed=0 (`if seed > 0`), so use seeds >= 1.")
flags.DEFINE_float("width", 0.25, "ResNet-18 width (stages 64w..512w; the "
                   "stem stays 64 on both sides).")
flags.DEFINE_integer("steps", 0, "Training steps of every run (or --epochs).")
flags.DEFINE_float("epochs", 0, "Or: passes over each method's training set "
                   "(the inlier class; x4 with contrastive_da's rotations), "
                   "rounded up to whole --log_every windows.")
flags.DEFINE_integer("batch", 0, "Batch size (0 = the method's: 32 "
                     "contrastive_da, 64 rotnet_head, as their scripts).")
flags.DEFINE_integer("log_every", 100, "Window of the logged loss means "
                     "(their 'epoch', --num_batch); divides --steps.")
flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate (their "
                   "scripts' 0.01), cosine per step to 0.")
flags.DEFINE_list("implementations", list(sides.IMPLEMENTATIONS),
                  "Which sides to run.")
flags.DEFINE_string("authors_checkout", "/tmp/authors_code",
                    f"Their code at {patch_authors.COMMIT[:8]} (README).")
flags.DEFINE_string("authors_python", "/tmp/authors_venv/bin/python",
                    "Python of their virtualenv (README).")
flags.DEFINE_string("source_dir", "/tmp/data",
                    "CIFAR-10 JPEG folder (train/<class>/*.jpg, test/...).")
flags.DEFINE_string("data_dir", "", "Our loader's conversion folder, for "
                    "our runs and the pickles ('' = $TFDS_DATA_DIR).")
flags.DEFINE_string("work", "/tmp/authors_parity", "Run folders and the "
                    "pickled batches (not committed).")
flags.DEFINE_string("records", str(ROOT / "benchmarks" / "records" /
                                   "authors_parity"),
                    "Where <tag>.jsonl and <tag>.md go (committed).")
flags.DEFINE_string("tag", "", "Name of this sweep's records (required).")
flags.DEFINE_string("note", "", "Said above the tables (e.g. 'SMOKE: ...').")
flags.DEFINE_bool("prepare_only", False, "Patch their checkout and write "
                  "the pickled batches, then stop.")
flags.DEFINE_bool("report_only", False, "Only tabulate <tag>.jsonl.")


def _load() -> list[float]:
  return [float(v) for v in pathlib.Path("/proc/loadavg").read_text().split()[:3]]


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def machine() -> dict:
  return {"host": socket.gethostname(), "cpus": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "processor": platform.processor() or platform.machine()}


_PACKAGES = {"authors": ("tensorflow-cpu", "tf-keras", "numpy", "scikit-learn"),
             "ours": ("jax", "jaxlib", "flax", "optax", "numpy",
                      "scikit-learn")}


def versions(python, impl: str) -> dict:
  """Package versions of a side's Python (without importing the packages)."""
  code = ("import importlib.metadata as m, json, sys; print(json.dumps("
          "{p: m.version(p) for p in sys.argv[1:]}))")
  out = subprocess.run([str(python), "-c", code, *_PACKAGES[impl]],
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out)


def _run(cmd, cwd, env, log: pathlib.Path) -> dict:
  """Runs one side; returns its timing facts. RunFailed on a non-zero exit."""
  facts = {"command": cmd, "cwd": str(cwd), "start": _now(),
           "load_before": _load()}
  t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
  with open(log, "w") as f:
    rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f,
                        stderr=subprocess.STDOUT, check=False).returncode
  # CPU seconds beside wall seconds: on a shared machine (or one that pauses
  # low-priority jobs) wall time alone says little about the work done.
  facts.update(end=_now(), wall_seconds=time.perf_counter() - t0,
               cpu_seconds=_children_cpu_seconds() - cpu0, load_after=_load())
  if rc:
    tail = log.read_text(errors="replace")[-3000:]
    raise records.RunFailed(
        f"exit status {rc}: {' '.join(map(str, cmd))}\n(log {log}):\n{tail}")
  return facts


def run_one(cell: records.Cell, pickle_dir) -> dict:
  """One implementation of one cell, from an empty folder to its record."""
  impl, method, cls, seed = (cell.implementation, cell.method,
                             cell.inlier_class, cell.seed)
  setting = sides.Setting(**cell.setting)
  folder = pathlib.Path(FLAGS.work) / "runs" / FLAGS.tag / (
      f"{method}_c{cls}_s{seed}") / impl
  shutil.rmtree(folder, ignore_errors=True)  # A killed attempt's leftovers.
  folder.mkdir(parents=True)
  env = dict(os.environ)
  if FLAGS.data_dir:
    env["TFDS_DATA_DIR"] = FLAGS.data_dir
  if impl == "authors":
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = sides.authors_command(FLAGS.authors_python, FLAGS.authors_checkout,
                                method, cls, seed, setting, pickle_dir,
                                folder)
    facts = _run(cmd, FLAGS.authors_checkout, env, folder / "log.txt")
    result = sides.authors_result(folder, setting)
    facts["versions"] = versions(FLAGS.authors_python, "authors")
  else:
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = sides.ours_command(sys.executable, method, cls, seed, setting,
                             FLAGS.source_dir, folder / "workdir",
                             paper_aug=impl == "ours_paper_aug")
    facts = _run(cmd, ROOT, env, folder / "log.txt")
    result = sides.ours_result(folder / "workdir", setting)
    facts["versions"] = versions(sys.executable, "ours")
  return {"tag": FLAGS.tag, **result, **facts, "machine": machine()}


def prepare() -> pathlib.Path:
  """Patches their checkout (idempotent) and writes the pickled batches."""
  if "authors" in FLAGS.implementations:
    for path, state in patch_authors.apply(FLAGS.authors_checkout).items():
      print(f"{state:>8} {path}")
  import cifar_pickle  # pylint: disable=g-import-not-at-top
  pickle_dir = pathlib.Path(FLAGS.work) / "cifar10_pickle"
  cifar_pickle.convert(FLAGS.source_dir, pickle_dir, FLAGS.data_dir or None)
  return pickle_dir


def setting(method: str, cls: int) -> sides.Setting:
  batch = FLAGS.batch or sides.METHODS[method].batch_size
  steps = FLAGS.steps
  if not steps:
    labels = sources.load("cifar10", "train", data_dir=FLAGS.data_dir or None,
                          source_dir=FLAGS.source_dir).labels
    steps = sides.steps_for_epochs(FLAGS.epochs, int((labels == cls).sum()),
                                   method, batch, FLAGS.log_every)
  return sides.Setting(FLAGS.width, steps, batch, FLAGS.log_every,
                       FLAGS.learning_rate)


def main(argv):
  del argv
  if not FLAGS.tag:
    raise app.UsageError("--tag is required: it names the records.")
  if (FLAGS.steps > 0) == (FLAGS.epochs > 0) and not FLAGS.report_only:
    raise app.UsageError("Give the run length by --steps or by --epochs "
                         "(exactly one of them > 0).")
  unknown = set(FLAGS.methods) - set(sides.METHODS)
  unknown |= set(FLAGS.implementations) - set(sides.IMPLEMENTATIONS)
  if unknown:
    raise app.UsageError(f"Unknown {sorted(unknown)}; methods are "
                         f"{sorted(sides.METHODS)}, implementations "
                         f"{list(sides.IMPLEMENTATIONS)}.")
  records_dir = pathlib.Path(FLAGS.records)
  records_dir.mkdir(parents=True, exist_ok=True)
  path = records_dir / f"{FLAGS.tag}.jsonl"
  if not FLAGS.report_only:
    pickle_dir = prepare()
    if FLAGS.prepare_only:
      return
    cells = [records.Cell(method, cls, seed, impl,
                          dataclasses.asdict(setting(method, cls)))
             for method in FLAGS.methods
             for cls in config_lib.parse_ints(FLAGS.classes)
             for seed in config_lib.parse_ints(FLAGS.seeds)
             for impl in FLAGS.implementations]
    records.sweep(path, cells, lambda cell: run_one(cell, pickle_dir))
  text = compare.markdown(records.read(path), sides.IMPLEMENTATIONS,
                          f"Authors' code vs ours: {FLAGS.tag}")
  if FLAGS.note:
    text = f"{FLAGS.note}\n\n{text}"
  (records_dir / f"{FLAGS.tag}.md").write_text(text)
  compare.loss_figure(records.read(path), sides.IMPLEMENTATIONS).savefig(
      records_dir / f"{FLAGS.tag}_loss.png", dpi=110)
  print(text)


if __name__ == "__main__":
  app.run(main)
