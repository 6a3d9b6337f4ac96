"""One CLI over two backends: every resource command's `--json` has the same shape on this machine's database and
through a live control plane (`mf server`, a subprocess on 127.0.0.1 over the same MF_HOME); the typed API
responses of jobs, pool and usage have an OpenAPI schema; a bad order spec gets the same message from the CLI and
from `POST /api/v1/orders`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from modelfactory import registry
from modelfactory.accounts.tenants import add_tenant
from modelfactory.artifacts import ArtifactStore
from modelfactory.data import versions

from .conftest import REPO, bill_sample_usage, mf_in_process, sample_csv, tiny_order
from .test_serve_support import free_port

ADMIN = "mfk_test-admin-key"


mf = mf_in_process


@pytest.fixture
def control_plane(mf_home, tmp_path):
    """Starts `mf server --workers 0` on a free 127.0.0.1 port over this test's MF_HOME (what the local backend
    reads, the remote one reads through HTTP) and returns its URL. Started once the test has made its data, so the
    two processes never create the database's tables at the same time. No workers: queued jobs stay queued."""
    procs = []

    def start() -> str:
        port = free_port()
        log = tmp_path / "server.log"
        env = {**os.environ, "MF_ADMIN_KEY": ADMIN, "MF_SERVER": ""}
        with open(log, "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "server", "--workers", "0",
                                           "--port", str(port)], cwd=REPO, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
        while True:
            try:
                if httpx.get(f"{url}/api/v1/me", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5).is_success:
                    return url
            except httpx.TransportError:
                pass
            if procs[-1].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mf server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def shape_mismatches(a, b, where: str = "$") -> list[str]:
    """Where two JSON documents differ in shape: a dict's keys, a list's element shapes, a scalar's type (when
    neither is null). Values (ids, times, paths) may differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(set(a) ^ set(b))} in one only"] if set(a) != set(b) else []
        return out + [m for k in sorted(set(a) & set(b)) for m in shape_mismatches(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in shape_mismatches(x, y, f"{where}[{i}]")]
    if a is None or b is None:
        return []
    same = type(a) is type(b) or {type(a), type(b)} <= {int, float}
    return [] if same else [f"{where}: {type(a).__name__} vs {type(b).__name__}"]


def test_shape_mismatches_finds_what_differs():
    assert shape_mismatches({"a": 1, "b": [{"c": "x"}]}, {"a": 2.5, "b": [{"c": "y"}], "d": None}) == [
        "$: keys ['d'] in one only"]
    assert shape_mismatches([{"a": "x"}], [{"a": 3}]) == ["$[0].a: str vs int"]
    assert shape_mismatches({"a": None}, {"a": {"b": 1}}) == []


@pytest.mark.slow
def test_every_resource_command_gives_the_same_json_locally_and_through_mf_server(
        control_plane, capsys, monkeypatch, corpus_df, tiny_teacher, tmp_path):
    # The same kind of data for both: a tenant, a dataset, a model with a (stand-in) ONNX file, an order on the
    # pool with its jobs, a command job and a month of usage.
    _, acme_key = add_tenant("acme")
    versions.add_file("reviews", sample_csv(corpus_df, tmp_path / "reviews.csv", 5), {"text": "text",
                                                                                       "label": "label"},
                      tenant="acme")
    store = ArtifactStore()
    with store.create("f" * 64, kind="model", producer="test") as (folder, _):
        (folder / "model.onnx").write_bytes(b"onnx")
    metrics = {"deployed": "student_int8", "teacher": {"accuracy": 0.9, "size_bytes": 9e6, "latency_ms_p50": 9.0},
               "student_int8": {"accuracy": 0.8, "size_bytes": 2e6, "latency_ms_p50": 1.0}}
    registry.register(name="sentiment", tenant="acme", task="text-classification", artifact_id="f" * 64,
                      metrics=metrics, lineage={"order": 1, "order_name": "sentiment"}, card_fn=lambda n, v: "# x\n")
    bill_sample_usage("acme")
    spec = tiny_order("remote-order", Path("unused.csv"), tiny_teacher)
    spec["data"] = {"dataset": "reviews@1"}
    spec["tenant"] = "acme"
    order_file = tmp_path / "order.yaml"
    order_file.write_text(yaml.safe_dump(spec))
    csv = sample_csv(corpus_df, tmp_path / "more.csv", 4)
    url = control_plane()

    def both(*args: str, local_args: tuple[str, ...] = (), remote_args: tuple[str, ...] = (), key: str = ADMIN):
        """`mf ARGS --json` here and through the control plane: both documents."""
        docs = []
        for extra in (local_args, (*remote_args, "--server", url, "--api-key", key)):
            code, out, err = mf(capsys, monkeypatch, *args, *extra, "--json")
            assert code == 0 and "Traceback" not in err, (args, extra, err)
            docs.append(json.loads(out))
        return docs

    checked = {}
    order_local, order_remote = both("order", "submit", str(order_file))
    checked["order submit"] = (order_local, order_remote)
    checked["order status"] = both("order", "status", str(order_local["order"]))
    checked["jobs ls"] = both("jobs", "ls")
    checked["jobs show"] = both("jobs", "show", str(order_local["jobs"]["teacher"]))
    # datasets belong to a tenant: upload with its key (locally, the default tenant's)
    checked["data add"] = both("data", "add", local_args=("here", str(csv)), remote_args=("there", str(csv)),
                               key=acme_key)
    checked["data ls"] = both("data", "ls")
    checked["models ls"] = both("models", "ls")
    checked["models show"] = both("models", "show", "sentiment")
    checked["tenants add"] = both("tenants", "add", local_args=("globex",), remote_args=("initech",))
    checked["tenants ls"] = both("tenants", "ls")
    checked["usage"] = both("usage", "--tenant", "acme")

    for command, (here, there) in checked.items():
        assert here and there, command  # nothing compared is empty: the shapes below say something
        assert shape_mismatches(here, there) == [], command
    # the contract's document, through the control plane too
    shown = checked["models show"][1]
    assert {"name", "version", "onnx_path", "metrics"} <= set(shown) and shown["onnx_path"].endswith("model.onnx")
    assert set(shown["metrics"]) >= {"teacher", "student"}
    # the same database behind both: the same rows, listed in the same order
    for command in ("data ls", "models ls", "tenants ls", "jobs ls"):
        here, there = checked[command]
        assert [(r.get("name"), r.get("id"), r.get("version")) for r in here] == [
            (r.get("name"), r.get("id"), r.get("version")) for r in there], command
    assert checked["usage"][0] == checked["usage"][1]
    assert checked["models show"][0] == checked["models show"][1]
    # a report: a file here, its URL there (the order has none yet)
    assert checked["order status"][0]["report"] is None and checked["order status"][1]["report"] is None


def test_jobs_pool_and_usage_responses_have_an_openapi_schema():
    from modelfactory.api import create_app

    spec = create_app().openapi()
    schemas = spec["components"]["schemas"]

    def properties(schema: dict) -> dict:
        if "$ref" in schema:
            return properties(schemas[schema["$ref"].rsplit("/", 1)[1]])
        if schema.get("type") == "array":
            return properties(schema["items"])
        return schema.get("properties", {})

    expected = {"/api/v1/jobs": {"id", "state", "worker"}, "/api/v1/jobs/{job_id}": {"events", "state"},
                "/api/v1/jobs/{job_id}/cancel": {"events"}, "/api/v1/pool": {"workers", "capacity"},
                "/api/v1/pool/utilisation": {"points"}, "/api/v1/pool/output": {"orders", "cpu_hours"},
                "/api/v1/usage": {"lines", "total", "by_outcome"}, "/api/v1/tenants": {"name", "weight"}}
    for path, must in expected.items():
        op = spec["paths"][path]["post" if path.endswith("/cancel") else "get"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert must <= set(properties(schema)), (path, schema)
    assert "TenantOut" not in schemas and "TenantInfo" in schemas  # one tenant shape


def test_a_bad_spec_gets_the_same_message_from_the_cli_and_the_api(control_plane, capsys, monkeypatch, tmp_path):
    url = control_plane()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "task": "text-classification", "data": {"dataset": "d"},
                                   "teacher": {"model": "m", "modell": "typo"},
                                   "targets": {"max_size_mb": "big"}}))
    code, _, err = mf(capsys, monkeypatch, "order", "run", str(bad))
    assert code == 2 and err.startswith(f"error: {bad}: ")
    from_cli = " ".join(err.split()).removeprefix(f"error: {bad}: ")
    r = httpx.post(f"{url}/api/v1/orders", content=bad.read_bytes(), timeout=60,
                   headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/yaml"})
    assert r.status_code == 422
    assert r.json()["error"] == f"order spec: {from_cli}"
    assert "unknown field 'teacher.modell'" in from_cli and "field 'targets.max_size_mb'" in from_cli
    assert {f["loc"] for f in r.json()["fields"]} == {"teacher.modell", "targets.max_size_mb"}
    # through --server, the CLI prints the API's message
    code, _, err = mf(capsys, monkeypatch, "order", "submit", str(bad), "--server", url,
                      "--api-key", ADMIN)
    assert code == 2 and " ".join(err.split()) == f"error: order spec: {from_cli}"
    # unreadable YAML: the same words too
    bad.write_text("name: [unclosed")
    code, _, err = mf(capsys, monkeypatch, "order", "run", str(bad))
    r = httpx.post(f"{url}/api/v1/orders", content=bad.read_bytes(), timeout=60,
                   headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/yaml"})
    assert r.status_code == 400 and code == 2
    assert " ".join(err.split()).removeprefix(f"error: {bad}: ") == r.json()["error"].removeprefix("order spec: ")
