"""The control plane's REST API, route by route, over real HTTP (uvicorn on 127.0.0.1, httpx): success and error
shapes, and the tenant boundary (a tenant's key sees and touches only its own datasets, orders, jobs, models and
usage; the admin key sees all)."""

from __future__ import annotations

import io
import shutil

import httpx
import pandas as pd
import pytest
import yaml
from sqlalchemy import select

from modelfactory import registry
from modelfactory.accounts.tenants import create_key
from modelfactory.api import create_app
from modelfactory.compute import jobs as pool_jobs
from modelfactory.compute import utilisation
from modelfactory.compute.jobs import Spec, log_path
from modelfactory.store import ModelVersion, Order, session

from .conftest import sample_csv, tiny_order
from .test_serve_support import LiveServer, register, text_model_dir  # noqa: F401 (fixture)

ADMIN = "mfk_test-admin-key"


@pytest.fixture
def api(mf_home, monkeypatch):
    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("MF_UPLOAD_MAX_MB", "2")
    server = LiveServer(app=create_app())
    yield server
    server.stop()


def client(server: LiveServer, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60)


@pytest.fixture
def admin(api):
    with client(api, ADMIN) as c:
        yield c


def add_tenant(admin: httpx.Client, name: str) -> str:
    r = admin.post("/tenants", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


@pytest.fixture
def acme(api, admin):
    with client(api, add_tenant(admin, "acme")) as c:
        yield c


@pytest.fixture
def globex(api, admin):
    with client(api, add_tenant(admin, "globex")) as c:
        yield c


def upload(c: httpx.Client, name: str, content: bytes, filename: str = "reviews.csv", **form) -> httpx.Response:
    return c.post("/datasets", data={"name": name, **form}, files={"file": (filename, content, "text/csv")})


def csv_bytes(df: pd.DataFrame, n: int, tmp_path) -> bytes:
    return sample_csv(df, tmp_path / "rows.csv", n).read_bytes()


# --- auth and tenants ------------------------------------------------------------------------------------------
def test_keys_are_required_shown_once_and_revocation_is_immediate(api, admin):
    with client(api, None) as anon:
        r = anon.get("/me")
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        r = anon.get("/me", headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "malformed" in r.json()["error"]
    with client(api, "mfk_nope") as bad:
        assert bad.get("/orders").status_code == 401
    assert admin.get("/me").json() == {"tenant": None, "admin": True}

    r = admin.post("/tenants", json={"name": "acme", "weight": 2, "cpu_hours_month": 10})
    assert r.status_code == 201
    key = r.json()["api_key"]
    assert r.json()["tenant"]["weight"] == 2 and key.startswith("mfk_")
    with client(api, key) as acme:
        assert acme.get("/me").json() == {"tenant": "acme", "admin": False}
        keys = acme.get("/tenants/acme/keys").json()
        assert len(keys) == 1 and "key" not in keys[0] and key not in str(keys)  # never shown again
        second = acme.post("/tenants/acme/keys", json={"label": "ci"}).json()
        assert second["key"].startswith("mfk_") and second["label"] == "ci"
        assert acme.delete(f"/keys/{keys[0]['id']}").json()["revoked"]
        assert acme.get("/me").status_code == 401  # the revoked key: refused on the very next request
    with client(api, second["key"]) as rotated:
        assert rotated.get("/me").json()["tenant"] == "acme"


def test_tenant_routes_and_their_errors(api, admin, acme, globex):
    assert [t["name"] for t in admin.get("/tenants").json()] == ["acme", "globex"]
    assert [t["name"] for t in acme.get("/tenants").json()] == ["acme"]
    r = acme.post("/tenants", json={"name": "evil"})
    assert r.status_code == 403 and "admin" in r.json()["error"]
    r = admin.post("/tenants", json={"name": "acme"})
    assert r.status_code == 400 and "already exists" in r.json()["error"]
    r = admin.post("/tenants", json={"name": "Bad Name!", "weight": -1})
    assert r.status_code == 422
    assert {f["loc"] for f in r.json()["fields"]} == {"name", "weight"}
    r = admin.patch("/tenants/acme", json={"weight": 3, "max_slots": 2})
    assert r.status_code == 200 and r.json()["weight"] == 3 and r.json()["max_slots"] == 2
    assert admin.patch("/tenants/acme", json={"max_slots": None}).json()["max_slots"] is None
    assert acme.patch("/tenants/acme", json={"weight": 100}).status_code == 403
    assert admin.patch("/tenants/nobody", json={"weight": 1}).status_code == 404
    # another tenant's tenant record and keys are simply not there
    assert acme.get("/tenants/globex").status_code == 404
    assert acme.get("/tenants/globex/keys").status_code == 404
    assert acme.post("/tenants/globex/keys", json={}).status_code == 404
    globex_key = admin.get("/tenants/globex/keys").json()[0]["id"]
    assert acme.delete(f"/keys/{globex_key}").status_code == 404
    assert admin.delete("/keys/99999").status_code == 404


def test_admin_key_from_mf_server_init(api, mf_home, monkeypatch):
    from .conftest import run_mf

    monkeypatch.delenv("MF_ADMIN_KEY")
    out = run_mf("server", "--init")
    assert out.returncode == 0, out.stderr
    key = next(w for w in out.stdout.split() if w.startswith("mfk_"))
    with client(api, key) as c:
        assert c.get("/me").json() == {"tenant": None, "admin": True}
        assert c.post("/tenants", json={"name": "initco"}).status_code == 201


# --- datasets --------------------------------------------------------------------------------------------------
def test_dataset_upload_list_show_and_row_errors(acme, globex, admin, corpus_df, tmp_path):
    r = upload(acme, "reviews", csv_bytes(corpus_df, 10, tmp_path))
    assert r.status_code == 201, r.text
    labels = sorted(corpus_df["label"].unique())
    assert r.json()["version"] == 1 and r.json()["rows"] == 10 * len(labels)
    assert sorted(r.json()["stats"]["labels"]) == labels
    bad = b"text,label\ngood movie,pos\n,neg\nfine,\n"
    r = upload(acme, "reviews", bad, "broken.csv")
    assert r.status_code == 400
    body = r.json()
    assert body["error"].startswith("2 bad row(s) in broken.csv:") and "uploads" not in body["error"]
    assert [row["where"] for row in body["rows"]] == ["broken.csv:3", "broken.csv:4"]
    assert "empty" in body["rows"][0]["message"]
    assert [v["version"] for v in acme.get("/datasets/reviews").json()["versions"]] == [1]  # nothing added
    r = upload(acme, "reviews", bad + b"also good,pos\n", "broken.csv", skip_bad_rows="true")
    assert r.status_code == 201 and r.json()["version"] == 2 and r.json()["skipped"] == 2

    assert [d["name"] for d in acme.get("/datasets").json()] == ["reviews"]
    assert acme.get("/datasets").json()[0]["versions"] == 2
    # the boundary: globex sees nothing, cannot read it, cannot add versions under acme's name
    assert globex.get("/datasets").json() == []
    assert globex.get("/datasets/reviews").status_code == 404
    assert globex.get("/datasets", params={"tenant": "acme"}).status_code == 403
    r = upload(globex, "reviews", csv_bytes(corpus_df, 5, tmp_path))
    assert r.status_code == 404 and "not available" in r.json()["error"] and "acme" not in r.json()["error"]
    assert [d["tenant"] for d in admin.get("/datasets").json()] == ["acme"]
    # bad uploads
    assert upload(acme, "Bad Name", b"text,label\na,b\n").status_code == 422
    assert upload(acme, "empty", b"").status_code == 400
    r = upload(acme, "huge", b"text,label\n" + b"x" * 2_100_000 + b",a\n")
    assert r.status_code == 413
    assert acme.post("/datasets", data={"name": "nofile"}).status_code == 422
    assert upload(admin, "admins", b"text,label\na,b\n").status_code == 403  # data belongs to tenants


# --- orders ----------------------------------------------------------------------------------------------------
def order_yaml(**overrides) -> str:
    spec = tiny_order("api-order", "unused.csv", "unused")
    spec.pop("tenant", None)
    spec["data"] = {"dataset": "reviews"}
    for k, v in overrides.items():
        spec[k] = v
    return yaml.safe_dump(spec)


def post_order(c: httpx.Client, text: str, content_type: str = "application/yaml", **params) -> httpx.Response:
    return c.post("/orders", content=text.encode(), headers={"Content-Type": content_type}, params=params)


def test_orders_submit_validate_show_cancel_and_boundary(acme, globex, admin, corpus_df, tiny_teacher, tmp_path,
                                                        monkeypatch, mf_home):
    assert upload(acme, "reviews", csv_bytes(corpus_df, 10, tmp_path)).status_code == 201
    teacher = {"model": str(tiny_teacher), "epochs": 1, "max_length": 32}
    # a local teacher dir outside MF_MODEL_DIRS is the server's disk: refused for tenants
    r = post_order(acme, order_yaml(teacher=teacher))
    assert r.status_code == 403 and "MF_MODEL_DIRS" in r.json()["error"]
    monkeypatch.setenv("MF_MODEL_DIRS", str(tiny_teacher.parent))

    r = post_order(acme, order_yaml(teacher=teacher, targets={"max_size_mb": "big"}))
    assert r.status_code == 422
    assert [f["loc"] for f in r.json()["fields"]] == ["targets.max_size_mb"]
    r = post_order(acme, "name: [unclosed")
    assert r.status_code == 400 and "not valid YAML" in r.json()["error"]
    r = post_order(acme, "{not json", "application/json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    assert post_order(acme, "- a list").status_code == 400
    r = post_order(acme, order_yaml(teacher=teacher, tenant="globex"))
    assert r.status_code == 403 and "globex" in r.json()["error"]
    r = post_order(acme, order_yaml(teacher=teacher, data={"path": "/etc/passwd"}))
    assert r.status_code == 400 and "upload it first" in r.json()["error"]
    r = post_order(globex, order_yaml(teacher=teacher))  # acme's dataset, globex's key
    assert r.status_code == 404
    r = post_order(acme, order_yaml(teacher=teacher), priority="whenever")
    assert r.status_code == 422 and r.json()["fields"][0]["loc"] == "priority"

    import json

    r = post_order(acme, json.dumps(yaml.safe_load(order_yaml(teacher=teacher))), "application/json",
                   priority="batch")
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["dataset"] == "reviews@1" and {"split", "teacher", "export_teacher"} <= set(sub["jobs"])
    order_id = sub["order"]

    listed = acme.get("/orders").json()
    assert [(o["order"], o["tenant"], o["state"], o["model"]) for o in listed] == [(order_id, "acme", "running",
                                                                                     None)]
    detail = acme.get(f"/orders/{order_id}").json()
    assert detail["on_pool"] and detail["priority"] == "batch" and detail["spec"]["tenant"] == "acme"
    nodes = {n["node"]: n for n in detail["nodes"]}
    assert nodes["teacher"]["state"] == "queued" and nodes["teacher"]["job"] == sub["jobs"]["teacher"]
    edges = {tuple(e) for e in detail["edges"]}
    assert {("split", "teacher"), ("teacher", "export_teacher")} <= edges
    assert {n for e in edges for n in e} == set(nodes)  # one connected DAG over the order's nodes
    assert detail["report_markdown"] is None and not detail["has_pareto"]
    assert acme.get(f"/orders/{order_id}/report").status_code == 404
    assert acme.get(f"/orders/{order_id}/pareto.png").status_code == 404
    # boundary
    assert globex.get("/orders").json() == []
    assert globex.get(f"/orders/{order_id}").status_code == 404
    assert globex.post(f"/orders/{order_id}/cancel").status_code == 404
    assert admin.get("/orders", params={"tenant": "acme"}).json()[0]["order"] == order_id

    # a finished search order's report and Pareto plot (written by the factory under MF_HOME/orders/<id>/)
    folder = mf_home / "orders" / str(order_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text("# Order\n\n## Recipe search\n")
    (folder / "pareto.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 32)
    with session() as s:
        s.get(Order, order_id).report_path = str(folder / "report.md")
    detail = acme.get(f"/orders/{order_id}").json()
    assert detail["report_markdown"].startswith("# Order") and detail["has_pareto"]
    r = acme.get(f"/orders/{order_id}/pareto.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content.startswith(b"\x89PNG")
    assert acme.get(f"/orders/{order_id}/report").text.startswith("# Order")
    assert globex.get(f"/orders/{order_id}/pareto.png").status_code == 404

    r = acme.post(f"/orders/{order_id}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert acme.get(f"/orders/{order_id}").json()["state"] == "cancelled"
    assert {j["state"] for j in acme.get("/jobs", params={"order": order_id}).json()} == {"cancelled"}
    r = acme.post(f"/orders/{order_id}/cancel")
    assert r.status_code == 400 and "already" in r.json()["error"]
    assert acme.get("/orders/424242").status_code == 404


# --- jobs ------------------------------------------------------------------------------------------------------
def test_jobs_list_show_logs_cancel_and_boundary(acme, globex, admin, mf_home):
    a = pool_jobs.submit("acme", Spec(kind="command", payload={"argv": ["true"], "env": {}}, name="acme-job"))
    g = pool_jobs.submit("globex", Spec(kind="command", payload={"argv": ["true"], "env": {}}, name="globex-job"))
    log = log_path(a, 0)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"line {i}\n" for i in range(500)))

    assert [j["id"] for j in acme.get("/jobs").json()] == [a]
    assert sorted(j["id"] for j in admin.get("/jobs").json()) == [a, g]
    assert [j["id"] for j in admin.get("/jobs", params={"tenant": "globex"}).json()] == [g]
    assert acme.get("/jobs", params={"tenant": "globex"}).status_code == 403
    assert acme.get("/jobs", params={"state": "sleeping"}).status_code == 422
    job = acme.get(f"/jobs/{a}").json()
    assert job["name"] == "acme-job" and job["events"][0]["to"] == "queued"
    r = acme.get(f"/jobs/{a}/logs", params={"tail": 3})
    assert r.status_code == 200 and r.text == "line 497\nline 498\nline 499\n"
    assert acme.get(f"/jobs/{a}/logs", params={"attempt": 7}).status_code == 404
    assert globex.get(f"/jobs/{a}").status_code == 404
    assert globex.get(f"/jobs/{a}/logs").status_code == 404
    assert globex.post(f"/jobs/{a}/cancel").status_code == 404
    r = acme.post(f"/jobs/{a}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = acme.post(f"/jobs/{a}/cancel")
    assert r.status_code == 400 and "already cancelled" in r.json()["error"]


# --- models ----------------------------------------------------------------------------------------------------
def test_models_list_show_promote_download_and_boundary(api, acme, globex, admin, text_model_dir):  # noqa: F811
    register("sentiment", text_model_dir, "text-classification", tenant="acme")
    with session() as s:  # an order's metrics as the factory records them: the deployed candidate is named
        row = s.scalar(select(ModelVersion).where(ModelVersion.name == "sentiment"))
        row.metrics = {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.8},
                       "student_int8": {"accuracy": 0.85}, "deployed": "student_int8", "ratios": {"x": 1}}
    register("sentiment", text_model_dir, "text-classification", tenant="acme", copy=1)
    register("other", text_model_dir, "text-classification", tenant="globex", copy=2)

    assert [(m["name"], m["version"]) for m in acme.get("/models").json()] == [("sentiment", 1), ("sentiment", 2)]
    assert {m["tenant"] for m in admin.get("/models").json()} == {"acme", "globex"}
    m = acme.get("/models/sentiment").json()
    assert m["version"] == 2 and "latest" in m["aliases"] and [v["version"] for v in m["versions"]] == [1, 2]
    v1 = acme.get("/models/sentiment@1").json()
    assert v1["version"] == 1 and v1["deployed"] == "student_int8"
    assert v1["metrics"] == {"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.85},  # student = deployed
                             "student_fp32": {"accuracy": 0.8}}
    r = acme.post("/models/sentiment/aliases", json={"version": 1, "alias": "prod"})
    assert r.status_code == 200 and registry.resolve("sentiment").version == 1  # `name` now means prod
    assert acme.get("/models/sentiment").json()["version"] == 1
    assert acme.post("/models/sentiment/aliases", json={"version": 9, "alias": "prod"}).status_code == 404
    assert acme.post("/models/sentiment/aliases", json={"version": 1, "alias": "7"}).status_code == 422
    r = acme.get("/models/sentiment@2/onnx")
    assert r.status_code == 200 and r.content == (registry.resolve("sentiment@2").onnx_path).read_bytes()
    # boundary
    assert globex.get("/models/sentiment").status_code == 404
    assert globex.get("/models/sentiment@1/onnx").status_code == 404
    assert globex.post("/models/sentiment/aliases", json={"version": 1, "alias": "prod"}).status_code == 404
    assert acme.get("/models/nope").status_code == 404


# --- usage and pool --------------------------------------------------------------------------------------------
def test_usage_json_csv_and_boundary(acme, globex, admin):
    month = pd.Timestamp.utcnow().strftime("%Y-%m")
    inv = acme.get("/usage").json()
    assert inv["tenant"] == "acme" and inv["month"] == month and inv["total"] == 0
    r = acme.get("/usage", params={"format": "csv", "month": month})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert pd.read_csv(io.StringIO(r.text)).iloc[-1]["job"] == "total"
    assert acme.get("/usage", params={"tenant": "globex"}).status_code == 403
    assert admin.get("/usage").status_code == 400  # an admin names the tenant
    assert admin.get("/usage", params={"tenant": "globex"}).json()["tenant"] == "globex"
    assert acme.get("/usage", params={"month": "2026-13"}).status_code == 400
    assert acme.get("/usage", params={"month": "soon"}).status_code == 422


def test_pool_and_utilisation(acme, admin):
    pool_jobs.submit("acme", Spec(kind="command", payload={"argv": ["true"], "env": {}}, name="queued"))
    utilisation.record()
    state = acme.get("/pool").json()
    assert state["jobs"] == {"queued": 1, "running": 0} and state["capacity"] == {"cpu": 0, "gpu": 0}
    points = admin.get("/pool/utilisation", params={"minutes": 5}).json()["points"]
    assert len(points) == 1 and points[0]["queued"] == 1
    assert acme.get("/pool/utilisation", params={"minutes": -1}).status_code == 422



def test_factory_output_orders_models_queue_and_cpu_hours_by_stage_kind(acme, globex, admin):
    import datetime as dt

    from modelfactory.accounts.tables import Usage, accounts_tx
    from modelfactory.compute.tables import Job, pool_tx
    from modelfactory.store import utcnow

    now = utcnow()
    ago = lambda hours: now - dt.timedelta(hours=hours)  # noqa: E731
    with session() as s:
        s.add_all([Order(name="a1", tenant="acme", spec={}, state="done", created=ago(5), finished=ago(2)),
                   Order(name="a2", tenant="acme", spec={}, state="running", created=ago(1)),
                   Order(name="g1", tenant="globex", spec={}, state="infeasible", created=ago(3), finished=ago(3)),
                   Order(name="old", tenant="acme", spec={}, state="done", created=ago(50), finished=ago(49))])
        s.add_all([ModelVersion(name="a1", version=1, tenant="acme", task="t", artifact_id="x", created=ago(2)),
                   ModelVersion(name="old", version=1, tenant="acme", task="t", artifact_id="y", created=ago(49)),
                   ModelVersion(name="g0", version=1, tenant="globex", task="t", artifact_id="z", created=ago(1))])
    with pool_tx() as s:
        done = [Job(tenant=t, kind=k, payload=pl, state="succeeded") for t, k, pl in
                [("acme", "stage", {"stage": "teacher_fit"}), ("acme", "stage", {"stage": "distill"}),
                 ("globex", "command", {"argv": ["true"]})]]
        s.add_all(done + [Job(tenant="acme", kind="stage", payload={"stage": "distill"}, state="queued", cpu=2,
                              slots=2),
                          Job(tenant="globex", kind="command", payload={}, state="queued", gpu=1)])
        s.flush()
        ids = [j.id for j in done]
    with accounts_tx() as s:  # the ledger: teacher_fit 4 CPU-h; distill 1 CPU-h done + 1 preempted; command 0.5
        for n, (job_id, tenant, cpu_h, outcome, ended) in enumerate(
                [(ids[0], "acme", 4, "succeeded", ago(3)), (ids[1], "acme", 1, "succeeded", ago(2)),
                 (ids[1], "acme", 1, "preempted", ago(2.5)), (ids[2], "globex", 0.5, "succeeded", ago(1)),
                 (ids[0], "acme", 9, "succeeded", ago(30))]):  # before the window
            s.add(Usage(tenant=tenant, job_id=job_id, attempt=n, started=ended, ended=ended, cpu_seconds=cpu_h * 3600,
                        gpu_seconds=0.0, outcome=outcome, cost=0.0))

    out = admin.get("/pool/output", params={"hours": 24}).json()
    assert (out["orders"]["done"], out["orders"]["failed"]) == (1, 1)
    assert out["orders"]["done_per_hour"] == pytest.approx(1 / 24)
    per_hour = out["orders"]["per_hour"]
    assert len(per_hour) in (24, 25) and sum(h["submitted"] for h in per_hour) == 3  # not the 50-hour-old one
    assert sum(h["done"] for h in per_hour) == 1 and sum(h["failed"] for h in per_hour) == 1
    assert out["models"] == [{"tenant": "acme", "models": 1, "models_total": 2},
                             {"tenant": "globex", "models": 1, "models_total": 1}]
    assert out["queue"] == [{"tenant": "acme", "queued": 1, "running": 0, "queued_cpu": 4.0, "queued_gpu": 0.0},
                            {"tenant": "globex", "queued": 1, "running": 0, "queued_cpu": 1.0, "queued_gpu": 1.0}]
    assert out["cpu_hours"] == [
        {"kind": "teacher_fit", "cpu_hours": 4.0, "gpu_hours": 0.0, "lost_cpu_hours": 0.0, "attempts": 1},
        {"kind": "distill", "cpu_hours": 2.0, "gpu_hours": 0.0, "lost_cpu_hours": 1.0, "attempts": 2},
        {"kind": "command", "cpu_hours": 0.5, "gpu_hours": 0.0, "lost_cpu_hours": 0.0, "attempts": 1}]
    # a tenant sees its own output only
    mine = acme.get("/pool/output", params={"hours": 24}).json()
    assert (mine["orders"]["done"], mine["orders"]["failed"]) == (1, 0)
    assert [m["tenant"] for m in mine["models"]] == ["acme"] and [q["tenant"] for q in mine["queue"]] == ["acme"]
    assert [k["kind"] for k in mine["cpu_hours"]] == ["teacher_fit", "distill"]
    assert admin.get("/pool/output", params={"hours": 72}).json()["orders"]["done"] == 2
    assert acme.get("/pool/output", params={"hours": 0}).status_code == 422
    assert acme.get("/pool/output", params={"hours": 24 * 8}).status_code == 422

# --- the app as a whole ----------------------------------------------------------------------------------------
def test_openapi_docs_dashboard_and_unknown_routes(api, admin):
    with httpx.Client(base_url=api.url) as c:
        spec = c.get("/openapi.json").json()
        assert {"/api/v1/orders", "/api/v1/datasets", "/api/v1/usage"} <= set(spec["paths"])
        docs = c.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
        assert c.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        r = c.get("/")
        assert r.status_code == 200 and "<html" in r.text.lower()
        r = c.get("/api/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"].startswith("no route")
        r = c.delete("/api/v1/orders", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 405 and "not allowed" in r.json()["error"]
    assert admin.get("/orders/notanumber").status_code == 422


def test_task_families_are_listed_from_discovery(api, admin, acme):
    from modelfactory import tasks

    families = acme.get("/tasks").json()
    assert [f["name"] for f in families] == tasks.names()
    for f in families:
        assert f["roles"] == list(tasks.get(f["name"]).roles) and f["pipeline"] in ("compress", "adapt")
    assert admin.get("/tasks").json() == families
    with httpx.Client(base_url=api.url) as anonymous:
        assert anonymous.get("/api/v1/tasks").status_code == 401


def test_admin_keys_from_the_table_work_and_are_revocable(api, admin):
    info, key = create_key(None, "second admin")
    with client(api, key) as c:
        assert c.get("/me").json()["admin"]
    assert admin.delete(f"/keys/{info.id}").json()["revoked"]
    with client(api, key) as c:
        assert c.get("/me").status_code == 401


def test_nothing_on_disk_is_left_by_uploads(acme, corpus_df, tmp_path, mf_home):
    assert upload(acme, "reviews", csv_bytes(corpus_df, 5, tmp_path)).status_code == 201
    assert upload(acme, "reviews", b"text,label\n,x\n").status_code == 400
    uploads = mf_home / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    shutil.rmtree(uploads, ignore_errors=True)


def test_a_client_hanging_up_mid_body_is_no_internal_error(api, acme, caplog):
    """A client that closes its connection before sending its whole body (locust stopping its users, in
    bench/load.py) is logged as such at INFO, not as a failed request with a traceback."""
    import logging
    import socket
    import time

    caplog.set_level(logging.INFO, logger="modelfactory.api")
    key = acme.headers["Authorization"]
    with socket.create_connection(("127.0.0.1", api.port)) as sock:
        sock.sendall(f"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: {key}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode() + b'{"name": ')

    def seen() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "modelfactory.api"]

    deadline = time.monotonic() + 60
    while not seen() and time.monotonic() < deadline:  # the server sees the hang-up, then logs it
        time.sleep(0.1)
    assert seen() == ["POST /api/v1/orders: the client closed the connection before its body was read"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert acme.get("/me").status_code == 200
