"""Jobs on the compute pool: list and filter, show with history, tail a log, cancel."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse

from ...accounts.tenants import Principal
from ...compute import jobs as pool_jobs
from ...compute.schemas import JobDetail, JobOut, job_detail, job_out
from ..auth import principal, tenant_filter, visible
from ..params import MAX_ID, Id, TenantQuery

router = APIRouter(tags=["jobs"])
STATES = "^(queued|running|succeeded|failed|cancelled)$"


def _job(job_id: int, p: Principal) -> JobDetail:
    job = job_detail(pool_jobs.describe(job_id))
    visible(p, job.tenant, f"job {job_id}")
    return job


@router.get("/jobs", response_model=list[JobOut])
def jobs(tenant: TenantQuery = None, state: str | None = Query(None, pattern=STATES),
         order: int | None = Query(None, ge=1, le=MAX_ID), limit: int = Query(500, ge=1, le=5000),
         p: Principal = Depends(principal)) -> list[JobOut]:
    """Jobs, newest first: state, attempts, worker, and why a queued one waits."""
    rows = pool_jobs.list_jobs(tenant=tenant_filter(p, tenant), state=state, order_id=order)
    return [job_out(r) for r in rows[::-1][:limit]]


@router.get("/jobs/{job_id}", response_model=JobDetail)
def show(job_id: Id, p: Principal = Depends(principal)) -> JobDetail:
    """A job and its history: every state change with time, reason, attempt and worker."""
    return _job(job_id, p)


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse)
def logs(job_id: Id, tail: int = Query(200, ge=1, le=10000),
         attempt: int | None = Query(None, ge=0, le=MAX_ID),
         p: Principal = Depends(principal)):
    """The last lines of an attempt's log (default: the latest attempt)."""
    _job(job_id, p)
    return PlainTextResponse(pool_jobs.log_tail(job_id, attempt, tail))


@router.post("/jobs/{job_id}/cancel", response_model=JobDetail)
def cancel(job_id: Id, p: Principal = Depends(principal)) -> JobDetail:
    """Cancel a queued or running job; its dependents are cancelled too."""
    _job(job_id, p)
    pool_jobs.cancel(job_id, f"cancelled by {'admin' if p.admin else p.tenant}")
    return job_detail(pool_jobs.describe(job_id))
