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
                   latency_rows: int = 200, throughput_seconds: float = 1.0, val: pd.DataFrame | None = None) -> dict:
    """Accuracy/macro-F1 on `test` (and on `val` as `val_accuracy`/`val_macro_f1`: what a search chooses by,
    so that the test figures of the model it chose are not picked by themselves); size; batch-1 latency (the
    model alone, and raw input to probabilities) and batch-32 throughput with `threads` intra-op threads
    (None = onnxruntime's default, all cores)."""
    raw = task.raw_inputs(test)
    predictor = task.load_predictor(model_dir)
    labels = read_meta(model_dir)["labels"]

    def scored(df: pd.DataFrame, rows: list) -> dict:
        probs = predictor.predict_proba(rows)
        return classification_metrics(df["label"].tolist(), [labels[i] for i in probs.argmax(1)], labels)

    metrics = scored(test, raw)
    if val is not None and len(val):
        on_val = scored(val, task.raw_inputs(val))
        metrics |= {"val_accuracy": on_val["accuracy"], "val_macro_f1": on_val["macro_f1"]}
    predictor = task.load_predictor(model_dir, threads=threads)
    metrics.update(latency_ms(predictor, raw[:latency_rows]))
    metrics.update(e2e_latency_ms(predictor, raw[:latency_rows]))
    metrics["throughput"] = throughput(predictor, raw, batch_size=32, min_seconds=throughput_seconds)
    metrics["size_bytes"] = (Path(model_dir) / ONNX_FILE).stat().st_size
    metrics["threads"] = threads or 0
    return metrics
