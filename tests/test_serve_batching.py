"""The server under load and across tenants: dynamic batching forms batches within Triton's knobs and hands every
caller its own rows, in order; a full queue answers 503; an LRU limit unloads the least recently used model; with
auth a tenant reaches only its own models; inference lands in the usage ledger (`mf usage`); `mf serve` runs."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_support are redefined as parameters)
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from modelfactory import registry
from modelfactory.accounts.ledger import invoice
from modelfactory.accounts.tenants import add_tenant
from modelfactory.serve import BatchConfig, ServeSettings
from modelfactory.serve.batcher import Batcher, QueueFull, TooLarge
from modelfactory.store import utcnow

from .conftest import REPO, run_mf
from .test_serve_support import (  # noqa: F401 (fixtures)
    IMAGE_TASK,
    TEXT_TASK,
    LiveServer,
    _test_database,
    free_port,
    image_model_dir,
    metric,
    mf_home,
    predictor_for,
    register,
    review_texts,
    text_model_dir,
)


# --- the batcher on its own -------------------------------------------------------------------------------------
class Recorder:
    """A model that returns each row's number and remembers the batches it was given."""

    def __init__(self, delay: float = 0.0, bad: int | None = None):
        self.batches: list[list[int]] = []
        self.delay, self.bad = delay, bad
        self.entered = 0  # calls that reached the model (the gate waits inside it)
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, rows):
        self.entered += 1
        self.gate.wait()
        if self.bad is not None and self.bad in rows:
            raise ValueError(f"row {self.bad} is bad")
        self.batches.append(list(rows))
        time.sleep(self.delay)
        return np.asarray(rows, dtype=np.float32)[:, None] * 10


