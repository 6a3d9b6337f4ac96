"""Prometheus metrics of one server, on its own registry (so two servers in one process never share counters).

| metric | type | labels |
|---|---|---|
| `mf_inference_requests_total` | counter | model, version, status (HTTP code) |
| `mf_inference_rows_total` | counter | model, version |
| `mf_inference_request_duration_seconds` | histogram | model, version (arrival to response ready) |
| `mf_inference_compute_seconds_total` | counter | model, version (model wall time) |
| `mf_inference_batch_size` | histogram | model, version (rows per executed batch) |
| `mf_inference_batches_total` | counter | model, version |
| `mf_inference_queue_depth` | gauge | model, version (requests waiting) |
| `mf_models_loaded` | gauge | |
| `mf_models_loaded_bytes` | gauge | (model files of the loaded models) |
| `mf_model_loads_total`, `mf_model_unloads_total` | counter | reason (request, lru, api) for unloads |
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        model = ["model", "version"]
        self.requests = Counter("mf_inference_requests", "Inference requests by model and HTTP status.",
                                [*model, "status"], registry=r)
        self.rows = Counter("mf_inference_rows", "Rows inferred.", model, registry=r)
        self.latency = Histogram("mf_inference_request_duration_seconds",
                                 "Inference request latency in the server (arrival to response).", model,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Counter("mf_inference_compute_seconds", "Model wall time spent in batches.", model,
                               registry=r)
        self.batch_size = Histogram("mf_inference_batch_size", "Rows per executed batch.", model,
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batches = Counter("mf_inference_batches", "Executed batches.", model, registry=r)
        self.queue_depth = Gauge("mf_inference_queue_depth", "Requests waiting in a model's queue.", model,
                                 registry=r)
        self.loaded = Gauge("mf_models_loaded", "Models loaded.", registry=r)
        self.loaded_bytes = Gauge("mf_models_loaded_bytes", "Size of the loaded models' files.", registry=r)
        self.loads = Counter("mf_model_loads", "Model loads.", registry=r)
        self.unloads = Counter("mf_model_unloads", "Model unloads by reason.", ["reason"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
