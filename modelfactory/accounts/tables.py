"""The accounts' tables, on the same `Base` as store.py, and the one way accounts code reads and writes them.

Writes take the same lock as the pool's (`store.locked_tx`), so creating a tenant, ending an attempt (which writes
its ledger row) and checking a quota at submit see each other's committed results.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Boolean, DateTime, Float, Integer, String, UniqueConstraint, false, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..store import Base, ensure_tables, locked_tx, read_tx, schema_change, utcnow


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    weight: Mapped[float] = mapped_column(Float, default=1.0)  # fair-share weight
    cpu_hours_month: Mapped[float | None] = mapped_column(Float, nullable=True)  # hard quota; None = unlimited
    gpu_hours_month: Mapped[float | None] = mapped_column(Float, nullable=True)  # hard quota; None = unlimited
    max_slots: Mapped[int | None] = mapped_column(Integer, nullable=True)  # soft: jobs beyond it wait
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # may submit priority 'urgent' (which preempts other tenants' jobs); an operator grants it
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


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


class Usage(Base):
    """The ledger: one row per attempt, written in the transaction that ends the attempt."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("job_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    order_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)  # compute's jobs.id
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


ACCOUNT_TABLES = tuple(t.__tablename__ for t in (Tenant, ApiKey, Usage, InferenceUsage))


@lru_cache(maxsize=8)
def _migrate(eng: Engine) -> None:
    if "urgent" not in {c["name"] for c in inspect(eng).get_columns("tenants")}:  # databases from before it
        try:
            with eng.begin() as conn:
                conn.execute(text("ALTER TABLE tenants ADD COLUMN urgent BOOLEAN NOT NULL DEFAULT "
                                  + ("FALSE" if eng.dialect.name == "postgresql" else "0")))
        except DBAPIError:  # another process added it first
            if "urgent" not in {c["name"] for c in inspect(eng).get_columns("tenants")}:
                raise
    if "api_key_hash" in {c["name"] for c in inspect(eng).get_columns("tenants")}:
        _drop_legacy_key_column(eng)


def _drop_legacy_key_column(eng: Engine) -> None:
    """Databases from before api_keys kept each tenant's one key in tenants.api_key_hash (NOT NULL, so new tenants
    could not be added without it): the key becomes the tenant's first key row and the column goes. SQLite cannot
    drop a UNIQUE column, so there the table is rebuilt."""
    with schema_change(eng) as conn:
        if "api_key_hash" not in {c["name"] for c in inspect(conn).get_columns("tenants")}:
            return  # another process did it meanwhile
        conn.execute(text("INSERT INTO api_keys (tenant, key_hash, label, created) "
                          "SELECT t.name, t.api_key_hash, 'initial', t.created FROM tenants t "
                          "WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.key_hash = t.api_key_hash)"))
        if conn.dialect.name != "sqlite":
            conn.execute(text("ALTER TABLE tenants DROP COLUMN api_key_hash"))
            return
        conn.execute(text("ALTER TABLE tenants RENAME TO tenants_legacy"))
        Tenant.__table__.create(conn)
        cols = ", ".join(c.name for c in Tenant.__table__.columns)
        conn.execute(text(f"INSERT INTO tenants ({cols}) SELECT {cols} FROM tenants_legacy"))
        conn.execute(text("DROP TABLE tenants_legacy"))


def ensure_accounts() -> None:
    """Create the accounts' tables if this database lacks them (once per process and database)."""
    _migrate(ensure_tables(ACCOUNT_TABLES))


@contextmanager
def accounts_tx() -> Iterator[Session]:
    """A write transaction on the accounts' tables: commits on success, rolls back on error."""
    ensure_accounts()
    with locked_tx(ACCOUNT_TABLES) as s:
        yield s


@contextmanager
def accounts_read() -> Iterator[Session]:
    """A read-only look at the accounts' tables (no lock)."""
    ensure_accounts()
    with read_tx(ACCOUNT_TABLES) as s:
        yield s
