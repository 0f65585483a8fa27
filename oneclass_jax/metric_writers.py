"""One small metric-writer module: TensorBoard events, a JSONL file, the log.

TensorBoard events come from tensorboardX (clu's writers import TensorFlow,
which training must not need; tensorboardX writes gs:// itself through
google-cloud-storage). Only host 0 writes files; every host logs.
"""
from __future__ import annotations

import json
import os

import jax

from oneclass_jax import files


class MetricWriter:
  """Writes scalars to TensorBoard (`workdir/tb`) and `workdir/metrics.jsonl`.

  metrics.jsonl is appended to on local disks; object stores (gs://) cannot
  append, so there the file is rewritten whole (one upload) at each write,
  starting from what an earlier, resumed run left.

  A run resumed from checkpoint step `resume_step` first drops the lines of
  later steps (written after that checkpoint by the run that stopped), so
  metrics.jsonl holds each step once, from the run whose state continued.
  """

  def __init__(self, workdir: str, enabled: bool | None = None,
               resume_step: int | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    self._remote_lines = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      path = files.path(workdir) / "metrics.jsonl"
      lines = (path.read_text().splitlines(keepends=True)
               if path.exists() else [])
      kept = lines if resume_step is None else [
          line for line in lines if _line_step(line) <= resume_step]
      if files.is_remote(path):
        self._remote_path = path
        self._remote_lines = kept
      else:
        if len(kept) != len(lines):
          files.write_atomic(path, "".join(kept))
        self._jsonl = open(path, "a")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    line = json.dumps({"step": step, **{
        k: float(v) for k, v in scalars.items()}}) + "\n"
    if self._jsonl is None:
      self._remote_lines.append(line)
      files.write_atomic(self._remote_path, "".join(self._remote_lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      if self._jsonl is not None:
        self._jsonl.close()


def _line_step(line: str) -> float:
  """The step of a metrics.jsonl line; a torn last line counts as after all."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")
