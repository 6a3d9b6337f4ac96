"""Prometheus metrics of one generation server, on its own registry (two servers in one process never share them).

| metric | type | labels |
|---|---|---|
| `mf_llm_requests_total` | counter | model (the base name or `name@version`; "": unresolved), endpoint, status |
| `mf_llm_prompt_tokens_total`, `mf_llm_generated_tokens_total` | counter | model |
| `mf_llm_time_to_first_token_seconds` | histogram | model (arrival of the request to its first token) |
| `mf_llm_request_duration_seconds` | histogram | model (arrival to the last token) |
| `mf_llm_batch_size` | histogram | step: sequences in each forward (`decode`: the active batch; `prefill`) |
| `mf_llm_step_seconds_total` | counter | step: forward wall time |
| `mf_llm_active_sequences`, `mf_llm_waiting_requests` | gauge | |
| `mf_llm_adapters_loaded` | gauge | |
| `mf_llm_adapter_loads_total`, `mf_llm_adapter_evictions_total` | counter | |
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class LLMMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mf_llm_requests", "Generation requests by model, endpoint and HTTP status.",
                                ["model", "endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("mf_llm_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.generated_tokens = Counter("mf_llm_generated_tokens", "Tokens generated.", ["model"], registry=r)
        self.ttft = Histogram("mf_llm_time_to_first_token_seconds", "Request arrival to its first token.",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("mf_llm_request_duration_seconds", "Request arrival to its last token.",
                                  ["model"], buckets=DURATION_BUCKETS, registry=r)
        self.batch_size = Histogram("mf_llm_batch_size", "Sequences in one forward of the engine.", ["step"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.step_seconds = Counter("mf_llm_step_seconds", "Engine forward wall time.", ["step"], registry=r)
        self.active = Gauge("mf_llm_active_sequences", "Sequences being generated.", registry=r)
        self.waiting = Gauge("mf_llm_waiting_requests", "Requests waiting to join the batch.", registry=r)
        self.adapters_loaded = Gauge("mf_llm_adapters_loaded", "LoRA adapters loaded on the base.", registry=r)
        self.adapter_loads = Counter("mf_llm_adapter_loads", "LoRA adapter loads.", registry=r)
        self.adapter_evictions = Counter("mf_llm_adapter_evictions", "LoRA adapters evicted (LRU).", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
