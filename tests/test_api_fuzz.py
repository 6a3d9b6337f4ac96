"""Fuzz the control plane from its own OpenAPI schema (schemathesis, property-based): whatever a client sends to
any route, with an admin key or a tenant's, the answer is never a 5xx. Bounded: a fixed number of examples per
operation, against a real uvicorn server on 127.0.0.1 with a tenant, a dataset, a model, a queued order and a
job in place, so that ids and names resolve to something now and then."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from modelfactory.accounts.tenants import add_tenant
from modelfactory.api import create_app
from modelfactory.compute import jobs as pool_jobs
from modelfactory.compute.jobs import Spec

from .test_serve_support import LiveServer, mf_home, register, text_model_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
ADMIN = "mfk_fuzz-admin"
EXAMPLES = 25


@pytest.fixture(scope="module")
def live(mf_home):  # noqa: F811
    mp = pytest.MonkeyPatch()
    mp.setenv("MF_ADMIN_KEY", ADMIN)
    mp.setenv("MF_UPLOAD_MAX_MB", "1")
    server = LiveServer(app=create_app())
    yield server
    server.stop()
    mp.undo()


@pytest.fixture(scope="module")
def keys(live, text_model_dir):  # noqa: F811
    _, key = add_tenant("acme")
    register("fuzzed", text_model_dir, "text-classification", tenant="acme")
    pool_jobs.submit("acme", Spec(kind="command", payload={"argv": ["true"], "env": {}}, name="fuzz"))
    return {"admin": ADMIN, "tenant": key}


def test_no_route_answers_5xx(live, keys):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    failures: dict[str, str] = {}
    operations, calls = 0, []
    for result in schema.get_all_operations():
        op = result.ok()
        operations += 1

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            for key in keys.values():
                response = case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {key}"},
                                                  checks=[not_a_server_error], timeout=60)
                calls.append(response.status_code)

        try:
            fuzz()
        except Exception as e:  # hypothesis re-raises the shrunk failing example's error
            failures[f"{op.method.upper()} {op.path}"] = str(e)[:2000]
    assert operations >= 20 and len(calls) >= operations * EXAMPLES  # it did fuzz every route
    print(f"{len(calls)} requests over {operations} operations; statuses {sorted(set(calls))}")
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
