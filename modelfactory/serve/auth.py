"""Optional per-tenant access for `mf serve` and `mf serve-llm`: the caller's key -> its tenant (accounts.auth,
the rules every server shares), which may only see and call its own models (a registry version's `tenant`);
another tenant's model answers 404, exactly like a model that does not exist, so names do not leak across
tenants. An admin key sees every tenant's models, like a server without auth."""

from __future__ import annotations

import asyncio

from ..accounts.auth import Unauthorized, authenticate, cached

__all__ = ["Unauthorized", "caller_tenant"]


async def caller_tenant(enabled: bool, header: str | None) -> str | None:
    """The tenant whose models the caller may use: None when auth is off or for an admin key (all of them).
    Raises Unauthorized without a valid key. Reads the database off the event loop, and only on a cache miss."""
    if not enabled:
        return None
    p = cached(header) or await asyncio.to_thread(authenticate, header)
    return p.tenant
