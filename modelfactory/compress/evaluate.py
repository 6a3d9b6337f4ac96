"""Evaluate an exported model dir on a labeled split: quality and cost measured in one place, so the order's
evaluate stage and the benchmarks report the same figures the same way."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..tasks import TaskFamily, read_meta
from ..tasks.base import ONNX_FILE
from ..tasks.metrics import classification_metrics
from .measure import e2e_latency_ms, latency_ms, throughput


def evaluate_model(task: TaskFamily, model_dir: Path, test: pd.DataFrame, *, threads: int | None = 1,
                   latency_rows: int = 200, throughput_seconds: float = 1.0) -> dict:
    """Accuracy/macro-F1 on `test`; size; batch-1 latency (the model alone, and raw input to probabilities) and
    batch-32 throughput with `threads` intra-op threads (None = onnxruntime's default, all cores)."""
    raw = task.raw_inputs(test)
    probs = task.load_predictor(model_dir).predict_proba(raw)
    labels = read_meta(model_dir)["labels"]
    metrics = classification_metrics(test["label"].tolist(), [labels[i] for i in probs.argmax(1)], labels)
    predictor = task.load_predictor(model_dir, threads=threads)
    metrics.update(latency_ms(predictor, raw[:latency_rows]))
    metrics.update(e2e_latency_ms(predictor, raw[:latency_rows]))
    metrics["throughput"] = throughput(predictor, raw, batch_size=32, min_seconds=throughput_seconds)
    metrics["size_bytes"] = (Path(model_dir) / ONNX_FILE).stat().st_size
    metrics["threads"] = threads or 0
    return metrics
