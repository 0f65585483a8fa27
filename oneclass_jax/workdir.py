"""The one owner of a run's directory: its layout, its config, its results.

A workdir (local or gs://) holds:

  config.json        the run's config, written before training; a resume
                     under another config is refused
  .lock              held while a process trains or evaluates in it
  checkpoints/       orbax checkpoints (`checkpoint.py`)
  tb/, metrics.jsonl training scalars (`metric_writers.py`)
  embeddings/        cached embeddings (`embeddings.py`)
  detectors/         fitted detectors and threshold scores (one_class task)
  scores.npz         test labels and the score of every detector
  score_grids.npz, heatmaps/   patch scores and maps (mvtec_patches task)
  memory_bank.npz    the patch memory bank the export needs (mvtec_patches)
  exported/          scorers `score --workdir` exported (`export.py`), one
                     folder per `export_cache_dir`
  results.json       AUCs (or `"auc": null` and `auc_skipped`, the reason,
                     for a test set of normal images only, or none) and the
                     run's identity, written LAST: a workdir
                     with it has its other outputs too ("finished")
  evaluations/<name>/  named evaluations (one_class task): results.json,
                     scores.npz and detectors/ of an evaluation with another
                     embedding or detector set than the config's
  analysis.json      what the study figures need (`analysis/study_runs.py`)
  summary.json       a K-model program's root: every model's AUCs

Evaluations. The run's own evaluation (the config's `eval.embedding` and
`eval.detectors`: what training writes) is the top level above, so every
reader of a workdir finds it there. `evaluate` with another embedding or
detector set writes the same three outputs, in the same order (results.json
last), to `evaluations/<name>/` instead, <name> being `evaluation_name`:
the embedding and the sorted detector set, e.g. `g-kde-ocsvm`; the
embeddings cache is shared (it is keyed by the checkpoint's identity).
Readers select one with `evaluation=NAME` (None: the run's own), and
`checked_evaluation_dir` refuses a name with no finished evaluation.

`Results` is the record of results.json, read and validated here only;
`write_results` writes the outputs and then results.json; `find_runs` is how
`report`, the ensembles, the study grids and `explain` find runs (and, with
`evaluations=True`, their named evaluations).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import ml_collections
from etils import epath

from oneclass_jax import config_lib
from oneclass_jax import files

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
RESULTS = "results.json"
SCORES = "scores.npz"
DETECTORS = "detectors"
EMBEDDINGS = "embeddings"
ANALYSIS = "analysis.json"
SUMMARY = "summary.json"
SCORE_GRIDS = "score_grids.npz"
HEATMAPS = "heatmaps"
MEMORY_BANK = "memory_bank.npz"
EXPORTED = "exported"
EVALUATIONS = "evaluations"


def check_name(workdir) -> str:
  """Refuses an empty --workdir (an unset shell variable, say)."""
  if workdir is None or not str(workdir).strip():
    raise ValueError(
        f"--workdir is empty ({workdir!r}); pass a directory for the run, "
        "e.g. --workdir=/tmp/oneclass_run (an unset shell variable gives '').")
  return str(workdir)


def lock(workdir):
  """The workdir lock, taken by process 0 (the other processes are its job).

  A second run on the same workdir fails at once, naming the first
  (`files.workdir_lock`).
  """
  if jax.process_index() == 0:
    return files.workdir_lock(workdir)
  return contextlib.nullcontext()


def prepare(workdir: str, config) -> None:
  """Checks `workdir` may train `config` and writes its config.json.

  Every process checks (so all fail alike); only process 0 writes.

  Raises:
    ValueError: the workdir holds checkpoints without a config.json, or of a
      different config.
    PermissionError: the workdir is not writable.
  """
  # epath: the workdir may be a gs:// URL.
  root = epath.Path(workdir)
  path = root / CONFIG
  current = config_lib.to_dict(config)
  if not path.exists() and has_checkpoints(root):
    raise ValueError(
        f"Workdir {workdir!r} holds checkpoints but no config.json, so "
        "nothing says which config trained them; refusing to resume under "
        "this one. Copy the run's config.json beside its checkpoints, or use "
        "a new --workdir.")
  if path.exists():
    saved = json.loads(path.read_text())
    diff = config_lib.config_diff(saved, current)
    if diff and (root / CHECKPOINTS).is_dir():
      raise ValueError(
          f"Workdir {workdir!r} holds a run with a different config; refusing "
          "to resume. Differing fields:\n  " + "\n  ".join(diff) +
          "\nUse a new --workdir, or the same config to resume.")
  if jax.process_index() != 0:
    return
  try:
    root.mkdir(parents=True, exist_ok=True)
    probe = root / ".write_test"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(f"Workdir {workdir!r} is not writable ({e}); pass "
                          "a --workdir you can write to.") from e
  files.write_json(path, current)


def has_checkpoints(root) -> bool:
  return latest_checkpoint_step(root) is not None


def latest_checkpoint_step(root) -> int | None:
  """The highest step under checkpoints/ (None: none), without restoring."""
  ckpt = epath.Path(root) / CHECKPOINTS
  if not ckpt.is_dir():
    return None
  return max((int(p.name) for p in ckpt.iterdir() if p.name.isdigit()),
             default=None)


def load_config(workdir) -> ml_collections.ConfigDict:
  path = files.path(workdir) / CONFIG
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a "
                            "workdir written by `oneclass_jax.main`.")
  return ml_collections.ConfigDict(files.read_json(path))


# ----------------------------------------------------------------------------
# Named evaluations and the export cache


def evaluation_name(embedding: str, detector_names) -> str:
  """An evaluation's name: its embedding, then its sorted detector set.

  `evaluation_name('g', ['ocsvm', 'kde']) == 'g-kde-ocsvm'`, whatever the
  order on the command line, so re-running the same settings replaces the
  same folder.
  """
  return "-".join([embedding, *sorted(set(detector_names))])


def evaluation_dir(workdir, name: str | None = None) -> epath.Path:
  """Where evaluation `name` writes: the workdir itself for None (its own)."""
  root = files.path(workdir)
  return root if name is None else root / EVALUATIONS / name


def evaluation_names(workdir) -> list[str]:
  """The workdir's finished named evaluations (those with results.json)."""
  root = files.path(workdir) / EVALUATIONS
  if not root.is_dir():
    return []
  return sorted(p.name for p in root.iterdir() if finished(p))


