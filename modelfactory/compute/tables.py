"""The compute pool's tables, on the same `Base` as store.py, and the one way pool code writes to them.

Everything the pool knows lives in these rows (no in-memory queue anywhere), which is what makes the scheduler and
the workers restartable: a process that dies loses nothing but the work since its job's last checkpoint.

Writes go through `pool_tx()`, which serialises pool writers: SQLite takes the write lock up front
(`BEGIN IMMEDIATE`, so a read-then-write transaction never fails half-way on a lock upgrade), PostgreSQL takes one
transaction-scoped advisory lock. Two schedulers, a scheduler and a worker finishing a job, a `cancel` racing a
lease expiry: each sees the other's committed result, and the state machine (jobs.transition) refuses what no
longer applies. Pool transactions are short (no compute inside), so one lock for all of them costs nothing here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..accounts.tables import ACCOUNT_TABLES, ensure_accounts
from ..store import Base, locked_tx, read_tx, utcnow
from ..store import ensure_tables as store_ensure


class Job(Base):
    """One unit of work on the pool. `state` is only ever changed by jobs.transition()."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(20))  # stage | command
    name: Mapped[str] = mapped_column(String(200), default="")  # for people: the node name, or the command
    key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # a stage job's cache key
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    priority: Mapped[str] = mapped_column(String(20), default="standard")  # a key of policies.PRIORITIES
    cpu: Mapped[float] = mapped_column(Float, default=1.0)
    gpu: Mapped[float] = mapped_column(Float, default=0.0)
    memory_gb: Mapped[float] = mapped_column(Float, default=1.0)
    slots: Mapped[int] = mapped_column(Integer, default=1)  # gang: all slots at once or none
    time_limit_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    preemptible: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(20), index=True)  # queued|running|succeeded|failed|cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # attempts started (the ledger's attempt number)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # attempts that failed or were lost
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)  # cap on `failures` (preemption is free)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_worker: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)  # runs the process
    placement: Mapped[list | None] = mapped_column(JSON, nullable=True)  # worker id per slot (gang jobs)
    lease_expires: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    preempt_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    depends_on: Mapped[list] = mapped_column(JSON, default=list)  # job ids that must succeed first
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    waiting: Mapped[str | None] = mapped_column(Text, nullable=True)  # why a queued job is not starting
    submitted: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)  # the current/last attempt
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    from_state: Mapped[str | None] = mapped_column(String(20), nullable=True)  # None: submitted
    to_state: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    cpu: Mapped[float] = mapped_column(Float)
    gpu: Mapped[float] = mapped_column(Float, default=0.0)
    memory_gb: Mapped[float] = mapped_column(Float)
    started: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    last_heartbeat: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(20), default="up")  # up | stopping | stopped | lost


class PoolOrder(Base):
    """An order submitted to the pool: which job (or cache hit) stands for each node of its plan."""

    __tablename__ = "pool_orders"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    priority: Mapped[str] = mapped_column(String(20), default="standard")
    dataset: Mapped[str] = mapped_column(String(300))  # name@version
    dataset_artifact: Mapped[str] = mapped_column(String(64))
    nodes: Mapped[dict] = mapped_column(JSON, default=dict)  # node -> {"stage", "key", "job": id | None}
    state: Mapped[str] = mapped_column(String(20), default="running")  # running | registering | done | failed
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class PoolSample(Base):
    """The pool's load at one moment, written by `mf server` every few seconds: utilisation over time for the
    dashboard (what the ledger cannot say: how much capacity stood idle)."""

    __tablename__ = "pool_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    workers: Mapped[int] = mapped_column(Integer)
    cpu_capacity: Mapped[float] = mapped_column(Float)
    gpu_capacity: Mapped[float] = mapped_column(Float)
    cpu_used: Mapped[float] = mapped_column(Float)
    gpu_used: Mapped[float] = mapped_column(Float)
    queued: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer)


POOL_TABLES = tuple(t.__tablename__ for t in (Job, JobEvent, Worker, PoolOrder, PoolSample))


def ensure_tables() -> None:
    """Create the pool's (and the accounts') tables if this database lacks them (once per process and
    database), so no other module has to import us first."""
    ensure_accounts()
    store_ensure(POOL_TABLES)


@contextmanager
def pool_tx() -> Iterator[Session]:
    """A pool write transaction (see the module docstring): commits on success, rolls back on error."""
    ensure_tables()
    with locked_tx(POOL_TABLES + ACCOUNT_TABLES) as s:
        yield s


@contextmanager
def pool_read() -> Iterator[Session]:
    """A read-only look at the pool (no lock: readers never wait for the scheduler)."""
    ensure_tables()
    with read_tx(POOL_TABLES + ACCOUNT_TABLES) as s:
        yield s
