"""Read a user's table (CSV/TSV, JSONL, Parquet; optionally .gz/.bz2) into normalised rows.

Every bad row is reported as `file:line: reason` so a user can fix the file; nothing is silently dropped.
Columns are addressed by *role* (text, label, image, ...) so the same reader serves every task family.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MFError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".pq": "parquet"}
MAX_ERRORS_SHOWN = 20

# A role's check returns a reason when the value is unusable. Tasks may add their own (e.g. "unreadable image").
RowCheck = Callable[[str, object], str | None]


@dataclass
class RowError:
    source: str  # the file's name, or a file's path inside an image folder/archive
    line: int | None  # None where the source is a whole file (an image), not a line of a table
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}" if self.line is None else f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Table:
    rows: list[dict]  # role -> value: str, or bytes for an encoded image
    errors: list[RowError] = field(default_factory=list)
    source: str = ""
    lines: list[int] = field(default_factory=list)  # each row's line in its table file (empty for image folders)


def default_check(role: str, value: object) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return f"missing {role}"
    if not isinstance(value, str):
        return None
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        return f"bad encoding in {role} (not valid UTF-8)"
    if not value.strip():
        return f"empty {role}" if role != "label" else "missing label"
    return None


def _format(path: Path) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1].lstrip(".") if suffixes and suffixes[-1] in (".gz", ".bz2") else None
    base = suffixes[-2] if compression and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
    fmt = SUFFIXES.get(base)
    if fmt is None:
        raise MFError(f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}' "
                      f"(use .csv, .tsv, .jsonl or .parquet, optionally .gz/.bz2)")
    return fmt, compression


def _text(path: Path, compression: str | None) -> str:
    raw = path.read_bytes()
    if compression == "gz":
        raw = gzip.decompress(raw)
    elif compression == "bz2":
        raw = bz2.decompress(raw)
    # surrogateescape keeps undecodable bytes visible so each bad row can be named, not the whole file refused.
    return raw.decode("utf-8-sig", errors="surrogateescape")


def _records_csv(text: str, delimiter: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    yield 1, {"__header__": header}
    start = reader.line_num + 1
    for values in reader:
        if values:
            yield start, dict(zip(header, values)) | ({"__width__": len(values)} if len(values) != len(header)
                                                      else {})
        start = reader.line_num + 1


def records_jsonl(text: str) -> Iterator[tuple[int, dict]]:
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield i, {"__error__": f"invalid JSON ({e.msg})"}
            continue
        yield i, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}


def _records_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    yield 0, {"__header__": table.column_names}
    yield from enumerate(table.to_pylist(), start=1)


def peek_columns(path: str | Path) -> set[str]:
    """The columns of a table file from its header (CSV/TSV, Parquet) or first record (JSONL), without reading
    it all: for choosing roles by what a file holds. Empty when it cannot tell."""
    path = Path(path)
    try:
        fmt, compression = _format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        opener = {"gz": gzip.open, "bz2": bz2.open}.get(compression or "", open)
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                if fmt == "jsonl":
                    obj = json.loads(line)
                    return set(obj) if isinstance(obj, dict) else set()
                return set(next(csv.reader([line], delimiter="," if fmt == "csv" else "\t")))
    except (OSError, ValueError, MFError):
        pass
    return set()


def read_table(path: str | Path, roles: Mapping[str, str], checks: Mapping[str, RowCheck] | None = None) -> Table:
    """Read `path` keeping only the columns named in `roles` (role -> column), renamed to their roles."""
    path = Path(path)
    if not path.exists():
        raise MFError(f"{path}: no such file")
    if path.is_dir():
        raise MFError(f"{path}: is a folder, expected a .csv, .jsonl or .parquet file")
    if path.stat().st_size == 0:
        raise MFError(f"{path}: file is empty")
    fmt, compression = _format(path)
    if fmt == "parquet":
        records = _records_parquet(path)
    else:
        text = _text(path, compression)
        records = records_jsonl(text) if fmt == "jsonl" else _records_csv(text, "," if fmt == "csv" else "\t")

    checks = checks or {}
    table = Table(rows=[], source=str(path))
    seen_columns: set[str] = set()
    for line, rec in records:
        if "__header__" in rec:
            seen_columns = set(rec["__header__"])
            _require_columns(path, roles, seen_columns)
            continue
        if "__error__" in rec:
            table.errors.append(RowError(path.name, line, rec["__error__"]))
            continue
        if "__width__" in rec:
            table.errors.append(RowError(path.name, line, f"has {rec['__width__']} fields, header has "
                                                          f"{len(seen_columns)}"))
            continue
        if fmt == "jsonl":
            seen_columns |= rec.keys()
        row, reason = {}, None
        for role, column in roles.items():
            value = rec.get(column)
            reason = (checks.get(role) or default_check)(role, value)
            if reason:
                break
            row[role] = _normalise(role, value)
        if reason:
            table.errors.append(RowError(path.name, line, reason))
        else:
            table.rows.append(row)
            table.lines.append(line)
    if fmt == "jsonl":
        _require_columns(path, roles, seen_columns)
    if not table.rows and not table.errors:
        raise MFError(f"{path}: no data rows")
    return table


def _normalise(role: str, value: object) -> object:
    """Strings stripped; lists and objects as JSON; an image column may hold encoded bytes (Parquet binary, or
    Hugging Face's `{"bytes", "path"}` struct) which stay bytes; anything else becomes its string form."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | dict):  # structured values (a chat's messages) are kept as JSON text
        return json.dumps(value, ensure_ascii=False)
    if role == "image" and isinstance(value, bytes | bytearray):
        return bytes(value)
    if role == "image" and isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return _normalise(role, value.get("bytes") or value.get("path"))
    return str(value)


def _require_columns(path: Path, roles: Mapping[str, str], columns: set[str]) -> None:
    missing = [f"'{c}' ({r})" for r, c in roles.items() if c not in columns]
    if missing:
        raise MFError(f"{path}: no column {', '.join(missing)}; columns are: {', '.join(sorted(columns)) or 'none'}")


def raise_on_errors(table: Table, skip_bad_rows: bool) -> None:
    """Stop with every bad row listed, unless the user chose to skip them."""
    if not table.errors or skip_bad_rows:
        return
    shown = "\n".join(str(e) for e in table.errors[:MAX_ERRORS_SHOWN])
    more = len(table.errors) - MAX_ERRORS_SHOWN
    tail = f"\n... and {more} more" if more > 0 else ""
    raise BadRows(f"{len(table.errors)} bad row(s) in {table.source} (fix them or pass --skip-bad-rows):\n"
                  f"{shown}{tail}", table.errors)


class BadRows(MFError):
    """Rows that failed validation, each with its file and line (the API lists them one by one)."""

    def __init__(self, message: str, errors: list[RowError]):
        super().__init__(message)
        self.errors = errors
