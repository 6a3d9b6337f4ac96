"""The pool's load now and over time: live workers and what their jobs hold, sampled by `mf server` into
`pool_samples` so that idle capacity shows up (the ledger only knows what was used)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from sqlalchemy import delete, func, select

from ..store import utcnow
from .tables import Job, PoolSample, Worker, pool_read, pool_tx

KEEP = dt.timedelta(days=7)


@dataclass
class PoolState:
    workers: list[dict]
    queued: int
    running: int
    cpu_capacity: float
    gpu_capacity: float
    cpu_used: float
    gpu_used: float


def current() -> PoolState:
    """Live workers (up or stopping) with the jobs they run, and the pool's totals."""
    with pool_read() as s:
        workers = list(s.scalars(select(Worker).order_by(Worker.id)))
        running = list(s.scalars(select(Job).where(Job.state == "running")))
        queued = s.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")) or 0
    per_worker: dict[str, list[int]] = {}
    for j in running:
        for wid in j.placement or ([j.lease_worker] if j.lease_worker else []):
            per_worker.setdefault(wid, []).append(j.id)
    live = [w for w in workers if w.state in ("up", "stopping")]
    rows = [{"id": w.id, "host": w.host, "state": w.state, "cpu": w.cpu, "gpu": w.gpu, "memory_gb": w.memory_gb,
             "running": sorted(set(per_worker.get(w.id, []))), "started": w.started,
             "last_heartbeat": w.last_heartbeat} for w in workers if w.state != "stopped"]
    return PoolState(rows, queued, len(running), sum(w.cpu for w in live), sum(w.gpu for w in live),
                     sum(j.cpu * j.slots for j in running), sum(j.gpu * j.slots for j in running))


def record(now: dt.datetime | None = None) -> None:
    """Write one sample (and forget samples older than a week)."""
    now = now or utcnow()
    st = current()
    with pool_tx() as s:
        s.add(PoolSample(at=now, workers=sum(w["state"] in ("up", "stopping") for w in st.workers),
                         cpu_capacity=st.cpu_capacity, gpu_capacity=st.gpu_capacity, cpu_used=st.cpu_used,
                         gpu_used=st.gpu_used, queued=st.queued, running=st.running))
        s.execute(delete(PoolSample).where(PoolSample.at < now - KEEP))


def history(minutes: float = 60, now: dt.datetime | None = None) -> list[dict]:
    """The samples of the last `minutes`, oldest first."""
    since = (now or utcnow()) - dt.timedelta(minutes=minutes)
    with pool_read() as s:
        rows = s.scalars(select(PoolSample).where(PoolSample.at >= since).order_by(PoolSample.at))
        return [{"t": r.at, "workers": r.workers, "cpu_used": r.cpu_used, "cpu_capacity": r.cpu_capacity,
                 "gpu_used": r.gpu_used, "gpu_capacity": r.gpu_capacity, "queued": r.queued, "running": r.running}
                for r in rows]


def as_dict(st: PoolState) -> dict:
    d = asdict(st)
    return {"workers": d["workers"], "jobs": {"queued": st.queued, "running": st.running},
            "capacity": {"cpu": st.cpu_capacity, "gpu": st.gpu_capacity},
            "used": {"cpu": st.cpu_used, "gpu": st.gpu_used}}
