"""What a model costs to run (compress/measure.py): the measuring loops' logic, on a fake session and a fake clock
(no wall-clock figure is asserted: benchmarks report those)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modelfactory.compress import measure


class _Session:
    def __init__(self):
        self.calls = 0

    def run(self, _outputs, _feeds):
        self.calls += 1


class _Predictor:
    def __init__(self):
        self.session = _Session()

    def encode(self, inputs):
        return {"x": np.zeros((len(inputs), 1))}


def test_throughput_stops_once_its_time_is_up_not_after_a_whole_pass(monkeypatch):
    """320 inputs make 10 batches of 32; each run 'takes' 0.3 s on the fake clock, so 1 s is passed after the
    fourth timed batch (1.2 s): a loop that finished the pass first would run all 10 (a slow teacher's whole
    test split, again, just to time it)."""
    clock = itertools.count(step=0.3)
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    predictor = _Predictor()
    rows_per_s = measure.throughput(predictor, list(range(320)), batch_size=32, min_seconds=1.0)
    assert predictor.session.calls == 1 + 4  # the warm-up, then batches until 1.2 s had passed
    assert rows_per_s == pytest.approx(4 * 32 / 1.2)


def test_throughput_cycles_over_few_inputs_until_its_time_is_up(monkeypatch):
    clock = itertools.count(step=0.25)  # exact in binary: no rounding decides the count
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    predictor = _Predictor()
    rows_per_s = measure.throughput(predictor, list(range(8)), batch_size=32, min_seconds=1.0)  # one short batch
    assert predictor.session.calls == 1 + 4
    assert rows_per_s == 4 * 8 / 1.0
