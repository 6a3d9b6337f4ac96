"""Inference serving: the Open Inference Protocol v2 REST API (KServe / Triton) over registry models, with
per-model dynamic batching, LRU model loading, per-tenant access, usage metering and Prometheus metrics.

`mf serve` runs it; `create_app(ServeSettings(...))` gives the ASGI app (see app.py for the routes).
"""

from .app import ServeSettings, create_app, run
from .batcher import BatchConfig

__all__ = ["BatchConfig", "ServeSettings", "create_app", "run"]
