"""Who is calling: `Authorization: Bearer <api key>` -> a Principal (a tenant, or an admin), by the rules every
server shares (accounts.auth). The dashboard sends the same header from JavaScript."""

from __future__ import annotations

from fastapi import Request

from ..accounts import auth
from ..accounts.tenants import Principal
from ..errors import NotFound
from .errors import Forbidden, TooManyRequests, Unauthorized


def principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or 401 (429 after too many failures from the caller's address)."""
    try:
        return auth.authenticate(request.headers.get("authorization"),
                                 request.client.host if request.client else None)
    except auth.Unauthorized as e:
        raise Unauthorized(str(e)) from None
    except auth.RateLimited as e:
        raise TooManyRequests(str(e), retry_after=e.retry_after) from None


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
