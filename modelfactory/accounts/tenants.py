"""Tenants: who may submit, with which API keys, weight and quotas. Keys are stored only as their sha256, so a
leaked database does not leak keys; hard monthly quotas refuse a submit that could exceed them, the soft
`max_slots` only makes jobs wait. The quota rules are in docs/accounts.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..config import settings
from ..errors import MFError, NotFound
from ..store import check_name, utcnow
from .ledger import month_usage
from .tables import ApiKey, Tenant, accounts_read, accounts_tx

KEY_PREFIX = "mfk_"
REVOKED_HERE: set[str] = set()  # hashes of keys this process revoked: accounts.auth's cache never vouches for them


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class TenantInfo:
    name: str
    weight: float
    cpu_hours_month: float | None
    gpu_hours_month: float | None
    max_slots: int | None
    created: dt.datetime
    urgent: bool = False  # may submit priority 'urgent' (preempting other tenants); an operator grants it

    @classmethod
    def of(cls, t: Tenant) -> TenantInfo:
        return cls(t.name, t.weight, t.cpu_hours_month, t.gpu_hours_month, t.max_slots, t.created, bool(t.urgent))


def _check_limits(weight: float | None, cpu_hours: float | None, gpu_hours: float | None,
                  max_slots: int | None) -> None:
    if weight is not None and weight <= 0:
        raise MFError(f"weight must be > 0 (got {weight})")
    for what, v in (("cpu-hours", cpu_hours), ("gpu-hours", gpu_hours)):
        if v is not None and v < 0:
            raise MFError(f"{what} must be >= 0 (got {v})")
    if max_slots is not None and max_slots < 1:
        raise MFError(f"max-slots must be >= 1 (got {max_slots})")


def add_tenant(name: str, *, weight: float = 1.0, cpu_hours_month: float | None = None,
               gpu_hours_month: float | None = None, max_slots: int | None = None,
               urgent: bool = False) -> tuple[TenantInfo, str]:
    """Create a tenant; returns it and its API key (the only time the key exists outside the caller)."""
    check_name(name, "tenant")
    _check_limits(weight, cpu_hours_month, gpu_hours_month, max_slots)
    key = new_key()
    with accounts_tx() as s:
        if s.scalar(select(Tenant).where(Tenant.name == name)) is not None:
            raise MFError(f"tenant '{name}' already exists")
        t = Tenant(name=name, weight=weight, cpu_hours_month=cpu_hours_month,
                   gpu_hours_month=gpu_hours_month, max_slots=max_slots, created=utcnow(), urgent=bool(urgent))
        s.add(t)
        s.add(ApiKey(tenant=name, key_hash=hash_key(key), label="initial", created=t.created))
        s.flush()
        return TenantInfo.of(t), key


UNSET = object()


def set_tenant(name: str, *, weight: float | None = None, cpu_hours_month=UNSET, gpu_hours_month=UNSET,
               max_slots=UNSET, urgent: bool | None = None) -> TenantInfo:
    """Change a tenant's weight, limits (pass None to a limit to remove it) or its right to use 'urgent'."""
    _check_limits(weight, None if cpu_hours_month is UNSET else cpu_hours_month,
                  None if gpu_hours_month is UNSET else gpu_hours_month, None if max_slots is UNSET else max_slots)
    with accounts_tx() as s:
        t = tenant_row(s, name)
        if weight is not None:
            t.weight = weight
        if cpu_hours_month is not UNSET:
            t.cpu_hours_month = cpu_hours_month
        if gpu_hours_month is not UNSET:
            t.gpu_hours_month = gpu_hours_month
        if max_slots is not UNSET:
            t.max_slots = max_slots
        if urgent is not None:
            t.urgent = bool(urgent)
        return TenantInfo.of(t)


def may_use_priority(tenant: str, priority: str) -> None:
    """MFError unless `tenant` may submit at `priority`: 'urgent' preempts other tenants' jobs, so it needs the
    operator's grant (`mf tenants set NAME --urgent`)."""
    if priority != "urgent":
        return
    with accounts_read() as s:
        t = s.scalar(select(Tenant).where(Tenant.name == tenant))
        if t is None or not t.urgent:
            raise PermissionDenied(f"tenant '{tenant}' may not use priority 'urgent' (it preempts other tenants' "
                                   f"jobs); an operator grants it with `mf tenants set {tenant} --urgent`")


class PermissionDenied(MFError):
    """A valid caller that may not do this (HTTP 403)."""

    status = 403


class TooManyKeys(MFError):
    """A tenant at its cap of active API keys (HTTP 409)."""

    status = 409


def max_keys() -> int:
    """MF_MAX_KEYS_PER_TENANT (default 20): active (unrevoked) keys one tenant may hold."""
    return settings().max_keys_per_tenant


def list_tenants() -> list[TenantInfo]:
    with accounts_read() as s:
        return [TenantInfo.of(t) for t in s.scalars(select(Tenant).order_by(Tenant.name))]


