"""A database from before api_keys (each tenant's one key in tenants.api_key_hash, NOT NULL) still works: the key
becomes the tenant's first key row, the column goes, and new tenants can be added."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import inspect, text

from modelfactory.accounts.auth import authenticate
from modelfactory.accounts.tenants import add_tenant, hash_key, list_tenants
from modelfactory.store import engine


def test_a_database_from_before_api_keys_keeps_its_keys_and_loses_the_column(mf_home):
    eng = engine()
    serial = "SERIAL" if eng.dialect.name == "postgresql" else "INTEGER"
    with eng.begin() as conn:  # the tenants table as it was before api_keys existed
        conn.execute(text("DROP TABLE tenants"))
        conn.execute(text(f"CREATE TABLE tenants (id {serial} PRIMARY KEY, name VARCHAR(100) UNIQUE, "
                          "api_key_hash VARCHAR(64) NOT NULL UNIQUE, weight FLOAT, cpu_hours_month FLOAT, "
                          "gpu_hours_month FLOAT, max_slots INTEGER, created TIMESTAMP)"))
        conn.execute(text("INSERT INTO tenants (name, api_key_hash, weight, created) VALUES (:n, :h, 2.0, :c)"),
                     {"n": "oldco", "h": hash_key("mfk_old-key"), "c": dt.datetime(2026, 1, 1)})

    assert authenticate("Bearer mfk_old-key").tenant == "oldco"
    _, key = add_tenant("newco")
    assert authenticate(f"Bearer {key}").tenant == "newco"
    assert [(t.name, t.weight) for t in list_tenants()] == [("newco", 1.0), ("oldco", 2.0)]
    assert "api_key_hash" not in {c["name"] for c in inspect(engine()).get_columns("tenants")}
