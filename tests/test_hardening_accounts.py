"""Issue 17, item 7, through the control plane over real HTTP. Each test attacks one guarantee: priority 'urgent'
(which preempts other tenants) needs the operator's per-tenant grant; a tenant key cannot mint keys without
bound, and a tenant can revoke all its keys at once; failed authentication is rate-limited per address (and a
key already proven keeps working); a name held by another tenant is answered 404-style without naming who."""

from __future__ import annotations

import httpx
import pytest

from modelfactory.accounts import auth as accounts_auth
from modelfactory.api import create_app

from .test_serve_support import LiveServer

ADMIN = "mfk_hardening-accounts-admin"
ORDER = {"name": "o", "task": "text-classification", "data": {"dataset": "nothing-here"},
         "teacher": {"model": "scratch:none"}}


@pytest.fixture
def api(mf_home, monkeypatch):
    monkeypatch.setenv("MF_ADMIN_KEY", ADMIN)
    monkeypatch.setenv("MF_MAX_KEYS_PER_TENANT", "3")
    monkeypatch.setenv("MF_AUTH_MAX_FAILURES", "5")
    accounts_auth._failures.clear()
    server = LiveServer(app=create_app())
    yield server
    server.stop()
    accounts_auth._failures.clear()  # the limiter is per process: leave nothing to other tests


def client(api, key: str | None) -> httpx.Client:
    return httpx.Client(base_url=api.url + "/api/v1", headers={"Authorization": f"Bearer {key}"} if key else {},
                        timeout=60)


def tenant(admin: httpx.Client, name: str, **fields) -> str:
    r = admin.post("/tenants", json={"name": name, **fields})
    assert r.status_code == 201, r.text
    return r.json()["api_key"]


def test_urgent_needs_the_operators_grant(api):
    with client(api, ADMIN) as admin:
        key = tenant(admin, "acme")
        assert admin.get("/tenants/acme").json()["urgent"] is False
        with client(api, key) as acme:
            r = acme.post("/orders", params={"priority": "urgent"}, json=ORDER)
            assert r.status_code == 403 and "urgent" in r.json()["error"], r.text
            r = acme.post("/orders", params={"priority": "standard"}, json=ORDER)
            assert r.status_code == 404, r.text  # past the priority check: no such dataset
            assert admin.patch("/tenants/acme", json={"urgent": True}).json()["urgent"] is True
            r = acme.post("/orders", params={"priority": "urgent"}, json=ORDER)
            assert r.status_code == 404, r.text  # granted: now only the dataset is missing
            r = acme.patch("/tenants/acme", json={"urgent": True})  # a tenant cannot grant itself
            assert r.status_code == 403


def test_keys_per_tenant_are_capped_and_revoke_all_revokes_every_one(api):
    with client(api, ADMIN) as admin:
        key = tenant(admin, "acme")
        with client(api, key) as acme:
            extra = [acme.post("/tenants/acme/keys", json={"label": f"k{i}"}) for i in range(2)]
            assert [r.status_code for r in extra] == [201, 201]
            r = acme.post("/tenants/acme/keys", json={"label": "one too many"})
            assert r.status_code == 409 and "MF_MAX_KEYS_PER_TENANT" in r.json()["error"], r.text
            r = acme.delete("/tenants/acme/keys")
            assert r.status_code == 200 and len(r.json()) == 3
        for k in [key] + [r.json()["key"] for r in extra]:
            with client(api, k) as c:
                assert c.get("/me").status_code == 401
        assert admin.post("/tenants/acme/keys", json={"label": "fresh"}).status_code == 201
        with client(api, ADMIN) as admin2:
            assert admin2.delete("/tenants/globex/keys").status_code == 404


def test_failed_authentication_is_rate_limited_per_address(api):
    with client(api, ADMIN) as admin:
        proven = tenant(admin, "acme")
        fresh = tenant(admin, "globex")
    with client(api, proven) as c:
        assert c.get("/me").status_code == 200  # proven (cached) before the attack
    for i in range(5):
        with client(api, f"mfk_guess-{i}") as c:
            assert c.get("/me").status_code == 401
    with client(api, "mfk_guess-next") as c:
        r = c.get("/me")
        assert r.status_code == 429 and "retry in" in r.json()["error"], r.text
    with client(api, fresh) as c:  # not proven from here before: refused until the window passes
        assert c.get("/me").status_code == 429
    with client(api, proven) as c:
        assert c.get("/me").status_code == 200
    with client(api, None) as c:  # no key at all: 401 as ever (no key was tried)
        assert c.get("/me").status_code == 401


def test_a_name_held_by_another_tenant_is_answered_without_naming_it(api):
    with client(api, ADMIN) as admin:
        acme_key, globex_key = tenant(admin, "acme"), tenant(admin, "globex")
    with client(api, acme_key) as acme:
        r = acme.post("/datasets", data={"name": "reviews"},
                      files={"file": ("r.csv", b"text,label\n" + b"good,pos\nbad,neg\n" * 5, "text/csv")})
        assert r.status_code == 201, r.text
    with client(api, globex_key) as globex:
        r = globex.post("/datasets", data={"name": "reviews"},
                        files={"file": ("r.csv", b"text,label\na,b\n", "text/csv")})
        assert r.status_code == 404 and "acme" not in r.text and "another tenant" not in r.text, r.text
        assert globex.get("/datasets/reviews").status_code == 404
