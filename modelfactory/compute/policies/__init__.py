"""Scheduling policies: pure functions from the pool's state to decisions.

The live scheduler and the trace simulator (`simulate.py`) both call the same `Policy.schedule`, so a policy
measured in replay is the policy that runs; nothing here touches a clock, a process or a database. The rules
(gangs, soft tenant limits, EASY backfilling, preemption by class, fair share and starvation) and why each is
there are in docs/scheduling.md. Every decision is deterministic: ties go by submission time, then job id.
"""

from __future__ import annotations

import dataclasses

from .fair import Fair
from .model import (
    EPS,
    PRIORITIES,
    Decision,
    JobView,
    Policy,
    Resources,
    TenantView,
    WorkerView,
    dominant_share,
    duration,
    entitlements,
    place,
    total,
)
from .ordered import Fifo, Priority

__all__ = [
    "EPS", "POLICIES", "PRIORITIES", "Decision", "Fair", "Fifo", "JobView", "Policy", "Priority", "Resources",
    "TenantView", "WorkerView", "dominant_share", "duration", "entitlements", "get", "place", "total",
]

POLICIES: dict[str, type] = {Fifo.name: Fifo, Priority.name: Priority, Fair.name: Fair}


def get(name: str, **params: float | bool) -> Policy:
    """The policy called `name`, configured with those of `params` it takes (the others are ignored, so a caller
    can configure every policy alike, e.g. `get(name, min_runtime=600)`)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy '{name}'; known: {', '.join(sorted(POLICIES))}") from None
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return cls(**{k: v for k, v in params.items() if k in known})
