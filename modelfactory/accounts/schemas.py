"""Tenants and invoices as the world sees them: one typed shape for `mf tenants add|ls --json` and `mf usage
--json` (on this machine or through `--server`) and for `/api/v1/tenants` and `/api/v1/usage`."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from .ledger import InferenceLine, Invoice, InvoiceLine
from .tenants import KeyInfo, TenantInfo


class TenantCreated(BaseModel):
    tenant: TenantInfo
    api_key: str = Field(description="shown this once; only its hash is stored")


@dataclass
class KeyCreated(KeyInfo):
    """A new API key's info, with the key itself: shown this once (only its hash is stored)."""

    key: str


class InvoiceOut(BaseModel):
    """A tenant's invoice for a month: every job attempt, and its models' inference, one line per version."""

    tenant: str
    month: str = Field(description="YYYY-MM, UTC")
    currency: str
    lines: list[InvoiceLine]
    inference: list[InferenceLine]
    cpu_hours: float
    gpu_hours: float
    total: float
    by_outcome: dict[str, float] = Field(description="cost by attempt outcome, and `inference` for serving")


def invoice_out(inv: Invoice) -> InvoiceOut:
    return InvoiceOut.model_validate(inv.as_dict())
