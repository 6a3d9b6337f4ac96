"""The shared pool as everyone sees it: workers, what runs and waits, and utilisation over time (sampled by
`mf server`), and what the factory has produced on it (/pool/output). Tenants see the pool's totals, not other
tenants' jobs (those are under /jobs, filtered), and only their own orders, models, queue and CPU-hours."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from ...accounts.tenants import Principal
from ...compute import utilisation
from ...compute.schemas import PoolOut, UtilisationOut
from ...factory.output import FactoryOutput, factory_output
from ..auth import principal

router = APIRouter(tags=["pool"])


@router.get("/pool", response_model=PoolOut)
def pool(p: Principal = Depends(principal)) -> PoolOut:
    """Workers (state, capacity, jobs running on each, last heartbeat), queued and running job counts, and the
    capacity in use."""
    state = utilisation.as_dict(utilisation.current())
    if not p.admin:  # job ids on workers are other tenants' business
        for w in state["workers"]:
            w["running"] = len(w["running"])
    return PoolOut.model_validate(state)


@router.get("/pool/utilisation", response_model=UtilisationOut)
def history(minutes: float = Query(60, gt=0, le=7 * 24 * 60), p: Principal = Depends(principal)) -> UtilisationOut:
    """Samples of the pool's load over the last `minutes` (one every few seconds while `mf server` runs)."""
    return UtilisationOut.model_validate({"points": utilisation.history(minutes)})


@router.get("/pool/output", response_model=FactoryOutput)
def output(hours: float = Query(24, gt=0, le=7 * 24), p: Principal = Depends(principal)) -> FactoryOutput:
    """What the factory produced over the last `hours`: orders per hour, models per tenant, the queue by tenant
    and CPU-hours by stage kind. An admin sees every tenant; a tenant sees its own."""
    return factory_output(hours, tenant=None if p.admin else p.tenant)
