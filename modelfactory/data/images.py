"""Image-classification datasets: class folders of image files, archives of them, or tables of image paths.

A row is `{"image": <the file's original encoded bytes>, "label": <str>}`: keeping the encoded bytes (not decoded
pixels) keeps datasets small, keeps the id a hash of exactly what the user gave, and leaves resizing to the task.

Folders and archives are read by `archives.py` (in memory, never extracted, unsafe archives refused whole);
every other bad file becomes a row error `path: reason`, as for tables.
"""

from __future__ import annotations

import io
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import MFError
from .archives import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TOTAL_BYTES,
    DRIVE,
    Entry,
    Limits,
    archive_kind,
    read_entries,
    read_file,
    shown_path,
    size_text,
)
from .ingest import RowError, Table, default_check

MAX_IMAGE_PIXELS = 64_000_000  # 8000x8000: far beyond a classifier's input, well below a decompression bomb
IMAGE_ROLES = {"image", "label"}
_PILLOW_LOCK = threading.Lock()


# --- one image ------------------------------------------------------------------------------------------------
def check_image(data: bytes) -> str | None:
    """Why `data` is not a usable image, or None. Decodes it fully: a header alone does not prove the pixels."""
    with _strict_pillow():
        return _decode_problem(data)


@contextmanager
def _strict_pillow() -> Iterator[None]:
    """Pillow's behaviour hangs on module globals another library may have changed: pin them while we check.

    Truncated files must fail, not be padded with grey; the pixel limit is ours (checked from the header, so
    the message can give the size), with any leftover bomb warning raised as an error rather than printed.
    """
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, None
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def _decode_problem(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            pixels = im.width * im.height
            if pixels > MAX_IMAGE_PIXELS:
                return _too_large(pixels)
            im.verify()  # structure and checksums (PNG CRCs); the image is unusable afterwards
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # the pixels themselves: catches a file cut short
    except UnidentifiedImageError:
        return "not an image (cannot identify image file)"
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return _too_large(None)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as e:
        text = str(e)
        return "truncated image" if "truncated" in text.lower() else f"corrupt image ({text or type(e).__name__})"
    return None


def _too_large(pixels: int | None) -> str:
    if pixels is None:  # Pillow's own check (only if some format checks again): no count to show
        return f"image too large (limit {MAX_IMAGE_PIXELS} pixels)"
    return f"image too large ({pixels} pixels, limit {MAX_IMAGE_PIXELS})"


def image_header(data: bytes) -> tuple[str, str] | None:
    """('WxH', mode) from the header only (no decode): cheap enough for stats over every row."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return f"{im.width}x{im.height}", im.mode
    except Exception:  # noqa: BLE001 - stats must never fail on a row another path already judged
        return None


# --- sources ----------------------------------------------------------------------------------------------
def is_image_source(path: str | Path) -> bool:
    """True when `path` is a folder or an archive, i.e. an image dataset rather than a table file."""
    path = Path(path)
    return path.is_dir() or archive_kind(path) is not None


def read_image_folder(path: str | Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                      max_files: int = DEFAULT_MAX_FILES, max_ratio: float = DEFAULT_MAX_RATIO) -> Table:
    """Rows `{"image": bytes, "label": class folder name}` from a folder `class/*.png` or a .zip/.tar(.gz) of one.

    A root holding a single folder and no files (the usual archive wrapper) is descended into. Files below a
    class folder, however deep, belong to it. Nothing is skipped silently: files at the root, hidden files
    (.DS_Store, macOS `._*` forks), and anything that is not a decodable image become row errors `path: reason`.
    Limits bound memory and refuse archive bombs; an unsafe archive entry refuses the whole archive.
    """
    path = Path(path)
    entries = read_entries(path, Limits(max_total_bytes, max_files, max_ratio))
    if not entries:
        raise MFError(f"{path}: no files in it (expected class folders of images, e.g. cats/1.png, dogs/2.jpg)")
    return _table_of(entries, str(path))


def read_unlabeled_images(path: str | Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                          max_files: int = DEFAULT_MAX_FILES, max_ratio: float = DEFAULT_MAX_RATIO) -> Table:
    """Rows `{"image": bytes}` for every file of a folder or archive, whatever its sub-folder (unlabeled images
    for a teacher to label); the same limits and checks as `read_image_folder`."""
    path = Path(path)
    entries = sorted(read_entries(path, Limits(max_total_bytes, max_files, max_ratio)), key=lambda e: e.relpath)
    if not entries:
        raise MFError(f"{path}: no files in it (expected images)")
    table = Table(rows=[], source=str(path))
    for e in entries:
        reason = e.problem or check_image(e.data or b"")
        if reason:
            table.errors.append(RowError(shown_path(e.relpath), None, reason))
        else:
            table.rows.append({"image": e.data})
    return table


def _table_of(entries: list[Entry], source: str) -> Table:
    entries = sorted(entries, key=lambda e: e.relpath)
    depth = _wrapper_depth(entries)
    table = Table(rows=[], source=source)
    for e in entries:
        parts = e.relpath.split("/")[depth:]
        reason = e.problem or ("not inside a class folder" if len(parts) < 2 else None)
        label = parts[0].strip() if not reason else ""
        reason = reason or default_check("label", label) or check_image(e.data or b"")
        if reason:
            table.errors.append(RowError(shown_path(e.relpath), None, reason))
        else:
            table.rows.append({"image": e.data, "label": label})
    return table


def _wrapper_depth(entries: list[Entry]) -> int:
    """How many single top folders wrap everything (an archive's `dataset/` folder): labels start below them.

    A lone folder is a wrapper when it has sub-folders and no image directly inside it (a stray .DS_Store
    there must not turn the whole dataset into one class).
    """
    paths = [e.relpath.split("/") for e in entries]
    depth = 0
    while len({p[depth] for p in paths}) == 1 and all(len(p) > depth + 1 for p in paths):
        direct = [e for e, p in zip(entries, paths) if len(p) == depth + 2]
        nested = len(direct) < len(paths)
        if not nested or any(e.data is not None and check_image(e.data) is None for e in direct):
            break
        depth += 1
    return depth


# --- tables of image paths --------------------------------------------------------------------------------
def resolve_image_paths(table: Table, base_dir: Path, *,
                        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES) -> Table:
    """Replace each row's `image` (a path relative to `base_dir`, the table's folder) by the file's bytes.

    Absolute paths and paths leading out of `base_dir` (after resolving links) are refused per row: a table
    must not be a way to read arbitrary files. Rows whose `image` already holds bytes (a Parquet binary
    column) are only checked. Bad rows join `errors` as `file:line: path: reason`.
    """
    base = Path(base_dir).resolve()
    name = Path(table.source).name
    lines = table.lines or [None] * len(table.rows)
    out = Table(rows=[], errors=list(table.errors), source=table.source)
    total = 0
    for row, line in zip(table.rows, lines):
        value = row["image"]
        data, reason = (value, None) if isinstance(value, bytes) else _read_image_path(str(value), base)
        total += len(data or b"")
        if total > max_total_bytes:
            raise MFError(f"{table.source}: refused: its images total more than {size_text(max_total_bytes)} (limit)")
        reason = reason or check_image(data or b"")
        if reason:
            shown = "" if isinstance(value, bytes) else f"{shown_path(str(value))}: "
            out.errors.append(RowError(name, line, shown + reason))
        else:
            out.rows.append({**row, "image": data})
            out.lines.append(line)
    out.errors.sort(key=lambda e: e.line or 0)
    return out


def _read_image_path(value: str, base: Path) -> tuple[bytes | None, str | None]:
    if value.startswith(("/", "\\")) or DRIVE.match(value) or Path(value).is_absolute():
        return None, "absolute path not allowed (give it relative to the table's folder)"
    target = base / value
    try:
        real = target.resolve(strict=True)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    if not real.is_relative_to(base):
        return None, "outside the dataset folder"
    if not real.is_file():
        return None, "not a regular file"
    return read_file(real)