async def until(condition, what: str, limit_s: float = 60.0) -> None:
    """Wait, without blocking the event loop, until `condition()` holds: orders the steps of a test by what has
    happened, never by how long it took (the limit only guards against a hang)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.002)


def test_batches_respect_the_knobs_and_every_caller_gets_its_rows():
    async def go():
        model = Recorder()
        model.gate.clear()  # the first request holds the model while the other eleven queue up behind it
        b = Batcher("m", model, BatchConfig(max_batch_size=8, max_queue_delay_microseconds=50_000))
        sizes = [1, 3, 2, 4, 1, 5, 2, 2, 3, 1, 6, 2]  # 32 rows in 12 requests
        starts = np.cumsum([0, *sizes[:-1]])
        first = asyncio.ensure_future(b.submit(list(range(sizes[0]))))
        await until(lambda: model.entered == 1, "the first request reached the model")
        jobs = [b.submit(list(range(s, s + n))) for s, n in zip(starts[1:], sizes[1:])]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        await until(lambda: b.depth == len(sizes) - 1, "eleven requests queued")
        model.gate.set()
        results = await asyncio.gather(first, *tasks)
        await b.close()
        return model, sizes, starts, results

    model, sizes, starts, results = asyncio.run(go())
    for (out, share), s, n in zip(results, starts, sizes):
        assert out[:, 0].tolist() == [10.0 * r for r in range(s, s + n)]  # its own rows, in order
        assert share >= 0
    assert all(len(batch) <= 8 for batch in model.batches)
    assert len(model.batches) < len(sizes)  # requests were batched together
    flat = [r for batch in model.batches for r in batch]
    assert flat == list(range(32))  # FIFO, and no request was split across batches
    bounds = {int(s) for s in starts}
    assert all(batch[0] in bounds for batch in model.batches)


def test_preferred_size_dispatches_without_waiting_and_a_lone_request_runs_at_once():
    async def go():
        model = Recorder()
        hour = 3_600_000_000  # a queue delay of an hour: a request that waited for it would never finish here
        b = Batcher("m", model, BatchConfig(max_batch_size=16, max_queue_delay_microseconds=hour,
                                            preferred_batch_size=(4,)))
        await asyncio.wait_for(b.submit([0]), 60)  # idle model, nothing before it: no waiting for the delay
        model.gate.clear()  # hold the model while the next requests queue up
        blocker = asyncio.ensure_future(b.submit([99]))
        await until(lambda: model.entered == 2, "the blocker reached the model")
        pending = [asyncio.ensure_future(b.submit([i, i + 1])) for i in (1, 3)]
        await until(lambda: b.depth == 2, "two requests queued")
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(blocker, *pending), 60)  # 4 rows: no waiting for the delay either
        await b.close()
        return model

    model = asyncio.run(go())
    assert model.batches == [[0], [99], [1, 2, 3, 4]]  # 4 rows = a preferred size: sent without the delay


def test_too_large_request_and_full_queue_are_refused():
    async def go():
        model = Recorder()
        model.gate.clear()
        b = Batcher("m", model, BatchConfig(max_batch_size=4, max_queue_size=2))
        with pytest.raises(TooLarge, match="5 rows, more than max_batch_size 4"):
            await b.submit([1, 2, 3, 4, 5])
        running = asyncio.ensure_future(b.submit([0]))
        await until(lambda: model.entered == 1, "taken by the model thread, which waits at the gate")
        queued = [asyncio.ensure_future(b.submit([i])) for i in (1, 2)]
        await until(lambda: b.depth == 2, "two requests queued")
        with pytest.raises(QueueFull, match=r"queue full \(2 requests waiting\)"):
            await b.submit([3])
        model.gate.set()
        done = await asyncio.gather(running, *queued)
        await b.close()
        return [out[0, 0] for out, _ in done]

    assert asyncio.run(go()) == [0, 10, 20]


def test_a_bad_row_fails_only_its_own_request():
    async def go():
        model = Recorder(bad=5)
        model.gate.clear()
        b = Batcher("m", model, BatchConfig(max_batch_size=8, max_queue_delay_microseconds=100_000))
        first = asyncio.ensure_future(b.submit([0]))
        await until(lambda: model.entered == 1, "the first request reached the model")
        rest = [asyncio.ensure_future(b.submit(rows)) for rows in ([1, 2], [5], [6])]
        await until(lambda: b.depth == 3, "three requests queued")
        model.gate.set()
        out = await asyncio.gather(first, *rest, return_exceptions=True)
        await b.close()
        return out

    ok0, ok1, bad, ok2 = asyncio.run(go())
    assert isinstance(bad, ValueError) and "row 5 is bad" in str(bad)
    assert ok1[0][:, 0].tolist() == [10, 20] and ok2[0][:, 0].tolist() == [60]


# --- through HTTP -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tenants(mf_home):
    (_, acme), (_, globex) = add_tenant("acme"), add_tenant("globex")
    return {"acme": acme, "globex": globex}


@pytest.fixture(scope="module")
def models(mf_home, tenants, text_model_dir, image_model_dir):
    register("reviews", text_model_dir, TEXT_TASK, tenant="acme", copy=1)
    register("tickets", text_model_dir, TEXT_TASK, tenant="acme", copy=2)
    register("rivals", text_model_dir, TEXT_TASK, tenant="globex", copy=3)
    register("digits", image_model_dir, IMAGE_TASK, tenant="globex")
    return {"reviews": predictor_for("reviews")}


def infer_doc(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def probabilities(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}["probabilities"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(models, review_texts):
    server = LiveServer(ServeSettings(batch=BatchConfig(max_batch_size=16, max_queue_delay_microseconds=30_000),
                                      meter_interval_s=3600))
    try:
        want = models["reviews"].predict_proba(review_texts)  # one row at a time would give the same (fp32)
        sizes = [1, 2, 3, 1, 4, 2, 1, 3, 2, 1, 5, 1, 2, 3, 1, 2, 4, 1]
        starts = np.cumsum([0, *sizes[:-1]])
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.post("/v2/repository/models/reviews/load")

            def call(i):
                s, n = starts[i], sizes[i]
                return i, probabilities(http.post("/v2/models/reviews/infer", json=infer_doc(
                    review_texts[s:s + n])))

            with ThreadPoolExecutor(len(sizes)) as pool:
                results = list(pool.map(call, range(len(sizes))))
            text = http.get("/metrics").text
        for i, probs in results:
            np.testing.assert_allclose(probs, want[starts[i]:starts[i] + sizes[i]], atol=1e-5)
        labels = {"model": "reviews", "version": "1"}
        batches = metric(text, "mf_inference_batch_size_count", **labels)
        assert metric(text, "mf_inference_batch_size_sum", **labels) == sum(sizes)
        assert batches < len(sizes)  # some requests shared a batch
        assert metric(text, "mf_inference_batch_size_bucket", le="16.0", **labels) == batches  # none above 16
    finally:
        server.stop()


def test_a_full_queue_answers_503_with_a_message(models, review_texts):
    server = LiveServer(ServeSettings(batch=BatchConfig(max_batch_size=1, max_queue_size=2), meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            http.post("/v2/repository/models/reviews/load")
            model = server.repository.get_loaded(registry.resolve("reviews"))
            entered, slow = threading.Event(), threading.Event()
            real = model.predictor.predict_proba

            def held(rows, batch_size=64):
                entered.set()
                slow.wait(120)
                return real(rows, batch_size)

            def post():
                return http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:1]))

            def wait_for(condition, what):  # orders the steps by what happened, not by time (a hang guard only)
                deadline = time.monotonic() + 60
                while not condition():
                    assert time.monotonic() < deadline, f"never happened: {what}"
                    time.sleep(0.005)

            model.predictor.predict_proba = held
            try:
                with ThreadPoolExecutor(3) as pool:
                    running = pool.submit(post)
                    wait_for(entered.is_set, "the first request reached the model")  # 1 running
                    queued = [pool.submit(post) for _ in range(2)]
                    wait_for(lambda: model.batcher.depth == 2, "two requests queued")  # 2 queued
                    refused = [post() for _ in range(5)]  # 5 refused, at once: the queue is full
                    slow.set()
                    answers = [running.result(), *(f.result() for f in queued), *refused]
            finally:
                slow.set()
            text = http.get("/metrics").text
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 3 + [503] * 5
        refused = next(r for r in answers if r.status_code == 503)
        assert "queue full (2 requests waiting)" in refused.json()["error"]
        assert metric(text, "mf_inference_requests_total", model="reviews", version="1", status="503") == 5
    finally:
        server.stop()


def test_lru_unloads_the_least_recently_used_model(models, review_texts):
    server = LiveServer(ServeSettings(max_loaded=2, meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for name in ("reviews", "tickets"):
                probabilities(http.post(f"/v2/models/{name}/infer", json=infer_doc(review_texts[:1])))
            first = weakref.ref(server.repository.get_loaded(registry.resolve("reviews")).predictor.session)
            probabilities(http.post("/v2/models/tickets/infer", json=infer_doc(review_texts[:1])))  # reviews is LRU
            probabilities(http.post("/v2/models/rivals/infer", json=infer_doc(review_texts[:1])))  # on demand
            states = {m["name"]: m["state"] for m in http.post("/v2/repository/index").json()}
            assert states["reviews"] == "UNAVAILABLE" and states["tickets"] == states["rivals"] == "READY"
            gc.collect()
            assert first() is None  # its session was freed
            assert http.get("/v2/models/reviews/ready").status_code == 400
            probabilities(http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:1])))  # loads again
            states = {m["name"]: m["state"] for m in http.post("/v2/repository/index").json()}
            assert states["reviews"] == "READY" and states["tickets"] == "UNAVAILABLE"
            text = http.get("/metrics").text
        assert metric(text, "mf_models_loaded") == 2
        assert metric(text, "mf_model_unloads_total", reason="lru") == 2
    finally:
        server.stop()


def test_memory_limit_and_explicit_mode(models, review_texts):
    size = sum(p.stat().st_size for p in registry.resolve("reviews").path.rglob("*") if p.name != "manifest.json")
    server = LiveServer(ServeSettings(max_loaded_bytes=int(size * 1.5), load_on_demand=False, meter_interval_s=3600))
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:1]))
            assert r.status_code == 400 and "is not loaded" in r.json()["error"]
            assert http.post("/v2/repository/models/reviews/load").status_code == 200
            probabilities(http.post("/v2/models/reviews/infer", json=infer_doc(review_texts[:1])))
            assert http.post("/v2/repository/models/tickets/load").status_code == 200  # over 1.5 models' bytes
            assert [m["name"] for m in http.post("/v2/repository/index", json={"ready": True}).json()] == ["tickets"]
    finally:
        server.stop()


def test_with_auth_a_tenant_reaches_only_its_own_models(tenants, models, review_texts):
    server = LiveServer(ServeSettings(auth=True, meter_interval_s=3600))
    acme = {"Authorization": f"Bearer {tenants['acme']}"}
    globex = {"Authorization": f"Bearer {tenants['globex']}"}
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            doc = infer_doc(review_texts[:1])
            r = http.post("/v2/models/reviews/infer", json=doc)
            assert r.status_code == 401 and "missing API key" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
            r = http.post("/v2/models/reviews/infer", json=doc, headers={"Authorization": "Bearer mfk_wrong"})
            assert r.status_code == 401 and r.json()["error"] == "invalid or revoked API key"
            assert http.get("/v2/models/reviews", headers={"Authorization": "Basic abc"}).status_code == 401

            probabilities(http.post("/v2/models/reviews/infer", json=doc, headers=acme))
            probabilities(http.post("/v2/models/rivals/infer", json=doc, headers=globex))
            for path in ("/v2/models/rivals/infer", "/v2/models/rivals/versions/1/infer"):
                r = http.post(path, json=doc, headers=acme)  # another tenant's model: as if it did not exist
                assert r.status_code == 404 and r.json()["error"].startswith("no model 'rivals"), r.text
            assert http.get("/v2/models/rivals", headers=acme).status_code == 404
            assert http.get("/v2/models/rivals/ready", headers=acme).status_code == 404
            assert http.post("/v2/repository/models/rivals/load", headers=acme).status_code == 404
            assert http.post("/v2/repository/models/rivals/unload", headers=acme).status_code == 404
            assert {m["name"] for m in http.post("/v2/repository/index", headers=acme).json()} == {"reviews",
                                                                                                 "tickets"}
            assert {m["name"] for m in http.post("/v2/repository/index", headers=globex).json()} == {"rivals",
                                                                                                   "digits"}
            assert http.get("/v2/health/ready").status_code == 200  # health stays open; /metrics needs an admin key
            assert http.get("/metrics", headers=acme).status_code == 403
    finally:
        server.stop()


def served(tenant: str) -> dict[str, tuple[int, int, float]]:
    """(requests, rows, cpu-hours) per model in the tenant's invoice this month."""
    return {x.model: (x.requests, x.rows, x.cpu_hours) for x in invoice(tenant, f"{utcnow():%Y-%m}").inference}


