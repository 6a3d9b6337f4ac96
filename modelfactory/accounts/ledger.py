"""The usage ledger and invoices: one `Usage` row per attempt, written in the transaction that ends the attempt,
so an attempt is billed exactly once whoever ends it, priced when written, so an invoice does not change when
prices do; inference is metered into the same ledger. What is billed, from when to when, is in docs/accounts.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..config import settings
from ..errors import MFError
from .tables import InferenceUsage, Usage, accounts_read

OUTCOMES = ("succeeded", "failed", "preempted", "lost", "cancelled")


@dataclass(frozen=True)
class Prices:
    """What the ledger charges; the pool's `PoolConfig` carries the same three fields (and is accepted too)."""

    price_cpu_hour: float = 0.05
    price_gpu_hour: float = 2.0
    currency: str = "USD"


def prices() -> Prices:
    """`MF_PRICE_CPU_HOUR`, `MF_PRICE_GPU_HOUR`, `MF_CURRENCY` (config.settings)."""
    s = settings()
    return Prices(price_cpu_hour=s.price_cpu_hour, price_gpu_hour=s.price_gpu_hour, currency=s.currency)


def record_attempt(s: Session, job: Any, *, outcome: str, started: dt.datetime, ended: dt.datetime,
                   worker: str | None, config: Prices | None = None) -> Usage:
    """Bill one attempt of a pool job (anything with id, tenant, order_id, attempts, cpu, gpu, slots)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown attempt outcome '{outcome}'")
    cfg = config or prices()
    wall = max(0.0, (ended - started).total_seconds())
    cpu_s, gpu_s = job.cpu * job.slots * wall, job.gpu * job.slots * wall
    row = Usage(tenant=job.tenant, order_id=job.order_id, job_id=job.id, attempt=job.attempts, worker=worker,
                started=started, ended=max(started, ended), cpu_seconds=cpu_s, gpu_seconds=gpu_s, outcome=outcome,
                cost=round(cpu_s / 3600 * cfg.price_cpu_hour + gpu_s / 3600 * cfg.price_gpu_hour, 6))
    s.add(row)
    return row


def record_inference(s: Session, *, tenant: str, model: str, version: int, server: str, started: dt.datetime,
                     ended: dt.datetime, requests: int, rows: int, cpu_seconds: float,
                     config: Prices | None = None) -> InferenceUsage:
    """One metering window of one model version served by one process."""
    cfg = config or prices()
    row = InferenceUsage(tenant=tenant, model=model, version=version, server=server, started=started,
                         ended=max(started, ended), requests=requests, rows=rows, cpu_seconds=cpu_seconds,
                         cost=round(cpu_seconds / 3600 * cfg.price_cpu_hour, 9))
    s.add(row)
    return row


def month_bounds(month: str | dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[first instant, first instant of the next month) of 'YYYY-MM', or of the month a datetime falls in."""
    if isinstance(month, str):
        m = re.fullmatch(r"(\d{4})-(\d{2})", month.strip())
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise MFError(f"bad month '{month}': expected YYYY-MM, e.g. 2026-05")
        start = dt.datetime(int(m.group(1)), int(m.group(2)), 1)
    else:
        start = month.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def month_usage(s: Session, tenant: str, now: dt.datetime) -> tuple[float, float]:
    """(cpu_seconds, gpu_seconds) billed to `tenant` in the month of `now`."""
    start, end = month_bounds(now)
    cpu, gpu = s.execute(select(func.coalesce(func.sum(Usage.cpu_seconds), 0.0),
                                func.coalesce(func.sum(Usage.gpu_seconds), 0.0))
                         .where(Usage.tenant == tenant, Usage.ended >= start, Usage.ended < end)).one()
    served = s.scalar(select(func.coalesce(func.sum(InferenceUsage.cpu_seconds), 0.0))
                      .where(InferenceUsage.tenant == tenant, InferenceUsage.ended >= start,
                             InferenceUsage.ended < end))
    return float(cpu) + float(served or 0.0), float(gpu)


@dataclass
class InvoiceLine:
    job: int
    name: str
    order: int | None
    attempt: int
    worker: str | None
    started: str
    ended: str
    outcome: str
    cpu_hours: float
    gpu_hours: float
    cost: float


@dataclass
class InferenceLine:
    """A model version's inference in the month (all servers, all windows)."""

    model: str
    version: int
    first: str
    last: str
    requests: int
    rows: int
    cpu_hours: float
    cost: float


