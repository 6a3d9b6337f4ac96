"""Image-classification datasets: class folders of image files, archives of them, or tables of image paths.

A row is `{"image": <the file's original encoded bytes>, "label": <str>}`: keeping the encoded bytes (not decoded
pixels) keeps datasets small, keeps the id a hash of exactly what the user gave, and leaves resizing to the task.

Archives are read in memory and never extracted, yet an archive that *could* do harm when unpacked (absolute
paths, '..', drive letters, links, devices) is refused whole: such a file is a mistake or an attack, and a user
is better told than half-served. Every other bad file becomes a row error `path: reason`, as for tables.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import threading
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import MFError
from .ingest import RowError, Table, default_check

MAX_IMAGE_PIXELS = 64_000_000  # 8000x8000: far beyond a classifier's input, well below a decompression bomb
DEFAULT_MAX_TOTAL_BYTES = 2 << 30  # everything is held in memory (rows keep the bytes), so bound it
DEFAULT_MAX_FILES = 1_000_000
DEFAULT_MAX_RATIO = 100  # deflate tops out near 1000x; real image archives compress far less than 100x
LARGE_MEMBER_BYTES = 1 << 20  # the ratio test applies from here: tiny blank files may legitimately compress 100x+
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
UNSUPPORTED_ARCHIVES = (".rar", ".7z", ".tar.zst", ".zst", ".tar.lz", ".tar.lz4", ".cab", ".iso")
IMAGE_ROLES = {"image", "label"}
_DRIVE = re.compile(r"^[A-Za-z]:")
_PILLOW_LOCK = threading.Lock()


@dataclass
class _Entry:
    """One file of a folder or archive: its bytes, or why they could not be had."""

    relpath: str  # '/'-separated, relative to the folder or archive root
    data: bytes | None = None
    problem: str | None = None


@dataclass(frozen=True)
class _Limits:
    max_total_bytes: int
    max_files: int
    max_ratio: float


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
    return path.is_dir() or _archive_kind(path) is not None


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(UNSUPPORTED_ARCHIVES):
        return "unsupported"
    return None


def read_image_folder(path: str | Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                      max_files: int = DEFAULT_MAX_FILES, max_ratio: float = DEFAULT_MAX_RATIO) -> Table:
    """Rows `{"image": bytes, "label": class folder name}` from a folder `class/*.png` or a .zip/.tar(.gz) of one.

    A root holding a single folder and no files (the usual archive wrapper) is descended into. Files below a
    class folder, however deep, belong to it. Nothing is skipped silently: files at the root, hidden files
    (.DS_Store, macOS `._*` forks), and anything that is not a decodable image become row errors `path: reason`.
    Limits bound memory and refuse archive bombs; an unsafe archive entry refuses the whole archive.
    """
    path = Path(path)
    entries = _entries(path, _Limits(max_total_bytes, max_files, max_ratio))
    if not entries:
        raise MFError(f"{path}: no files in it (expected class folders of images, e.g. cats/1.png, dogs/2.jpg)")
    return _table_of(entries, str(path))


def read_unlabeled_images(path: str | Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                          max_files: int = DEFAULT_MAX_FILES, max_ratio: float = DEFAULT_MAX_RATIO) -> Table:
    """Rows `{"image": bytes}` for every file of a folder or archive, whatever its sub-folder (unlabeled images
    for a teacher to label); the same limits and checks as `read_image_folder`."""
    path = Path(path)
    entries = sorted(_entries(path, _Limits(max_total_bytes, max_files, max_ratio)), key=lambda e: e.relpath)
    if not entries:
        raise MFError(f"{path}: no files in it (expected images)")
    table = Table(rows=[], source=str(path))
    for e in entries:
        reason = e.problem or check_image(e.data or b"")
        if reason:
            table.errors.append(RowError(_shown(e.relpath), None, reason))
        else:
            table.rows.append({"image": e.data})
    return table


def _entries(path: Path, limits: _Limits) -> list[_Entry]:
    if not path.exists():
        raise MFError(f"{path}: no such file or folder")
    kind = "folder" if path.is_dir() else _archive_kind(path)
    if kind == "folder":
        return _folder_entries(path, limits)
    if kind == "zip":
        return _zip_entries(path, limits)
    if kind == "tar":
        return _tar_entries(path, limits)
    raise MFError(f"{path}: unsupported archive type '{''.join(path.suffixes) or path.name}' "
                  f"(use a folder, .zip, .tar, .tar.gz or .tgz)")


def _table_of(entries: list[_Entry], source: str) -> Table:
    entries = sorted(entries, key=lambda e: e.relpath)
    depth = _wrapper_depth(entries)
    table = Table(rows=[], source=source)
    for e in entries:
        parts = e.relpath.split("/")[depth:]
        reason = e.problem or ("not inside a class folder" if len(parts) < 2 else None)
        label = parts[0].strip() if not reason else ""
        reason = reason or default_check("label", label) or check_image(e.data or b"")
        if reason:
            table.errors.append(RowError(_shown(e.relpath), None, reason))
        else:
            table.rows.append({"image": e.data, "label": label})
    return table


def _wrapper_depth(entries: list[_Entry]) -> int:
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


def _shown(relpath: str) -> str:
    """A path safe to print: undecodable bytes in a file name are shown escaped, not crash the console."""
    return relpath.encode("utf-8", "backslashreplace").decode("utf-8")


# --- folder -----------------------------------------------------------------------------------------------
def _folder_entries(root: Path, limits: _Limits) -> list[_Entry]:
    real_root = root.resolve()
    found: list[tuple[str, Path | None, str | None]] = []  # (relpath, file to read, problem)
    total = 0

    def unreadable(e: OSError) -> None:  # os.walk would skip an unreadable folder silently
        rel = Path(e.filename).relative_to(root).as_posix() if e.filename else "."
        found.append((rel, None, f"cannot read folder ({e.strerror or e})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):  # links to folders are not followed
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                found.append(((Path(dirpath) / d).relative_to(root).as_posix(), None,
                              "symbolic link to a folder (not followed)"))
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            problem, size = _folder_file_problem(p, real_root)
            found.append((rel, None if problem else p, problem))
            total += size
            if len(found) > limits.max_files:
                raise MFError(f"{root}: refused: more than {limits.max_files} files (limit)")
            if total > limits.max_total_bytes:
                raise MFError(f"{root}: refused: more than {_size(limits.max_total_bytes)} of files (limit)")
    return [_Entry(rel, *_read_file(p)) if p else _Entry(rel, problem=problem) for rel, p, problem in found]


def _folder_file_problem(p: Path, real_root: Path) -> tuple[str | None, int]:
    """Why file `p` cannot be a row (a link leading out of the folder, a fifo, ...), and its size."""
    try:
        real = p.resolve(strict=True)
        st = real.stat()
    except FileNotFoundError:
        return "broken symbolic link", 0
    except OSError as e:
        return f"cannot read ({e.strerror or e})", 0
    if not real.is_relative_to(real_root):
        return "outside the dataset folder (symbolic link)", 0
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", 0
    return None, st.st_size


def _read_file(p: Path) -> tuple[bytes | None, str | None]:
    try:
        return p.read_bytes(), None
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"


# --- archives ---------------------------------------------------------------------------------------------
def _safe_name(archive: Path, name: str) -> str:
    """The entry's normalised '/'-path; refuses the archive if unpacking that name could write outside it."""
    unix = name.replace("\\", "/")
    why = ("has an absolute path" if unix.startswith("/") else
           "has a drive letter" if _DRIVE.match(unix) else
           "has '..' in its path" if ".." in unix.split("/") else None)
    if why:
        _refuse_entry(archive, name, why)
    return "/".join(part for part in unix.split("/") if part not in ("", "."))


