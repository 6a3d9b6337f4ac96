"""Two orders submitted at the same moment by one tenant, with quota left for only one: exactly one is accepted
(factory/jobkinds._queue_order checks the quota and reserves the order's estimate in one pool transaction, which
holds the pool's write lock from its first statement; accounts/quota.py also reads the tenant's row FOR UPDATE).

To make the race certain rather than a matter of timing, the first submit to pass the quota check waits (up to
RACE_WAIT_S) for the other to reach the check too, before it commits: were check and reservation not atomic, the
second would pass on the same "left" meanwhile. With them atomic, the second cannot reach the check until the
first has committed, so the wait runs out and the second then sees the first's reservation. Both a plain order
(its stage jobs carry the estimate) and a recipe-search order (its one `order` job carries it), on SQLite and on
PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from modelfactory.accounts import quota
from modelfactory.accounts.tenants import add_tenant
from modelfactory.compute.tables import Job, PoolOrder, pool_read
from modelfactory.errors import QuotaExceeded
from modelfactory.factory import cost
from modelfactory.factory.jobkinds import submit_order
from modelfactory.factory.order import ingest
from modelfactory.factory.planner import plan
from modelfactory.factory.spec import OrderSpec

from .conftest import sample_csv, tiny_order

RACE_WAIT_S = 3.0


def _specs(corpus_df, tiny_teacher, tmp_path, search: bool) -> list[OrderSpec]:
    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 100)
    extra = {"search": {"max_trials": 2, "max_minutes": 600}} if search else {}
    specs = [OrderSpec.model_validate({**tiny_order(f"race-{i}", data, tiny_teacher), "tenant": "acme", **extra})
             for i in range(2)]
    # another split seed: the second order's stages are its own, not shared with the first's
    return [spec.model_copy(update={"split": spec.split.model_copy(update={"seed": i})})
            for i, spec in enumerate(specs)]


def _submit_both(specs: list[OrderSpec], monkeypatch) -> tuple[list, list]:
    """Submit both at once from two threads; the first to pass the quota check waits for the other (see above)."""
    reached = threading.Semaphore(0)
    passed_first = threading.Lock()
    real = quota.refuse_over_quota

    def check_then_wait(*args, **kwargs):
        reached.release()
        real(*args, **kwargs)  # raises when it does not fit
        if passed_first.acquire(blocking=False):  # the first to pass: give the other every chance to pass too
            reached.acquire(timeout=RACE_WAIT_S)  # our own release
            reached.acquire(timeout=RACE_WAIT_S)  # the other's, if it can reach the check before we commit

    monkeypatch.setattr(cost, "refuse_over_quota", check_then_wait)
    start = threading.Barrier(2)
    accepted, refused = [], []

    def submit(spec: OrderSpec) -> None:
        start.wait()
        try:
            accepted.append(submit_order(spec, tenant="acme"))
        except QuotaExceeded as e:
            refused.append(str(e))

    threads = [threading.Thread(target=submit, args=(spec,)) for spec in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    return accepted, refused


def _one_fits(specs: list[OrderSpec], search: bool) -> float:
    """CPU-hours that hold one of these orders but not two."""
    dataset = ingest(specs[0])  # both orders' data, ingested once up front (the same file: the same version)
    if search:
        one = specs[0].searched().max_minutes / 60  # the search budget alone, on 1 core, plus its teacher
    else:
        one = cost.estimate_plan(plan(specs[0], dataset.artifact_id), dataset.n_rows, set()).cpu_hours
    return one * 1.5


def _race(corpus_df, tiny_teacher, tmp_path, monkeypatch, search: bool) -> None:
    specs = _specs(corpus_df, tiny_teacher, tmp_path, search)
    add_tenant("acme", cpu_hours_month=_one_fits(specs, search))
    accepted, refused = _submit_both(specs, monkeypatch)
    assert len(accepted) == 1 and len(refused) == 1, (accepted, refused)
    assert "reserved by queued/running jobs" in refused[0] and "0.00 reserved" not in refused[0], refused[0]
    with pool_read() as s:
        orders = list(s.scalars(select(PoolOrder)))
        assert [o.order_id for o in orders] == [accepted[0].order_id]  # the refused order queued nothing
        assert {j.order_id for j in s.scalars(select(Job))} == {accepted[0].order_id}


@pytest.mark.parametrize("search", [False, True], ids=["order", "search-order"])
def test_concurrent_orders_on_sqlite_only_one_fits(corpus_df, tiny_teacher, tmp_path, monkeypatch, search):
    _race(corpus_df, tiny_teacher, tmp_path, monkeypatch, search)


@pytest.mark.ci_required
@pytest.mark.parametrize("search", [False, True], ids=["order", "search-order"])
def test_concurrent_orders_on_postgres_only_one_fits(pg_database, corpus_df, tiny_teacher, tmp_path, monkeypatch,
                                                     search):
    _race(corpus_df, tiny_teacher, tmp_path, monkeypatch, search)
