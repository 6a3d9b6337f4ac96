"""Fuzz the servers from their own OpenAPI schemas (schemathesis, property-based): whatever a client sends to any
route, with an admin key or a tenant's, the answer is never a 5xx. Both generation modes run: positive (requests
that fit the schema) and negative (schema-violating ones: wrong types, missing required fields, malformed bodies),
which must also be refused with a 4xx, never accepted (schemathesis' `negative_data_rejection` check).

Bounded: a fixed number of examples per operation, against real uvicorn servers on 127.0.0.1:
- the control plane, with a tenant, a dataset, a model, a queued order and a job in place, so that ids and names
  resolve to something now and then;
- `mf serve` (OIP v2), with a registry that holds a model of every discovered task family (a generative adapter
  included, which `mf serve` must answer with a 4xx, not a 500); its infer bodies, which its schema leaves open,
  are fuzzed separately with malformed JSON and tensors of every wrong shape and type;
- `mf serve-llm` (OpenAI-compatible) on a tiny Llama with that adapter: its schema is completed with the chat and
  completion request bodies (from the server's own pydantic models), `model` drawn from what it serves. Its bodies
  are parsed leniently, as OpenAI clients expect (a "0.5" for a number is taken), so there only "never a 5xx" is
  checked in both modes."""

# ruff: noqa: F811  (pytest fixtures imported from test_serve_support are redefined as parameters)
from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection

from modelfactory import tasks
from modelfactory.accounts.tenants import add_tenant
from modelfactory.api import create_app
from modelfactory.compute import jobs as pool_jobs
from modelfactory.compute.jobs import Spec
from modelfactory.serve import ServeSettings
from modelfactory.serve.llm import LLMSettings
from modelfactory.serve.llm import create_app as create_llm_app
from modelfactory.tasks.lm_common import TASK as LLM_TASK

from .llm_support import llama_adapters, lm_tokenizer_dir, register_adapter, tiny_llama  # noqa: F401 (fixtures)
from .test_serve_support import (  # noqa: F401 (fixtures)
    IMAGE_TASK,
    TEXT_TASK,
    LiveServer,
    _test_database,
    image_model_dir,
    mf_home,
    register,
    text_model_dir,
)

pytestmark = pytest.mark.slow
ADMIN = "mfk_fuzz-admin"
EXAMPLES = 25
LLM_BASE = "tiny-llama"
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


@pytest.fixture(scope="module")
def admin_env(mf_home):
    mp = pytest.MonkeyPatch()
    mp.setenv("MF_ADMIN_KEY", ADMIN)
    mp.setenv("MF_UPLOAD_MAX_MB", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def keys(admin_env, text_model_dir, image_model_dir, llama_adapters):
    """A tenant and a registry with a real model of every task family (a LoRA adapter on the tiny Llama for the
    generative one), and a queued job."""
    _, key = add_tenant("acme")
    register("fuzzed", text_model_dir, TEXT_TASK, tenant="acme")
    register("digits", image_model_dir, IMAGE_TASK, tenant="acme")
    register_adapter(f"gen-{LLM_TASK}", llama_adapters["a0"], tenant="acme")
    assert {TEXT_TASK, IMAGE_TASK, LLM_TASK} == set(tasks.names()), "give the fuzz a real model of every family"
    pool_jobs.submit("acme", Spec(kind="command", payload={"argv": ["true"], "env": {}}, name="fuzz"))
    return {"admin": ADMIN, "tenant": key}


@pytest.fixture(scope="module")
def control_plane(keys):
    server = LiveServer(app=create_app())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def oip(keys):
    server = LiveServer(ServeSettings(auth=True, meter_interval_s=3600))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llm(keys, tiny_llama):
    server = LiveServer(app=create_llm_app(LLMSettings(base=str(tiny_llama), base_name=LLM_BASE, max_batch=8,
                                                       auth=True, meter_interval_s=3600)))
    yield server
    server.stop()


def llm_schema(server) -> dict:
    """serve-llm's OpenAPI document with the chat and completion bodies it reads by hand put in, `model` one of
    the names it serves (the base, the adapter, an unknown one)."""
    from pydantic.json_schema import models_json_schema

    from modelfactory.serve.llm.openai_api import ChatCompletionRequest, CompletionRequest

    doc = json.loads(json.dumps(server.app.openapi()))
    _, defs = models_json_schema([(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
                                 ref_template="#/components/schemas/{model}")
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.get("$defs", {}))
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [LLM_BASE, f"gen-{LLM_TASK}", "nope"]}
        schemas[name]["properties"]["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": 64}
    for path, name in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        doc["paths"][path]["post"]["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
    return doc


def fuzz_schema(url: str, keys: dict[str, str], mode: GenerationMode, document: dict | None = None,
                reject_negative: bool = True) -> tuple[int, list[int], dict[str, str]]:
    """(operations fuzzed, statuses, failures by operation) of fuzzing every operation of the server's OpenAPI
    schema. In negative mode an operation whose schema nothing can violate (no parameters, or only free strings in
    the path) has no negative case: it is not counted."""
    if document is None:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    else:
        schema = schemathesis.openapi.from_dict(document)
    negative = mode is GenerationMode.NEGATIVE and reject_negative
    checks = [not_a_server_error] + ([negative_data_rejection] if negative else [])
    failures: dict[str, str] = {}
    operations, calls = 0, []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            for key in keys.values():
                response = case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                                  checks=checks, timeout=60)
                calls.append(response.status_code)

        try:
            fuzz()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, f"{op.method.upper()} {op.path}: no positive case"
            continue
        except Exception as e:  # hypothesis re-raises the shrunk failing example's error
            failures[f"{op.method.upper()} {op.path}"] = f"{type(e).__name__}: {str(e)[:2000]}"
        operations += 1
    return operations, calls, failures


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_no_control_plane_route_answers_5xx(control_plane, keys, mode):
    operations, calls, failures = fuzz_schema(control_plane.url, keys, mode)
    assert operations >= (20 if mode is GenerationMode.POSITIVE else 10)  # it did fuzz every route (that it can)
    assert len(calls) >= operations * 2
    print(f"{mode.value}: {len(calls)} requests over {operations} operations; statuses {sorted(set(calls))}")
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= c < 500 for c in calls)


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_no_mf_serve_route_answers_5xx(oip, keys, mode):
    operations, calls, failures = fuzz_schema(oip.url, keys, mode)
    assert operations >= (15 if mode is GenerationMode.POSITIVE else 1) and len(calls) >= operations * 2
    print(f"{mode.value}: {len(calls)} requests over {operations} operations; statuses {sorted(set(calls))}")
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())


