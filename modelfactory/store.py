"""SQLAlchemy models and sessions: a SQLite file under MF_HOME by default, PostgreSQL when MF_DATABASE_URL says so.

The artifact folders are the truth about *what* was produced; the database is the index that answers
*which* (dataset versions, model versions, aliases, orders, stage runs) without walking the disk.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .config import settings
from .errors import MFError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")  # tenants, datasets, models


def check_name(name: str, what: str = "dataset") -> str:
    if not NAME_RE.match(name):
        raise MFError(f"bad {what} name '{name}': use lowercase letters, digits, '.', '_' or '-'")
    return name


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    artifact_id: Mapped[str] = mapped_column(String(64), index=True)
    tenant: Mapped[str] = mapped_column(String(100), default="default")
    source: Mapped[str] = mapped_column(Text)
    n_rows: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class DatasetLineage(Base):
    """How a dataset version was made: from a file (`ingest`, no parent), or from its parent version by
    `auto_label` (a teacher's predictions) or `import` (reviewed labels). Per-row label provenance lives in the
    version's rows (label_source, label_model, label_confidence); this row summarises it and points at the parent.
    A table of its own, so databases made before it only gain a table (create_all), never an ALTER."""

    __tablename__ = "dataset_lineage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), unique=True, index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"), nullable=True)
    operation: Mapped[str] = mapped_column(String(40))  # ingest | auto_label | import
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    tenant: Mapped[str] = mapped_column(String(100), default="default")
    spec: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="running")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    report_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class StageRun(Base):
    __tablename__ = "stage_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    node: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))  # running | done | cached | failed
    resumed_from_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    tenant: Mapped[str] = mapped_column(String(100), default="default")
    task: Mapped[str] = mapped_column(String(100))
    artifact_id: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict] = mapped_column(JSON, default=dict)
    card: Mapped[str] = mapped_column(Text, default="")
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    alias: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)


# One lock id for "create the schema", so processes starting at once against one PostgreSQL don't race on
# CREATE TABLE (checkfirst alone is check-then-act).
_SCHEMA_LOCK = 0x6D66_7363  # "mfsc"
_WRITE_LOCK = 0x6D66_706C  # "mfpl": held for the length of every `locked_tx` (the pool's and accounts' writes)
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()  # every engine made here, for the fork hook below


def _finite(obj):
    """NaN/Infinity are not JSON: PostgreSQL's json type rejects them (SQLite stores any text). Store null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _json_dumps(obj) -> str:
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False)


def database_url(url: str) -> str:
    """`postgres://` and `postgresql://` (no driver) mean psycopg 3, the driver we install (SQLAlchemy's
    default for them is psycopg2)."""
    u = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        from pathlib import Path

        db_file = Path(url.removeprefix("sqlite:///"))
        db_file.parent.mkdir(parents=True, exist_ok=True)
        if not db_file.exists():  # private to the platform: tenants' commands run under other uids (compute/sandbox/)
            db_file.touch(mode=0o600)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers and one writer work at once
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        _create_sqlite_schema(engine)
    else:
        engine = create_engine(database_url(url), pool_pre_ping=True, json_serializer=_json_dumps)
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
            Base.metadata.create_all(conn)
    _ENGINES.add(engine)
    return engine


def _create_sqlite_schema(engine: Engine, tries: int = 20) -> None:
    """create_all under the schema lock (`BEGIN IMMEDIATE`: `mf server` and its workers open a new database at
    the same moment, and a deferred create_all's read-then-CREATE would fail its lock upgrade at once instead of
    waiting). The new file's switch to WAL, made as each connection opens, can still meet another process's
    switch and answer 'database is locked' without waiting: that try is repeated after a short backoff."""
    from sqlalchemy.exc import OperationalError

    for attempt in range(tries):
        try:
            with schema_change(engine) as conn:
                Base.metadata.create_all(conn)
            return
        except OperationalError as e:
            if not ("already exists" in str(e) or "database is locked" in str(e)) or attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _forget_engines_after_fork() -> None:
    """A forked child must not reuse its parent's pooled connections (two processes on one PostgreSQL socket
    corrupt each other's protocol stream): drop them in the child without closing the parent's."""
    for engine in list(_ENGINES):
        engine.dispose(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines_after_fork)


def engine() -> Engine:
    return _engine(settings().database_url)


@contextmanager
def session() -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on error."""
    maker = sessionmaker(engine(), expire_on_commit=False)
    with maker() as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


def _lock(conn, key: int) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


@contextmanager
def schema_change(eng: Engine) -> Iterator[Connection]:
    """A connection holding the schema lock, for a migration: commits at the end (rolls back on error)."""
    with eng.connect() as conn:
        _lock(conn, _SCHEMA_LOCK)
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


@lru_cache(maxsize=32)
def _ensure(eng: Engine, tables: tuple[str, ...]) -> None:
    with schema_change(eng) as conn:
        Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in tables])


def ensure_tables(tables: tuple[str, ...]) -> Engine:
    """Create the named tables (declared on `Base` by other packages) if this database lacks them, once per
    process and database. The engine creates the tables it knows when it first connects; a package whose tables
    may be declared later calls this before using them, so no module has to import another first."""
    eng = engine()
    _ensure(eng, tables)
    return eng


@contextmanager
def locked_tx(tables: tuple[str, ...]) -> Iterator[Session]:
    """A serialised write transaction over `tables`: SQLite takes the write lock up front (`BEGIN IMMEDIATE`, so
    a read-then-write transaction never fails half-way on a lock upgrade), PostgreSQL one transaction-scoped
    advisory lock. Commits on success, rolls back on error. Keep them short: no compute inside."""
    ensure_tables(tables)
    with session() as s:
        _lock(s.connection(), _WRITE_LOCK)
        yield s


@contextmanager
def read_tx(tables: tuple[str, ...]) -> Iterator[Session]:
    """A read-only look at `tables` (no lock: readers never wait for writers)."""
    ensure_tables(tables)
    with session() as s:
        yield s
