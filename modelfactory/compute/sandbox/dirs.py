"""A job's private directory (`MF_HOME/tenants/<tenant>/jobs/<job_id>/`), the per-tenant uid, and durations.

Why a module of its own: the worker needs a job's directory and a tenant's uid without running anything
(collecting outputs), and the layout's owners and modes are the whole of the `uid` mode's file isolation."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from modelfactory.config import settings
from modelfactory.errors import MFError

UID_BASE = 100_000
UID_RANGE = 50_000

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


_DURATION_RE = re.compile(
    r"^(?:(?P<d>\d+(?:\.\d+)?)d)?\s*(?:(?P<h>\d+(?:\.\d+)?)h)?\s*(?:(?P<m>\d+(?:\.\d+)?)m)?\s*(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)


def parse_duration(text: str) -> float:
    """"90s", "30m", "2h", "1h30m", "1d" (and combinations, largest unit first) -> seconds."""
    hint = "use a number with a unit, like 90s, 30m, 2h or 1h30m"
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: {hint}")
    cleaned = text.strip().lower()
    match = _DURATION_RE.match(cleaned)
    if not cleaned or not match or not any(match.groupdict().values()):
        if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
            raise ValueError(f"invalid duration {text!r}: the unit is missing; {hint}")
        raise ValueError(f"invalid duration {text!r}: {hint}")
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    seconds = sum(float(v) * units[k] for k, v in match.groupdict().items() if v)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def is_root() -> bool:
    return os.geteuid() == 0


def tenant_ids(tenant: str) -> tuple[int, int]:
    """The uid and gid a tenant's jobs run as (when the worker is root): stable across machines and restarts."""
    digest = hashlib.sha256(tenant.encode()).digest()
    uid = UID_BASE + int.from_bytes(digest[:8], "big") % UID_RANGE
    return uid, uid


def check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise MFError(f"invalid tenant name {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                      "letter or digit")


def tenants_root() -> Path:
    return settings().home / "tenants"


def _ensure_dir(path: Path, mode: int, uid: int | None = None, gid: int | None = None) -> None:
    """Create `path` (parent must exist) or accept an existing real directory; then set owner and mode."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise MFError(f"{path} should be a directory but is not (a symlink or a file); remove it")
    if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def _unsearchable_ancestor(path: Path) -> Path | None:
    """The first directory from / down to `path` that other users cannot search (no o+x), if any."""
    for p in [*reversed(path.parents), path]:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
    return None


def prepare_job_dir(tenant: str, job_dir: Path) -> None:
    """Create (or re-check) the job directory's layout, ownership and modes. job_dir = tenants/<t>/jobs/<id>."""
    root = tenants_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    tenant_dir = root / tenant
    if not is_root():
        for d in (root, tenant_dir, tenant_dir / "jobs", job_dir, *(job_dir / s for s in ("logs", "work", "outputs",
                                                                                              "tmp"))):
            _ensure_dir(d, 0o700)
        return
    uid, gid = tenant_ids(tenant)
    home = os.stat(root.parent)
    if home.st_uid == os.geteuid() and stat.S_IMODE(home.st_mode) & 0o077 != 0o011:
        os.chmod(root.parent, stat.S_IMODE(home.st_mode) & 0o700 | 0o011)  # others may pass, not list or write
    _ensure_dir(root, 0o711, 0, 0)
    blocker = _unsearchable_ancestor(root)
    if blocker is not None:
        raise MFError(f"tenant jobs run as unprivileged users and cannot reach {root}: {blocker} is not searchable "
                      f"by other users (chmod o+x {blocker}, or put MF_HOME somewhere that is)")
    for other in os.scandir(root):
        if other.name != tenant and other.is_dir(follow_symlinks=False) and \
                other.stat(follow_symlinks=False).st_gid == gid:
            raise MFError(f"tenant {tenant!r} maps to the same uid {uid} as tenant {other.name!r}; their jobs would "
                          "not be isolated, so use another tenant name")
    for d in (tenant_dir, tenant_dir / "jobs", job_dir, job_dir / "logs"):
        _ensure_dir(d, 0o750, 0, gid)
    for sub in ("work", "outputs", "tmp"):
        _ensure_dir(job_dir / sub, 0o700, uid, gid)


def tenant_workdir(tenant: str, job_id: int) -> Path:
    """The private directory of one job: MF_HOME/tenants/<tenant>/jobs/<job_id>/ with work/, outputs/, tmp/, logs/.

    Created on first use; later calls (a requeued attempt) return the same directory with its contents."""
    check_tenant(tenant)
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise MFError(f"invalid job id {job_id!r}: a non-negative integer")
    job_dir = tenants_root() / tenant / "jobs" / str(job_id)
    prepare_job_dir(tenant, job_dir)
    return job_dir
