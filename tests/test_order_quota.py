"""An order's estimated cost is checked against the tenant's remaining quota before it is accepted
(factory/cost.py, accounts/quota.py), through the one path `mf order submit` and POST /api/v1/orders share
(factory.jobkinds.submit_order): accepted under the quota, refused over it with the estimate and what is left
named (the CLI exits non-zero, the API answers 402), no job queued when refused, and a cached teacher makes the
same order cheaper (its stages cost nothing), enough here to turn a refusal into an acceptance."""

from __future__ import annotations

import pytest
import yaml
from sqlalchemy import func, select

from modelfactory.accounts.tenants import add_tenant, create_key, set_tenant
from modelfactory.compute.tables import Job, pool_read
from modelfactory.data.versions import resolve
from modelfactory.errors import QuotaExceeded
from modelfactory.factory import cost
from modelfactory.factory.jobkinds import submit_order
from modelfactory.factory.planner import labeling_plan, plan
from modelfactory.factory.runner import run_plan
from modelfactory.factory.spec import OrderSpec

from .conftest import run_mf, sample_csv, tiny_order


def _spec(corpus_df, tiny_teacher, tmp_path, name: str = "quota-order") -> OrderSpec:
    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 200)
    return OrderSpec.model_validate({**tiny_order(name, data, tiny_teacher), "tenant": "acme"})


def _jobs() -> int:
    with pool_read() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_order_under_quota_is_accepted_and_its_jobs_carry_their_estimate(corpus_df, tiny_teacher, tmp_path):
    add_tenant("acme", cpu_hours_month=100)
    sub = submit_order(_spec(corpus_df, tiny_teacher, tmp_path), tenant="acme")
    assert sub.jobs and not sub.cached
    with pool_read() as s:
        estimates = [s.get(Job, j).payload.get("estimate_s") for j in sub.jobs.values()]
    assert all(e and e >= cost.START_S for e in estimates), estimates


def test_order_over_quota_is_refused_naming_estimate_and_what_is_left(corpus_df, tiny_teacher, tmp_path):
    add_tenant("acme", cpu_hours_month=0.05)
    spec = _spec(corpus_df, tiny_teacher, tmp_path)
    with pytest.raises(QuotaExceeded) as e:
        submit_order(spec, tenant="acme")
    msg = str(e.value)
    assert msg.startswith("order 'quota-order' is estimated at ") and " CPU-hours (" in msg, msg
    assert "more than tenant 'acme' has left of its monthly CPU quota: 0.05 of 0.05 CPU-hours left in " in msg
    assert "0.00 used, 0.00 reserved by queued/running jobs" in msg
    assert _jobs() == 0  # nothing queued


def test_queued_orders_reserve_their_estimate(corpus_df, tiny_teacher, tmp_path):
    """A second order does not fit in what the first one's queued jobs may still use."""
    spec = _spec(corpus_df, tiny_teacher, tmp_path)
    add_tenant("acme", cpu_hours_month=100)
    first = submit_order(spec, tenant="acme")
    with pool_read() as s:
        reserved = sum(s.get(Job, j).payload["estimate_s"] for j in first.jobs.values()) / 3600
    set_tenant("acme", cpu_hours_month=reserved * 1.5)  # room for half an order more
    other = spec.model_copy(update={"name": "second", "split": spec.split.model_copy(update={"seed": 1})})
    with pytest.raises(QuotaExceeded, match=rf"{reserved:.2f} reserved by queued/running jobs"):
        submit_order(other, tenant="acme")


def test_cached_teacher_makes_the_order_cheaper(corpus_df, tiny_teacher, tmp_path):
    spec = _spec(corpus_df, tiny_teacher, tmp_path)
    add_tenant("acme", cpu_hours_month=100)
    # the dataset, as the order will ingest it (the same file: the same version)
    from modelfactory.factory.order import ingest

    dataset = ingest(spec)
    the_plan = plan(spec, dataset.artifact_id)
    full = cost.estimate_plan(the_plan, dataset.n_rows, set()).cpu_hours
    teacher_nodes = {n.name for n in labeling_plan(spec, dataset.artifact_id).nodes}
    without_teacher = cost.estimate_plan(the_plan, dataset.n_rows, teacher_nodes).cpu_hours
    assert without_teacher < full
    set_tenant("acme", cpu_hours_month=(full + without_teacher) / 2)
    with pytest.raises(QuotaExceeded):
        submit_order(spec, tenant="acme")
    # train the teacher for real (split, fine-tune, export: what the order's teacher stages produce)
    run_plan(labeling_plan(spec, resolve(str(dataset)).artifact_id))
    sub = submit_order(spec, tenant="acme")
    assert teacher_nodes <= set(sub.cached), sub.cached
    assert not teacher_nodes & set(sub.jobs)


