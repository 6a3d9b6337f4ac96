"""One authentication for every server: `Authorization: Bearer <api key>` -> a `Principal` (a tenant, or an admin).

The control plane, `mf serve` and `mf serve-llm` all call `authenticate()`, so they agree on every rule:
- a tenant key speaks for its tenant; an admin key (no tenant, or `MF_ADMIN_KEY`) is accepted and sees everyone;
- answers are remembered for `CACHE_TTL_S` per process and database (a hot inference path does not read the
  database per request); a key revoked by this process fails at once, one revoked elsewhere within the TTL;
- failed authentication is rate-limited per client address: after `MF_AUTH_MAX_FAILURES` (default 20) failures
  in `FAILURE_WINDOW_S`, that address gets `RateLimited` (HTTP 429) until the window passes, without a database
  lookup — guessing keys costs a request each and then stops. A key this process saw succeed in the last
  `PROVEN_TTL_S` is still looked up (a client sharing an address with an attacker, or one whose other key was
  revoked, keeps working).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from ..config import settings
from ..errors import MFError
from .tenants import REVOKED_HERE, Principal, hash_key, principal_for_key

CACHE_TTL_S = 30.0
_MAX_ENTRIES = 10_000
FAILURE_WINDOW_S = 60.0
PROVEN_TTL_S = 3600.0
_failures: dict[str, deque[float]] = {}
_proven: dict[tuple[str, str], float] = {}  # slot -> until when a key that succeeded passes the rate limit
_cache: dict[tuple[str, str], tuple[Principal | None, float]] = {}
_lock = threading.Lock()


class Unauthorized(MFError):
    """No valid API key: HTTP 401 on every server."""

    status = 401


class RateLimited(MFError):
    """Too many failed authentications from one address: HTTP 429 on every server."""

    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def max_failures() -> int:
    return settings().auth_max_failures


def _recent(client: str, now: float) -> deque[float]:
    """The client's failures within the window (the caller holds `_lock`)."""
    q = _failures.setdefault(client, deque())
    while q and q[0] <= now - FAILURE_WINDOW_S:
        q.popleft()
    return q


def _who(client: str) -> str:
    return f"{settings().database_url}|{client}"  # per accounts database, like the cache


def check_rate(client: str | None) -> None:
    """RateLimited when `client` failed to authenticate too often lately."""
    if client is None:
        return
    now = time.monotonic()
    with _lock:
        q = _recent(_who(client), now)
        if len(q) >= max_failures():
            wait = int(q[0] + FAILURE_WINDOW_S - now) + 1
            raise RateLimited(f"too many failed authentications from this address; retry in {wait} s", wait)


def _failed(client: str | None) -> None:
    if client is None:
        return
    now = time.monotonic()
    with _lock:
        if len(_failures) > _MAX_ENTRIES:
            _failures.clear()
        _recent(_who(client), now).append(now)


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
    if hit is None or hit[1] <= time.monotonic() or (hit[0] is not None and slot[1] in REVOKED_HERE):
        return None
    if hit[0] is None:
        raise Unauthorized("invalid or revoked API key")
    return hit[0]


def authenticate(header: str | None, client: str | None = None) -> Principal:
    """The caller, or Unauthorized (RateLimited once `client`, its address, failed too often). May read the
    database (call it off an event loop)."""
    key = bearer(header)  # no key, or a malformed header: refused, but no key was tried (not counted)
    try:
        p = cached(header)
    except Unauthorized:  # a key known to be invalid
        _failed(client)
        check_rate(client)
        raise
    if p is not None:
        return p
    slot = _slot(key)
    with _lock:
        proven = _proven.get(slot, 0.0) > time.monotonic()
    if not proven:
        check_rate(client)
    p = principal_for_key(key)
    with _lock:
        if len(_cache) > _MAX_ENTRIES:
            _cache.clear()
        _cache[_slot(key)] = (p, time.monotonic() + CACHE_TTL_S)
    if p is None:
        _failed(client)
        raise Unauthorized("invalid or revoked API key")
    with _lock:
        if len(_proven) > _MAX_ENTRIES:
            _proven.clear()
        _proven[slot] = time.monotonic() + PROVEN_TTL_S
    return p
