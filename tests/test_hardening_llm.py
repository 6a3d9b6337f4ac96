"""Issue 17, items 5, 6 and 10 for `mf serve-llm`. Each test attacks one guarantee: adapters whose names read
alike (`acme.bot` of acme, `acme_bot` of globex) never share an adapter slot, so neither tenant is answered by the
other's weights; with auth /metrics needs an admin key and /health names no adapters; only an authenticated tenant
is billed; a chunked body is held to the body limit."""

# ruff: noqa: F811  (pytest fixtures imported from the support modules are redefined as parameters)
from __future__ import annotations

import httpx
import openai
import pytest

from modelfactory import registry
from modelfactory.accounts.tenants import add_tenant
from modelfactory.serve.llm import LLMSettings, create_app
from modelfactory.serve.llm.adapters import peft_name

from .llm_support import (  # noqa: F401 (fixtures)
    llama_adapters,
    lm_tokenizer_dir,
    register_adapter,
    tiny_llama,
)
from .test_serve_support import LiveServer, _test_database, mf_home  # noqa: F401 (fixtures)

BASE = "tiny-llama"
ADMIN_KEY = "mfk_hardening-llm-admin"
GREEDY = {"temperature": 0, "max_tokens": 12}


def chat(client, model: str):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Tell me a story."}],
                                          **GREEDY).choices[0].message.content


@pytest.fixture(scope="module")
def setup(mf_home, llama_adapters):
    register_adapter("acme.bot", llama_adapters["a0"], tenant="acme")
    register_adapter("acme_bot", llama_adapters["a1"], tenant="globex")
    (_, acme), (_, globex) = add_tenant("acme"), add_tenant("globex")
    return {"acme": acme, "globex": globex}


def test_adapter_keys_are_unique_per_tenant_name_and_version(setup):
    a, b = registry.resolve("acme.bot"), registry.resolve("acme_bot")
    assert peft_name(a) != peft_name(b)
    assert "." not in peft_name(a) and "." not in peft_name(b)  # a module-dict key


def test_look_alike_adapters_of_two_tenants_answer_with_their_own_weights(setup, tiny_llama, monkeypatch):
    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN_KEY)
    own = {}
    for name, tenant in (("acme.bot", "acme"), ("acme_bot", "globex")):  # each alone on a fresh server
        s = LiveServer(app=create_app(LLMSettings(base=str(tiny_llama), base_name=BASE, auth=True,
                                                  meter_interval_s=3600)))
        try:
            own[name] = chat(openai.OpenAI(base_url=s.url + "/v1", api_key=setup[tenant], max_retries=0), name)
        finally:
            s.stop()
    assert own["acme.bot"] != own["acme_bot"]  # different random adapters
    s = LiveServer(app=create_app(LLMSettings(base=str(tiny_llama), base_name=BASE, auth=True,
                                              meter_interval_s=3600, max_body_bytes=1 << 20)))
    try:
        acme = openai.OpenAI(base_url=s.url + "/v1", api_key=setup["acme"], max_retries=0)
        globex = openai.OpenAI(base_url=s.url + "/v1", api_key=setup["globex"], max_retries=0)
        assert chat(acme, "acme.bot") == own["acme.bot"]
        assert chat(globex, "acme_bot") == own["acme_bot"]  # not acme's adapter, loaded first under a shared key
        assert chat(acme, "acme.bot") == own["acme.bot"]
        llm = s.app.state.llm
        assert len(llm.pool.loaded) == 2

        # item 6: metrics and listings behind auth; billing only to the authenticated caller
        with httpx.Client(base_url=s.url, timeout=60) as http:
            assert http.get("/metrics").status_code == 401
            r = http.get("/metrics", headers={"Authorization": f"Bearer {setup['acme']}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            assert http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
            health = http.get("/health").json()
            assert health["adapters_loaded"] == 2 and "acme" not in str(health)
            assert http.get("/v1/models").status_code == 401
            # item 10: a chunked body past the limit is refused while it streams
            r = http.post("/v1/completions", content=(b" " * 65536 for _ in range(256)),
                          headers={"Authorization": f"Bearer {setup['acme']}", "content-type": "application/json"})
            assert r.status_code == 413, r.text
        admin = openai.OpenAI(base_url=s.url + "/v1", api_key=ADMIN_KEY, max_retries=0)
        chat(admin, "acme.bot")
        billed = {(t, m) for (t, m, _) in llm.meter.pending()}
        assert billed == {("acme", "acme.bot"), ("globex", "acme_bot"), ("(admin)", "acme.bot")}
        assert chat(acme, BASE)  # still serving
    finally:
        s.stop()
