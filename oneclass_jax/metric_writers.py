"""One small metric-writer module: TensorBoard events, a JSONL file, the log.

TensorBoard events come from tensorboardX (clu's writers import TensorFlow,
which training must not need). Only host 0 writes files; every host logs.
"""
from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Writes scalars to TensorBoard (`workdir/tb`) and `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), step)
    self._jsonl.write(json.dumps({"step": step, **{
        k: float(v) for k, v in scalars.items()}}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


