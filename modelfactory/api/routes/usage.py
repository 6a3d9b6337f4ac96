"""Usage: a tenant's invoice for a month (every attempt of every job, and its models' inference), JSON or CSV."""

from __future__ import annotations

import re
from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse

from ...accounts.ledger import invoice
from ...accounts.schemas import InvoiceOut, invoice_out
from ...accounts.tenants import Principal
from ...compute.jobs import names
from ...store import utcnow
from ..auth import principal, tenant_filter
from ..errors import HTTPError
from ..params import TenantQuery

router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=InvoiceOut, responses={200: {"content": {"text/csv": {}}}})
def usage(tenant: TenantQuery = None, month: str | None = Query(None, pattern=r"^\d{4}-\d{2}$"),
          format: Literal["json", "csv"] = "json", p: Principal = Depends(principal)):
    """The invoice of `tenant` (admins: any tenant, which they must name; tenants: their own) for `month`
    (YYYY-MM, default: this month, UTC)."""
    who = tenant_filter(p, tenant)
    if who is None:
        raise HTTPError("name the tenant to invoice: ?tenant=NAME")
    month = month or f"{utcnow():%Y-%m}"
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise HTTPError(f"bad month '{month}': expected YYYY-MM")
    inv = invoice(who, month, job_names=names)
    if format == "csv":
        return PlainTextResponse(inv.csv_text(), media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="usage-{who}-{month}.csv"'})
    return invoice_out(inv)
