"""Immutable dataset versions: the same normalised rows always get the same id (sha256) and version number."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import func, select

from ..artifacts import ArtifactStore, content_hash
from ..errors import MFError, NotFound
from ..store import DatasetLineage, DatasetVersion, check_name, locked_tx, session
from . import images, labels
from .ingest import RowCheck, RowError, Table, peek_columns, raise_on_errors, read_table

ROWS_FILE = "rows.parquet"
VERSION_TABLES = (DatasetVersion.__tablename__, DatasetLineage.__tablename__)


@dataclass
class DatasetRef:
    name: str
    version: int
    artifact_id: str
    n_rows: int
    stats: dict
    skipped: int = 0
    tenant: str = "default"
    label_sources: dict[str, int] | None = None  # an order's training view: its rows by label source

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def stats_of(rows: list[dict]) -> dict:
    out: dict = {"rows": len(rows)}
    if rows and "label" in rows[0]:
        counts = Counter(r["label"] for r in rows if r["label"] is not None)
        out["labels"] = dict(sorted(counts.items()))
        if len(rows) > sum(counts.values()):
            out["unlabeled"] = len(rows) - sum(counts.values())
    if rows and "label_source" in rows[0]:
        sources = Counter(r["label_source"] or "unlabeled" for r in rows)
        out["label_sources"] = {k: sources[k] for k in (*labels.SOURCES, "unlabeled") if sources.get(k)}
    if rows and "messages" in rows[0]:
        turns = sorted(len(json.loads(r["messages"])) for r in rows)
        out["messages_median"] = turns[len(turns) // 2]
    if rows and "completion" in rows[0]:
        lengths = sorted(len(r["completion"]) for r in rows)
        out["completion_chars_median"] = lengths[len(lengths) // 2]
    if rows and "text" in rows[0]:
        lengths = sorted(len(r["text"]) for r in rows)
        out["text_chars_median"] = lengths[len(lengths) // 2]
    if rows and "image" in rows[0]:
        out |= _image_stats(rows)
    return out


def _image_stats(rows: list[dict]) -> dict:
    """Sizes and colour modes from each image's header (no decode), so a task can pick its input size."""
    headers = [images.image_header(r["image"]) for r in rows]
    sizes = Counter(h[0] for h in headers if h)
    return {"image_size": sizes.most_common(1)[0][0] if sizes else None,
            "image_sizes": dict(sizes.most_common(5)),
            "image_modes": dict(sorted(Counter(h[1] for h in headers if h).items())),
            "image_bytes_total": sum(len(r["image"]) for r in rows)}


def add_table(name: str, table: Table, *, tenant: str = "default", source: str | None = None,
              parent: DatasetRef | None = None, operation: str = "ingest", details: dict | None = None) -> DatasetRef:
    """Store `table.rows` as a content-addressed artifact and register it as the next version of `name`, with
    its lineage (`operation`, the `parent` version it was derived from, `details`). Rows equal to an existing
    version's are that version (its lineage unchanged)."""
    check_name(name)
    rows = table.rows
    stats = stats_of(rows)
    artifact_id = store_rows(rows, producer="ingest", params={"source": source or table.source}, stats=stats)
    # Serialised: two uploads of one name at once would both read the same latest version and one would fail the
    # (name, version) unique constraint (a 500 under load, bench/load.py).
    with locked_tx(VERSION_TABLES) as s:
        other = s.scalar(select(DatasetVersion.tenant).where(DatasetVersion.name == name).limit(1))
        if other is not None and other != tenant:
            raise MFError(f"dataset name '{name}' belongs to another tenant; choose another name")
        existing = s.scalar(select(DatasetVersion).where(DatasetVersion.name == name,
                                                         DatasetVersion.artifact_id == artifact_id))
        if existing is None:
            latest = s.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.name == name)) or 0
            existing = DatasetVersion(name=name, version=latest + 1, artifact_id=artifact_id, tenant=tenant,
                                      source=source or table.source, n_rows=len(rows), stats=stats)
            s.add(existing)
            s.flush()
            parent_id = None
            if parent is not None:
                parent_id = s.scalar(select(DatasetVersion.id).where(DatasetVersion.name == parent.name,
                                                                     DatasetVersion.version == parent.version))
            s.add(DatasetLineage(dataset_version_id=existing.id, parent_id=parent_id, operation=operation,
                                 details=details or {}))
        return DatasetRef(existing.name, existing.version, artifact_id, existing.n_rows, existing.stats,
                          skipped=len(table.errors), tenant=existing.tenant)


def store_rows(rows: list[dict], *, producer: str, params: dict, stats: dict | None = None,
               identity: dict | None = None) -> str:
    """Rows as a content-addressed dataset artifact (what the split stage reads); its id. `identity` is what else,
    beyond the rows, the artifact stands for (it enters the id)."""
    artifact_id = content_hash({"kind": "dataset", "rows": rows, **({"identity": identity} if identity else {})})
    store = ArtifactStore()
    if not store.exists(artifact_id):
        with store.create(artifact_id, kind="dataset", producer=producer, params=params) as (tmp, extra):
            pd.DataFrame(rows).to_parquet(tmp / ROWS_FILE, index=False)
            extra["metrics"] = stats if stats is not None else stats_of(rows)
    return artifact_id


