"""Orders: submit (the order spec as JSON or YAML, validated with field-level errors) onto the compute pool, list,
show (stage DAG with live state, report, Pareto plot), cancel.

What an order may point at is the tenant boundary's other half: a tenant's order reads only that tenant's
datasets (`data: {dataset: ...}`; files on the server's disk are for admins), and a local teacher dir only under
MF_MODEL_DIRS (the platform's shared base models); hub ids and built-in architectures are always allowed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse

from ... import registry
from ...accounts.tenants import Principal, may_use_priority
from ...config import settings
from ...data import versions
from ...errors import NotFound
from ...factory import jobkinds
from ...factory.schemas import (
    OrderCancelled,
    OrderDetail,
    OrderSubmitted,
    OrderSummary,
    order_detail,
    report_path,
    submitted,
    summaries,
)
from ...factory.spec import OrderSpec, SpecInvalid, parse_spec_bytes
from ..auth import principal, tenant_filter, visible
from ..errors import Forbidden, HTTPError, Invalid
from ..params import Id, TenantQuery

router = APIRouter(tags=["orders"])
SPEC_BODY = {"requestBody": {"required": True, "description": "the order spec (see ARCHITECTURE.md)", "content": {
    "application/json": {"schema": {"type": "object"}},
    "application/yaml": {"schema": {"type": "string"}}}}}


def parse_body(raw: bytes, content_type: str) -> OrderSpec:
    """The spec from a JSON or YAML body, with the message `mf order run` gives the same spec; 422 naming each bad
    field."""
    try:
        return parse_spec_bytes(raw, "order spec", "json" if "json" in content_type else "yaml")
    except SpecInvalid as e:
        raise Invalid(str(e), fields=e.fields) from None


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


@router.post("/orders", response_model=OrderSubmitted, status_code=201, openapi_extra=SPEC_BODY,
             responses={422: {"description": "invalid spec, with `fields`"}})
async def submit(request: Request, priority: Literal["batch", "standard", "urgent"] = "standard",
                 p: Principal = Depends(principal)) -> OrderSubmitted:
    """Submit an order to the compute pool: one job per stage that is not a cache hit."""
    spec = parse_body(await request.body(), request.headers.get("content-type", "application/yaml"))

    def go() -> OrderSubmitted:
        if not p.admin:
            may_use_priority(p.tenant, priority)  # 'urgent' preempts other tenants: an operator's grant
        return submitted(jobkinds.submit_order(check_reach(spec, p), priority=priority))

    # The thread pool sync routes run in (40 threads), not asyncio's default executor (cores + 4): a submit that
    # is refused at once (no such dataset) must not queue behind others that ingest and plan.
    return await run_in_threadpool(go)


@router.get("/orders", response_model=list[OrderSummary])
def orders(tenant: TenantQuery = None, state: str | None = Query(None, max_length=40),
           limit: int = Query(200, ge=1, le=1000), p: Principal = Depends(principal)) -> list[OrderSummary]:
    """Orders, newest first."""
    return summaries(jobkinds.list_orders(tenant=tenant_filter(p, tenant), state=state, limit=limit))


@router.get("/orders/{order_id}", response_model=OrderDetail)
def show(order_id: Id, request: Request, p: Principal = Depends(principal)) -> OrderDetail:
    """An order with its stages (each stage's job, state, attempt, worker), the DAG's edges, its report (and the
    URL that serves it) and whether a Pareto plot exists."""
    return order_detail(_order(order_id, p), link=lambda _: str(request.url_for("report", order_id=order_id)))


@router.get("/orders/{order_id}/report", response_class=PlainTextResponse)
def report(order_id: Id, p: Principal = Depends(principal)):
    """The order's report (markdown), once it has one."""
    path = report_path(_order(order_id, p))
    if path is None:
        raise NotFound(f"order {order_id} has no report yet")
    return PlainTextResponse(path.read_text(), media_type="text/markdown")


@router.get("/orders/{order_id}/pareto.png", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}})
def pareto(order_id: Id, p: Principal = Depends(principal)):
    """The recipe search's Pareto plot (orders with `search:`)."""
    path = report_path(_order(order_id, p))
    if path is None or not (path.parent / "pareto.png").is_file():
        raise NotFound(f"order {order_id} has no Pareto plot (only orders with a recipe search have one)")
    return FileResponse(path.parent / "pareto.png", media_type="image/png")


@router.post("/orders/{order_id}/cancel", response_model=OrderCancelled)
def cancel(order_id: Id, p: Principal = Depends(principal)) -> OrderCancelled:
    """Cancel a running pool order: its queued and running jobs stop; finished stages stay cached."""
    _order(order_id, p)
    jobkinds.cancel_order(order_id, f"cancelled by {'admin' if p.admin else p.tenant}")
    return OrderCancelled(order=order_id, state="cancelled")
