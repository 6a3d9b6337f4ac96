"""What is left of a tenant's hard monthly quota, and refusing work whose estimated cost does not fit in it.

Left = quota - this month's usage (the ledger) - what the tenant's queued and running jobs may still use (the
pool's reservations, which the caller passes: accounts knows nothing of jobs). `tenants.check_quota` prices a job
by resources x time limit; an order's stage jobs have no time limit, so the factory estimates them
(factory/cost.py) and asks here whether the estimate fits, before it accepts the order.

Why the check must share a transaction with the reservation: else two orders submitted at once by one tenant
could both pass it on the same "left". Callers check and reserve inside one pool transaction, which holds the
pool's write lock from its first statement (SQLite `BEGIN IMMEDIATE`, a PostgreSQL advisory lock); on
PostgreSQL the tenant's row is also read `FOR UPDATE`, so a check made in any other transaction waits too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import QuotaExceeded
from .ledger import month_usage
from .tables import Tenant
from .tenants import tenant_row


@dataclass(frozen=True)
class Left:
    """One hard quota of one tenant this month, in hours of its resource."""

    tenant: str
    resource: str  # 'CPU' | 'GPU'
    quota: float
    used: float
    reserved: float
    month: str

    @property
    def left(self) -> float:
        return max(0.0, self.quota - self.used - self.reserved)


def quota_left(s: Session, tenant: str, now: dt.datetime, *, reserved_cpu_hours: float = 0.0,
               reserved_gpu_hours: float = 0.0) -> dict[str, Left]:
    """{'CPU': Left, 'GPU': Left} for the quotas `tenant` has (an unlimited resource is absent)."""
    # the row locked until the transaction ends (PostgreSQL; SQLite has no row locks, its writers are serialised)
    row = s.scalar(select(Tenant).where(Tenant.name == tenant).with_for_update()) or tenant_row(s, tenant)
    used_cpu, used_gpu = month_usage(s, tenant, now)
    out = {}
    for label, quota, used, reserved in (("CPU", row.cpu_hours_month, used_cpu, reserved_cpu_hours),
                                         ("GPU", row.gpu_hours_month, used_gpu, reserved_gpu_hours)):
        if quota is not None:
            out[label] = Left(tenant, label, float(quota), used / 3600, reserved, f"{now:%Y-%m}")
    return out


def refuse_over_quota(s: Session, tenant: str, *, what: str, cpu_hours: float, gpu_hours: float,
                      now: dt.datetime, reserved_cpu_hours: float = 0.0, reserved_gpu_hours: float = 0.0,
                      detail: str = "") -> None:
    """Raise QuotaExceeded when `what` (e.g. "order 'x'"), estimated at `cpu_hours` / `gpu_hours`, needs more
    than is left of a quota of `tenant`; the message names the estimate and what is left. A resource the work
    does not use is never the reason."""
    for label, left in quota_left(s, tenant, now, reserved_cpu_hours=reserved_cpu_hours,
                                  reserved_gpu_hours=reserved_gpu_hours).items():
        asked = cpu_hours if label == "CPU" else gpu_hours
        if asked <= 0 or asked <= left.left + 1e-9:
            continue
        raise QuotaExceeded(
            f"{what} is estimated at {asked:.2f} {label}-hours{f' ({detail})' if detail else ''}, more than tenant "
            f"'{tenant}' has left of its monthly {label} quota: {left.left:.2f} of {left.quota:g} {label}-hours "
            f"left in {left.month} ({left.used:.2f} used, {left.reserved:.2f} reserved by queued/running jobs); "
            f"refused (an operator can raise it: `mf tenants set {tenant} --{label.lower()}-hours H`)")
