"""The inference server speaks the Open Inference Protocol v2 as `tritonclient.http`, httpx and curl expect: health,
server and model metadata, model ready, infer (JSON and binary tensor data, with and without /versions/{v}), the
repository index/load/unload, image models fed UINT8 pixels or encoded files, a promote that moves traffic without a
restart, metrics that count, and bad requests answered 4xx with a message naming the problem (never a 500).
"""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_support are redefined as parameters)
from __future__ import annotations

import base64
import gc
import io
import json
import struct
import subprocess
import weakref

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from modelfactory import registry
from modelfactory.serve import ServeSettings

from .test_serve_support import (  # noqa: F401 (fixtures)
    IMAGE_TASK,
    TEXT_TASK,
    LiveServer,
    _test_database,
    image_model_dir,
    metric,
    mf_home,
    predictor_for,
    register,
    review_texts,
    text_model_dir,
)


@pytest.fixture(scope="module")
def models(mf_home, text_model_dir, image_model_dir):
    """reviews@1 (prod) and reviews@2, digits@1: registered in the module's registry."""
    register("reviews", text_model_dir, TEXT_TASK, copy=1, aliases=("prod",))
    register("reviews", text_model_dir, TEXT_TASK, copy=2)
    register("digits", image_model_dir, IMAGE_TASK)
    return {"reviews": predictor_for("reviews@1"), "digits": predictor_for("digits")}


@pytest.fixture(scope="module")
def server(models):
    s = LiveServer(ServeSettings(alias_ttl_s=0.2, meter_interval_s=3600))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.host)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def text_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    inp = triton.InferInput("text", [len(texts)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return inp


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# --- health, metadata, ready ----------------------------------------------------------------------------------
def test_health_and_server_metadata(client, http):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelfactory" and {"binary_tensor_data", "model_repository"} <= set(meta["extensions"])
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get("/v2").json() == meta


def test_model_metadata_and_ready_with_and_without_versions(client, http, models):
    meta = client.get_model_metadata("reviews")
    assert meta["name"] == "reviews" and meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert client.is_model_ready("reviews")  # metadata loaded it (on demand): prod = version 1
    assert client.is_model_ready("reviews", "1") and not client.is_model_ready("reviews", "2")
    assert client.get_model_metadata("reviews", "2")["versions"] == ["2"]
    assert client.is_model_ready("reviews", "2")
    r = http.get("/v2/models/reviews/versions/prod")  # a version path segment may be an alias too
    assert r.status_code == 200 and r.json()["versions"] == ["1"]

    image = http.get("/v2/models/digits").json()
    assert image["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 1],
                                "datatypes": ["UINT8", "BYTES"]}]
    config = client.get_model_config("reviews")
    assert config["max_batch_size"] == 32 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000

    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/reviews/versions/9",
                 "/v2/models/reviews/versions/9/ready"):
        r = http.get(path)
        assert r.status_code == 404 and "no model" in r.json()["error"], path
    assert not client.is_model_ready("nope")


# --- inference --------------------------------------------------------------------------------------------------
def test_infer_text_with_tritonclient_binary_and_json(client, models, review_texts):
    texts = review_texts[:5]
    want = models["reviews"].predict_proba(texts)
    labels = models["reviews"].labels
    res = client.infer("reviews", [text_input(texts)])  # tritonclient's default: binary in and out
    np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-5)
    assert [x.decode() for x in res.as_numpy("label")] == [labels[i] for i in want.argmax(1)]
    assert res.get_response()["model_version"] == "1"

    res = client.infer("reviews", [text_input(texts, binary=False)], model_version="2", request_id="req-7",
                       outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)])
    body = res.get_response()
    assert body["model_version"] == "2" and body["id"] == "req-7" and [o["name"] for o in body["outputs"]] == [
        "probabilities"]
    assert body["outputs"][0]["shape"] == [5, 3]
    np.testing.assert_allclose(res.as_numpy("probabilities").reshape(5, 3), want, atol=1e-5)


def test_infer_with_plain_httpx_json_and_curl(server, http, models, review_texts):
    texts = review_texts[5:8]
    want = models["reviews"].predict_proba(texts)
    doc = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": texts}]}
    for path in ("/v2/models/reviews/infer", "/v2/models/reviews/versions/1/infer", "/v2/models/reviews@1/infer"):
        r = http.post(path, json=doc)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [3]
        np.testing.assert_allclose(np.array(out["probabilities"]["data"]).reshape(3, 3), want, atol=1e-5)

    curl = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "-d",
                           json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                   "data": [texts[0]]}]}),
                           f"{server.url}/v2/models/reviews/infer"], capture_output=True, text=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    out = {o["name"]: o for o in json.loads(curl.stdout)["outputs"]}
    np.testing.assert_allclose(out["probabilities"]["data"], want[0], atol=1e-5)


def test_image_model_takes_uint8_pixels_and_encoded_files(client, http, models, digits_df):
    predictor = models["digits"]
    files = digits_df["image"].head(6).tolist()
    want = predictor.predict_proba(files)
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("L"))[..., None] for f in files])
    assert pixels.shape == (6, 8, 8, 1) and pixels.dtype == np.uint8

    inp = triton.InferInput("image", list(pixels.shape), "UINT8")
    inp.set_data_from_numpy(pixels)
    res = client.infer("digits", [inp])
    np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-5)
    assert [x.decode() for x in res.as_numpy("label")] == [predictor.labels[i] for i in want.argmax(1)]

    inp = triton.InferInput("image", [6], "BYTES")  # encoded PNG files, binary
    inp.set_data_from_numpy(np.array(files, dtype=object))
    np.testing.assert_allclose(client.infer("digits", [inp]).as_numpy("probabilities"), want, atol=1e-5)

    bigger = png(np.asarray(Image.open(io.BytesIO(files[0])).convert("L").resize((16, 16))))
    doc = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                       "data": [base64.b64encode(bigger).decode()]}]}  # JSON: files as base64
    r = http.post("/v2/models/digits/infer", json=doc)
    assert r.status_code == 200, r.text
    probs = {o["name"]: o for o in r.json()["outputs"]}["probabilities"]["data"]
    np.testing.assert_allclose(probs, predictor.predict_proba([bigger])[0], atol=1e-5)

    doc = {"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "UINT8",
                       "data": pixels[0].tolist()}]}  # nested JSON numbers
    r = http.post("/v2/models/digits/infer", json=doc)
    assert r.status_code == 200, r.text