def test_inference_is_metered_into_the_usage_ledger(models, review_texts, tenants):
    before = {t: served(t) for t in ("acme", "globex")}  # earlier tests' servers metered too
    server = LiveServer(ServeSettings(auth=True, meter_interval_s=3600))  # only an authenticated tenant is billed
    acme, globex = ({"Authorization": f"Bearer {tenants[t]}"} for t in ("acme", "globex"))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for n in (1, 2, 3):
            probabilities(http.post("/v2/models/tickets/infer", json=infer_doc(review_texts[:n]), headers=acme))
        probabilities(http.post("/v2/models/rivals/infer", json=infer_doc(review_texts[:4]), headers=globex))
    # The open window, before it is written: every request's model time (perf_counter, ns resolution) was counted.
    # The invoice shows CPU-hours to 6 decimals (3.6 ms), which three tiny requests may not reach.
    window = {(t, m): w for (t, m, _), w in server.repository.meter.pending().items()}
    assert (window["acme", "tickets"].requests, window["acme", "tickets"].rows) == (3, 6)
    assert window["acme", "tickets"].cpu_seconds > 0 and window["globex", "rivals"].cpu_seconds > 0
    server.stop()  # shutdown writes the open window
    after = {t: served(t) for t in ("acme", "globex")}

    def grew(tenant, model):
        old = before[tenant].get(model, (0, 0, 0.0))
        return tuple(a - b for a, b in zip(after[tenant][model], old))

    requests, rows, cpu_hours = grew("acme", "tickets")
    assert (requests, rows) == (3, 6) and cpu_hours >= 0
    assert grew("globex", "rivals")[:2] == (1, 4)
    assert "rivals" not in after["acme"] and "tickets" not in after["globex"]
    acme = invoice("acme", f"{utcnow():%Y-%m}")
    assert acme.by_outcome()["inference"] == pytest.approx(sum(x.cost for x in acme.inference))
    assert acme.total == pytest.approx(sum(x.cost for x in acme.lines) + sum(x.cost for x in acme.inference))

    proc = run_mf("usage", "--tenant", "acme", "--json")
    assert proc.returncode == 0, proc.stderr
    assert any(x["model"] == "tickets" and x["rows"] == after["acme"]["tickets"][1]
               for x in json.loads(proc.stdout)["inference"])
    proc = run_mf("usage", "--tenant", "acme")
    assert proc.returncode == 0 and "tickets@1" in proc.stdout and "inference" in proc.stdout


