"""The store on PostgreSQL (issue 6): dataset versions, the registry, orders and an end-to-end order run against a
throwaway server that the `postgres_server` fixture starts (or skips with the reason). Each test gets a fresh
database through `pg_database`, which also sets MF_DATABASE_URL for the code and any `mf` subprocess."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import subprocess
import sys

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from modelfactory import registry, store
from modelfactory.data import versions
from modelfactory.data.ingest import Table
from modelfactory.errors import MFError, NotFound
from modelfactory.store import DatasetVersion, Order, StageRun, session, utcnow

from .conftest import REPO, run_mf, sample_csv, tiny_order


@pytest.fixture(autouse=True)
def _on_postgres(pg_database):
    assert store.engine().dialect.name == "postgresql"  # not silently on SQLite
    return pg_database


def _rows(*texts: str) -> Table:
    return Table(rows=[{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(texts)], errors=[],
                 source="inline")


def _register(name: str, artifact_id: str, aliases: tuple[str, ...] = (), **metrics) -> registry.ModelRef:
    return registry.register(name=name, tenant="acme", task="text-classification", artifact_id=artifact_id,
                             metrics={"student": {"accuracy": 0.5, **metrics}}, lineage={"dataset": f"{name}@1"},
                             card_fn=lambda n, v: f"# {n} v{v}\n", aliases=aliases)


def test_dataset_versions_are_content_addressed():
    first = versions.add_table("reviews", _rows("good film", "bad film"))
    again = versions.add_table("reviews", _rows("good film", "bad film"))
    other = versions.add_table("reviews", _rows("good film", "bad film", "fine film"))
    assert (first.version, again.version, other.version) == (1, 1, 2)
    assert first.artifact_id == again.artifact_id != other.artifact_id
    assert versions.resolve("reviews").version == 2 and versions.resolve("reviews@1").n_rows == 2
    assert versions.resolve("reviews@2").stats == {"rows": 3, "labels": {"neg": 2, "pos": 1},
                                                    "text_chars_median": 9}
    assert [(v.name, v.version) for v in versions.list_versions()] == [("reviews", 1), ("reviews", 2)]
    with pytest.raises(NotFound):
        versions.resolve("reviews@3")
    with pytest.raises(IntegrityError):  # (name, version) is unique in the database itself
        with session() as s:
            s.add(DatasetVersion(name="reviews", version=1, artifact_id="x" * 64, source="-", n_rows=0, stats={}))


def test_registry_register_promote_resolve_list():
    v1 = _register("sentiment", "a" * 64)
    assert (v1.version, v1.aliases, v1.tenant) == (1, ["latest"], "acme")
    assert _register("sentiment", "a" * 64).version == 1  # same artifact, same version
    v2 = _register("sentiment", "b" * 64, aliases=("staging",), accuracy=0.75)
    assert (v2.version, v2.aliases, v2.metrics["student"]["accuracy"]) == (2, ["latest", "staging"], 0.75)
    assert v2.card == "# sentiment v2\n" and v2.lineage == {"dataset": "sentiment@1"}

    assert registry.resolve("sentiment").version == 2  # no prod alias: the latest version
    registry.promote("sentiment", 1, "prod")
    assert registry.resolve("sentiment").version == 1  # prod wins
    assert registry.resolve("sentiment@staging").version == 2 and registry.resolve("sentiment@1").version == 1
    registry.promote("sentiment", 2, "prod")  # aliases move
    assert registry.resolve("sentiment").aliases == ["latest", "prod", "staging"]

    _register("other", "c" * 64)
    assert [(m.name, m.version, m.aliases) for m in registry.list_models()] == [
        ("other", 1, ["latest"]), ("sentiment", 1, []), ("sentiment", 2, ["latest", "prod", "staging"])]
    assert [m.version for m in registry.list_models("sentiment")] == [1, 2]

    with pytest.raises(NotFound):
        registry.promote("sentiment", 9, "prod")
    with pytest.raises(NotFound):
        registry.resolve("sentiment@nope")
    with pytest.raises(MFError, match="cannot be a number"):
        registry.promote("sentiment", 1, "3")


def test_non_finite_metrics_are_stored_as_null():
    """PostgreSQL's json type rejects NaN/Infinity; the store writes null instead of failing the order."""
    ref = _register("nan", "d" * 64, loss=float("nan"), ratio=float("inf"))
    assert ref.metrics["student"] == {"accuracy": 0.5, "loss": None, "ratio": None}


