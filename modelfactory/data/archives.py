"""The files of a folder or an archive (.zip, .tar and its compressed kinds), read in memory and never extracted.

An archive that *could* do harm when unpacked (absolute paths, '..', drive letters, links, devices) is refused
whole: such a file is a mistake or an attack, and a user is better told than half-served. Limits on files, bytes
and compression ratio bound memory and refuse archive bombs; every other bad file becomes an `Entry` holding the
reason, for the caller to report as a row error.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import MFError

DEFAULT_MAX_TOTAL_BYTES = 2 << 30  # everything is held in memory (rows keep the bytes), so bound it
DEFAULT_MAX_FILES = 1_000_000
DEFAULT_MAX_RATIO = 100  # deflate tops out near 1000x; real image archives compress far less than 100x
LARGE_MEMBER_BYTES = 1 << 20  # the ratio test applies from here: tiny blank files may legitimately compress 100x+
ZIP_SUFFIXES = (".zip",)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
UNSUPPORTED_ARCHIVES = (".rar", ".7z", ".tar.zst", ".zst", ".tar.lz", ".tar.lz4", ".cab", ".iso")
DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class Entry:
    """One file of a folder or archive: its bytes, or why they could not be had."""

    relpath: str  # '/'-separated, relative to the folder or archive root
    data: bytes | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int
    max_files: int
    max_ratio: float


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar', 'unsupported' (an archive we name rather than misread as a table), or None, by file name."""
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(UNSUPPORTED_ARCHIVES):
        return "unsupported"
    return None


def read_entries(path: Path, limits: Limits) -> list[Entry]:
    """Every file under a folder, or in an archive, within `limits`; MFError for a missing path, an unsupported
    or unreadable archive, or one refused whole (unsafe entry, over a limit)."""
    if not path.exists():
        raise MFError(f"{path}: no such file or folder")
    kind = "folder" if path.is_dir() else archive_kind(path)
    if kind == "folder":
        return _folder_entries(path, limits)
    if kind == "zip":
        return _zip_entries(path, limits)
    if kind == "tar":
        return _tar_entries(path, limits)
    raise MFError(f"{path}: unsupported archive type '{''.join(path.suffixes) or path.name}' "
                  f"(use a folder, .zip, .tar, .tar.gz or .tgz)")


def shown_path(relpath: str) -> str:
    """A path safe to print: undecodable bytes in a file name are shown escaped, not crash the console."""
    return relpath.encode("utf-8", "backslashreplace").decode("utf-8")


# --- folder -----------------------------------------------------------------------------------------------
def _folder_entries(root: Path, limits: Limits) -> list[Entry]:
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
                raise MFError(f"{root}: refused: more than {size_text(limits.max_total_bytes)} of files (limit)")
    return [Entry(rel, *read_file(p)) if p else Entry(rel, problem=problem) for rel, p, problem in found]


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


def read_file(p: Path) -> tuple[bytes | None, str | None]:
    try:
        return p.read_bytes(), None
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"


# --- archives ---------------------------------------------------------------------------------------------
def _safe_name(archive: Path, name: str) -> str:
    """The entry's normalised '/'-path; refuses the archive if unpacking that name could write outside it."""
    unix = name.replace("\\", "/")
    why = ("has an absolute path" if unix.startswith("/") else
           "has a drive letter" if DRIVE.match(unix) else
           "has '..' in its path" if ".." in unix.split("/") else None)
    if why:
        _refuse_entry(archive, name, why)
    return "/".join(part for part in unix.split("/") if part not in ("", "."))


def _refuse_entry(archive: Path, name: str, why: str) -> None:
    raise MFError(f"{archive.name}: refused: entry '{shown_path(name)}' {why} (an unsafe archive; nothing was added)")


class _Budget:
    """Counts files and bytes as they are really read: declared sizes are checked first, but headers can lie."""

    def __init__(self, archive: Path, limits: Limits):
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
                      f"{size_text(self.limits.max_total_bytes)} (limit) — a zip bomb?")

    def refuse_ratio(self, name: str | None, expanded: int, packed: int) -> None:
        ratio = f"{expanded / packed:.0f}x" if packed else "without bound"
        what = f"entry '{shown_path(name)}'" if name else "it"
        raise MFError(f"{self.archive.name}: refused: {what} would expand {ratio} "
                      f"({size_text(packed)} to {size_text(expanded)}; limit {self.limits.max_ratio:g}x) — a zip bomb?")


def _zip_entries(path: Path, limits: Limits) -> list[Entry]:
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


def _zip_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> Entry:
    name = _safe_name(budget.archive, info.filename)
    if info.flag_bits & 0x1:
        return Entry(name, problem="encrypted (password required)")
    try:
        with zf.open(info) as f:
            return Entry(name, budget.read(f))
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError, zlib.error) as e:
        return Entry(name, problem=f"corrupt archive entry ({e})")


def _tar_entries(path: Path, limits: Limits) -> list[Entry]:
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
                entries.append(Entry(name, budget.read(f) if f else b""))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise MFError(f"{path.name}: not a readable tar archive ({e})") from None
    return _dedup(entries)


def _check_tar_type(archive: Path, m: tarfile.TarInfo) -> None:
    if m.issym() or m.islnk():
        kind = "symbolic" if m.issym() else "hard"
        _refuse_entry(archive, m.name, f"is a {kind} link (to '{shown_path(m.linkname)}')")
    if not m.isreg():
        _refuse_entry(archive, m.name, "is a device, fifo or other special file")


def _dedup(entries: list[Entry]) -> list[Entry]:
    """A name stored twice in one archive: keep the first, report the others (unpacking would overwrite)."""
    seen: set[str] = set()
    out = []
    for e in entries:
        out.append(e if e.relpath not in seen else Entry(e.relpath, problem="duplicate entry in the archive"))
        seen.add(e.relpath)
    return out


def size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable
