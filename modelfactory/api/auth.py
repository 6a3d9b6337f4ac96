"""Who is calling: `Authorization: Bearer <api key>` -> a Principal (a tenant, or an admin). Keys are looked up
on every request (a revoked key fails at once). The dashboard sends the same header from JavaScript."""

from __future__ import annotations

from fastapi import Request

from ..compute.tenants import Principal, principal_for_key
from ..errors import NotFound
from .errors import Forbidden, Unauthorized


def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    p = principal_for_key(key.strip())
    if p is None:
        raise Unauthorized("invalid or revoked API key")
    return p


def admin_only(p: Principal) -> None:
    if not p.admin:
        raise Forbidden("this needs an admin key")


def visible(p: Principal, owner: str, what: str) -> None:
    """Someone else's resource is reported as missing (404), so names do not leak across tenants."""
    if not p.may_see(owner):
        raise NotFound(f"no {what}")


def tenant_filter(p: Principal, asked: str | None) -> str | None:
    """The tenant a listing is restricted to: a tenant sees itself (asking for another is 403); an admin sees the
    tenant it asks for, or everyone (None)."""
    if p.admin:
        return asked
    if asked is not None and asked != p.tenant:
        raise Forbidden(f"a key of tenant '{p.tenant}' cannot see tenant '{asked}'")
    return p.tenant