def test_order_lifecycle_with_stage_runs():
    spec = {"name": "reviews", "task": "text-classification", "nested": {"list": [1, 2.5, "x"], "none": None}}
    with session() as s:
        order = Order(name="reviews", tenant="acme", spec=spec)
        s.add(order)
        s.flush()
        order_id = order.id
        s.add_all([StageRun(order_id=order_id, node="split", stage="split", key="k" * 64, state="cached",
                            finished=utcnow()),
                   StageRun(order_id=order_id, node="teacher", stage="finetune_teacher", key="t" * 64,
                            state="running")])
    with session() as s:
        run = s.scalar(select(StageRun).where(StageRun.node == "teacher"))
        run.state, run.resumed_from_step, run.finished = "done", 5, utcnow()
        o = s.get(Order, order_id)
        o.state, o.report_path, o.finished = "done", "/tmp/report.md", utcnow()
    with session() as s:
        o = s.get(Order, order_id)
        assert (o.state, o.tenant, o.spec, o.error) == ("done", "acme", spec, None)
        assert o.created <= o.finished and o.created.tzinfo is None  # naive UTC, as on SQLite
        runs = s.scalars(select(StageRun).where(StageRun.order_id == order_id).order_by(StageRun.id)).all()
        assert [(r.node, r.state, r.resumed_from_step) for r in runs] == [("split", "cached", None),
                                                                         ("teacher", "done", 5)]
    with pytest.raises(IntegrityError):  # the foreign key is enforced
        with session() as s:
            s.add(StageRun(order_id=order_id + 1000, node="x", stage="x", key="x", state="running"))
            s.flush()
    with pytest.raises(RuntimeError), session() as s:  # an error inside the unit of work rolls it back
        s.get(Order, order_id).state = "failed"
        s.flush()
        raise RuntimeError("boom")
    with session() as s:
        assert s.get(Order, order_id).state == "done"


def test_plain_postgres_urls_mean_psycopg3(pg_database, monkeypatch):
    assert store.database_url("postgresql://u:p%40ss@h:5/db?sslmode=disable") == \
        "postgresql+psycopg://u:p%40ss@h:5/db?sslmode=disable"
    assert store.database_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert store.database_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    assert store.database_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv("MF_DATABASE_URL", pg_database.replace("postgresql+psycopg://", "postgresql://"))
    assert versions.add_table("plain", _rows("a", "b")).version == 1
    assert store.engine().dialect.driver == "psycopg"


def test_processes_starting_at_once_create_the_schema_once(postgres_server, tmp_path):
    """Workers pointed at one empty database race to create the tables; the advisory lock serialises them."""
    empty = postgres_server.create_database()  # this test's own database already has the tables
    env = {**os.environ, "MF_DATABASE_URL": empty}
    N = 6
    code = """if True:  # import, check in, wait for all N, then create the schema: they reach CREATE TABLE together
        import os, sys, time
        from modelfactory import store
        open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
        while len(os.listdir(sys.argv[1])) < int(sys.argv[2]):
            time.sleep(0.01)
        store.engine()
    """
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(N)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(N)]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        postgres_server.drop_database(empty)
    assert [p.returncode for p in procs] == [0] * N, [err[-800:] for _, err in outs]


def _backend_pids() -> set[int]:
    with session() as s:
        return set(s.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")))


def _child_registers(q) -> None:
    try:
        with session() as s:
            pid = s.scalar(text("SELECT pg_backend_pid()"))
        q.put((pid, _register("forked", "f" * 64).version))
    except BaseException as e:  # report, don't hang the parent
        q.put(repr(e))


def test_a_forked_worker_gets_its_own_connections():
    """A forked child must not talk on its parent's pooled sockets (their replies would interleave)."""
    _register("forked", "e" * 64)  # the parent's pool now holds connections
    parents = _backend_pids()
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_child_registers, args=(q,))
    child.start()
    got = q.get(timeout=60)
    child.join(timeout=60)
    assert isinstance(got, tuple), got
    child_pid, version = got
    assert child_pid not in parents and version == 2 and child.exitcode == 0
    assert [m.version for m in registry.list_models("forked")] == [1, 2]  # the parent's pool still works


@pytest.mark.slow
def test_tiny_order_end_to_end_on_postgres(tmp_path, corpus_df, tiny_teacher, pg_database):
    """`mf order run` with MF_DATABASE_URL: the order, its stage runs and the registered model live in PostgreSQL."""
    import yaml

    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 60)
    order = tmp_path / "order.yaml"
    order.write_text(yaml.safe_dump(tiny_order("pg-reviews", data, tiny_teacher)))
    proc = run_mf("order", "run", str(order), env={"MF_DATABASE_URL": pg_database})
    assert proc.returncode == 0, proc.stderr[-2000:]

    ref = registry.resolve("pg-reviews")  # read back in this process, from PostgreSQL
    assert (ref.version, ref.aliases) == (1, ["latest", "prod"]) and ref.lineage["dataset"] == "reviews@1"
    assert ref.metrics["deployed"] == "student_int8" and math.isfinite(ref.metrics["student_int8"]["accuracy"])
    assert ref.lineage["order"] == 1 and ref.lineage["tenant"] == "default"
    assert versions.resolve("reviews").version == 1  # named after the data file
    with session() as s:
        o = s.scalars(select(Order)).one()
        assert (o.name, o.state, o.spec["name"]) == ("pg-reviews", "done", "pg-reviews")
        states = {r.node: r.state for r in s.scalars(select(StageRun).where(StageRun.order_id == o.id))}
        assert states["teacher"] == "done" and states["student"] == "done"
    listed = run_mf("models", "ls", "--json", env={"MF_DATABASE_URL": pg_database})
    assert [(m["name"], m["version"]) for m in json.loads(listed.stdout)] == [("pg-reviews", 1)]
    assert not (store.settings().home / "mf.db").exists()  # nothing went to the default SQLite file