def tenant_row(s: Session, name: str) -> Tenant:
    t = s.scalar(select(Tenant).where(Tenant.name == name))
    if t is None:
        raise NotFound(f"unknown tenant '{name}': add it first with `mf tenants add {name}`")
    return t


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass
class KeyInfo:
    id: int
    tenant: str | None  # None: an admin key
    label: str
    created: dt.datetime
    revoked: dt.datetime | None

    @classmethod
    def of(cls, k: ApiKey) -> KeyInfo:
        return cls(k.id, k.tenant, k.label, k.created, k.revoked)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, or an admin (tenant None)."""

    tenant: str | None
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.tenant


def create_key(tenant: str | None, label: str = "") -> tuple[KeyInfo, str]:
    """A new key for `tenant` (None: an admin key); returns it with the key itself, shown this once."""
    key = new_key()
    with accounts_tx() as s:
        if tenant is not None:
            tenant_row(s, tenant)
            active = s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.tenant == tenant,
                                                                              ApiKey.revoked.is_(None)))
            if active >= max_keys():
                raise TooManyKeys(f"tenant '{tenant}' already holds {active} active API keys (the most allowed, "
                                  f"MF_MAX_KEYS_PER_TENANT); revoke some first")
        row = ApiKey(tenant=tenant, key_hash=hash_key(key), label=label[:200], created=utcnow())
        s.add(row)
        s.flush()
        return KeyInfo.of(row), key


def init_admin_key(label: str = "mf server --init") -> tuple[KeyInfo, str, int]:
    """A new admin key (`mf server --init`): the key's info, the key itself (shown this once), and how many
    earlier admin keys are still valid (the operator may want to revoke them)."""
    earlier = sum(k.revoked is None for k in list_keys(None))
    info, key = create_key(None, label)
    return info, key, earlier


def list_keys(tenant: str | None) -> list[KeyInfo]:
    """A tenant's keys (tenant None: the admin keys), revoked ones included; never the keys themselves."""
    with accounts_read() as s:
        q = select(ApiKey).where(ApiKey.tenant.is_(None) if tenant is None else ApiKey.tenant == tenant)
        return [KeyInfo.of(k) for k in s.scalars(q.order_by(ApiKey.id))]


def get_key(key_id: int) -> KeyInfo:
    with accounts_read() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key {key_id}")
        return KeyInfo.of(row)


def revoke_key(key_id: int) -> KeyInfo:
    """Revoke a key: it fails from the next request on. Revoking twice is harmless."""
    with accounts_tx() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"no API key {key_id}")
        if row.revoked is None:
            row.revoked = utcnow()
        REVOKED_HERE.add(row.key_hash)
        return KeyInfo.of(row)


def revoke_all_keys(tenant: str) -> list[KeyInfo]:
    """Revoke every active key of `tenant` at once (a leak: then create a fresh one with an admin key)."""
    with accounts_tx() as s:
        tenant_row(s, tenant)
        rows = list(s.scalars(select(ApiKey).where(ApiKey.tenant == tenant, ApiKey.revoked.is_(None))))
        now = utcnow()
        for row in rows:
            row.revoked = now
        REVOKED_HERE.update(r.key_hash for r in rows)
        return [KeyInfo.of(r) for r in rows]


def principal_for_key(key: str) -> Principal | None:
    """Who an API key speaks for, or None: an unknown or revoked key."""
    env_admin = settings().admin_key
    if env_admin and hmac.compare_digest(key.encode(), env_admin.encode()):
        return Principal(None, admin=True)
    with accounts_read() as s:
        row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked.is_(None)))
        if row is None:
            return None
        return Principal(row.tenant, admin=row.tenant is None)


def tenant_for_key(key: str) -> TenantInfo | None:
    """The tenant an API key belongs to, or None (unknown, revoked, or an admin key)."""
    p = principal_for_key(key)
    if p is None or p.tenant is None:
        return None
    with accounts_read() as s:
        t = s.scalar(select(Tenant).where(Tenant.name == p.tenant))
        return TenantInfo.of(t) if t else None


@dataclass(frozen=True)
class Request:
    """What a job about to be submitted asks for, as far as quotas care."""

    cpu: float
    gpu: float
    slots: int = 1
    time_limit_s: float | None = None


def check_quota(s: Session, tenant: Tenant, requests: list[Request], now: dt.datetime,
                outstanding: list[Request]) -> None:
    """Raise MFError if `requests` would take `tenant` over a hard monthly quota (see the module docstring).
    `outstanding`: what the tenant's queued and running jobs with a time limit may still use (the pool knows)."""
    used_cpu, used_gpu = month_usage(s, tenant.name, now)
    for label, quota, used, attr in (("CPU", tenant.cpu_hours_month, used_cpu, "cpu"),
                                     ("GPU", tenant.gpu_hours_month, used_gpu, "gpu")):
        if quota is None or not any(getattr(r, attr) > 0 for r in requests):
            continue
        reserved = sum(getattr(r, attr) * r.slots * r.time_limit_s for r in outstanding) / 3600
        asked = sum(getattr(r, attr) * r.slots * (r.time_limit_s or 0) for r in requests) / 3600
        month = f"{now:%Y-%m}"
        if used / 3600 >= quota:
            raise MFError(f"tenant '{tenant.name}' has used its monthly {label} quota: {used / 3600:.2f} of "
                          f"{quota:g} {label}-hours in {month}; submit refused (raise it with `mf tenants set "
                          f"{tenant.name} --{label.lower()}-hours H`)")
        if used / 3600 + reserved + asked > quota + 1e-9:
            raise MFError(f"tenant '{tenant.name}' would exceed its monthly {label} quota: {used / 3600:.2f} "
                          f"{label}-hours used in {month} + {reserved:.2f} reserved by queued/running jobs + "
                          f"{asked:.2f} requested (resources x time limit) > {quota:g}; submit refused")
