"""The OpenAI-compatible generation server (`mf serve-llm`): many LoRA adapters on one tiny random base, served
together by continuous batching. The official `openai` client and raw HTTP talk to a real uvicorn server; the
engine is also driven directly to check that a mixed-adapter batch computes exactly what each request alone does.
"""

# ruff: noqa: F811  (pytest fixtures imported from the support modules are redefined as parameters)
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest

from modelfactory import registry
from modelfactory.serve.llm import LLMSettings, create_app
from modelfactory.serve.llm.adapters import peft_name

from .llm_support import (  # noqa: F401 (fixtures)
    llama_adapters,
    lm_tokenizer_dir,
    make_adapter,
    register_adapter,
    tiny_gpt2,
    tiny_llama,
)
from .test_serve_support import LiveServer, _test_database, metric, mf_home  # noqa: F401 (fixtures)

BASE = "tiny-llama"
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def adapters(mf_home, tiny_llama, tiny_gpt2, llama_adapters, tmp_path_factory):
    """acme: writer (a0 = @1, prod; a3 = @2), summarizer (a1); globex: poet (a2); acme's gpt2-bot is trained on
    another base and reviews is not an adapter at all."""
    register_adapter("writer", llama_adapters["a0"], aliases=("prod",))
    register_adapter("writer", llama_adapters["a3"])
    register_adapter("summarizer", llama_adapters["a1"])
    register_adapter("poet", llama_adapters["a2"], tenant="globex")
    other = tmp_path_factory.mktemp("gpt2-adapter") / "g"
    make_adapter(tiny_gpt2, other, seed=7)
    register_adapter("gpt2-bot", other)
    clf = tmp_path_factory.mktemp("clf")
    (clf / "model.onnx").write_bytes(b"not really")
    register_adapter("reviews", clf, task="text-classification")
    return llama_adapters


@pytest.fixture(scope="module")
def server(adapters, tiny_llama):
    s = LiveServer(app=create_app(LLMSettings(base=str(tiny_llama), base_name=BASE, max_batch=8, alias_ttl_s=0.2,
                                              meter_interval_s=3600, server_id="test-llm")))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def chat(client, model: str, text: str = "Tell me about the film.", **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **{**GREEDY,
                                                                                                        **kw})