def _refuse_entry(archive: Path, name: str, why: str) -> None:
    raise MFError(f"{archive.name}: refused: entry '{_shown(name)}' {why} (an unsafe archive; nothing was added)")


class _Budget:
    """Counts files and bytes as they are really read: declared sizes are checked first, but headers can lie."""

    def __init__(self, archive: Path, limits: _Limits):
        self.archive, self.limits, self.files, self.bytes = archive, limits, 0, 0

    def add_files(self, n: int = 1) -> None:
        self.files += n
        if self.files > self.limits.max_files:
            raise MFError(f"{self.archive.name}: refused: more than {self.limits.max_files} files (limit)")

    def read(self, f: io.BufferedIOBase) -> bytes:
        left = self.limits.max_total_bytes - self.bytes
        data = f.read(left + 1)
        self.bytes += len(data)
        if len(data) > left:
            self.refuse_size()
        return data

    def refuse_size(self) -> None:
        raise MFError(f"{self.archive.name}: refused: it would expand to more than "
                      f"{_size(self.limits.max_total_bytes)} (limit) — a zip bomb?")

    def refuse_ratio(self, name: str | None, expanded: int, packed: int) -> None:
        ratio = f"{expanded / packed:.0f}x" if packed else "without bound"
        what = f"entry '{_shown(name)}'" if name else "it"
        raise MFError(f"{self.archive.name}: refused: {what} would expand {ratio} "
                      f"({_size(packed)} to {_size(expanded)}; limit {self.limits.max_ratio:g}x) — a zip bomb?")


