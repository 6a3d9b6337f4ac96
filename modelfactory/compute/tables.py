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
from functools import lru_cache

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..store import Base, engine, session, utcnow

# Same id as store.py's schema lock: creating our tables and store.py creating its tables never race.
_SCHEMA_LOCK = 0x6D66_7363
_POOL_LOCK = 0x6D66_706C  # "mfpl": held for the length of every pool write transaction on PostgreSQL


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    api_key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key is shown once
    weight: Mapped[float] = mapped_column(Float, default=1.0)  # fair-share weight
    cpu_hours_month: Mapped[float | None] = mapped_column(Float, nullable=True)  # hard quota; None = unlimited
    gpu_hours_month: Mapped[float | None] = mapped_column(Float, nullable=True)  # hard quota; None = unlimited
    max_slots: Mapped[int | None] = mapped_column(Integer, nullable=True)  # soft: jobs beyond it wait
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ApiKey(Base):
    """An API key, stored as its sha256 only (the key itself is shown once). `tenant` None = an admin key.
    A revoked key stays as a row (who had it, until when) and stops working at once: every request looks it up."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    revoked: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


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


class Usage(Base):
    """The ledger: one row per attempt, written in the transaction that ends the attempt."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    order_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started: Mapped[dt.datetime] = mapped_column(DateTime)
    ended: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    cpu_seconds: Mapped[float] = mapped_column(Float)  # cpu x slots x wall
    gpu_seconds: Mapped[float] = mapped_column(Float)  # gpu x slots x wall
    outcome: Mapped[str] = mapped_column(String(20))  # succeeded | failed | preempted | lost | cancelled
    cost: Mapped[float] = mapped_column(Float)  # at the prices in force when the attempt ended


class InferenceUsage(Base):
    """The ledger's inference rows: what one `mf serve` process did for one model version in one metering window
    (requests, rows, and the model's compute: batch wall time x the session's threads, each request billed its
    rows' share of its batch). Written by serve/metering.py; invoiced beside the jobs' attempts."""

    __tablename__ = "inference_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    server: Mapped[str] = mapped_column(String(200))  # host:port/pid of the serving process
    started: Mapped[dt.datetime] = mapped_column(DateTime)
    ended: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    requests: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)
    cpu_seconds: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)  # at the prices in force when the window was written


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


POOL_TABLES = [t.__table__ for t in (Tenant, ApiKey, Job, JobEvent, Worker, Usage, InferenceUsage, PoolOrder,
                                     PoolSample)]


@lru_cache(maxsize=8)
def _ensure(eng: Engine) -> None:
    with eng.connect() as conn:
        _lock(conn, _SCHEMA_LOCK)
        Base.metadata.create_all(conn, tables=POOL_TABLES)
        # tenants from before api_keys existed: their key (Tenant.api_key_hash) becomes their first key row
        conn.execute(text("INSERT INTO api_keys (tenant, key_hash, label, created) "
                          "SELECT t.name, t.api_key_hash, 'initial', t.created FROM tenants t "
                          "WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.key_hash = t.api_key_hash)"))
        conn.commit()


def ensure_tables() -> Engine:
    """Create the pool's tables if this database lacks them (once per process and database). store.py creates
    the tables it knows when it first connects; ours are created here, so no other module has to import us
    first."""
    eng = engine()
    _ensure(eng)
    return eng


def _lock(conn, key: int) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


@contextmanager
def pool_tx() -> Iterator[Session]:
    """A pool write transaction (see the module docstring): commits on success, rolls back on error."""
    ensure_tables()
    with session() as s:
        _lock(s.connection(), _POOL_LOCK)
        yield s


@contextmanager
def pool_read() -> Iterator[Session]:
    """A read-only look at the pool (no lock: readers never wait for the scheduler)."""
    ensure_tables()
    with session() as s:
        yield s