# --- adapters: artifacts and batching -------------------------------------------------------------------------
def test_adapter_save_load_round_trip_gives_identical_logits(tiny_llama, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    made = make_adapter(tiny_llama, tmp_path / "ad", seed=5)
    meta = json.loads((tmp_path / "ad" / "mf_model.json").read_text())
    assert meta == {"task": "causal-lm", "kind": "lora-adapter", "base_model": str(tiny_llama), "max_length": 128}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "ad").iterdir()}
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "ad").eval()
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    with torch.no_grad():
        a, b = made(input_ids=ids).logits, loaded(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(input_ids=ids).logits
    assert torch.equal(a, b)
    assert (a - plain).abs().max() > 0.1  # the adapter really changes the output


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_adapter_batch_equals_each_request_alone(arch, tiny_llama, tiny_gpt2, llama_adapters, tmp_path):
    """Through the engine: requests for three adapters and the bare base, with prompts of different lengths and
    joining at different steps, give the same greedy tokens as each run alone (and as transformers' generate on
    the merged adapter)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelfactory.serve.llm.engine import Engine, SamplingParams
    from modelfactory.serve.llm.host import BASE as BARE
    from modelfactory.serve.llm.host import AdapterHost

    base_dir = tiny_llama if arch == "llama" else tiny_gpt2
    paths = dict(llama_adapters)
    if arch == "gpt2":
        for i in range(3):
            make_adapter(tiny_gpt2, tmp_path / f"g{i}", seed=i)
        paths = {f"a{i}": tmp_path / f"g{i}" for i in range(3)}
    tok = AutoTokenizer.from_pretrained(base_dir)
    host = AdapterHost(AutoModelForCausalLM.from_pretrained(base_dir).eval())
    for name in ("a0", "a1", "a2"):
        host.load(name, str(paths[name]))
    engine = Engine(host, tok, max_batch=8, eos_token_ids=[tok.eos_token_id])
    engine.start()
    prompts = ["The film was", "a", "I did not like the way this movie ended, because the", "Plot: two friends"]
    names = [BARE, "a0", "a1", "a2"]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)

    async def one(prompt, adapter, delay=0.0):
        await asyncio.sleep(delay)
        g = engine.submit(tok(prompt)["input_ids"], adapter, params)
        return [await g.text(), g.completion_tokens, g.finish_reason]

    async def run():
        alone = [await one(p, a) for p, a in zip(prompts, names)]
        together = await asyncio.gather(*[one(p, a) for p, a in zip(prompts, names)])
        staggered = await asyncio.gather(*[one(p, a, 0.005 * i) for i, (p, a) in enumerate(zip(prompts, names))])
        return alone, together, staggered

    try:
        alone, together, staggered = asyncio.run(run())
    finally:
        engine.close()
    assert alone == together == staggered
    assert all(r[1:] == [16, "length"] for r in alone)
    assert len({r[0] for r in alone}) == 4  # each adapter answers differently
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), paths["a1"]).eval()
    merged = merged.merge_and_unload()
    ids = tok(prompts[2], return_tensors="pt")
    with torch.no_grad():
        out = merged.generate(**ids, max_new_tokens=16, do_sample=False, suppress_tokens=[tok.eos_token_id],
                              pad_token_id=tok.eos_token_id)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:]) == alone[2][0]


def test_incremental_detokenizer_never_splits_a_character(lm_tokenizer_dir):
    from transformers import AutoTokenizer

    from modelfactory.serve.llm.text import IncrementalDetokenizer

    tok = AutoTokenizer.from_pretrained(lm_tokenizer_dir)
    text = " naïve café — 日本語 😀🎬 ß ✓"
    ids = tok(text)["input_ids"]
    assert len(ids) > 8
    d = IncrementalDetokenizer(tok, tok("Once")["input_ids"])
    pieces = [d.step(t) for t in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert any(p == "" for p in pieces)  # some tokens end mid-character and wait for the next one


# --- the OpenAI API through the official client ----------------------------------------------------------------
def test_models_list_base_and_visible_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == BASE
    assert {"writer", "summarizer", "poet"} <= set(ids)  # no auth: everything for this base
    assert "gpt2-bot" not in ids and "reviews" not in ids  # another base / not an adapter
    assert client.models.retrieve("writer").owned_by == "acme"


def test_chat_and_completions_with_the_openai_client(client):
    r = chat(client, "writer", max_tokens=10)
    assert r.object == "chat.completion" and r.model == "writer@1" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "length"
    assert r.usage.completion_tokens == 10 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 10
    # adapters differ from each other and from the base; a version and an alias resolve like the registry does
    base = chat(client, BASE, max_tokens=10).choices[0].message.content
    other = chat(client, "summarizer", max_tokens=10).choices[0].message.content
    assert len({base, choice.message.content, other}) == 3
    assert chat(client, "writer@prod", max_tokens=10).choices[0].message.content == choice.message.content
    v2 = chat(client, "writer@2", max_tokens=10)
    assert v2.model == "writer@2" and v2.choices[0].message.content != choice.message.content
    # max_completion_tokens is the newer name of max_tokens
    assert chat(client, "writer", max_tokens=None, max_completion_tokens=3).usage.completion_tokens == 3

    c = client.completions.create(model="summarizer", prompt="The movie", **GREEDY)
    assert c.object == "text_completion" and c.choices[0].finish_reason == "length" and c.choices[0].text
    assert c.usage.completion_tokens == 12 and c.usage.total_tokens == c.usage.prompt_tokens + 12


def test_streaming_with_the_openai_client_matches_non_streaming(client):
    full = chat(client, "summarizer").choices[0].message.content
    chunks = list(chat(client, "summarizer", stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12

    text = client.completions.create(model=BASE, prompt="Two friends", **GREEDY).choices[0].text
    stream = list(client.completions.create(model=BASE, prompt="Two friends", stream=True, **GREEDY))
    assert "".join(c.choices[0].text for c in stream) == text
    assert stream[-1].choices[0].finish_reason == "length"


def test_stop_strings_seed_and_n(client):
    full = chat(client, "writer", max_tokens=20).choices[0].message.content
    stop = full[6:9]
    assert len(stop) == 3
    r = chat(client, "writer", max_tokens=20, stop=[stop, "zzzz-never"])
    cut = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and full.startswith(cut) and stop not in cut
    assert cut == full[:full.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, "writer", max_tokens=20, stop=stop,
                                                                      stream=True) if c.choices)
    assert streamed == cut

    sampled = [chat(client, "writer", temperature=1.0, top_p=0.9, seed=s, max_tokens=16).choices[0].message.content
               for s in (3, 3, 4)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "writer", n=2)
    assert e.value.body["param"] == "n"


def test_a_top_p_below_float32_range_keeps_the_likeliest_token(client):
    """Found by the fuzzer: top_p=5e-324 is 0.0 in float32, so the nucleus filter dropped every token and the
    prefill's sampling error left its rows in the running batch (the next decode step failed everyone). The
    likeliest token is always kept, so such a request answers greedily, and the server keeps serving."""
    greedy = chat(client, "writer", max_tokens=12).choices[0].message.content
    tiny = chat(client, "writer", temperature=1.0, top_p=5e-324, seed=1, max_tokens=12).choices[0].message.content
    assert tiny == greedy
    assert chat(client, "writer", max_tokens=12).choices[0].message.content == greedy


def test_concurrent_requests_for_different_adapters_batch_together(server, client):
    """Eight requests over three adapters and the base at once: each answers what it answers alone, and the
    engine ran them in shared decode steps."""
    models = [BASE, "writer", "summarizer", "poet"] * 2
    alone = {m: chat(client, m, max_tokens=24).choices[0].message.content for m in set(models)}
    before = metric(http_metrics(server), "mf_llm_batch_size_bucket", step="decode", le="2.0")
    total_before = metric(http_metrics(server), "mf_llm_batch_size_count", step="decode")
    results: dict[int, str] = {}

    def call(i: int, m: str) -> None:
        results[i] = chat(client, m, max_tokens=24).choices[0].message.content

    threads = [threading.Thread(target=call, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(len(models))] == [alone[m] for m in models]
    text = http_metrics(server)
    steps = metric(text, "mf_llm_batch_size_count", step="decode") - total_before
    small = metric(text, "mf_llm_batch_size_bucket", step="decode", le="2.0") - before
    assert steps < 8 * 23 and small < steps  # far fewer steps than one per token per request


def eventually(check, timeout: float = 60.0) -> None:  # a hang guard, not a timing assert
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def http_metrics(server) -> str:
    return httpx.get(server.url + "/metrics").text


def test_a_client_that_leaves_mid_stream_frees_its_row_and_adapter(server, http):
    llm = server.app.state.llm
    before = metric(http_metrics(server), "mf_llm_generated_tokens_total", model="summarizer@1")
    body = {"model": "summarizer", "prompt": "x", "stream": True, "max_tokens": 250, "temperature": 0,
            "ignore_eos": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        eventually(lambda: llm.engine.active == 1)
    eventually(lambda: llm.engine.active == 0 and not any(llm.pool._pins.values()))
    generated = metric(http_metrics(server), "mf_llm_generated_tokens_total", model="summarizer@1") - before
    assert 0 < generated < 250


# --- the wire format -----------------------------------------------------------------------------------------
def sse_events(body: str) -> list[str]:
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), body
    return [e[len("data: "):] for e in events]


def test_sse_framing_of_chat_and_completion_streams(http):
    r = http.post("/v1/chat/completions", json={"model": "writer", "messages": [{"role": "user", "content": "Hi"}],
                                                "stream": True, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all("usage" not in c for c in chunks)

    r = http.post("/v1/completions", json={"model": BASE, "prompt": "Hi", "stream": True, "max_tokens": 4,
                                           "temperature": 0, "stream_options": {"include_usage": True}})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


# --- bad input ------------------------------------------------------------------------------------------------
def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("doc,param", [
    ({"model": "writer", "messages": "hello"}, "messages"),
    ({"model": "writer", "messages": []}, "messages"),
    ({"model": "writer", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "writer", "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": "writer", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "writer", "messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
    ({"model": "writer", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "writer", "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 5}, "stop"),
    ({"model": "writer", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
])
def test_malformed_requests_are_400_naming_the_field(http, doc, param):
    err = error_of(http.post("/v1/chat/completions", json=doc), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_errors_in_openai_shape(http, client):
    err = error_of(http.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "hi"}]}), 404)
    assert err["code"] == "model_not_found" and "nope" in err["message"] and err["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="writer@9", prompt="x")
    err = error_of(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}),
                   400)
    assert "JSON" in err["message"]
    error_of(http.post("/v1/completions", json=["a list"]), 400)
    err = error_of(http.post("/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": 300}), 400)
    assert err["code"] == "context_length_exceeded" and "256" in err["message"]
    error_of(http.post("/v1/completions", json={"model": BASE, "prompt": "word " * 400}), 400)
    err = error_of(http.post("/v1/completions", json={"model": "gpt2-bot", "prompt": "hi"}), 400)
    assert "trained on base" in err["message"]
    err = error_of(http.post("/v1/completions", json={"model": "reviews", "prompt": "hi"}), 400)
    assert "not a LoRA adapter" in err["message"]
    error_of(http.post("/v1/completions", json={"model": BASE, "prompt": [1, 2, 99999]}), 400)
    error_of(http.post("/v1/completions", json={"model": BASE, "prompt": ["a", "b"]}), 400)
    error_of(http.get("/v1/nothing"), 404)
    error_of(http.get("/v1/models/nope"), 404)


# --- adapters come and go, tenants, metering, metrics ----------------------------------------------------------
def test_lru_eviction_frees_adapters_from_the_peft_model(adapters, tiny_llama):
    s = LiveServer(app=create_app(LLMSettings(base=str(tiny_llama), base_name=BASE, max_adapters=2,
                                              meter_interval_s=3600)))
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        llm = s.app.state.llm
        first = chat(c, "writer").choices[0].message.content
        chat(c, "summarizer")
        assert llm.pool.loaded == ["writer@1", "summarizer@1"]
        chat(c, "poet")
        assert llm.pool.loaded == ["summarizer@1", "poet@1"]
        peft = llm.engine.host.peft
        want = {peft_name(registry.resolve(n)) for n in ("summarizer", "poet")}
        assert set(peft.peft_config) == want
        holders = {k for m in peft.modules() if hasattr(m, "lora_A") for k in m.lora_A}
        assert holders == want
        assert chat(c, "writer").choices[0].message.content == first  # reloaded on demand, same answer
        assert llm.pool.loaded == ["poet@1", "writer@1"]
        text = httpx.get(s.url + "/metrics").text
        assert metric(text, "mf_llm_adapters_loaded") == 2
        assert metric(text, "mf_llm_adapter_evictions_total") == 2 and metric(text, "mf_llm_adapter_loads_total") == 4
    finally:
        s.stop()


def test_tenants_see_and_call_only_their_own_adapters(adapters, tiny_llama):
    from modelfactory.accounts.tenants import add_tenant

    _, acme = add_tenant("acme")
    _, globex = add_tenant("globex")
    s = LiveServer(app=create_app(LLMSettings(base=str(tiny_llama), base_name=BASE, auth=True,
                                              meter_interval_s=3600)))
    try:
        a = openai.OpenAI(base_url=s.url + "/v1", api_key=acme, max_retries=0)
        g = openai.OpenAI(base_url=s.url + "/v1", api_key=globex, max_retries=0)
        assert {m.id for m in a.models.list().data} == {BASE, "writer", "summarizer"}
        assert {m.id for m in g.models.list().data} == {BASE, "poet"}
        assert chat(a, "writer").choices[0].message.content
        assert chat(g, "poet").choices[0].message.content
        assert chat(g, BASE).choices[0].message.content == chat(a, BASE).choices[0].message.content  # shared base
        with pytest.raises(openai.NotFoundError) as e:
            chat(g, "writer")
        assert "writer" in e.value.body["message"]
        with pytest.raises(openai.NotFoundError):
            g.models.retrieve("summarizer")
        with pytest.raises(openai.AuthenticationError):
            chat(openai.OpenAI(base_url=s.url + "/v1", api_key="mfk_wrong", max_retries=0), BASE)
        r = httpx.post(s.url + "/v1/completions", json={"model": BASE, "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    finally:
        s.stop()


def test_every_request_is_metered_into_the_ledger(server, client):
    from sqlalchemy import select

    from modelfactory.accounts.tables import InferenceUsage, accounts_read

    llm = server.app.state.llm
    llm.meter.flush()
    usages = [chat(client, "summarizer", max_tokens=5).usage, chat(client, "summarizer", max_tokens=7).usage,
              client.completions.create(model=BASE, prompt="Hello there", **GREEDY).usage]
    list(chat(client, "summarizer", max_tokens=4, stream=True))
    eventually(lambda: sum(w.requests for w in llm.meter.pending().values()) == 4)  # a stream ends after [DONE]
    assert llm.meter.flush() == 2
    with accounts_read() as s:
        rows = {(r.tenant, r.model, r.version): r for r in s.scalars(
            select(InferenceUsage).where(InferenceUsage.server == "test-llm").order_by(InferenceUsage.id.desc())
            .limit(2))}
    adapter = rows[("(anonymous)", "summarizer", 1)]  # no auth on this server: no tenant is billed
    assert adapter.requests == 3
    assert adapter.rows == usages[0].total_tokens + usages[1].total_tokens + usages[0].prompt_tokens + 4
    assert adapter.cpu_seconds > 0 and adapter.cost >= 0
    base = rows[("(anonymous)", BASE, 0)]
    assert base.requests == 1 and base.rows == usages[2].total_tokens


def test_metrics_count_requests_tokens_ttft_and_batches(server, client, http):
    def scrape():
        return http.get("/metrics").text

    before = scrape()
    chat(client, "writer", max_tokens=6)
    list(client.completions.create(model="writer", prompt="x", stream=True, max_tokens=3, temperature=0))
    http.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    eventually(lambda: metric(scrape(), "mf_llm_generated_tokens_total", model="writer@1")
               - metric(before, "mf_llm_generated_tokens_total", model="writer@1") == 9)
    after = scrape()

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("mf_llm_requests_total", model="writer@1", endpoint="chat", status="200") == 1
    assert delta("mf_llm_requests_total", model="writer@1", endpoint="completions", status="200") == 1
    assert delta("mf_llm_requests_total", model="", endpoint="chat", status="404") == 1
    assert delta("mf_llm_generated_tokens_total", model="writer@1") == 9
    assert delta("mf_llm_time_to_first_token_seconds_count", model="writer@1") == 2
    assert delta("mf_llm_batch_size_count", step="decode") >= 7
    assert metric(after, "mf_llm_adapters_loaded") >= 1


def test_gpt2_base_serves_chat(tiny_gpt2):
    s = LiveServer(app=create_app(LLMSettings(base=str(tiny_gpt2), meter_interval_s=3600)))
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        name = c.models.list().data[0].id
        assert name == tiny_gpt2.name
        r = chat(c, name, max_tokens=8)
        assert r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length"
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chat(c, name, max_tokens=8, stream=True))
        assert streamed == r.choices[0].message.content
    finally:
        s.stop()


@pytest.mark.slow
def test_cli_serve_llm(adapters, tiny_llama):
    """`mf serve-llm` refuses an adapter of another base before starting, and serves the OpenAI API."""
    import subprocess
    import sys

    from .conftest import REPO, run_mf
    from .test_serve_support import free_port

    bad = run_mf("serve-llm", "--base", str(tiny_llama), "--adapters", "gpt2-bot", timeout=120)
    assert bad.returncode != 0 and "trained on base" in bad.stderr and "Traceback" not in bad.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "serve-llm", "--base", str(tiny_llama),
                             "--base-name", BASE, "--port", str(port), "--adapters", "writer,summarizer@1",
                             "--max-adapters", "2"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health").json()["adapters_loaded"] == [
                    "writer@1", "summarizer@1"]
            except httpx.HTTPError:
                return False

        eventually(up, timeout=90)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert chat(c, "writer", max_tokens=4).usage.completion_tokens == 4
    finally:
        proc.terminate()
        proc.wait(30)
