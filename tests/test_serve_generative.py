"""`mf serve` beside a generative model in the registry: a family with no ONNX predictor (a LoRA adapter of the
"adapt" pipeline) is not in the repository index, and its metadata, readiness, infer and load answer a 404 that
says `mf serve-llm` serves it, never a 500; the servable models next to it are untouched."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_support are redefined as parameters)
from __future__ import annotations

import httpx
import pytest

from modelfactory import tasks
from modelfactory.serve import ServeSettings

from .conftest import run_mf
from .test_serve_support import (  # noqa: F401 (fixtures)
    TEXT_TASK,
    LiveServer,
    _test_database,
    mf_home,
    register,
    review_texts,
    text_model_dir,
)


def generative_task() -> str:
    """A discovered family of the "adapt" pipeline (today causal-lm), found by contract like the server does."""
    found = [n for n in tasks.names() if not isinstance(tasks.get(n), tasks.TaskFamily)]
    assert found, "no generative task family is installed"
    return found[0]


@pytest.fixture(scope="module")
def models(mf_home, text_model_dir, tmp_path_factory):
    adapter = tmp_path_factory.mktemp("adapter")  # never loaded by mf serve: any folder will do
    (adapter / "adapter_config.json").write_text("{}")
    register("reviews", text_model_dir, TEXT_TASK, tenant="acme")
    register("critic-voice", adapter, generative_task(), tenant="acme")
    return ["reviews", "critic-voice"]


@pytest.fixture(scope="module")
def http(models):
    server = LiveServer(ServeSettings(meter_interval_s=3600))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
    server.stop()


def _assert_served_elsewhere(r: httpx.Response):
    assert r.status_code == 404, (r.status_code, r.text)
    message = r.json()["error"]
    assert "critic-voice@1" in message and "mf serve-llm" in message, message


def test_the_index_lists_only_models_this_server_serves(http):
    names = {m["name"] for m in http.post("/v2/repository/index").json()}
    assert names == {"reviews"}
    assert http.post("/v2/repository/index", json={"ready": True}).status_code == 200


@pytest.mark.parametrize("method,path", [
    ("GET", "/v2/models/critic-voice"),
    ("GET", "/v2/models/critic-voice/versions/1"),
    ("GET", "/v2/models/critic-voice/ready"),
    ("GET", "/v2/models/critic-voice@1"),
    ("POST", "/v2/models/critic-voice/infer"),
    ("POST", "/v2/models/critic-voice/versions/1/infer"),
    ("POST", "/v2/repository/models/critic-voice/load"),
])
def test_a_generative_model_is_answered_with_where_it_is_served(http, method, path):
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
    r = http.request(method, path, json=body if method == "POST" else None)
    _assert_served_elsewhere(r)


def test_the_servable_model_beside_it_still_serves(http, review_texts):
    doc = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": review_texts[:1]}]}
    r = http.post("/v2/models/reviews/infer", json=doc)
    assert r.status_code == 200, r.text
    assert http.get("/v2/models/reviews").status_code == 200
    text = http.get("/metrics").text
    assert 'status="500"' not in text


def test_mf_serve_refuses_to_preload_it(models):
    proc = run_mf("serve", "--models", "critic-voice", "--port", "1", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "mf serve-llm" in proc.stderr, proc.stderr
