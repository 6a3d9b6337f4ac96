"""What the factory has produced on the pool over a window (`/api/v1/pool/output`, the dashboard's factory view):
orders per hour, models per tenant, the queue by tenant, and CPU-hours by stage kind from the usage ledger."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel
from sqlalchemy import select

from ..accounts.tables import Usage
from ..compute.tables import Job, pool_read
from ..store import ModelVersion, Order, utcnow


class HourCounts(BaseModel):
    hour: dt.datetime
    submitted: int
    done: int
    failed: int


class OrderCounts(BaseModel):
    done: int
    failed: int
    done_per_hour: float
    per_hour: list[HourCounts]


class TenantModels(BaseModel):
    tenant: str
    models: int
    models_total: int


class TenantQueue(BaseModel):
    tenant: str
    queued: int
    running: int
    queued_cpu: float
    queued_gpu: float


class KindHours(BaseModel):
    kind: str
    cpu_hours: float
    gpu_hours: float
    lost_cpu_hours: float
    attempts: int


class FactoryOutput(BaseModel):
    since: dt.datetime
    until: dt.datetime
    hours: float
    orders: OrderCounts
    models: list[TenantModels]
    queue: list[TenantQueue]
    cpu_hours: list[KindHours]


FINISHED = {"done": "done", "missed_targets": "done", "failed": "failed", "infeasible": "failed"}  # order states


def stage_kind(kind: str, payload: dict | None) -> str:
    """What a job's CPU-hours are booked under: a stage job's stage (e.g. teacher_fit, distill), else its kind
    (order, command)."""
    if kind == "stage":
        return str((payload or {}).get("stage") or "stage")
    return kind


def factory_output(hours: float, tenant: str | None = None, now: dt.datetime | None = None) -> FactoryOutput:
    """The factory's output over the last `hours` (all tenants', or `tenant`'s only): orders submitted, done
    (delivered: `done` or `missed_targets`) and failed (`failed` or `infeasible`) per hour; models registered
    per tenant (in the window and in all); the queue by tenant now; CPU- and GPU-hours per stage kind from the
    ledger (attempts that ended in the window; `lost_cpu_hours` is the part of attempts preempted, lost or
    failed)."""
    now = now or utcnow()
    since = now - dt.timedelta(hours=hours)
    start = since.replace(minute=0, second=0, microsecond=0)
    buckets: dict[dt.datetime, dict[str, int]] = {}
    t = start
    while t <= now:
        buckets[t] = {"submitted": 0, "done": 0, "failed": 0}
        t += dt.timedelta(hours=1)

    def hour(at: dt.datetime) -> dt.datetime:
        return at.replace(minute=0, second=0, microsecond=0)

    def mine(q, column):
        return q if tenant is None else q.where(column == tenant)

    with pool_read() as s:
        orders = s.execute(mine(select(Order.tenant, Order.state, Order.created, Order.finished)
                                .where((Order.created >= since) | (Order.finished >= since)), Order.tenant)).all()
        models = s.execute(mine(select(ModelVersion.tenant, ModelVersion.created), ModelVersion.tenant)).all()
        live = s.execute(mine(select(Job.tenant, Job.state, Job.cpu, Job.gpu, Job.slots)
                              .where(Job.state.in_(("queued", "running"))), Job.tenant)).all()
        usage = s.execute(mine(select(Usage.cpu_seconds, Usage.gpu_seconds, Usage.outcome, Job.kind, Job.payload)
                               .join(Job, Job.id == Usage.job_id).where(Usage.ended >= since), Usage.tenant)).all()
    done = failed = 0
    for o in orders:
        if o.created >= since and hour(o.created) in buckets:
            buckets[hour(o.created)]["submitted"] += 1
        outcome = FINISHED.get(o.state)
        if o.finished is not None and o.finished >= since and outcome:
            done += outcome == "done"
            failed += outcome == "failed"
            if hour(o.finished) in buckets:
                buckets[hour(o.finished)][outcome] += 1
    per_tenant: dict[str, dict[str, int]] = {}
    for m in models:
        row = per_tenant.setdefault(m.tenant, {"models": 0, "models_total": 0})
        row["models_total"] += 1
        row["models"] += m.created >= since
    queue: dict[str, dict[str, float]] = {}
    for j in live:
        row = queue.setdefault(j.tenant, {"queued": 0, "running": 0, "queued_cpu": 0.0, "queued_gpu": 0.0})
        row[j.state] += 1
        if j.state == "queued":
            row["queued_cpu"] += j.cpu * j.slots
            row["queued_gpu"] += j.gpu * j.slots
    kinds: dict[str, dict[str, float]] = {}
    for u in usage:
        row = kinds.setdefault(stage_kind(u.kind, u.payload),
                               {"cpu_hours": 0.0, "gpu_hours": 0.0, "lost_cpu_hours": 0.0, "attempts": 0})
        row["cpu_hours"] += u.cpu_seconds / 3600
        row["gpu_hours"] += u.gpu_seconds / 3600
        row["attempts"] += 1
        if u.outcome in ("preempted", "lost", "failed"):
            row["lost_cpu_hours"] += u.cpu_seconds / 3600
    return FactoryOutput.model_validate({
        "since": since, "until": now, "hours": hours,
        "orders": {"done": done, "failed": failed, "done_per_hour": done / hours,
                   "per_hour": [{"hour": t, **counts} for t, counts in buckets.items()]},
        "models": [{"tenant": name, **row} for name, row in sorted(per_tenant.items())],
        "queue": [{"tenant": name, **row} for name, row in sorted(queue.items())],
        "cpu_hours": [{"kind": name, **row} for name, row in sorted(kinds.items(), key=lambda kv: -kv[1]["cpu_hours"])],
    })