def training_view(ref: DatasetRef, *, use_pseudo_labels: bool = False,
                  min_confidence: float | None = None) -> DatasetRef:
    """What an order trains on from a version: the version itself when every row has a label from its file;
    else its labeled rows (reviewed ones, plus the teacher's when asked; see labels.training_view) stored as an
    artifact of their own, with the count of rows per label source."""
    import pyarrow.parquet as pq

    if "label_source" not in pq.read_schema(ArtifactStore().path(ref.artifact_id) / ROWS_FILE).names:
        return dataclasses.replace(ref, label_sources={"human": ref.n_rows})
    df = load_rows(ref.artifact_id)
    view, sources = labels.training_view(df, use_pseudo_labels=use_pseudo_labels, min_confidence=min_confidence)
    rows = labels.records(view)
    if not rows:
        raise MFError(f"dataset {ref} has no labeled rows to train on"
                      + ("" if use_pseudo_labels else " (its teacher's labels count only with use_pseudo_labels)"))
    # The view of a version with unlabeled rows stands for its pool too: the transfer set reads the pool through
    # it (unlabeled_inputs), so two versions with the same labeled rows but different pools must not share a view
    # (nor the split, teacher and transfer set cached under it). Without a pool, equal rows share everything.
    pool = labels.to_predict(df)
    identity = {"unlabeled_pool": ref.artifact_id} if len(pool) else None
    artifact_id = store_rows(rows, producer="label_view", params={
        "dataset": str(ref), "dataset_artifact": ref.artifact_id, "use_pseudo_labels": use_pseudo_labels,
        "min_confidence": min_confidence, "label_sources": sources}, identity=identity)
    return dataclasses.replace(ref, artifact_id=artifact_id, n_rows=len(rows), stats=stats_of(rows),
                               label_sources=sources)


def roles_for(path: str | Path, *, text: str = "text", label: str = "label", image: str | None = None) -> dict:
    """Column names by role for a source: an image folder/archive has fixed roles; a table holding chat
    conversations (`messages`) or prompt/completion pairs is generative data; else text (or image) + label."""
    if images.is_image_source(Path(path)):
        return {"image": "image", "label": "label"}
    columns = peek_columns(path)
    if "messages" in columns:
        return {"messages": "messages"}
    if {"prompt", "completion"} <= columns and label not in columns:
        return {"prompt": "prompt", "completion": "completion"}
    return {"image": image, "label": label} if image else {"text": text, "label": label}


def add_file(name: str, path: str | Path, roles: Mapping[str, str], *, skip_bad_rows: bool = False,
             checks: Mapping[str, RowCheck] | None = None, tenant: str = "default",
             unlabeled: str | Path | None = None) -> DatasetRef:
    """Add a table file, or an image folder/archive (roles image+label), as the next version of `name`.

    A table with an `image` role names image files relative to its own folder; they are read in as bytes.
    Image bytes are judged by decoding them, so a `checks["image"]` (meant for other values) is not applied.
    `unlabeled` adds rows without labels (a table with the input column, or a folder/archive of images) after
    the labeled seed rows of `path`: the dataset then records each row's label source (see labels.py).
    """
    table = read_source(path, roles, checks)
    raise_on_errors(table, skip_bad_rows)
    if not table.rows:
        raise MFError(f"{path}: every row is bad; nothing to add")
    details: dict = {"source": str(Path(path).resolve())}
    if unlabeled is not None:
        pool = read_unlabeled(unlabeled, roles, checks)
        raise_on_errors(pool, skip_bad_rows)
        if not pool.rows:
            raise MFError(f"{unlabeled}: every row is bad; nothing to add")
        table = Table(rows=labels.combine(table.rows, pool.rows), errors=table.errors + pool.errors,
                      source=table.source)
        details |= {"unlabeled_source": str(Path(unlabeled).resolve())}
    return add_table(name, table, tenant=tenant, source=str(Path(path).resolve()), details=details)


def read_unlabeled(path: str | Path, roles: Mapping[str, str],
                   checks: Mapping[str, RowCheck] | None = None) -> Table:
    """Unlabeled rows: a table with the input columns of `roles` (no label column needed), or any folder or
    archive of images."""
    path = Path(path)
    inputs = {role: col for role, col in roles.items() if role != "label"}
    if images.is_image_source(path):
        if "image" not in inputs:
            raise MFError(f"{path}: a folder or archive holds images, but this dataset's rows are "
                          f"{' and '.join(inputs)}")
        return images.read_unlabeled_images(path)
    table = read_table(path, inputs, {r: c for r, c in (checks or {}).items() if r in inputs and r != "image"})
    return images.resolve_image_paths(table, path.parent) if "image" in inputs else table