@pytest.mark.parametrize("mode", MODES, ids=[m.value for m in MODES])
def test_no_mf_serve_llm_route_answers_5xx(llm, keys, mode):
    operations, calls, failures = fuzz_schema(llm.url, keys, mode, llm_schema(llm), reject_negative=False)
    assert operations >= (6 if mode is GenerationMode.POSITIVE else 2) and len(calls) >= operations * 2
    print(f"{mode.value}: {len(calls)} requests over {operations} operations; statuses {sorted(set(calls))}")
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
    if mode is GenerationMode.POSITIVE:
        assert 200 in calls  # real generations ran, not only refusals


# --- mf serve's infer bodies, which its OpenAPI schema leaves open --------------------------------------------
DATATYPES = ["BYTES", "UINT8", "FP32", "INT64", "BOOL", "FP16", "nope", ""]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["text", "image", "x", ""]),
     "shape": st.one_of(st.lists(st.integers(-3, 40), max_size=5), json_values),
     "datatype": st.one_of(st.sampled_from(DATATYPES), json_values)},
    optional={"data": st.one_of(st.lists(scalars, max_size=12), json_values),
              "parameters": st.one_of(st.dictionaries(st.sampled_from(["binary_data_size", "content_type"]),
                                                      json_values, max_size=2), json_values)})
documents = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3)},
                          optional={"outputs": st.one_of(st.lists(st.fixed_dictionaries(
                              {"name": st.sampled_from(["label", "probabilities", "nope"])},
                              optional={"parameters": json_values}), max_size=3), json_values),
                              "id": json_values, "parameters": json_values}),
    json_values)
bodies = st.one_of(documents.map(lambda d: json.dumps(d, allow_nan=True).encode()), st.binary(max_size=300))


def test_mf_serve_infer_never_answers_5xx_to_a_malformed_body(oip, keys):
    models = [m["name"] for m in httpx.post(f"{oip.url}/v2/repository/index",
                                            headers={"Authorization": f"Bearer {keys['admin']}"}).json()]
    models += [f"gen-{LLM_TASK}"]  # the generative adapter: not listed, and never a 5xx
    statuses: list[int] = []
    with httpx.Client(base_url=oip.url, timeout=60, headers={"Authorization": f"Bearer {keys['tenant']}"}) as http:

        @given(model=st.sampled_from(models), body=bodies,
               header=st.one_of(st.none(), st.integers(-5, 400).map(str),
                                 st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=6)))
        @settings(max_examples=300, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def infer(model, body, header):
            headers = {"Content-Type": "application/json"}
            if header is not None:
                headers["Inference-Header-Content-Length"] = header
            r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            statuses.append(r.status_code)
            assert r.status_code < 500, (model, body[:300], header, r.status_code, r.text[:500])
            assert "error" in r.json() if r.status_code >= 400 else r.status_code == 200

        infer()
    assert len(statuses) >= 300 and any(400 <= s < 500 for s in statuses)
