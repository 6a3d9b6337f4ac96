"""Orders as the world sees them: one typed shape for `mf order submit|status --json` (on this machine or
through `--server`) and for `/api/v1/orders`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .. import registry
from ..config import settings
from ..store import Order, session
from . import jobkinds


class OrderSubmitted(BaseModel):
    """An order queued on the pool: its jobs, the nodes that were cache hits, and those shared with the tenant's
    earlier orders."""

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
    """An order with its stages (each stage's job, state, attempt, worker), the DAG's edges and its report."""

    on_pool: bool
    priority: str | None = None
    dataset: str | None = None
    nodes: list[dict[str, Any]]
    edges: list[tuple[str, str]]
    report: str | None = Field(None, description="where the report is: a file on this machine, or its URL")
    report_markdown: str | None
    has_pareto: bool
    spec: dict[str, Any]


class OrderCancelled(BaseModel):
    order: int
    state: str


def submitted(sub: jobkinds.Submitted) -> OrderSubmitted:
    return OrderSubmitted(order=sub.order_id, dataset=str(sub.dataset), jobs=sub.jobs, cached=sub.cached,
                          shared=sub.shared)


def summaries(rows: list[dict[str, Any]]) -> list[OrderSummary]:
    """`jobkinds.list_orders` rows, each with the model it registered."""
    models = registry.by_order([r["order"] for r in rows])
    return [OrderSummary(**r, model=models.get(r["order"])) for r in rows]


def report_path(status: dict[str, Any]) -> Path | None:
    """The order's report file, when it has one inside MF_HOME (never a path the order's row was pointed at)."""
    if not status.get("report"):
        return None
    path = Path(status["report"]).resolve()
    return path if path.is_relative_to(settings().home) and path.is_file() else None


def order_detail(status: dict[str, Any], link: Callable[[Path], str] = str) -> OrderDetail:
    """`jobkinds.order_status` as the typed shape; `link` says where the report is for whoever reads it (a file
    path on this machine, a URL through the API)."""
    order_id = status["order"]
    report = report_path(status)
    with session() as s:
        spec = s.get(Order, order_id).spec
    return OrderDetail(order=order_id, name=status["name"], tenant=status["tenant"], state=status["state"],
                       error=status["error"], created=status["created"], finished=status["finished"],
                       model=registry.by_order([order_id]).get(order_id), on_pool=status["on_pool"],
                       priority=status.get("priority"), dataset=status.get("dataset"), nodes=status["nodes"],
                       edges=status["edges"], report=link(report) if report else None,
                       report_markdown=report.read_text() if report else None,
                       has_pareto=bool(report and (report.parent / "pareto.png").is_file()), spec=spec)
