"""The model registry: list, show (metrics, lineage, card), move an alias (which `mf serve` follows without a
restart), download the ONNX file."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ... import registry
from ...accounts.tenants import Principal
from ...errors import NotFound
from ..auth import principal, tenant_filter, visible
from ..params import MAX_ID, TenantQuery

router = APIRouter(tags=["models"])


class ModelSummary(BaseModel):
    name: str
    version: int
    tenant: str
    task: str
    aliases: list[str]
    metrics: dict[str, Any] = Field(description="teacher, teacher_int8, and student = the deployed model")
    deployed: str | None = Field(description="which of the order's candidates was deployed")
    ratios: dict[str, Any] | None = Field(description="the deployed student against the teacher")
    created: dt.datetime
    baselines: dict[str, Any] | None = Field(None, description="classification: the majority class and the "
                                                               "classical model, on the same test split")


class VersionOut(BaseModel):
    version: int
    aliases: list[str]
    created: dt.datetime


class ModelDetail(ModelSummary):
    lineage: dict[str, Any]
    card: str
    onnx_bytes: int | None
    versions: list[VersionOut]


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true or "1.5" is refused, not coerced to a number
    version: int = Field(ge=1, le=MAX_ID)
    alias: str = Field(pattern=r"^[a-z][a-z0-9._-]{0,99}$", description="e.g. prod, staging (not a number)")


class AliasOut(BaseModel):
    name: str
    version: int
    alias: str


def _summary(r: registry.ModelRef) -> dict:
    return {"name": r.name, "version": r.version, "tenant": r.tenant, "task": r.task, "aliases": r.aliases,
            "metrics": registry.contract_metrics(r.metrics), "deployed": r.metrics.get("deployed"),
            "ratios": r.metrics.get("ratios"), "created": r.created,
            "baselines": r.metrics.get("baselines")}  # what a practitioner tries first, on the same test split


def _model(ref: str, p: Principal) -> registry.ModelRef:
    m = registry.resolve(ref)
    visible(p, m.tenant, f"model '{ref}'")
    return m


@router.get("/models", response_model=list[ModelSummary])
def models(tenant: TenantQuery = None, p: Principal = Depends(principal)) -> list[ModelSummary]:
    """Every model version the caller may see."""
    only = tenant_filter(p, tenant)
    return [ModelSummary(**_summary(r)) for r in registry.list_models() if only is None or r.tenant == only]


@router.get("/models/{ref}", response_model=ModelDetail)
def show(ref: str, p: Principal = Depends(principal)) -> ModelDetail:
    """A version (`name`: prod or latest, `name@3`, `name@alias`) with metrics of teacher and student side by side,
    lineage and model card, and the model's other versions."""
    m = _model(ref, p)
    onnx = m.onnx_path
    return ModelDetail(**_summary(m), lineage=m.lineage, card=m.card,
                       onnx_bytes=onnx.stat().st_size if onnx.is_file() else None,
                       versions=[VersionOut(version=v.version, aliases=v.aliases, created=v.created)
                                 for v in registry.list_models(m.name)])


@router.post("/models/{name}/aliases", response_model=AliasOut)
def promote(name: str, body: AliasSet, p: Principal = Depends(principal)) -> AliasOut:
    """Point an alias at a version (`prod` is what `name` means to `mf serve`)."""
    if "@" in name:
        raise NotFound(f"no model '{name}' (give the name without a version)")
    _model(f"{name}@{body.version}", p)
    registry.promote(name, body.version, body.alias)
    return AliasOut(name=name, version=body.version, alias=body.alias)


@router.get("/models/{ref}/onnx", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def onnx(ref: str, p: Principal = Depends(principal)):
    """The version's ONNX file (what `mf serve` runs)."""
    m = _model(ref, p)
    if not m.onnx_path.is_file():
        raise NotFound(f"model '{m}' has no ONNX file in this store")
    return FileResponse(m.onnx_path, media_type="application/octet-stream",
                        filename=f"{m.name}-{m.version}.onnx")
