"""A worker's rows in the pool: its registration, its heartbeats and the renewal of its jobs' leases.

Why apart from the worker loop: this is the database side of a worker (what the scheduler reads to decide whom
to lease to and whose leases to take back), written by the worker's heartbeat thread as well as its loop. A
worker that registers under an id whose previous incarnation died releases that incarnation's leases at once
(billed as lost) instead of waiting for them to expire.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass

from sqlalchemy import select, update

from ..artifacts import pid_alive
from ..errors import MFError
from ..store import utcnow
from .jobs import end_attempt
from .poolconfig import PoolConfig, pool_config
from .tables import Job, Worker, pool_tx


@dataclass(frozen=True)
class Capacity:
    cpu: float
    gpu: float
    memory_gb: float


def default_capacity() -> Capacity:
    """All of this machine's CPUs, no GPU (advertise GPUs with --gpu), 80% of its memory."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 * 0.8
    except (ValueError, OSError, AttributeError):
        mem = 4.0
    return Capacity(cpu=float(os.cpu_count() or 1), gpu=0.0, memory_gb=round(mem, 1))


def register(worker_id: str, capacity: Capacity, *, host: str | None = None, pid: int | None = None,
             now: dt.datetime | None = None, config: PoolConfig | None = None) -> list[int]:
    """Add or revive worker `worker_id`; returns the jobs its dead previous incarnation held (now requeued).
    Refuses an id that a live worker is using."""
    cfg = config or pool_config()
    host, pid, now = host or socket.gethostname(), pid or os.getpid(), now or utcnow()
    with pool_tx() as s:
        w = s.get(Worker, worker_id)
        if w is not None and w.state in ("up", "stopping") and (w.host, w.pid) != (host, pid):
            fresh = w.last_heartbeat >= now - dt.timedelta(seconds=cfg.lease_timeout_s)
            if fresh and (w.host != host or pid_alive(w.pid)):
                raise MFError(f"worker id '{worker_id}' is in use by pid {w.pid} on {w.host} (last heartbeat "
                              f"{(now - w.last_heartbeat).total_seconds():.0f} s ago); choose another --id")
        orphans = []
        if w is not None:
            for job in s.scalars(select(Job).where(Job.state == "running", Job.lease_worker == worker_id)):
                why = f"worker lost: {worker_id} restarted (pid {w.pid} on {w.host} is gone)"
                end_attempt(s, job, "lost", why, ended=max(job.started or now, w.last_heartbeat), now=now,
                            error=why, config=cfg)
                orphans.append(job.id)
        else:
            w = Worker(id=worker_id)
            s.add(w)
        w.host, w.pid, w.cpu, w.gpu, w.memory_gb = host, pid, capacity.cpu, capacity.gpu, capacity.memory_gb
        w.started = w.last_heartbeat = now
        w.state = "up"
        return orphans


def heartbeat(worker_id: str, *, now: dt.datetime | None = None, config: PoolConfig | None = None) -> None:
    """I am alive: renew the worker's heartbeat and the leases of the jobs it holds."""
    cfg = config or pool_config()
    now = now or utcnow()
    with pool_tx() as s:
        w = s.get(Worker, worker_id)
        if w is None:
            raise MFError(f"worker '{worker_id}' is not registered")
        w.last_heartbeat = now
        if w.state == "lost":  # back after a stall: its old leases were taken back, new ones may come
            w.state = "up"
        s.execute(update(Job).where(Job.state == "running", Job.lease_worker == worker_id)
                  .values(lease_expires=now + dt.timedelta(seconds=cfg.lease_timeout_s)))


def set_state(worker_id: str, state: str) -> None:
    with pool_tx() as s:
        w = s.get(Worker, worker_id)
        if w is not None:
            w.state = state
