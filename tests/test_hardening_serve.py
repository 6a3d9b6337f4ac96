"""Issue 17, items 6 and 10 for `mf serve` (Open Inference Protocol v2). Each test attacks one guarantee: bound
beyond loopback without auth it refuses to start (unless --insecure); with auth /metrics needs an admin key;
anonymous and admin calls are never billed to a tenant; a chunked body is held to the body limit like any other;
a client's load config cannot exceed the operator's maxima, nor its loads the loaded-model cap; an image at
inference gets the ingest pixel limit, read from its header before anything decodes it."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_support are redefined as parameters)
from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest

from modelfactory.accounts.tenants import add_tenant
from modelfactory.serve import BatchConfig, ServeSettings
from modelfactory.serve.auth import ADMIN, ANONYMOUS, check_bind, is_loopback

from .conftest import run_mf
from .test_serve_support import (  # noqa: F401 (fixtures)
    IMAGE_TASK,
    TEXT_TASK,
    LiveServer,
    _test_database,
    image_model_dir,
    mf_home,
    register,
    review_texts,
    text_model_dir,
)

ADMIN_KEY = "mfk_hardening-admin-key"


@pytest.fixture(scope="module")
def keys(mf_home):
    (_, acme), (_, globex) = add_tenant("acme"), add_tenant("globex")
    return {"acme": acme, "globex": globex}


@pytest.fixture(scope="module")
def models(mf_home, keys, text_model_dir, image_model_dir):
    register("reviews", text_model_dir, TEXT_TASK, tenant="acme", copy=1)
    register("rivals", text_model_dir, TEXT_TASK, tenant="globex", copy=2)
    register("digits", image_model_dir, IMAGE_TASK, tenant="acme")
    for i in range(4):
        register(f"extra{i}", text_model_dir, TEXT_TASK, tenant="acme", copy=10 + i)


def infer_doc(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- item 6: safe defaults --------------------------------------------------------------------------------------
def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("") \
        and not is_loopback("10.1.2.3")
    check_bind("0.0.0.0", auth=True, insecure=False, command="x")
    check_bind("0.0.0.0", auth=False, insecure=True, command="x")


@pytest.mark.parametrize("command", [["serve"], ["serve-llm", "--base", "nowhere"]])
def test_refuses_to_listen_beyond_loopback_without_auth(command, mf_home):
    r = run_mf(*command, "--host", "0.0.0.0", "--port", "1", timeout=120)
    assert r.returncode == 2, r.stderr
    assert "refusing to listen on '0.0.0.0' without --auth" in r.stderr and "Traceback" not in r.stderr


def test_metrics_need_an_admin_key_with_auth_and_anonymous_calls_bill_no_tenant(models, keys, review_texts,
                                                                                 monkeypatch):
    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN_KEY)
    server = LiveServer(ServeSettings(auth=True, meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/metrics").status_code == 401
            r = http.get("/metrics", headers=bearer(keys["acme"]))
            assert r.status_code == 403 and "admin" in r.json()["error"]
            assert http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:2]),
                             headers=bearer(keys["acme"])).status_code == 200
            assert http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:1]),
                             headers=bearer(ADMIN_KEY)).status_code == 200
            r = http.get("/metrics", headers=bearer(ADMIN_KEY))
            assert r.status_code == 200 and "reviews" in r.text
            assert http.get("/v2/health/ready").status_code == 200  # health stays open
        window = {(t, m): w.rows for (t, m, _), w in server.repository.meter.pending().items()}
        assert window == {("acme", "reviews"): 2, (ADMIN, "reviews"): 1}  # the admin's call is not acme's
    finally:
        server.stop()
    open_server = LiveServer(ServeSettings(meter_interval_s=3600))  # no auth: nobody to bill
    try:
        with httpx.Client(base_url=open_server.url, timeout=60) as http:
            assert http.post("/v2/models/rivals/infer", json=infer_doc(review_texts[:3])).status_code == 200
        window = {(t, m): w.rows for (t, m, _), w in open_server.repository.meter.pending().items()}
        assert window == {(ANONYMOUS, "rivals"): 3}
    finally:
        open_server.stop()


# --- item 10: bounded serving -----------------------------------------------------------------------------------
def _chunks(total: int, size: int = 1 << 16):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_chunked_bodies_are_held_to_the_body_limit(models, review_texts):
    server = LiveServer(ServeSettings(max_body_bytes=1 << 20, meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/v2/models/reviews/infer", content=_chunks(32 << 20),
                          headers={"content-type": "application/json"})  # no Content-Length: chunked
            assert r.status_code == 413, r.text
            r = http.post("/v2/repository/index", content=_chunks(8 << 20))
            assert r.status_code == 413, r.text
            # a small gzip body that inflates past the limit is refused too
            bomb = zlib.compressobj(wbits=31)
            gz = bomb.compress(b" " * (16 << 20)) + bomb.flush()
            r = http.post("/v2/models/reviews/infer", content=gz, headers={"content-encoding": "gzip"})
            assert r.status_code == 413, r.text
            assert http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:1])).status_code == 200
    finally:
        server.stop()


def test_a_client_hanging_up_mid_body_is_no_internal_error(models, caplog):
    """A client that closes its connection before sending its whole body (locust stopping its users did, in
    bench/load.py) is counted as 499 and logged as nothing: an 'internal error' with a traceback is for bugs."""
    import socket
    import time

    from prometheus_client.parser import text_string_to_metric_families

    server = LiveServer(ServeSettings(meter_interval_s=3600))

    def counted() -> dict[str, float]:
        text = httpx.get(server.url + "/metrics").text
        return {s.labels["status"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "mf_inference_requests_total" and s.labels.get("model") == "reviews"}

    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v2/models/reviews/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: 100000\r\n\r\n" + b'{"inputs": [')
        deadline = time.monotonic() + 60
        while not counted() and time.monotonic() < deadline:  # the server sees the hang-up, then counts it
            time.sleep(0.1)
        assert counted() == {"499": 1.0}
        assert not [r for r in caplog.records if "internal error" in r.getMessage()]
        assert httpx.post(server.url + "/v2/models/reviews/infer", json=infer_doc(["fine"])).status_code == 200
    finally:
        server.stop()


def test_a_clients_load_config_cannot_exceed_the_operators_maxima(models):
    server = LiveServer(ServeSettings(batch=BatchConfig(max_batch_size=8, max_queue_size=16,
                                                        max_queue_delay_microseconds=1000),
                                      max_loaded=2, meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for config in ({"max_batch_size": 100000},
                           {"max_batch_size": 4,
                            "dynamic_batching": {"default_queue_policy": {"max_queue_size": 10**9}}},
                           {"dynamic_batching": {"max_queue_delay_microseconds": 10**12}}):
                r = http.post("/v2/repository/models/reviews/load", json={"parameters": {"config": config}})
                assert r.status_code == 400 and "at most" in r.json()["error"], r.text
            r = http.post("/v2/repository/models/reviews/load", json={"parameters": {"config": {"max_batch_size": 4}}})
            assert r.status_code == 200 and r.json()["max_batch_size"] == 4
            for i in range(4):  # loading more than max_loaded unloads the least recently used
                assert http.post(f"/v2/repository/models/extra{i}/load").status_code == 200
            assert len(server.repository.loaded()) <= 2
    finally:
        server.stop()


def test_loaded_models_are_capped_by_default(models):
    from modelfactory.serve.app import DEFAULT_MAX_LOADED

    server = LiveServer(ServeSettings(meter_interval_s=3600))
    try:
        assert server.repository.max_loaded == DEFAULT_MAX_LOADED
    finally:
        server.stop()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes; no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_images_at_inference_get_the_ingest_pixel_limit(models):
    from PIL import Image

    from modelfactory.data.images import MAX_IMAGE_PIXELS

    server = LiveServer(ServeSettings(meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for w, h in ((9000, 9000), (100_000, 100_000)):
                doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(_png_header_only(w, h)).decode()]}]}
                r = http.post("/v2/models/digits/infer", json=doc)
                assert r.status_code == 400 and f"limit of {MAX_IMAGE_PIXELS} pixels" in r.json()["error"], r.text
            doc = {"inputs": [{"name": "image", "shape": [1, 8100, 8100, 1], "datatype": "UINT8",
                               "parameters": {"binary_data_size": 8100 * 8100}}]}
            body = (str.encode(__import__("json").dumps(doc)), b"\x00" * (8100 * 8100))
            r = http.post("/v2/models/digits/infer", content=body[0] + body[1],
                          headers={"Inference-Header-Content-Length": str(len(body[0]))})
            assert r.status_code == 400 and "pixels" in r.json()["error"], r.text
            buf = io.BytesIO()
            Image.new("L", (8, 8), 128).save(buf, format="PNG")
            ok = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                              "data": [base64.b64encode(buf.getvalue()).decode()]}]}
            assert http.post("/v2/models/digits/infer", json=ok).status_code == 200
    finally:
        server.stop()