def checked_evaluation_dir(workdir, name: str | None = None) -> epath.Path:
  """`evaluation_dir`, refusing a name without a finished evaluation."""
  if name is None:
    return evaluation_dir(workdir)
  present = evaluation_names(workdir)
  if name not in present:
    interrupted = ""
    if evaluation_dir(workdir, name).is_dir():
      interrupted = (f" ({EVALUATIONS}/{name}/ has no {RESULTS}: that "
                     "evaluation was interrupted; run "
                     f"`{evaluate_command(workdir, name)}` again)")
    raise ValueError(
        f"No finished evaluation {name!r} in {workdir}{interrupted}. Its "
        f"named evaluations: {', '.join(present) or 'none'}; leave "
        "--evaluation out for the run's own (the config's detectors).")
  return evaluation_dir(workdir, name)


def evaluate_command(workdir, evaluation: str | None = None) -> str:
  """The command line that (re)writes `evaluation` (None: the run's own)."""
  command = f"python -m oneclass_jax.tools.evaluate --workdir={workdir}"
  if evaluation is None:
    return command
  embedding, *names = evaluation.split("-")
  return f"{command} --embedding={embedding} --detectors={','.join(names)}"


def export_cache_dir(workdir, *, detector: str, fpr: float, step,
                     evaluation: str | None = None,
                     calibration_digest: str | None = None) -> epath.Path:
  """exported/<detector>_fpr<fpr>_step<step>[_eval-<name>][_cal<digest>]."""
  name = (f"{detector}_fpr{fpr:g}_step{step}" +
          (f"_eval-{evaluation}" if evaluation else "") +
          (f"_cal{calibration_digest}" if calibration_digest else ""))
  return files.path(workdir) / EXPORTED / name


# ----------------------------------------------------------------------------
# results.json


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


# The keys every results.json holds (both tasks' evaluators write them).
_SCHEMA: dict[str, Callable[[object], bool]] = {
    "dataset": lambda v: isinstance(v, str) and bool(v),
    "inlier_class": lambda v: _is_int(v) or isinstance(v, str),
    "num_classes": lambda v: _is_int(v) and v > 0,
    "method": lambda v: isinstance(v, str) and bool(v),
    "seed": _is_int,
    "step": _is_int,
    "embedding": lambda v: v in ("f", "g"),
    # None: the test set allows no AUC; `auc_skipped` then says why.
    "auc": lambda v: v is None or (isinstance(v, dict) and bool(v)),
}


