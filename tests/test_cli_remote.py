"""`mf ... --server URL`: the CLI works through a remote control plane (the REST API of `mf server`).

A real control plane runs in this process (uvicorn on 127.0.0.1, over this test's MF_HOME); the CLI runs as a
subprocess whose own MF_HOME is another, empty folder, and stays so: everything it shows came over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from modelfactory import registry
from modelfactory.accounts.tenants import add_tenant
from modelfactory.api import create_app

from .conftest import bill_sample_usage, run_mf, sample_csv, tiny_order
from .test_serve_support import TEXT_TASK, LiveServer, free_port, register, text_model_dir  # noqa: F401 (fixture)

ADMIN = "mfk_test-admin-key"


@pytest.fixture
def server(mf_home, monkeypatch):
    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN)
    live = LiveServer(app=create_app())
    yield live
    live.stop()


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """The CLI's own MF_HOME: nothing there, and nothing is ever written there."""
    home = tmp_path / "cli-home"
    yield home
    assert not home.exists() or not any(home.iterdir()), "the CLI touched its local home"


def local(*args: str) -> str:
    """`mf` on the server's own database (this test's MF_HOME), no --server: what remote output must look like."""
    out = run_mf(*args, env={"MF_SERVER": ""}, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


class Remote:
    """`mf` as a subprocess, pointed at the control plane with one API key."""

    def __init__(self, server: LiveServer, home: Path, key: str):
        self.server, self.home, self.key = server, home, key

    def __call__(self, *args: str, key: str | None = None, server: bool = True, env: dict | None = None):
        return run_mf(*args, *(("--server", self.server.url) if server else ()),
                      env={"MF_HOME": str(self.home), "MF_API_KEY": key or self.key, **(env or {})}, timeout=120)

    def ok(self, *args: str, **kw) -> str:
        out = self(*args, **kw)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        return out.stdout

    def json(self, *args: str, **kw):
        return json.loads(self.ok(*args, "--json", **kw))

    def fails(self, *args: str, **kw) -> str:
        out = self(*args, **kw)
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.startswith("error: "), out.stderr
        return out.stderr

    def api(self, path: str, **params):
        r = httpx.get(f"{self.server.url}/api/v1{path}", params=params,
                      headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


def test_tenants_datasets_orders_and_jobs_over_http(server, elsewhere, corpus_df, tiny_teacher, tmp_path,
                                                   monkeypatch):
    admin = Remote(server, elsewhere, ADMIN)
    out = admin.ok("tenants", "add", "acme", "--weight", "2")
    assert "tenant acme added · weight 2" in out
    keys = [w for w in out.split() if w.startswith("mfk_")]
    assert len(keys) == 1  # shown once
    created = admin.json("tenants", "add", "globex", "--max-slots", "3")
    assert created["tenant"]["max_slots"] == 3 and created["api_key"].startswith("mfk_")
    assert [t["name"] for t in admin.json("tenants", "ls")] == ["acme", "globex"]
    assert admin.ok("tenants", "ls") == local("tenants", "ls")
    acme = Remote(server, elsewhere, keys[0])
    err = acme.fails("tenants", "add", "evil")
    assert "admin" in err

    # datasets: an upload, and a bad CSV's rows from the server, one line each
    csv = sample_csv(corpus_df, tmp_path / "reviews.csv", 10)
    out = acme.ok("data", "add", "reviews", str(csv))
    n_rows = 10 * corpus_df["label"].nunique()
    assert f"reviews@1 · {n_rows} rows" in out
    broken = tmp_path / "broken.csv"
    broken.write_text("text,label\ngood movie,pos\n,neg\nfine,\n")
    lines = acme.fails("data", "add", "reviews", str(broken)).splitlines()
    assert lines[0].startswith("error: 2 bad row(s) in broken.csv")
    assert lines[1].startswith("broken.csv:3: ") and "empty" in lines[1]
    assert lines[2].startswith("broken.csv:4: ") and len(lines) == 3
    up = acme.json("data", "add", "reviews", str(broken), "--skip-bad-rows")
    assert up["version"] == 2 and up["skipped"] == 2
    listed = acme.json("data", "ls")  # every version, the same document as on the server's own machine
    assert listed == json.loads(local("data", "ls", "--json"))
    assert [(d["name"], d["version"]) for d in listed] == [("reviews", 1), ("reviews", 2)]
    table = acme.ok("data", "ls")
    assert "reviews@1" in table and "reviews@2" in table and sorted(corpus_df["label"].unique())[0] in table
    assert table == local("data", "ls")
    assert "no such file" in acme.fails("data", "add", "x", str(tmp_path / "missing.csv"))

    # orders: the spec file's text goes to the API, which binds it to the key's tenant
    monkeypatch.setenv("MF_MODEL_DIRS", str(tiny_teacher.parent))  # the server's env: the teacher is shared
    spec = tiny_order("remote-order", Path("unused.csv"), tiny_teacher)
    spec["data"] = {"dataset": "reviews@1"}
    order_file = tmp_path / "order.yaml"
    order_file.write_text(yaml.safe_dump(spec))
    sub = acme.json("order", "submit", str(order_file), "--priority", "batch")
    assert sub["dataset"] == "reviews@1" and {"split", "teacher"} <= set(sub["jobs"])
    order_id = sub["order"]
    relative = tmp_path / "relative.yaml"
    relative.write_text(yaml.safe_dump({**spec, "data": {"path": "reviews.csv"}}))
    assert "upload it first" in acme.fails("order", "submit", str(relative))
    assert "--cpu" in acme.fails("order", "submit", str(order_file), "--cpu", "4")

    st = acme.json("order", "status", str(order_id))
    assert st == acme.api(f"/orders/{order_id}")
    assert st["tenant"] == "acme" and st["priority"] == "batch"
    assert {n["node"]: n["state"] for n in st["nodes"]}["teacher"] == "queued"
    view = acme.ok("order", "status", str(order_id), server=False, env={"MF_SERVER": server.url})  # env var
    assert f"order {order_id} remote-order · tenant acme · running" in view and "teacher" in view
    assert view == local("order", "status", str(order_id))
    assert "no order 4242" in acme.fails("order", "status", "4242")
    globex = Remote(server, elsewhere, created["api_key"])
    assert "no order" in globex.fails("order", "status", str(order_id))  # another tenant's: simply not there

    # jobs
    listed = acme.json("jobs", "ls", "--order", str(order_id))
    assert sorted(j["id"] for j in listed) == sorted(sub["jobs"].values())
    assert "queued" in acme.ok("jobs", "ls")
    assert acme.ok("jobs", "ls") == local("jobs", "ls")
    teacher_job = sub["jobs"]["teacher"]
    job = acme.json("jobs", "show", str(teacher_job))
    assert job["state"] == "queued" and job["events"][0]["to"] == "queued"
    out = acme.ok("jobs", "show", str(teacher_job))
    assert "history" in out and job["events"][0]["at"][:19] in out
    assert out == local("jobs", "show", str(teacher_job))
    assert f"job {teacher_job} cancelled" in acme.ok("jobs", "cancel", str(teacher_job))
    assert acme.api(f"/jobs/{teacher_job}")["state"] == "cancelled"
    assert "already cancelled" in acme.fails("jobs", "cancel", str(teacher_job))
    assert "no job" in acme.fails("jobs", "show", "99999")

    # --watch follows the order until it ends (cancelled here, so it ends at once)
    r = httpx.post(f"{server.url}/api/v1/orders/{order_id}/cancel", headers={"Authorization": f"Bearer {acme.key}"})
    assert r.status_code == 200, r.text
    assert f"order {order_id} remote-order · tenant acme · cancelled" in acme.ok("order", "status", str(order_id),
                                                                                  "--watch")


def test_models_ls_show_promote_over_http(server, elsewhere, text_model_dir):  # noqa: F811
    _, key = add_tenant("acme")
    register("sentiment", text_model_dir, TEXT_TASK, tenant="acme")
    v2 = register("sentiment", text_model_dir, TEXT_TASK, tenant="acme", copy=1)
    metrics = {"deployed": "student_int8", "teacher": {"accuracy": 0.9, "size_bytes": 9e6, "latency_ms_p50": 9.0},
               "student_int8": {"accuracy": 0.8765, "size_bytes": 2.5e6, "latency_ms_p50": 1.23}}
    registry.register(name="sentiment", tenant="acme", task=TEXT_TASK, artifact_id=v2.artifact_id, metrics=metrics,
                      lineage={"order": 7, "order_name": "sentiment"}, card_fn=lambda n, v: f"# {n} v{v}\n")
    acme = Remote(server, elsewhere, key)

    assert [(m["name"], m["version"]) for m in acme.json("models", "ls")] == [("sentiment", 1), ("sentiment", 2)]
    table = acme.ok("models", "ls")
    assert "sentiment@1" in table and "sentiment@2" in table and "latest" in table
    assert "0.8765" in table and "2.5" in table and "1.23" in table  # the deployed student's metrics
    assert table == local("models", "ls")
    shown = acme.json("models", "show", "sentiment")
    assert shown == acme.api("/models/sentiment") and shown["version"] == 2
    out = acme.ok("models", "show", "sentiment@1")
    assert f"download: {server.url}/api/v1/models/sentiment@1/onnx" in out and "Lineage" in out
    assert "sentiment@1 is now prod" in acme.ok("models", "promote", "sentiment@1", "prod")
    assert registry.resolve("sentiment").version == 1  # the server's registry moved
    assert "explicit version" in acme.fails("models", "promote", "sentiment", "prod")
    assert "no model" in acme.fails("models", "show", "nope")
    assert "alias" in acme.fails("models", "promote", "sentiment@1", "7")  # 422: the field is named


def test_usage_json_csv_and_table_over_http(server, elsewhere, tmp_path):
    _, key = add_tenant("acme")
    job_id = bill_sample_usage("acme")
    acme = Remote(server, elsewhere, key)
    inv = acme.json("usage")
    assert inv == acme.api("/usage")
    assert inv["tenant"] == "acme" and [line["job"] for line in inv["lines"]] == [job_id] and inv["total"] > 0
    csv_path = tmp_path / "out" / "usage.csv"
    out = acme.ok("usage", "--csv", str(csv_path))
    assert "usage: acme" in out and "billed" in out and "sentiment@1" in out and "by outcome: succeeded" in out
    assert out.removesuffix(f"csv: {csv_path}\n") == local("usage", "--tenant", "acme")
    r = httpx.get(f"{server.url}/api/v1/usage", params={"format": "csv"}, headers={"Authorization": f"Bearer {key}"})
    assert csv_path.read_bytes() == r.content and r.text.splitlines()[-1].startswith("total,")
    admin = Remote(server, elsewhere, ADMIN)
    assert "name the tenant" in admin.fails("usage")
    assert admin.json("usage", "--tenant", "acme")["total"] == inv["total"]
    assert "a key of tenant 'acme'" in acme.fails("usage", "--tenant", "globex")


def test_unreachable_server_wrong_and_missing_key(server, elsewhere):
    nobody = f"http://127.0.0.1:{free_port()}"
    out = run_mf("jobs", "ls", "--server", nobody, env={"MF_HOME": str(elsewhere), "MF_API_KEY": ADMIN})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot reach the control plane at {nobody}" in out.stderr
    remote = Remote(server, elsewhere, "mfk_not-a-key")
    assert "invalid or revoked API key" in remote.fails("models", "ls")
    out = run_mf("data", "ls", "--server", server.url, env={"MF_HOME": str(elsewhere), "MF_API_KEY": ""})
    assert out.returncode == 2 and "needs an API key" in out.stderr and "MF_API_KEY" in out.stderr
    # a URL that is no control plane (an unknown path under it answers a plain 404 page)
    assert "no route" in Remote(server, elsewhere, ADMIN).fails("jobs", "ls", server=False,
                                                                env={"MF_SERVER": server.url + "/nothing"})
