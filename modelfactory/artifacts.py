"""Immutable, content-addressed artifact folders: MF_HOME/artifacts/<sha256>/ with a manifest.json.

An artifact's id is the hash of what determines it (a stage's name, version, params and input ids, or a
dataset's normalised content), so the id is known before the work is done and a finished folder is a cache
hit. Folders are written under a temporary name and renamed into place, so a crash never leaves a
half-written artifact that looks finished.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import util as mp_util
from pathlib import Path
from typing import Any

from .config import settings

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"  # + <id[:12]>-<host>-<pid>-<random>: a folder being written
_HOST = socket.gethostname().replace("/", "_")


def pid_alive(pid: int) -> bool:
    """Whether a process (on this host) is alive; a zombie is not (it can write nothing more)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# A Unix socket's path has at most 107 bytes; multiprocessing puts its forkserver's at
# <temp dir>/pymp-XXXXXXXX/listener-XXXXXXXX (32 more), so a process temp dir under a deep MF_HOME goes here instead.
_MAX_TMPDIR_LEN = 75
_SYSTEM_TMP = Path(tempfile.gettempdir())


def tmpdir_roots() -> list[Path]:
    """Where process_tmpdir() makes its folders: MF_HOME/tmp, or, for a deep MF_HOME, the system temp dir's
    mf-tmp-<uid>."""
    return [settings().home / "tmp", _SYSTEM_TMP / f"mf-tmp-{os.getuid()}"]


def process_tmpdir(role: str) -> Path:
    """Make <root>/<role>-<host>-<pid> (0700; root: MF_HOME/tmp, see tmpdir_roots) this process's temp dir
    (TMPDIR and tempfile.tempdir, so the processes it starts inherit it), after removing those of dead processes
    on this host; it is removed when this process exits normally.

    Why: what a process killed with SIGKILL leaves in the temp dir (multiprocessing's `pymp-*` folders, files some
    libraries write) has no owner to remove it; under a per-process folder the next worker or server to start
    finds it by the pid in its name. Call it before multiprocessing starts anything (it caches its temp dir)."""
    sweep_dead_tmpdirs()
    name = f"{role}-{_HOST}-{os.getpid()}"
    root = next((r for r in tmpdir_roots() if len(str(r / name)) <= _MAX_TMPDIR_LEN), tmpdir_roots()[-1])
    d = root / name
    d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    d.mkdir(exist_ok=True, mode=0o700)
    os.environ["TMPDIR"] = str(d)
    tempfile.tempdir = str(d)
    # after multiprocessing's own clean-up of its pymp-* folder (exitpriority -100), which would fail without it
    mp_util.Finalize(None, shutil.rmtree, args=(str(d),), kwargs={"ignore_errors": True}, exitpriority=-101)
    return d


def sweep_dead_tmpdirs() -> list[str]:
    """Remove the <role>-<host>-<pid> folders (process_tmpdir) of processes on this host that are gone; returns
    their paths. Another host's (a shared MF_HOME) and a live process's are left alone."""
    removed = []
    for root in tmpdir_roots():
        if not root.is_dir():
            continue
        for entry in os.scandir(root):
            host, _, pid = entry.name.partition("-")[2].rpartition("-")
            if host == _HOST and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


def content_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object in canonical form (bytes, e.g. encoded images, by their own sha256)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_hashable).encode()
    return hashlib.sha256(blob).hexdigest()


def _hashable(value: Any) -> str:
    """JSON stand-in for a non-JSON value. Only called for such values, so JSON-only objects hash as before;
    bytes become their digest (fast, and a few dozen characters instead of a repr many times their size)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes:" + hashlib.sha256(value).hexdigest()
    return str(value)


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=4096)
def _file_hash_as_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return file_hash(Path(path))


def _stat_keyed_hash(path: Path) -> str:
    """`file_hash`, re-read only when the file's size, mtime or inode changed (git's index does the same).

    Why: every order submit keys its plan on the teacher dir's content, and re-hashing a 90 MB checkpoint per
    submit was most of a submit's CPU time; the dir does not change between orders."""
    st = path.stat()
    return _file_hash_as_of(str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def dir_hash(path: Path) -> str:
    """Hash of a folder's files (relative names + contents): identifies a pretrained model dir."""
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        h.update(rel.encode() + b"\0" + _stat_keyed_hash(p).encode())
    return h.hexdigest()


@dataclass
class Artifact:
    id: str
    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})


class ArtifactStore:
    def __init__(self, root: Path | None = None):
        self.root = root or settings().artifacts
        # Private to the platform: tenants' commands run under their own uids (compute/sandbox/) and must not
        # read other tenants' models or outputs; they get their artifacts through the platform.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, artifact_id: str) -> Path:
        return self.root / artifact_id

    def exists(self, artifact_id: str) -> bool:
        return (self.path(artifact_id) / MANIFEST).is_file()

    def get(self, artifact_id: str) -> Artifact:
        p = self.path(artifact_id)
        manifest = json.loads((p / MANIFEST).read_text())
        return Artifact(artifact_id, p, manifest)

    def sweep_stale_tmp(self) -> list[str]:
        """Remove the temporary folders of writers on this host that died before they finished (a job process
        killed with its worker leaves its half-written artifact behind; bench/chaos.py counted them). A folder
        is its writer's while that pid lives: one on another host sharing MF_HOME, or a live one, is left alone."""
        removed = []
        for entry in os.scandir(self.root):
            if not entry.name.startswith(TMP_PREFIX):
                continue
            owner = entry.name[len(TMP_PREFIX):].partition("-")[2].rsplit("-", 2)  # [host, pid, random]
            if len(owner) == 3 and owner[0] == _HOST and owner[1].isdigit() and not pid_alive(int(owner[1])):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        return removed

    @contextmanager
    def create(self, artifact_id: str, *, kind: str, producer: str, params: dict | None = None,
               inputs: dict[str, str] | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield (tmp_dir, manifest_extra); on success write the manifest and rename into place.

        Whatever the caller puts in manifest_extra (metrics, files) lands in manifest.json.
        """
        self.sweep_stale_tmp()
        tmp = self.root / f"{TMP_PREFIX}{artifact_id[:12]}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        extra: dict[str, Any] = {}
        try:
            yield tmp, extra
            manifest = {
                "id": artifact_id,
                "kind": kind,
                "producer": producer,
                "params": params or {},
                "inputs": inputs or {},
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                **extra,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            final = self.path(artifact_id)
            if final.exists():  # someone else finished the same artifact first: theirs is as good as ours
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
