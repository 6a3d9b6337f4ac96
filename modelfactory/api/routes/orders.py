"""Orders: submit (the order spec as JSON or YAML, validated with field-level errors) onto the compute pool, list,
show (stage DAG with live state, report, Pareto plot), cancel.

What an order may point at is the tenant boundary's other half: a tenant's order reads only that tenant's
datasets (`data: {dataset: ...}`; files on the server's disk are for admins), and a local teacher dir only under
MF_MODEL_DIRS (the platform's shared base models); hub ids and built-in architectures are always allowed."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError

from ... import registry, safeyaml
from ...accounts.tenants import Principal, may_use_priority
from ...config import settings
from ...data import versions
from ...errors import NotFound
from ...factory import jobkinds
from ...factory.spec import OrderSpec
from ..auth import principal, tenant_filter, visible
from ..errors import Forbidden, HTTPError, Invalid, field_errors
from ..params import Id, TenantQuery

router = APIRouter(tags=["orders"])
MAX_SPEC_BYTES = 1 << 20
SPEC_BODY = {"requestBody": {"required": True, "description": "the order spec (see ARCHITECTURE.md)", "content": {
    "application/json": {"schema": {"type": "object"}},
    "application/yaml": {"schema": {"type": "string"}}}}}


class Submitted(BaseModel):
    order: int
    dataset: str
    jobs: dict[str, int]
    cached: list[str]
    shared: list[str]


class OrderSummary(BaseModel):
    order: int
    name: str
    tenant: str
    state: str
    error: str | None
    created: dt.datetime
    finished: dt.datetime | None
    model: str | None


class OrderDetail(OrderSummary):
    on_pool: bool
    priority: str | None = None
    dataset: str | None = None
    nodes: list[dict[str, Any]]
    edges: list[tuple[str, str]]
    report_markdown: str | None
    has_pareto: bool
    spec: dict[str, Any]


class Cancelled(BaseModel):
    order: int
    state: str


def parse_body(raw: bytes, content_type: str) -> OrderSpec:
    """The spec from a JSON or YAML body; 422 naming each bad field."""
    if len(raw) > MAX_SPEC_BYTES:
        raise HTTPError(f"order spec larger than {MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode()
        obj = json.loads(text) if "json" in content_type else safeyaml.load(text, MAX_SPEC_BYTES)
    except RecursionError:
        raise HTTPError("the order spec is nested too deeply") from None
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        kind = "JSON" if "json" in content_type else "YAML"
        raise HTTPError(f"the order spec is not valid {kind}: {str(e).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise HTTPError("an order spec is a mapping of fields (name, task, data, teacher, ...)")
    try:
        return OrderSpec.model_validate(obj)
    except ValidationError as e:
        fields = field_errors(e.errors())
        raise Invalid("invalid order spec: " + "; ".join(f"{f['loc'] or '(top level)'}: {f['msg']}"
                                                         for f in fields), fields=fields) from None


def model_dirs() -> list[Path]:
    """MF_MODEL_DIRS (':'-separated): where tenants' orders may name local teacher dirs."""
    return [Path(d).resolve() for d in settings().model_dirs.split(os.pathsep) if d.strip()]


def check_reach(spec: OrderSpec, p: Principal) -> OrderSpec:
    """Bind the order to the caller's tenant and refuse what a tenant may not read (see the module docstring)."""
    if p.admin:
        return spec
    if "tenant" in spec.model_fields_set and spec.tenant != p.tenant:
        raise Forbidden(f"a key of tenant '{p.tenant}' cannot submit orders for tenant '{spec.tenant}'")
    spec = spec.model_copy(update={"tenant": p.tenant})
    if spec.data.path:
        raise HTTPError("data.path names a file on the server: upload it first (POST /api/v1/datasets) and "
                        "order with data: {dataset: NAME}")
    ref = versions.resolve(spec.data.dataset)
    if ref.tenant != p.tenant:
        raise NotFound(f"no dataset '{spec.data.dataset}'")
    if registry.owner(spec.name) not in (None, p.tenant):  # said without naming whose it is
        raise NotFound(f"model name '{spec.name}' is not available to this tenant; choose another order name")
    model = spec.teacher.model
    local = model.startswith(("/", ".", "~")) or Path(model).exists()
    if local and not model.startswith("scratch:"):
        where = Path(model).expanduser().resolve()
        if not any(where.is_relative_to(d) for d in model_dirs()):
            raise Forbidden(f"teacher.model '{model}' is a local path outside the platform's model dirs "
                            "(MF_MODEL_DIRS); name a hub id or a shared base model")
    return spec


