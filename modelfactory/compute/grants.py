"""What an operator lets a tenant's commands do beyond the default sandbox: today, use the network.

By default a tenant's command job runs in a fresh network namespace (compute/sandbox/): it can reach nothing, not the
control plane, not Ray, not the database. `mf tenants set T --network` grants it the machine's network; the worker
reads the grant when it starts each attempt, so a revoked grant holds from the next attempt on.

A table of its own, so databases made before it only gain a table (create_all), never an ALTER.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from ..store import Base, engine, utcnow

_created: set[str] = set()


class TenantGrant(Base):
    __tablename__ = "tenant_grants"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    network: Mapped[bool] = mapped_column(Boolean, default=False)
    updated: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


def _ensure() -> None:
    e = engine()
    key = str(e.url)
    if key not in _created:
        TenantGrant.__table__.create(e, checkfirst=True)
        _created.add(key)


def network_granted(tenant: str) -> bool:
    """Whether `tenant`'s commands may use the network (False unless an operator granted it)."""
    from .tables import pool_read

    _ensure()
    with pool_read() as s:
        row = s.get(TenantGrant, tenant)
        return bool(row and row.network)


def set_network(tenant: str, allowed: bool) -> None:
    from .tables import pool_tx

    _ensure()
    with pool_tx() as s:
        row = s.get(TenantGrant, tenant)
        if row is None:
            row = TenantGrant(tenant=tenant)
            s.add(row)
        row.network, row.updated = bool(allowed), utcnow()