@pytest.mark.slow
def test_mf_serve_command_serves_and_meters(models, review_texts, tenants):
    before = served("acme").get("reviews", (0, 0, 0.0))  # earlier tests in this module metered `reviews` too
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "serve", "--models", "reviews@1",
                             "--port", str(port), "--max-batch-size", "8", "--max-queue-delay-us", "500",
                             "--preferred-batch-size", "4,8", "--auth"],
                            cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "mf serve did not become ready"
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {tenants['acme']}"}
        assert httpx.get(f"{url}/v2/models/reviews/ready", headers=headers).status_code == 200  # preloaded
        config = httpx.get(f"{url}/v2/models/reviews/config", headers=headers).json()
        assert config["max_batch_size"] == 8 and config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
        curl = subprocess.run(["curl", "-sS", "-H", f"Authorization: Bearer {tenants['acme']}", "-d",
                               json.dumps(infer_doc(review_texts[:2])), f"{url}/v2/models/reviews/infer"],
                              capture_output=True, text=True, timeout=30)
        assert json.loads(curl.stdout)["model_name"] == "reviews", curl.stdout + curl.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "mf serve: http://127.0.0.1" in stderr
    after = served("acme")["reviews"]
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)  # the one request of two rows, metered at exit

    bad = run_mf("serve", "--models", "nope", "--port", str(port))
    assert bad.returncode == 2 and "no model 'nope'" in bad.stderr
    bad = run_mf("serve", "--max-batch-size", "4", "--preferred-batch-size", "8")
    assert bad.returncode == 2 and "preferred batch sizes [8]" in bad.stderr