def _order(order_id: int, p: Principal) -> dict:
    st = jobkinds.order_status(order_id)
    visible(p, st["tenant"], f"order {order_id}")
    return st


def _report_path(st: dict) -> Path | None:
    if not st.get("report"):
        return None
    path = Path(st["report"]).resolve()
    return path if path.is_relative_to(settings().home) and path.is_file() else None


@router.post("/orders", response_model=Submitted, status_code=201, openapi_extra=SPEC_BODY,
             responses={422: {"description": "invalid spec, with `fields`"}})
async def submit(request: Request, priority: Literal["batch", "standard", "urgent"] = "standard",
                 p: Principal = Depends(principal)) -> Submitted:
    """Submit an order to the compute pool: one job per stage that is not a cache hit."""
    import asyncio

    spec = parse_body(await request.body(), request.headers.get("content-type", "application/yaml"))

    def go() -> Submitted:
        if not p.admin:
            may_use_priority(p.tenant, priority)  # 'urgent' preempts other tenants: an operator's grant
        sub = jobkinds.submit_order(check_reach(spec, p), priority=priority)
        return Submitted(order=sub.order_id, dataset=str(sub.dataset), jobs=sub.jobs, cached=sub.cached,
                         shared=sub.shared)

    return await asyncio.to_thread(go)


@router.get("/orders", response_model=list[OrderSummary])
def orders(tenant: TenantQuery = None, state: str | None = Query(None, max_length=40),
           limit: int = Query(200, ge=1, le=1000), p: Principal = Depends(principal)) -> list[OrderSummary]:
    """Orders, newest first."""
    rows = jobkinds.list_orders(tenant=tenant_filter(p, tenant), state=state, limit=limit)
    models = registry.by_order([r["order"] for r in rows])
    return [OrderSummary(**r, model=models.get(r["order"])) for r in rows]


@router.get("/orders/{order_id}", response_model=OrderDetail)
def show(order_id: Id, p: Principal = Depends(principal)) -> OrderDetail:
    """An order with its stages (each stage's job, state, attempt, worker), the DAG's edges, its report and
    whether a Pareto plot exists."""
    st = _order(order_id, p)
    report = _report_path(st)
    from ...store import Order, session

    with session() as s:
        spec = s.get(Order, order_id).spec
    return OrderDetail(order=st["order"], name=st["name"], tenant=st["tenant"], state=st["state"],
                       error=st["error"], created=st["created"], finished=st["finished"],
                       model=registry.by_order([order_id]).get(order_id), on_pool=st["on_pool"],
                       priority=st.get("priority"), dataset=st.get("dataset"), nodes=st["nodes"],
                       edges=st["edges"], report_markdown=report.read_text() if report else None,
                       has_pareto=bool(report and (report.parent / "pareto.png").is_file()), spec=spec)


@router.get("/orders/{order_id}/report", response_class=PlainTextResponse)
def report(order_id: Id, p: Principal = Depends(principal)):
    """The order's report (markdown), once it has one."""
    path = _report_path(_order(order_id, p))
    if path is None:
        raise NotFound(f"order {order_id} has no report yet")
    return PlainTextResponse(path.read_text(), media_type="text/markdown")


@router.get("/orders/{order_id}/pareto.png", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def pareto(order_id: Id, p: Principal = Depends(principal)):
    """The recipe search's Pareto plot (orders with `search:`)."""
    path = _report_path(_order(order_id, p))
    if path is None or not (path.parent / "pareto.png").is_file():
        raise NotFound(f"order {order_id} has no Pareto plot (only orders with a recipe search have one)")
    return FileResponse(path.parent / "pareto.png", media_type="image/png")


@router.post("/orders/{order_id}/cancel", response_model=Cancelled)
def cancel(order_id: Id, p: Principal = Depends(principal)) -> Cancelled:
    """Cancel a running pool order: its queued and running jobs stop; finished stages stay cached."""
    _order(order_id, p)
    jobkinds.cancel_order(order_id, f"cancelled by {'admin' if p.admin else p.tenant}")
    return Cancelled(order=order_id, state="cancelled")
