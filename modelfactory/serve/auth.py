"""Optional per-tenant access: `Authorization: Bearer <api key>` -> the tenant (compute/tenants.py keys), which may
only see and call its own models (a registry version's `tenant`). Another tenant's model answers 404, exactly like
a model that does not exist, so names do not leak across tenants.

Keys are looked up through their hash and remembered for `ttl_s` (a removed key stops working within that time).
"""

from __future__ import annotations

import threading
import time

from ..compute.tenants import hash_key, tenant_for_key


class Unauthorized(Exception):
    pass


class Authenticator:
    def __init__(self, enabled: bool, ttl_s: float = 30.0):
        self.enabled = enabled
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def cached(self, authorization: str | None) -> tuple[bool, str | None]:
        """(known, tenant) without touching the database: known=False means `tenant_of` must look it up."""
        if not self.enabled:
            return True, None
        key = _bearer(authorization)
        with self._lock:
            hit = self._cache.get(hash_key(key))
        if hit and hit[1] > time.monotonic():
            if hit[0] is None:
                raise Unauthorized("invalid API key")
            return True, hit[0]
        return False, None

    def tenant_of(self, authorization: str | None) -> str | None:
        """The caller's tenant (None when auth is off); Unauthorized without a valid key. May read the database."""
        known, tenant = self.cached(authorization)
        if known:
            return tenant
        digest = hash_key(_bearer(authorization))
        info = tenant_for_key(_bearer(authorization))
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (info.name if info else None, time.monotonic() + self.ttl_s)
        if info is None:
            raise Unauthorized("invalid API key")
        return info.name


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return key.strip()
