"""Namespaces: bubblewrap's sandbox (a new root with the system read-only and only the job's own directories
writable; fresh user, mount, pid, ipc, uts and network namespaces) and, without it, unshare(2)'s network
namespace; and `isolation()`, which says which of them this process can use.

Why bubblewrap rather than our own mount setup: it is small, audited and packaged (Debian's `bubblewrap`), works
unprivileged where user namespaces are allowed, and dies with its parent."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from modelfactory.config import settings

from .dirs import UID_BASE, UID_RANGE, is_root, tenant_ids

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


_ETC_FILES = ("passwd", "group", "hosts", "host.conf", "nsswitch.conf", "resolv.conf", "gai.conf", "protocols",
              "services", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "mime.types",
              "os-release", "alternatives", "ssl/certs", "ca-certificates", "ca-certificates.conf")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_GPU_DEVICES = re.compile(r"^nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$")
_bwrap_checked: dict[tuple[str, int | None], str | None] = {}


def bwrap_path() -> tuple[str | None, str]:
    """(path of bubblewrap or None, why not). MF_SANDBOX_BWRAP: a path, or 'off' to never use it."""
    setting = settings().sandbox_bwrap
    if setting.lower() in ("off", "0", "no", "none", "false"):
        return None, "bubblewrap is turned off (MF_SANDBOX_BWRAP=off)"
    path = setting or shutil.which("bwrap", path=os.environ.get("PATH") or DEFAULT_PATH) \
        or shutil.which("bwrap", path=DEFAULT_PATH)
    if not path or not os.access(path, os.X_OK):
        return None, (f"{setting} is not an executable (MF_SANDBOX_BWRAP)" if setting else
                      "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)")
    return path, ""


def _bwrap_problem(path: str, uid: int | None) -> str | None:
    """None if bubblewrap can build a sandbox here (as `uid` when we are root), else its complaint. Cached."""
    key = (path, uid)
    if key not in _bwrap_checked:
        def drop() -> None:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

        argv = [path, "--unshare-all", "--die-with-parent", *_system_binds(), "--proc", "/proc", "--dev", "/dev",
                "--", "true"]
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, preexec_fn=drop,
                               env={"PATH": DEFAULT_PATH})
            problem = None if p.returncode == 0 else \
                (p.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as e:
            problem = str(e)
        _bwrap_checked[key] = problem
    return _bwrap_checked[key]


def isolation(tenant: str | None = None) -> tuple[str, str]:
    """How this process would isolate a tenant's command: ('uid+bwrap' | 'uid' | 'bwrap' | 'none', detail)."""
    path, why_not = bwrap_path()
    uid = (tenant_ids(tenant)[0] if tenant else UID_BASE + UID_RANGE) if is_root() else None
    if path is not None:
        problem = _bwrap_problem(path, uid)
        if problem is None:
            return ("uid+bwrap" if is_root() else "bwrap"), f"bubblewrap at {path}"
        why_not = f"bubblewrap cannot create namespaces here ({problem}; are unprivileged user namespaces off?)"
    if is_root():
        return "uid", f"per-tenant uid and a network namespace; no mount or pid namespace: {why_not}"
    return "none", why_not


def unisolated_refusal(why: str) -> str:
    return (f"this worker cannot isolate tenants' commands: it is not root and {why}. Install bubblewrap (with "
            "unprivileged user namespaces allowed), or run the worker as root; on a single-user machine, start it "
            "with --allow-unisolated to run commands as the worker's own user")


def _system_binds() -> list[str]:
    args: list[str] = []
    for p in _SYSTEM_DIRS:
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    for name in _ETC_FILES:
        p = f"/etc/{name}"
        if os.path.lexists(p):
            args += ["--ro-bind-try", p, p]
    return args


def _readable_by(path: str, uid: int | None) -> bool:
    """Can the job's user (uid None: ours) read and search `path`? For another uid: only through 'other' bits."""
    try:
        real = Path(os.path.realpath(path))
        if uid is None:
            return os.access(real, os.R_OK | os.X_OK)
        return all(os.stat(p).st_mode & stat.S_IXOTH for p in [*real.parents, real]) and \
            bool(os.stat(real).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _extra_ro_paths(uid: int | None) -> list[str]:
    """The platform's Python (so `python` on PATH works in the sandbox) and MF_SANDBOX_RO_PATHS, never anything
    holding MF_HOME nor under it."""
    home = settings().home.resolve()
    wanted = [sys.prefix, sys.base_prefix, *settings().sandbox_ro_paths.split(":")]
    out: list[str] = []
    for p in wanted:
        if not p or not os.path.isabs(p):
            continue
        real = Path(os.path.realpath(p))
        if real in (Path("/"), home) or home.is_relative_to(real) or real.is_relative_to(home):
            continue
        if any(real.is_relative_to(d) for d in _SYSTEM_DIRS) or not _readable_by(str(real), uid):
            continue
        for q in {p, str(real)}:
            if q not in out:
                out.append(q)
    return out


def bwrap_argv(path: str, *, job_dir: Path, network: bool, gpus: bool, tmp_bytes: int, uid: int | None,
               gpu_ids: list[int] | None = None) -> list[str]:
    """bubblewrap's arguments up to `--`; a job with GPUs sees only its own (`gpu_ids`; all when not given) and
    the control nodes."""
    args = [path, "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--hostname", "mf-job"]
    if not network:
        args.append("--unshare-net")
    args += _system_binds()
    for p in _extra_ro_paths(uid):
        args += ["--ro-bind", p, p]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    if gpus:
        for name in sorted(os.listdir("/dev")):
            m = _GPU_DEVICES.match(name)
            if m and (gpu_ids is None or not m.group(1).isdigit() or int(m.group(1)) in gpu_ids):
                args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for sub in ("work", "outputs", "tmp"):
        args += ["--bind", str(job_dir / sub), str(job_dir / sub)]
    return [*args, "--chdir", str(job_dir / "work"), "--"]


CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
try:
    LIBC = ctypes.CDLL(None, use_errno=True)
    UNSHARE, PRCTL = LIBC.unshare, LIBC.prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    UNSHARE = PRCTL = None
