"""What a model costs to run, measured on this CPU: file size, batch-1 latency, batch-32 throughput."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..tasks import Predictor


def latency_ms(predictor: Predictor, inputs: Sequence[Any], *, warmup: int = 10, repeats: int = 1) -> dict:
    """Batch-1 model latency over real inputs (preprocessing excluded: it is the same for every model)."""
    feeds = [predictor.encode([x]) for x in inputs]
    for f in feeds[:warmup]:
        predictor.session.run(None, f)
    times = []
    for _ in range(repeats):
        for f in feeds:
            t0 = time.perf_counter()
            predictor.session.run(None, f)
            times.append((time.perf_counter() - t0) * 1000)
    return {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95)),
            "latency_samples": len(times)}


def e2e_latency_ms(predictor: Predictor, inputs: Sequence[Any], *, warmup: int = 10) -> dict:
    """Batch-1 latency from a raw input to probabilities: tokenization or decoding included. Once a model runs
    in tens of microseconds, preprocessing is the cost, so both figures are reported."""
    for x in inputs[:warmup]:
        predictor.predict_proba([x])
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        predictor.predict_proba([x])
        times.append((time.perf_counter() - t0) * 1000)
    return {"latency_e2e_ms_p50": float(np.percentile(times, 50)),
            "latency_e2e_ms_p95": float(np.percentile(times, 95))}


def throughput(predictor: Predictor, inputs: Sequence[Any], *, batch_size: int = 32, min_seconds: float = 1.0) -> float:
    """Rows per second at `batch_size`, cycling over the inputs' batches until `min_seconds` have passed — checked
    after every batch, so a slow model (a teacher on a large test split) is not run over the whole split again
    just to measure it: every order's evaluations pay for this."""
    batches = [predictor.encode(inputs[i:i + batch_size]) for i in range(0, len(inputs) - batch_size + 1, batch_size)]
    if not batches:
        batches = [predictor.encode(list(inputs))]
    predictor.session.run(None, batches[0])
    rows, start = 0, time.perf_counter()
    while True:
        for b in batches:
            predictor.session.run(None, b)
            rows += len(next(iter(b.values())))
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return rows / elapsed
