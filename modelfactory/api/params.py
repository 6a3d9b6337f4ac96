"""Parameter types shared by the routes, bounded so that no value a client sends can reach the database as
something it cannot hold (a 40-digit id, a tenant name with characters a header cannot carry)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"  # tenants, datasets, models: what store.check_name accepts
MAX_ID = 2**53  # ids fit a JSON number exactly, and every database's integer

TenantQuery = Annotated[str | None, Query(pattern=NAME, description="only this tenant's (admins)")]
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
