"""The shared pool as everyone sees it: workers, what runs and waits, and utilisation over time (sampled by
`mf server`). Tenants see the pool's totals, not other tenants' jobs (those are under /jobs, filtered)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from ...accounts.tenants import Principal
from ...compute import utilisation
from ..auth import principal

router = APIRouter(tags=["pool"])


@router.get("/pool", response_model=dict[str, Any])
def pool(p: Principal = Depends(principal)) -> dict[str, Any]:
    """Workers (state, capacity, jobs running on each, last heartbeat), queued and running job counts, and the
    capacity in use."""
    state = utilisation.as_dict(utilisation.current())
    if not p.admin:  # job ids on workers are other tenants' business
        for w in state["workers"]:
            w["running"] = len(w["running"])
    return state


@router.get("/pool/utilisation", response_model=dict[str, Any])
def history(minutes: float = Query(60, gt=0, le=7 * 24 * 60), p: Principal = Depends(principal)) -> dict[str, Any]:
    """Samples of the pool's load over the last `minutes` (one every few seconds while `mf server` runs)."""
    return {"points": utilisation.history(minutes)}
