"""Datasets: upload (multipart, streamed to disk under a size limit, validated exactly like `mf data add`, bad
rows listed one by one in the response), list, and show versions with their stats."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, UploadFile

from ...accounts.tenants import Principal
from ...config import settings
from ...data import versions
from ...data.ingest import BadRows
from ...data.schemas import DatasetAdded, DatasetOut, DatasetSummary, added, summaries, version_out
from ...errors import MFError, NotFound
from ..auth import principal, tenant_filter, visible
from ..errors import Forbidden, HTTPError
from ..params import NAME, TenantQuery

router = APIRouter(tags=["datasets"])


def upload_limit() -> int:
    """MF_UPLOAD_MAX_MB (default 512): the largest upload accepted, multipart overhead included."""
    return int(settings().upload_max_mb * 1e6)


MAX_ROWS_LISTED = 100


def bad_rows(e: BadRows, filename: str) -> HTTPError:
    """The rows, each with its file and line (the first MAX_ROWS_LISTED, and how many more in `rows_omitted`);
    the summary names the upload, not where the server kept it."""
    return HTTPError(f"{len(e.errors)} bad row(s) in {filename}: fix them, or skip them (skip_bad_rows) to add "
                     f"the good rows only", rows=[
        {"where": f"{r.source}:{r.line}" if r.line is not None else r.source, "message": r.reason}
        for r in e.errors[:MAX_ROWS_LISTED]], rows_omitted=max(0, len(e.errors) - MAX_ROWS_LISTED))


def _safe_filename(name: str | None) -> str:
    """The upload's base name, reduced to characters that are safe in a path (its extension picks the reader)."""
    base = Path(name or "upload").name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".") or "upload"


@router.post("/datasets", response_model=DatasetAdded, status_code=201,
             responses={400: {"description": "bad rows, listed in `rows`"}, 413: {"description": "too large"}})
def upload(name: str = Form(pattern=NAME, description="dataset name; a new version if it exists"),
           file: UploadFile = File(description="CSV, JSONL or Parquet table, or a .zip/.tar.gz of class folders "
                                               "of images"),
           text: str = Form("text", max_length=200), label: str = Form("label", max_length=200),
           image: str | None = Form(None, max_length=200, description="image-path column: an image table"),
           skip_bad_rows: bool = Form(False), p: Principal = Depends(principal)) -> DatasetAdded:
    """Add an uploaded file as the next version of dataset `name` (the caller's tenant owns it)."""
    if p.tenant is None:
        raise Forbidden("datasets belong to tenants: upload with a tenant's key")
    owner = versions.owner(name)
    if owner not in (None, p.tenant):  # said without naming whose it is
        raise NotFound(f"dataset name '{name}' is not available to this tenant; choose another name")
    folder = settings().home / "uploads" / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    try:
        path = folder / _safe_filename(file.filename)
        with open(path, "wb") as out:
            shutil.copyfileobj(file.file, out, 1 << 20)
        if path.stat().st_size == 0:
            raise MFError(f"{path.name}: the uploaded file is empty")
        try:
            ref = versions.add_file(name, path, versions.roles_for(path, text=text, label=label, image=image),
                                    skip_bad_rows=skip_bad_rows, tenant=p.tenant)
        except BadRows as e:
            raise bad_rows(e, path.name) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return added(ref)


@router.get("/datasets", response_model=list[DatasetSummary])
def datasets(tenant: TenantQuery = None, p: Principal = Depends(principal)) -> list[DatasetSummary]:
    """Datasets (latest version of each) of the caller's tenant, or every tenant's for an admin."""
    only = tenant_filter(p, tenant)
    return summaries([r for r in versions.list_versions() if only is None or r.tenant == only])


@router.get("/datasets/{name}", response_model=DatasetOut)
def show(name: str, p: Principal = Depends(principal)) -> DatasetOut:
    """Every version of a dataset with its stats (label counts, text lengths or image sizes)."""
    rows = [r for r in versions.list_versions() if r.name == name]
    if not rows:
        raise NotFound(f"no dataset '{name}'")
    visible(p, rows[0].tenant, f"dataset '{name}'")
    return DatasetOut(name=name, tenant=rows[0].tenant, versions=[version_out(r) for r in rows])
