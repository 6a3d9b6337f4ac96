"""Datasets as the world sees them: one typed shape for `mf data add|ls|show --json` (on this machine or through
`--server`) and for `/api/v1/datasets`. A version's `source` is the file's name only: where a server keeps its
uploads is nobody else's business."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..store import DatasetVersion
from .versions import DatasetRef


class DatasetVersionOut(BaseModel):
    """One immutable version of a dataset."""

    name: str
    tenant: str
    version: int
    rows: int
    stats: dict[str, Any]
    source: str
    artifact: str
    created: dt.datetime


class DatasetSummary(BaseModel):
    """A dataset: how many versions, and its latest."""

    name: str
    tenant: str
    versions: int
    latest: int
    rows: int
    created: dt.datetime


class DatasetOut(BaseModel):
    name: str
    tenant: str
    versions: list[DatasetVersionOut]


class DatasetAdded(BaseModel):
    """What adding a file made: the new version, its rows, the bad rows skipped."""

    name: str
    version: int
    artifact: str
    rows: int
    skipped: int
    stats: dict[str, Any]


class DatasetShown(DatasetVersionOut):
    """A version, with the chain of versions it was made from when asked (`mf data show --lineage`)."""

    lineage: list[dict[str, Any]] | None = None


def version_out(row: DatasetVersion) -> DatasetVersionOut:
    return DatasetVersionOut(name=row.name, tenant=row.tenant, version=row.version, rows=row.n_rows,
                             stats=row.stats or {}, source=Path(row.source).name, artifact=row.artifact_id,
                             created=row.created)


def summaries(rows: list[DatasetVersion]) -> list[DatasetSummary]:
    """The latest version of each dataset, from rows ordered by name and version (`versions.list_versions`)."""
    out: dict[str, DatasetSummary] = {}
    for r in rows:
        prev = out.get(r.name)
        out[r.name] = DatasetSummary(name=r.name, tenant=r.tenant, versions=(prev.versions if prev else 0) + 1,
                                     latest=r.version, rows=r.n_rows, created=r.created)
    return list(out.values())


def added(ref: DatasetRef) -> DatasetAdded:
    return DatasetAdded(name=ref.name, version=ref.version, artifact=ref.artifact_id, rows=ref.n_rows,
                        skipped=ref.skipped, stats=ref.stats)


def shown(ref: str, *, lineage: bool = False) -> DatasetShown:
    """A version (`name`, the latest, or `name@3`), with its lineage when asked."""
    from .versions import lineage as chain_of
    from .versions import list_versions, resolve

    d = resolve(ref)
    row = next(r for r in list_versions() if r.name == d.name and r.version == d.version)
    return DatasetShown(**version_out(row).model_dump(), lineage=chain_of(str(d)) if lineage else None)
