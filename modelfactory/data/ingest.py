"""Read a user's table (CSV/TSV, JSONL, Parquet; optionally .gz/.bz2) into normalised rows.

Every bad row is reported as `file:line: reason` so a user can fix the file; nothing is silently dropped.
Columns are addressed by *role* (text, label, image, ...) so the same reader serves every task family.

Reading is bounded: a table (compressed or not) is decompressed as a stream and refused once it expands past
MF_MAX_TABLE_MB (default 2048); a line longer than MAX_LINE_CHARS or a field longer than the csv module's limit
is a row error like any other, read past without holding it.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MFError

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
            ".pq": "parquet"}
MAX_ERRORS_SHOWN = 20
MAX_LINE_CHARS = 4 << 20  # one physical line of a CSV/TSV/JSONL file; longer ones are row errors
PARQUET_BATCH_ROWS = 256

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


def max_table_bytes() -> int:
    from ..config import settings

    return settings().max_table_bytes


def _too_big(path: Path, cap: int) -> MFError:
    return MFError(f"{path.name}: refused: it expands to more than {cap / (1 << 20):g} MiB "
                   f"(limit MF_MAX_TABLE_MB) — a compression bomb, or a table to split")


class _Capped(io.RawIOBase):
    """The bytes of `f` (a file, or a gzip/bz2 stream decompressing as it is read), refused past `cap`."""

    def __init__(self, f, cap: int, path: Path):
        self.f, self.cap, self.path, self.total = f, cap, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            n = self.f.readinto(b)
        except (OSError, EOFError, zlib.error) as e:  # a corrupt or cut-short .gz/.bz2
            raise MFError(f"{self.path.name}: cannot be decompressed ({e or type(e).__name__})") from None
        self.total += n
        if self.total > self.cap:
            raise _too_big(self.path, self.cap)
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def _text(path: Path, compression: str | None) -> io.TextIOWrapper:
    """The file as a text stream, decompressed as it is read (never whole in memory) and capped."""
    opener = {"gz": gzip.open, "bz2": bz2.open}.get(compression or "", open)
    raw = _Capped(opener(path, "rb"), max_table_bytes(), path)
    # surrogateescape keeps undecodable bytes visible so each bad row can be named, not the whole file refused.
    return io.TextIOWrapper(io.BufferedReader(raw, 1 << 16), encoding="utf-8-sig", errors="surrogateescape",
                            newline="")


class _Lines:
    """Physical lines of a text stream, each at most MAX_LINE_CHARS: a longer one is cut there (its rest read
    and dropped, never held) and its number kept in `overlong`, so the row holding it becomes a row error."""

    def __init__(self, stream: io.TextIOBase, name: str = "", max_chars: int | None = None):
        self.stream, self.name, self.overlong, self.n = stream, name, set(), 0
        self.max_chars = max_chars or MAX_LINE_CHARS

    def __iter__(self) -> Iterator[str]:
        while True:
            line = self.stream.readline(self.max_chars)
            if not line:
                return
            self.n += 1
            if len(line) >= self.max_chars and not line.endswith(("\n", "\r")):
                self.overlong.add(self.n)
                while (rest := self.stream.readline(self.max_chars)) and not rest.endswith(("\n", "\r")):
                    pass
                line = line + "\n"
            yield line


def _overlong(line: int) -> str:
    return f"line {line} is longer than {MAX_LINE_CHARS} characters"


def _records_csv(lines: _Lines, delimiter: str) -> Iterator[tuple[int, dict]]:
    reader = csv.reader(lines, delimiter=delimiter)
    start = 1
    header = None
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a field past the csv module's limit, a stray NUL, ...: this row only
            values = {"__error__": _csv_problem(e)}
        end = reader.line_num
        long = next((n for n in range(start, end + 1) if n in lines.overlong), None)
        if header is None:
            if long is not None or isinstance(values, dict):
                raise MFError(f"{lines.name}: line 1: the header is not a readable row of column names "
                              f"({_overlong(long) if long else values['__error__']})")
            header = values
            yield 1, {"__header__": header}
        elif long is not None:
            yield start, {"__error__": _overlong(long)}
        elif isinstance(values, dict):
            yield start, values
        elif values:
            yield start, dict(zip(header, values)) | ({"__width__": len(values)} if len(values) != len(header)
                                                      else {})
        start = reader.line_num + 1


def _csv_problem(e: csv.Error) -> str:
    text = str(e)
    if "field larger than field limit" in text:
        return f"a field is longer than {csv.field_size_limit()} characters"
    return f"not a readable CSV row ({text})"


def records_jsonl(text: str | _Lines) -> Iterator[tuple[int, dict]]:
    """(line, object) for each non-blank line; a bad line gives `{"__error__": reason}`."""
    lines = text.splitlines() if isinstance(text, str) else text
    overlong = lines.overlong if isinstance(lines, _Lines) else set()
    for i, line in enumerate(lines, start=1):
        if i in overlong:
            yield i, {"__error__": _overlong(i)}
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield i, {"__error__": f"invalid JSON ({e.msg})"}
            continue
        except RecursionError:
            yield i, {"__error__": "invalid JSON (nested too deeply)"}
            continue
        yield i, obj if isinstance(obj, dict) else {"__error__": "not a JSON object"}


def _size_of(value: object) -> int:
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_size_of(v) for v in value.values()) + 8
    if isinstance(value, list):
        return sum(_size_of(v) for v in value) + 8
    return 8


def _records_parquet(path: Path, columns: set[str]) -> Iterator[tuple[int, dict]]:
    """Only the columns asked for, a few rows at a time, refused once what was decoded passes the cap (a small
    Parquet file can hold gigabytes of dictionary- or run-length-encoded values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cap = max_table_bytes()
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        yield 0, {"__header__": names}
        wanted = [c for c in names if c in columns]
        meta = pf.metadata
        declared = sum(meta.row_group(g).column(c).total_uncompressed_size
                       for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                       if meta.schema.column(c).path.split(".")[0] in wanted)
        if declared > cap:
            raise _too_big(path, cap)
        total, line = 0, 1
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            recs = batch.to_pylist()  # a dictionary column's batch is small in Arrow, not once decoded: count both
            total += max(batch.nbytes, sum(_size_of(v) for rec in recs for v in rec.values()))
            if total > cap:
                raise _too_big(path, cap)
            for rec in recs:
                yield line, rec
                line += 1
    except (pa.ArrowException, OSError) as e:
        raise MFError(f"{path.name}: not a readable Parquet file ({str(e).splitlines()[0] if str(e) else e})"
                      ) from None


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
            for _ in range(1000):  # the first non-blank line, read no further than MAX_LINE_CHARS
                line = f.readline(MAX_LINE_CHARS)
                if not line:
                    break
                if not line.strip():
                    continue
                if fmt == "jsonl":
                    obj = json.loads(line)
                    return set(obj) if isinstance(obj, dict) else set()
                return set(next(csv.reader([line], delimiter="," if fmt == "csv" else "\t")))
    except (OSError, ValueError, EOFError, RecursionError, csv.Error, zlib.error, MFError):
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
    if fmt != "parquet" and path.stat().st_size > max_table_bytes():
        raise _too_big(path, max_table_bytes())
    stream = None
    if fmt == "parquet":
        records = _records_parquet(path, set(roles.values()))
    else:
        stream = _text(path, compression)
        lines = _Lines(stream, path.name)
        records = records_jsonl(lines) if fmt == "jsonl" else _records_csv(lines, "," if fmt == "csv" else "\t")
    try:
        return _read_records(path, fmt, records, roles, checks)
    finally:
        if stream is not None:
            stream.close()


def _read_records(path: Path, fmt: str, records: Iterator[tuple[int, dict]], roles: Mapping[str, str],
                  checks: Mapping[str, RowCheck] | None) -> Table:
    checks = checks or {}
    table = Table(rows=[], source=str(path))
    seen_columns: set[str] = set()
    for line, rec in records:
        if "__header__" in rec:
            seen_columns = set(rec["__header__"])
            if any(_undecodable(c) for c in seen_columns):
                raise MFError(f"{path.name}: line 1: the header is not valid UTF-8 "
                              f"({', '.join(shown(c) for c in rec['__header__'] if _undecodable(c))}); "
                              "save the file as UTF-8")
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


def _undecodable(value: object) -> bool:
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def shown(value: object, limit: int = 80) -> str:
    """A value safe to put in a message: undecodable bytes escaped (never a lone surrogate that cannot be
    printed or stored), and cut to `limit` characters."""
    text = str(value)
    cut = len(text) > limit
    text = text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
    return f"'{text}...'" if cut else f"'{text}'"


def _require_columns(path: Path, roles: Mapping[str, str], columns: set[str]) -> None:
    missing = [f"{shown(c)} ({r})" for r, c in roles.items() if c not in columns]
    if missing:
        listed = sorted(columns)
        names = ", ".join(shown(c)[1:-1] for c in listed[:50]) + (f", ... ({len(listed)} columns)"
                                                                  if len(listed) > 50 else "")
        raise MFError(f"{path}: no column {', '.join(missing)}; columns are: {names or 'none'}")


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
