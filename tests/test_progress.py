"""Stage 2's progress lines: each phase named with its size, and its time."""
import logging

import numpy as np

from oneclass_jax import evaluators
from oneclass_jax import progress


def test_detector_phases_are_logged_with_sizes(caplog):
  caplog.set_level(logging.INFO)
  rng = np.random.default_rng(0)
  scores = evaluators.one_class.fit_and_score(["kde", "gde"], rng.normal(size=(20, 5)),
                                  rng.normal(size=(7, 5)))
  assert set(scores) == {"kde", "gde"} and scores["kde"].shape == (7,)
  text = caplog.text
  for line in ("Fitting kde on 20 x 5 features: done in",
               "Fitting gde on 20 x 5 features: done in",
               "Scoring 7 x 5 features with kde: done in"):
    assert line in text, text


def test_counter_reports_rate_and_eta(caplog, monkeypatch):
  caplog.set_level(logging.INFO)
  monkeypatch.setattr(progress, "EVERY_SECONDS", 0.0)
  counter = progress.Counter("Embedding 10 images", 10)
  counter.update(4)
  counter.update(6)  # Done: no ETA line, the summary instead.
  counter.finish()
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0].startswith("Embedding 10 images: 4/10 images, ")
  assert "ETA" in lines[0] and len(lines) == 2
  assert lines[1].startswith("Embedding 10 images: 10 images in ")