@dataclass
class Invoice:
    tenant: str
    month: str
    currency: str
    lines: list[InvoiceLine]
    inference: list[InferenceLine] = field(default_factory=list)

    @property
    def cpu_hours(self) -> float:
        return sum(line.cpu_hours for line in self.lines) + sum(line.cpu_hours for line in self.inference)

    @property
    def gpu_hours(self) -> float:
        return sum(line.gpu_hours for line in self.lines)

    @property
    def total(self) -> float:
        return round(sum(line.cost for line in self.lines) + sum(line.cost for line in self.inference), 6)

    def by_outcome(self) -> dict[str, float]:
        """Cost by attempt outcome, and "inference" for serving (when there was any)."""
        out: dict[str, float] = {}
        for line in self.lines:
            out[line.outcome] = round(out.get(line.outcome, 0.0) + line.cost, 6)
        if self.inference:
            out["inference"] = round(sum(line.cost for line in self.inference), 6)
        return out

    def as_dict(self) -> dict:
        return {"tenant": self.tenant, "month": self.month, "currency": self.currency,
                "lines": [asdict(line) for line in self.lines],
                "inference": [asdict(line) for line in self.inference], "cpu_hours": self.cpu_hours,
                "gpu_hours": self.gpu_hours, "total": self.total, "by_outcome": self.by_outcome()}

    def write_csv(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.csv_text())
        return path

    def csv_text(self) -> str:
        fields = list(InvoiceLine.__dataclass_fields__)
        with io.StringIO(newline="") as f:
            w = csv.writer(f)
            w.writerow(fields)
            for line in self.lines:
                w.writerow([getattr(line, k) for k in fields])
            for inf in self.inference:  # outcome "inference", named model@version with its requests and rows
                w.writerow(["", f"{inf.model}@{inf.version} ({inf.requests} requests, {inf.rows} rows)", "", "",
                            "", inf.first, inf.last, "inference", f"{inf.cpu_hours:.6f}", "0.000000",
                            f"{inf.cost:.6f}"])
            w.writerow(["total", "", "", "", "", "", "", "", f"{self.cpu_hours:.6f}", f"{self.gpu_hours:.6f}",
                        f"{self.total:.6f}"])
            return f.getvalue()


def invoice(tenant: str, month: str, config: Prices | None = None,
            job_names: Callable[[Collection[int]], Mapping[int, str]] | None = None) -> Invoice:
    """Every attempt billed to `tenant` in `month` ('YYYY-MM'), oldest first. `job_names` (the pool's
    `jobs.names`) names each line's job; without it lines have no name."""
    start, end = month_bounds(month)
    with accounts_read() as s:
        rows = s.scalars(select(Usage).where(Usage.tenant == tenant, Usage.ended >= start, Usage.ended < end)
                         .order_by(Usage.ended, Usage.id)).all()
        names = job_names({u.job_id for u in rows}) if job_names and rows else {}
        lines = [InvoiceLine(job=u.job_id, name=names.get(u.job_id, ""), order=u.order_id, attempt=u.attempt,
                             worker=u.worker, started=u.started.isoformat(timespec="seconds"),
                             ended=u.ended.isoformat(timespec="seconds"), outcome=u.outcome,
                             cpu_hours=round(u.cpu_seconds / 3600, 6), gpu_hours=round(u.gpu_seconds / 3600, 6),
                             cost=u.cost) for u in rows]
        served = s.execute(select(InferenceUsage.model, InferenceUsage.version, func.min(InferenceUsage.started),
                                  func.max(InferenceUsage.ended), func.sum(InferenceUsage.requests),
                                  func.sum(InferenceUsage.rows), func.sum(InferenceUsage.cpu_seconds),
                                  func.sum(InferenceUsage.cost))
                           .where(InferenceUsage.tenant == tenant, InferenceUsage.ended >= start,
                                  InferenceUsage.ended < end)
                           .group_by(InferenceUsage.model, InferenceUsage.version)
                           .order_by(InferenceUsage.model, InferenceUsage.version)).all()
        inference = [InferenceLine(model=m, version=v, first=first.isoformat(timespec="seconds"),
                                   last=last.isoformat(timespec="seconds"), requests=int(req), rows=int(n),
                                   cpu_hours=round(cpu / 3600, 6), cost=round(cost, 6))
                     for m, v, first, last, req, n, cpu, cost in served]
    return Invoice(tenant, f"{start:%Y-%m}", (config or prices()).currency, lines, inference)
