"""Optional per-tenant access for `mf serve` and `mf serve-llm`: the caller's key -> its tenant (accounts.auth,
the rules every server shares), which may only see and call its own models (a registry version's `tenant`);
another tenant's model answers 404, exactly like a model that does not exist, so names do not leak across
tenants. An admin key sees every tenant's models, like a server without auth.

Safe defaults (issue 17): a server bound beyond loopback refuses to start without auth unless the operator says
`--insecure` (`check_bind`); with auth on, `/metrics` (which names every tenant's models) needs an admin key
(`require_admin`); and only an authenticated tenant is ever billed: calls without auth, or with an admin key, are
metered under `ANONYMOUS` / `ADMIN`, which no tenant can be named (`billed_to`)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from ..accounts.auth import RateLimited, Unauthorized, authenticate, cached
from ..errors import MFError

__all__ = ["ADMIN", "ANONYMOUS", "Forbidden", "RateLimited", "Unauthorized", "billed_to", "caller_tenant",
           "check_bind", "require_admin"]

ANONYMOUS = "(anonymous)"  # not a valid tenant name: usage no tenant is invoiced for
ADMIN = "(admin)"


class Forbidden(MFError):
    """A valid key that may not do this (HTTP 403)."""

    status = 403


async def caller_tenant(enabled: bool, header: str | None, client: str | None = None) -> str | None:
    """The tenant whose models the caller may use: None when auth is off or for an admin key (all of them).
    Raises Unauthorized without a valid key (RateLimited after too many failures from `client`, its address).
    Reads the database off the event loop, and only on a cache miss."""
    if not enabled:
        return None
    try:
        p = cached(header)
    except Unauthorized:
        p = None  # authenticate() counts the failure and answers it
    p = p or await asyncio.to_thread(authenticate, header, client)
    return p.tenant


async def require_admin(enabled: bool, header: str | None, client: str | None = None) -> None:
    """With auth on: Unauthorized without a valid key, Forbidden for a tenant's key. Nothing with auth off."""
    if enabled and await caller_tenant(True, header, client) is not None:
        raise Forbidden("this needs an admin key (it covers every tenant's models)")


def billed_to(enabled: bool, tenant: str | None) -> str:
    """Whose usage a call is: the caller's tenant; never a tenant for an anonymous (auth off) or admin call."""
    if tenant is not None:
        return tenant
    return ADMIN if enabled else ANONYMOUS


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_bind(host: str, auth: bool, insecure: bool, command: str) -> None:
    """Refuse (MFError) to serve beyond loopback without auth, unless the operator chose --insecure."""
    if auth or insecure or is_loopback(host):
        return
    raise MFError(f"{command}: refusing to listen on '{host}' without --auth: anyone who can reach it could call "
                  f"every tenant's models and be billed to none. Add --auth (tenant API keys), bind 127.0.0.1, or "
                  f"pass --insecure on a network you trust")