def _zip_entries(path: Path, limits: _Limits) -> list[_Entry]:
    budget = _Budget(path, limits)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if _zip_member_is_file(path, i)]  # every name vetted before any read
            budget.add_files(len(infos))
            if sum(i.file_size for i in infos) > limits.max_total_bytes:
                budget.refuse_size()
            for i in infos:
                if i.file_size >= LARGE_MEMBER_BYTES and i.file_size > limits.max_ratio * i.compress_size:
                    budget.refuse_ratio(i.filename, i.file_size, i.compress_size)
            # many small members count too: the ratio of the whole archive, once it expands past a member's worth
            expanded, packed = sum(i.file_size for i in infos), path.stat().st_size
            if expanded >= LARGE_MEMBER_BYTES and expanded > limits.max_ratio * packed:
                budget.refuse_ratio(None, expanded, packed)
            return _dedup([_zip_read(zf, i, budget) for i in infos])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise MFError(f"{path.name}: not a readable zip archive ({e})") from None


def _zip_member_is_file(archive: Path, info: zipfile.ZipInfo) -> bool:
    """False for folders; refuses links, devices and unsafe names (unix mode bits live in external_attr)."""
    mode = info.external_attr >> 16
    _safe_name(archive, info.filename)
    if stat.S_ISLNK(mode):
        _refuse_entry(archive, info.filename, "is a symbolic link")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        _refuse_entry(archive, info.filename, "is a device, fifo or socket")
    return not (info.is_dir() or stat.S_ISDIR(mode))


def _zip_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> _Entry:
    name = _safe_name(budget.archive, info.filename)
    if info.flag_bits & 0x1:
        return _Entry(name, problem="encrypted (password required)")
    try:
        with zf.open(info) as f:
            return _Entry(name, budget.read(f))
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, zlib.error) as e:
        return _Entry(name, problem=f"corrupt archive entry ({e})")


def _tar_entries(path: Path, limits: _Limits) -> list[_Entry]:
    """One streaming pass: a member's declared size is checked before its data is decompressed, so a tar.gz
    bomb is refused after reading its header, not after inflating it."""
    budget, packed, declared, entries = _Budget(path, limits), path.stat().st_size, 0, []
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                name = _safe_name(path, m.name)
                if m.isdir():
                    continue
                _check_tar_type(path, m)
                budget.add_files()
                declared += m.size
                if declared > limits.max_total_bytes:
                    budget.refuse_size()
                if declared >= LARGE_MEMBER_BYTES and declared > limits.max_ratio * packed:
                    budget.refuse_ratio(None, declared, packed)  # whole stream
                f = tf.extractfile(m)
                entries.append(_Entry(name, budget.read(f) if f else b""))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise MFError(f"{path.name}: not a readable tar archive ({e})") from None
    return _dedup(entries)


def _check_tar_type(archive: Path, m: tarfile.TarInfo) -> None:
    if m.issym() or m.islnk():
        _refuse_entry(archive, m.name, f"is a {'symbolic' if m.issym() else 'hard'} link (to '{_shown(m.linkname)}')")
    if not m.isreg():
        _refuse_entry(archive, m.name, "is a device, fifo or other special file")


def _dedup(entries: list[_Entry]) -> list[_Entry]:
    """A name stored twice in one archive: keep the first, report the others (unpacking would overwrite)."""
    seen: set[str] = set()
    out = []
    for e in entries:
        out.append(e if e.relpath not in seen else _Entry(e.relpath, problem="duplicate entry in the archive"))
        seen.add(e.relpath)
    return out


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


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
            raise MFError(f"{table.source}: refused: its images total more than {_size(max_total_bytes)} (limit)")
        reason = reason or check_image(data or b"")
        if reason:
            shown = "" if isinstance(value, bytes) else f"{_shown(str(value))}: "
            out.errors.append(RowError(name, line, shown + reason))
        else:
            out.rows.append({**row, "image": data})
            out.lines.append(line)
    out.errors.sort(key=lambda e: e.line or 0)
    return out


def _read_image_path(value: str, base: Path) -> tuple[bytes | None, str | None]:
    if value.startswith(("/", "\\")) or _DRIVE.match(value) or Path(value).is_absolute():
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
    return _read_file(real)
