"""Progress lines for long phases: what runs, on how much, and how long it took.

Stage 2 at the paper's sizes runs for minutes per phase (an OC-SVM fit on
10,000 x 12,288 raw pixels, embedding 150,000 images); a user should never
wait a minute without a line saying what is happening (issue #19).
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

from absl import logging

# A loop logs at most this often (seconds): often enough to show life, rarely
# enough not to flood a log.
EVERY_SECONDS = 30.0


@contextlib.contextmanager
def phase(what: str, *args) -> Iterator[None]:
  """Logs `what % args` at the start and its duration at the end."""
  text = what % args if args else what
  logging.info("%s ...", text)
  start = time.perf_counter()
  yield
  logging.info("%s: done in %.1f s.", text, time.perf_counter() - start)


class Counter:
  """Items done out of a total: a rate and ETA line every EVERY_SECONDS."""

  def __init__(self, what: str, total: int, unit: str = "images"):
    self.what, self.total, self.unit = what, total, unit
    self.done = 0
    self.start = self.last = time.perf_counter()

  def update(self, n: int) -> None:
    self.done += n
    now = time.perf_counter()
    if now - self.last >= EVERY_SECONDS and self.done < self.total:
      self.last = now
      rate = self.done / (now - self.start)
      logging.info("%s: %d/%d %s, %.0f %s/s, ETA %.0f s.", self.what,
                   self.done, self.total, self.unit, rate, self.unit,
                   (self.total - self.done) / max(rate, 1e-9))

  def finish(self) -> None:
    seconds = time.perf_counter() - self.start
    logging.info("%s: %d %s in %.1f s (%.0f %s/s).", self.what, self.done,
                 self.unit, seconds, self.done / max(seconds, 1e-9),
                 self.unit)
