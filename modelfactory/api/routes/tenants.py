"""Tenants and their API keys. Admins create tenants and keys; a tenant may list, add and revoke its own keys
(rotation without an admin). A key is in the response that creates it and nowhere else, ever."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ...accounts.schemas import KeyCreated, TenantCreated
from ...accounts.tenants import (
    UNSET,
    KeyInfo,
    Principal,
    TenantInfo,
    add_tenant,
    create_key,
    get_key,
    list_keys,
    list_tenants,
    revoke_all_keys,
    revoke_key,
    set_tenant,
)
from ...errors import NotFound
from ..auth import admin_only, principal, visible
from ..params import NAME, Id

router = APIRouter(tags=["tenants"])


class Me(BaseModel):
    tenant: str | None
    admin: bool


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true or "1.5" is refused, not coerced to a number
    name: str = Field(pattern=NAME)
    weight: float = Field(1.0, gt=0, le=1e6)
    cpu_hours_month: float | None = Field(None, ge=0)
    gpu_hours_month: float | None = Field(None, ge=0)
    max_slots: int | None = Field(None, ge=1)
    urgent: bool = Field(False, description="may submit priority 'urgent' (preempts other tenants' jobs)")


class TenantUpdate(BaseModel):
    """Fields left out are unchanged; a limit set to null is removed."""

    model_config = ConfigDict(extra="forbid", strict=True)  # true or "1.5" is refused, not coerced to a number
    weight: float | None = Field(None, gt=0, le=1e6)
    cpu_hours_month: float | None = Field(None, ge=0)
    gpu_hours_month: float | None = Field(None, ge=0)
    max_slots: int | None = Field(None, ge=1)
    urgent: bool | None = None


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true or "1.5" is refused, not coerced to a number
    label: str = Field("", max_length=200)


def _tenant(name: str) -> TenantInfo:
    t = next((t for t in list_tenants() if t.name == name), None)
    if t is None:
        raise NotFound(f"no tenant '{name}'")
    return t


@router.get("/me", response_model=Me)
def me(p: Principal = Depends(principal)) -> Me:
    """Who this key speaks for."""
    return Me(tenant=p.tenant, admin=p.admin)


@router.get("/tenants", response_model=list[TenantInfo])
def tenants(p: Principal = Depends(principal)) -> list[TenantInfo]:
    """All tenants (admin), or the caller's own."""
    return [t for t in list_tenants() if p.may_see(t.name)]


@router.post("/tenants", response_model=TenantCreated, status_code=201)
def create_tenant(body: TenantCreate, p: Principal = Depends(principal)) -> TenantCreated:
    """Create a tenant and its first API key (admin)."""
    admin_only(p)
    t, key = add_tenant(body.name, weight=body.weight, cpu_hours_month=body.cpu_hours_month,
                        gpu_hours_month=body.gpu_hours_month, max_slots=body.max_slots, urgent=body.urgent)
    return TenantCreated(tenant=t, api_key=key)


@router.get("/tenants/{name}", response_model=TenantInfo)
def show_tenant(name: str, p: Principal = Depends(principal)) -> TenantInfo:
    visible(p, name, f"tenant '{name}'")
    return _tenant(name)


@router.patch("/tenants/{name}", response_model=TenantInfo)
def update_tenant(name: str, body: TenantUpdate, p: Principal = Depends(principal)) -> TenantInfo:
    """Change a tenant's weight or quotas (admin)."""
    admin_only(p)
    given = body.model_fields_set
    t = set_tenant(name, weight=body.weight, urgent=body.urgent,
                   **{k: getattr(body, k) if k in given else UNSET
                      for k in ("cpu_hours_month", "gpu_hours_month", "max_slots")})
    return t


@router.get("/tenants/{name}/keys", response_model=list[KeyInfo])
def keys(name: str, p: Principal = Depends(principal)) -> list[KeyInfo]:
    """A tenant's keys (never the keys themselves): id, label, created, revoked."""
    visible(p, name, f"tenant '{name}'")
    _tenant(name)
    return list_keys(name)


@router.post("/tenants/{name}/keys", response_model=KeyCreated, status_code=201)
def add_key(name: str, body: KeyCreate | None = None, p: Principal = Depends(principal)) -> KeyCreated:
    """A new key for the tenant (admin, or the tenant itself)."""
    visible(p, name, f"tenant '{name}'")
    info, key = create_key(name, (body or KeyCreate()).label)
    return KeyCreated(**asdict(info), key=key)


@router.delete("/tenants/{name}/keys", response_model=list[KeyInfo])
def revoke_all(name: str, p: Principal = Depends(principal)) -> list[KeyInfo]:
    """Revoke every active key of the tenant at once, the calling one included (admin, or the tenant itself):
    after a leak. An admin then creates a fresh key."""
    visible(p, name, f"tenant '{name}'")
    return revoke_all_keys(name)


@router.delete("/keys/{key_id}", response_model=KeyInfo)
def revoke(key_id: Id, p: Principal = Depends(principal)) -> KeyInfo:
    """Revoke a key: it fails from the next request on (a tenant may revoke its own keys, even the one it
    calls with)."""
    info = get_key(key_id)
    if info.tenant is None:
        admin_only(p)
    else:
        visible(p, info.tenant, f"API key {key_id}")
    return revoke_key(key_id)
