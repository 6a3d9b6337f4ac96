"""The model registry: list, show (metrics, lineage, card), move an alias (which `mf serve` follows without a
restart), download the ONNX file."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ... import registry
from ...accounts.tenants import Principal
from ...errors import NotFound
from ...registry.schemas import ModelDetail, ModelSummary, model_detail, model_summary
from ..auth import principal, tenant_filter, visible
from ..params import MAX_ID, TenantQuery

router = APIRouter(tags=["models"])


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # true or "1.5" is refused, not coerced to a number
    version: int = Field(ge=1, le=MAX_ID)
    alias: str = Field(pattern=r"^[a-z][a-z0-9._-]{0,99}$", description="e.g. prod, staging (not a number)")


class AliasOut(BaseModel):
    name: str
    version: int
    alias: str


def _model(ref: str, p: Principal) -> registry.ModelRef:
    m = registry.resolve(ref)
    visible(p, m.tenant, f"model '{ref}'")
    return m


@router.get("/models", response_model=list[ModelSummary])
def models(tenant: TenantQuery = None, p: Principal = Depends(principal)) -> list[ModelSummary]:
    """Every model version the caller may see."""
    only = tenant_filter(p, tenant)
    return [model_summary(r) for r in registry.list_models() if only is None or r.tenant == only]


@router.get("/models/{ref}", response_model=ModelDetail)
def show(ref: str, p: Principal = Depends(principal)) -> ModelDetail:
    """A version (`name`: prod or latest, `name@3`, `name@alias`) with metrics of teacher and student side by side,
    lineage and model card, and the model's other versions."""
    return model_detail(_model(ref, p))


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
