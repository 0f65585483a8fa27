"""The parity records: one JSONL line per finished run, and the resumable sweep.

The one owner of `<records>/<tag>.jsonl`. A line is added only for a run
that finished (exit status 0, outputs read), by rewriting the file to a
temporary name and renaming it, so a killed sweep never leaves a torn or
finished-looking line; the next sweep skips the cells that have a line and
runs the others.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable, Sequence


class RunFailed(RuntimeError):
  """A run exited non-zero; the message holds the command and its log tail."""


@dataclasses.dataclass(frozen=True)
class Cell:
  method: str
  inlier_class: int
  seed: int
  implementation: str
  setting: dict  # sides.Setting as a dict: what a record must match.

  def key(self) -> tuple:
    return (self.method, self.inlier_class, self.seed, self.implementation)


def read(path) -> list[dict]:
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line]


def append(path, record: dict) -> None:
  """Adds one line by an atomic rewrite of the file."""
  path = pathlib.Path(path)
  text = path.read_text() if path.exists() else ""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text + json.dumps(record, sort_keys=True) + "\n")
  os.replace(tmp, path)


def _key(record: dict) -> tuple:
  return (record["method"], record["inlier_class"], record["seed"],
          record["implementation"])


def sweep(path, cells: Sequence[Cell], run: Callable[[Cell], dict]) -> int:
  """Runs every cell without a record; returns how many ran.

  `run(cell)` returns the run's measurements; the cell's identity and setting
  are added here. A cell whose method has records of another setting in
  `path` is refused before anything runs.

  Raises:
    ValueError: `path` holds records of another setting for a method.
    RunFailed: from `run` (the records so far stay; that cell has none).
  """
  done = {_key(r): r for r in read(path)}
  for cell in cells:
    for record in done.values():
      if record["method"] == cell.method and record["setting"] != cell.setting:
        raise ValueError(
            f"{path} holds {cell.method} runs of another setting "
            f"({record['setting']}; asked {cell.setting}): pass another "
            "--tag for this one.")
  ran = 0
  for cell in cells:
    if cell.key() in done:
      continue
    print(f"{cell.method} class {cell.inlier_class} seed {cell.seed}: "
          f"{cell.implementation} ...", flush=True)
    record = {**run(cell), "method": cell.method,
              "inlier_class": cell.inlier_class, "seed": cell.seed,
              "implementation": cell.implementation, "setting": cell.setting}
    append(path, record)
    done[cell.key()] = record
    ran += 1
    print(f"  KDE {record['auc']['kde']:.1f} OC-SVM {record['auc']['ocsvm']:.1f}"
          f", {record['train_images_per_s']:.1f} img/s, evaluation "
          f"{record['eval_seconds']:.0f} s, whole {record['wall_seconds']:.0f}"
          " s", flush=True)
  return ran