# --- the repository ---------------------------------------------------------------------------------------------
def test_repository_index_load_unload_frees_the_session(server, client, http):
    client.load_model("digits")
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("digits", "1")]["state"] == "READY" and set(index) >= {("reviews", "1"), ("reviews", "2")}
    session = weakref.ref(server.repository.get_loaded(registry.resolve("digits")).predictor.session)

    client.unload_model("digits")
    gc.collect()
    assert session() is None  # the onnxruntime session is gone
    assert not client.is_model_ready("digits")
    index = {(m["name"], m["version"]): m for m in client.get_model_repository_index()}
    assert index[("digits", "1")] == {"name": "digits", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert http.post("/v2/repository/index", json={"ready": True}).json() == [
        m for m in client.get_model_repository_index() if m["state"] == "READY"]

    # a Triton config on load sets the model's batching knobs
    client.load_model("digits", config=json.dumps({"max_batch_size": 4, "dynamic_batching": {
        "max_queue_delay_microseconds": 500, "preferred_batch_size": [2, 4]}}))
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 4 and config["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    with pytest.raises(InferenceServerException, match="more than this model's max_batch_size 4"):
        inp = triton.InferInput("image", [5, 8, 8, 1], "UINT8")
        inp.set_data_from_numpy(np.zeros((5, 8, 8, 1), dtype=np.uint8))
        client.infer("digits", [inp])
    client.load_model("digits", config=json.dumps({"max_batch_size": 32, "dynamic_batching": {}}))

    with pytest.raises(InferenceServerException, match="no model 'nope'"):
        client.load_model("nope")
    assert http.post("/v2/repository/models/nope/unload").status_code == 404


def test_promote_switches_traffic_without_restart(http, models, review_texts):
    doc = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": review_texts[:1]}]}

    def served_version() -> str:
        r = http.post("/v2/models/reviews/infer", json=doc)
        assert r.status_code == 200, r.text
        return r.json()["model_version"]

    import time

    assert served_version() == "1"
    registry.promote("reviews", 2, "prod")
    try:
        deadline = time.time() + 60  # a hang guard (the alias is re-read every second), not a timing assert
        while served_version() != "2":
            assert time.time() < deadline, "traffic did not move to the promoted version"
            time.sleep(0.05)
        assert http.get("/v2/models/reviews/ready").json()["version"] == "2"
    finally:
        registry.promote("reviews", 1, "prod")


# --- errors -----------------------------------------------------------------------------------------------------
def _binary_body(doc: dict, raw: bytes) -> tuple[bytes, dict]:
    header = json.dumps(doc).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


BYTES_1 = struct.pack("<I", 3) + b"abc"


@pytest.mark.parametrize("model,body,headers,status,message", [
    ("reviews", b"{not json", {}, 400, "not valid JSON"),
    ("reviews", b"", {}, 400, "empty request body"),
    ("reviews", b'{"inputs": "x"}', {}, 400, "inputs"),
    ("reviews", json.dumps({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}), {},
     400, "missing input 'text'; unexpected input 'txt'"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}), {},
     400, "datatype FP32 is not accepted (expected BYTES)"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "FLOAT", "data": [1.0]}]}), {},
     400, "unknown datatype 'FLOAT'"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]}),
     {}, 400, "shape [1, 1] does not match [-1]"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}), {},
     400, "needs 2 elements, data has 1"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [1]}]}), {},
     400, "BYTES elements in JSON are strings"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [33], "datatype": "BYTES", "data": ["a"] * 33}]}),
     {}, 400, "33 rows, more than this model's max_batch_size 32"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}), {},
     400, "has no rows"),
    ("reviews", json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                            "outputs": [{"name": "logits"}]}), {}, 400, "unknown output 'logits'"),
    ("reviews", *_binary_body({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": 99}}]}, BYTES_1), 400,
     "binary_data_size 99 exceeds"),
    ("reviews", *_binary_body({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": 7}}]}, BYTES_1), 400,
     "needs 2 elements, binary data has 1"),
    ("reviews", *_binary_body({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": 7}}]},
                              struct.pack("<I", 3) + b"\xff\xfe\xfd"), 400, "not UTF-8 text"),
    ("reviews", b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400,
     "Inference-Header-Content-Length is 999"),
    ("digits", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@@"]}]}), {},
     400, "must be base64"),
    ("digits", *_binary_body({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                          "parameters": {"binary_data_size": 7}}]}, BYTES_1), 400,
     "not an image"),
    ("digits", json.dumps({"inputs": [{"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8",
                                       "data": [0] * 192}]}), {}, 400, "shape [1, 8, 8, 3] does not match"),
    ("digits", json.dumps({"inputs": [{"name": "image", "shape": [1, 2, 2, 1], "datatype": "UINT8",
                                       "data": [0, 1, 2, 300]}]}), {}, 400, "not all UINT8 numbers in range"),
    ("nope", json.dumps({"inputs": []}), {}, 404, "no model 'nope'"),
    ("reviews@nope", b"{}", {}, 404, "no alias 'nope'"),
])
def test_bad_requests_are_4xx_naming_the_problem(http, models, model, body, headers, status, message):
    r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_other_errors_are_json_too(http, client):
    r = http.get("/v2/nowhere")
    assert r.status_code == 404 and "no route GET /v2/nowhere" in r.json()["error"]
    r = http.delete("/v2/models/reviews/infer")
    assert r.status_code == 405 and "error" in r.json()
    r = http.post("/v2/models/reviews/versions/1/infer", content=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 415 and "Content-Encoding" in r.json()["error"]
    with pytest.raises(InferenceServerException, match="missing input 'text'"):  # tritonclient sees the message
        client.infer("reviews", [triton.InferInput("words", [1], "BYTES").set_data_from_numpy(
            np.array([b"x"], dtype=object))])


# --- metrics ----------------------------------------------------------------------------------------------------
def test_metrics_are_exposed_and_count(http, models, review_texts):
    before = http.get("/metrics").text
    doc = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": review_texts[:2]}]}
    for _ in range(3):
        assert http.post("/v2/models/reviews/versions/1/infer", json=doc).status_code == 200
    assert http.post("/v2/models/reviews/versions/1/infer", content=b"{").status_code == 400
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    v1 = {"model": "reviews", "version": "1"}
    assert grew("mf_inference_requests_total", status="200", **v1) == 3
    assert grew("mf_inference_requests_total", status="400", **v1) == 1
    assert grew("mf_inference_rows_total", **v1) == 6
    assert grew("mf_inference_request_duration_seconds_count", **v1) == 4
    assert grew("mf_inference_batch_size_count", **v1) == 3 and grew("mf_inference_batch_size_sum", **v1) == 6
    assert grew("mf_inference_compute_seconds_total", **v1) > 0
    assert metric(after, "mf_inference_queue_depth", **v1) == 0
    assert metric(after, "mf_models_loaded") >= 1 and metric(after, "mf_models_loaded_bytes") > 0