def test_cli_submit_over_quota_exits_non_zero_with_the_message(corpus_df, tiny_teacher, tmp_path):
    add_tenant("acme", cpu_hours_month=0.01)
    spec = tiny_order("cli-quota", sample_csv(corpus_df, tmp_path / "reviews.csv", 200), tiny_teacher)
    path = tmp_path / "order.yaml"
    path.write_text(yaml.safe_dump({**spec, "tenant": "acme"}))
    r = run_mf("order", "submit", str(path), "--tenant", "acme")
    assert r.returncode == 2, r.stdout + r.stderr  # an MFError: the user can fix it
    out = " ".join((r.stdout + r.stderr).split())
    assert "order 'cli-quota' is estimated at" in out and "0.01 of 0.01 CPU-hours left" in out, out
    assert "Traceback" not in out
    assert _jobs() == 0
    set_tenant("acme", cpu_hours_month=100)
    r = run_mf("order", "submit", str(path), "--tenant", "acme")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _jobs() > 0


def test_api_submit_over_quota_is_402_with_the_message(corpus_df, tiny_teacher, tmp_path, monkeypatch):
    import httpx

    from modelfactory.api import create_app

    from .test_serve_support import LiveServer

    monkeypatch.setenv("MF_MODEL_DIRS", str(tiny_teacher.parent))
    add_tenant("acme", cpu_hours_month=0.01)
    _, key = create_key("acme")
    server = LiveServer(app=create_app())
    try:
        with httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {key}"},
                          timeout=120) as c:
            data = sample_csv(corpus_df, tmp_path / "reviews.csv", 200)
            r = c.post("/datasets", data={"name": "reviews"},
                       files={"file": ("reviews.csv", data.read_bytes(), "text/csv")})
            assert r.status_code == 201, r.text
            spec = tiny_order("api-quota", "unused.csv", tiny_teacher)
            spec["data"] = {"dataset": "reviews"}
            body = yaml.safe_dump(spec).encode()
            r = c.post("/orders", content=body, headers={"Content-Type": "application/yaml"})
            assert r.status_code == 402, r.text
            assert r.json()["error"].startswith("order 'api-quota' is estimated at "), r.json()
            assert "0.01 of 0.01 CPU-hours left" in r.json()["error"]
            assert _jobs() == 0
            set_tenant("acme", cpu_hours_month=100)
            r = c.post("/orders", content=body, headers={"Content-Type": "application/yaml"})
            assert r.status_code == 201, r.text
    finally:
        server.stop()


def test_search_order_is_bounded_by_its_search_budget(corpus_df, tiny_teacher, tmp_path):
    """A recipe search's cost is its budget (max_minutes on its cores) plus its teacher: 10 hours of search do not
    fit in 5 CPU-hours, and the message says the search budget is what costs."""
    add_tenant("acme", cpu_hours_month=5)
    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 200)
    spec = OrderSpec.model_validate({**tiny_order("searching", data, tiny_teacher), "tenant": "acme",
                                     "search": {"max_trials": 2, "max_minutes": 600}})
    with pytest.raises(QuotaExceeded, match=r"estimated at 10\.\d\d CPU-hours \(search budget 10\.00;"):
        submit_order(spec, tenant="acme")
    assert _jobs() == 0
    set_tenant("acme", cpu_hours_month=20)
    sub = submit_order(spec, tenant="acme")
    with pool_read() as s:
        search_job = s.get(Job, sub.jobs["search"])
        assert search_job.payload["estimate_s"] >= 600 * 60