def derive(parent: DatasetRef, df: pd.DataFrame, operation: str, details: dict) -> DatasetRef:
    """A new version of `parent`'s dataset holding `df` (its rows with provenance), recorded as made from it."""
    table = Table(rows=labels.records(df), source=f"{parent}")
    return add_table(parent.name, table, tenant=parent.tenant, source=f"{operation} of {parent}", parent=parent,
                     operation=operation, details=details)


def lineage(ref: str) -> list[dict]:
    """The version and its ancestors, newest first: version, operation, details, label sources, parent."""
    d = resolve(ref)
    chain: list[dict] = []
    with session() as s:
        row = s.scalar(select(DatasetVersion).where(DatasetVersion.name == d.name,
                                                    DatasetVersion.version == d.version))
        seen: set[int] = set()
        while row is not None and row.id not in seen:
            seen.add(row.id)
            lin = s.scalar(select(DatasetLineage).where(DatasetLineage.dataset_version_id == row.id))
            parent = s.get(DatasetVersion, lin.parent_id) if lin is not None and lin.parent_id else None
            stats = row.stats or {}
            chain.append({
                "dataset": f"{row.name}@{row.version}", "id": row.artifact_id, "rows": row.n_rows,
                "operation": lin.operation if lin is not None else "ingest",
                "parent": f"{parent.name}@{parent.version}" if parent is not None else None,
                "label_sources": stats.get("label_sources") or ({"human": row.n_rows} if "labels" in stats else {}),
                "details": lin.details if lin is not None else {"source": row.source},
                "created": row.created.isoformat(timespec="seconds") if row.created else None,
            })
            row = parent
    return chain


def read_source(path: str | Path, roles: Mapping[str, str],
                checks: Mapping[str, RowCheck] | None = None) -> Table:
    """Rows from a table file, or from an image folder/archive; bad rows in `errors`."""
    path = Path(path)
    other_checks = {role: check for role, check in (checks or {}).items() if role != "image"}
    if images.is_image_source(path):
        if set(roles) != images.IMAGE_ROLES:
            raise MFError(f"{path}: a folder or archive is an image dataset (roles image and label), "
                          f"not {' and '.join(roles)}")
        return _apply_checks(images.read_image_folder(path), other_checks)
    table = read_table(path, roles, other_checks)
    return images.resolve_image_paths(table, path.parent) if "image" in roles else table


def _apply_checks(table: Table, checks: Mapping[str, RowCheck]) -> Table:
    """A task's extra checks (e.g. on labels) for rows that did not come through read_table."""
    if not checks:
        return table
    out = Table(rows=[], errors=list(table.errors), source=table.source)
    for row in table.rows:
        failed = next(((role, r) for role, check in checks.items() if role in row and (r := check(role, row[role]))),
                      None)
        if failed:
            out.errors.append(RowError(table.source, None, f"{failed[0]} '{row[failed[0]]}': {failed[1]}"))
        else:
            out.rows.append(row)
    return out


def resolve(ref: str) -> DatasetRef:
    """`name` (latest) or `name@version`."""
    name, _, ver = ref.partition("@")
    with session() as s:
        q = select(DatasetVersion).where(DatasetVersion.name == name)
        if ver:
            if not ver.isdigit():
                raise MFError(f"bad dataset version '{ver}' in '{ref}': expected a number")
            q = q.where(DatasetVersion.version == int(ver))
        row = s.scalar(q.order_by(DatasetVersion.version.desc()).limit(1))
        if row is None:
            raise NotFound(f"no dataset '{ref}' (see `mf data ls`)")
        return DatasetRef(row.name, row.version, row.artifact_id, row.n_rows, row.stats, tenant=row.tenant)


def owner(name: str) -> str | None:
    """The tenant a dataset name belongs to, or None if it has no version yet."""
    with session() as s:
        return s.scalar(select(DatasetVersion.tenant).where(DatasetVersion.name == name).limit(1))


def list_versions() -> list[DatasetVersion]:
    with session() as s:
        return list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.name, DatasetVersion.version)))


def load_rows(artifact_id: str) -> pd.DataFrame:
    return pd.read_parquet(ArtifactStore().path(artifact_id) / ROWS_FILE)


def unlabeled_inputs(artifact_id: str | None, role: str) -> pd.DataFrame:
    """The inputs (column `role`) of a dataset's rows nobody labeled, for a split made from `artifact_id` (the
    version itself, or the labeled view an order trained on): what a teacher can label for distillation."""
    store = ArtifactStore()
    if not artifact_id or not store.exists(artifact_id):
        return pd.DataFrame({role: []})
    source = store.get(artifact_id).manifest.get("params", {}).get("dataset_artifact") or artifact_id
    df = load_rows(source)
    if "label_source" not in df or role not in df:
        return pd.DataFrame({role: []})
    return labels.to_predict(df)[[role]].reset_index(drop=True)