@dataclasses.dataclass(frozen=True)
class Results:
  """One results.json: the AUCs of one trained model on one task."""
  path: pathlib.Path  # The workdir.
  dataset: str
  inlier_class: int | str
  num_classes: int
  method: str
  seed: int
  step: int
  embedding: str
  auc: dict[str, float]  # Empty when the run has no AUC (`auc_skipped`).
  record: Mapping[str, Any]  # Everything results.json holds.
  # A named evaluation's name (`path` is then evaluations/<name>/ of the
  # workdir); None for the run's own.
  evaluation: str | None = None

  @property
  def workdir(self) -> pathlib.Path:
    """The run's workdir (`path` itself but for a named evaluation)."""
    return self.path.parent.parent if self.evaluation else self.path

  @property
  def auc_skipped(self) -> str | None:
    """Why the run has no AUC (a normal-only test set, say); None if it has."""
    return self.record.get("auc_skipped")

  @property
  def task_key(self):
    return (self.dataset, self.inlier_class, self.method, self.embedding,
            self.seed, self.evaluation)

  @property
  def config(self) -> dict:
    """The run's config as a dict; an error if results.json has none."""
    if "config" not in self.record:
      raise ValueError(f"{self.path / RESULTS}: no 'config'; not written by "
                       "this project's evaluators.")
    return self.record["config"]

  @property
  def baselines(self) -> dict:
    return self.record.get("baselines", {})

  def scores(self) -> dict[str, Any]:
    """{'labels': ..., detector: scores} of the run's scores.npz."""
    return files.load_npz(self.path / SCORES)

  def has_scores(self) -> bool:
    return (files.path(self.path) / SCORES).exists()

  @classmethod
  def read(cls, workdir) -> "Results":
    """Reads and validates `<workdir>/results.json` (or that file's path)."""
    workdir = pathlib.Path(workdir)
    path = workdir if workdir.name == RESULTS else workdir / RESULTS
    try:
      record = json.loads(files.path(path).read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(record, dict):
      raise ValueError(f"{path}: expected a JSON object.")
    for key, ok in _SCHEMA.items():
      if key not in record:
        raise ValueError(f"{path}: missing key {key!r}; results.json must "
                         f"hold {sorted(_SCHEMA)}.")
      if not ok(record[key]):
        raise ValueError(f"{path}: invalid {key!r} = {record[key]!r}.")
    if record["auc"] is None and not (
        isinstance(record.get("auc_skipped"), str) and record["auc_skipped"]):
      raise ValueError(f"{path}: 'auc' is null but 'auc_skipped' gives no "
                       "reason; re-evaluate the run.")
    for name, value in (record["auc"] or {}).items():
      if (isinstance(value, bool) or not isinstance(value, (int, float)) or
          not 0.0 <= value <= 1.0):
        raise ValueError(f"{path}: auc[{name!r}] = {value!r} is not a "
                         "number in [0, 1].")
    evaluation = record.get("evaluation")
    if evaluation is not None and not (
        path.parent.name == evaluation and
        path.parent.parent.name == EVALUATIONS):
      raise ValueError(
          f"{path}: the results of named evaluation {evaluation!r}, which "
          f"belong in <workdir>/{EVALUATIONS}/{evaluation}/; move the folder "
          "back or remove it.")
    return cls(path=path.parent, record=record, evaluation=evaluation,
               auc={k: float(v) for k, v in (record["auc"] or {}).items()},
               **{k: record[k] for k in _SCHEMA if k != "auc"})


def write_results(workdir, results: Mapping[str, Any],
                  outputs: Mapping[str, bytes] = ()) -> None:
  """Writes each of `outputs` ({file name: bytes}), then results.json.

  results.json last, so a workdir that has it has the rest too (sweeps and
  `launch/` treat it as "finished"). Each file is written atomically.
  """
  root = files.path(workdir)
  for name, data in dict(outputs).items():
    files.write_atomic(root / name, data)
  files.write_json(root / RESULTS, dict(results))


def clear_results(out) -> None:
  """Removes the results.json of `out` (made if missing) before new outputs.

  An evaluation calls it before it writes anything, so that until its own
  results.json (written last) the folder does not look finished: one killed
  half-way never passes the old AUCs off as those of its new outputs.
  """
  out = files.path(out)
  out.mkdir(parents=True, exist_ok=True)
  if (out / RESULTS).exists():
    (out / RESULTS).unlink()


def finished(workdir) -> bool:
  """True when `workdir` holds a complete results.json (local or gs://)."""
  path = epath.Path(workdir) / RESULTS
  try:
    return "auc" in json.loads(path.read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
    return False


def unfinished(workdirs: Iterable[str]) -> list[str]:
  """The workdirs, in order, that do not hold results yet."""
  return [w for w in workdirs if not finished(w)]


def find_runs(roots, *, with_scores: bool = False,
              evaluations: bool = False) -> list[Results]:
  """Every run (workdir with results.json) under `roots`, recursively.

  Args:
    roots: a directory or a sequence of them.
    with_scores: keep only runs whose workdir also holds scores.npz.
    evaluations: also every finished named evaluation of those runs
      (`Results.evaluation` says which); without, the runs' own only.

  Returns:
    The validated records, sorted by path.

  Raises:
    FileNotFoundError: a root that is not a directory, or no run at all.
  """
  if isinstance(roots, (str, pathlib.Path)):
    roots = [roots]
  roots: Sequence = list(roots)
  paths = set()
  for root in roots:
    root = pathlib.Path(root)
    if not root.is_dir():
      raise FileNotFoundError(f"{root} is not a directory.")
    paths.update(root.rglob(RESULTS))
  runs = [r for r in map(Results.read, sorted(paths))
          if evaluations or r.evaluation is None]
  if with_scores:
    runs = [r for r in runs if r.has_scores()]
  if not runs:
    what = RESULTS + (f" and {SCORES}" if with_scores else "")
    raise FileNotFoundError(
        f"No {what} under {[str(r) for r in roots]}; train and "
        "evaluate first (python -m oneclass_jax.main / oneclass_jax.tools.evaluate).")
  return runs
