"""One authentication for every server: `Authorization: Bearer <api key>` -> a `Principal` (a tenant, or an admin).

The control plane, `mf serve` and `mf serve-llm` all call `authenticate()`, so they agree on every rule:
- a tenant key speaks for its tenant; an admin key (no tenant, or `MF_ADMIN_KEY`) is accepted and sees everyone;
- answers are remembered for `CACHE_TTL_S` per process and database (a hot inference path does not read the
  database per request); a key revoked by this process fails at once, one revoked elsewhere within the TTL.
"""

from __future__ import annotations

import threading
import time

from ..config import settings
from ..errors import MFError
from .tenants import Principal, hash_key, principal_for_key

CACHE_TTL_S = 30.0
_MAX_ENTRIES = 10_000
_cache: dict[tuple[str, str], tuple[Principal | None, float]] = {}
_lock = threading.Lock()


class Unauthorized(MFError):
    """No valid API key: HTTP 401 on every server."""

    status = 401


def bearer(header: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header; Unauthorized when missing or malformed."""
    if not header:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return key.strip()


def _slot(key: str) -> tuple[str, str]:
    return settings().database_url, hash_key(key)


def cached(header: str | None) -> Principal | None:
    """The caller from the cache alone (never touches the database): None means `authenticate` must look it up.
    Raises Unauthorized for a bad header or a key known to be invalid."""
    slot = _slot(bearer(header))
    with _lock:
        hit = _cache.get(slot)
    if hit is None or hit[1] <= time.monotonic():
        return None
    if hit[0] is None:
        raise Unauthorized("invalid or revoked API key")
    return hit[0]


def authenticate(header: str | None) -> Principal:
    """The caller, or Unauthorized. May read the database (call it off an event loop)."""
    p = cached(header)
    if p is not None:
        return p
    key = bearer(header)
    p = principal_for_key(key)
    with _lock:
        if len(_cache) > _MAX_ENTRIES:
            _cache.clear()
        _cache[_slot(key)] = (p, time.monotonic() + CACHE_TTL_S)
    if p is None:
        raise Unauthorized("invalid or revoked API key")
    return p


def forget(key_hash: str) -> None:
    """Drop a key from this process's cache (revocation)."""
    with _lock:
        for slot in [slot for slot in _cache if slot[1] == key_hash]:
            del _cache[slot]
