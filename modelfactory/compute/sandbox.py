"""Compute leasing: run a tenant's own command with its declared resources enforced.

`mf jobs submit --tenant T --cpu 2 --memory-gb 4 --time-limit 30m -- python train.py` ends up here: the worker
calls `tenant_workdir(tenant, job_id)` for the job's private directory and `run_command(argv, ...)` to run it.

Job directory (`MF_HOME/tenants/<tenant>/jobs/<job_id>/`):

    work/      the command's cwd and $HOME; files it leaves here stay (a requeued attempt of the same job reuses
               the directory, so it can resume from its own checkpoints)
    outputs/   $MF_OUTPUT_DIR: files the command writes here are the job's outputs; `SandboxResult.outputs_dir`
               points at it (nothing is copied)
    tmp/       $TMPDIR, private to the tenant (the shared /tmp is readable by other tenants' jobs)
    logs/      stdout.log and stderr.log; attempts append to them

The process: argv is executed directly (never through a shell) in its own session and process group, with stdin
on /dev/null, stdout/stderr to the log files, umask 077, and a minimal environment: PATH (the parent's), LANG,
HOME, TMPDIR, MF_OUTPUT_DIR, OMP/MKL/OPENBLAS_NUM_THREADS = its core count, then the caller's `env` on top. Nothing
else of the parent's environment (MF_DATABASE_URL, API keys, cloud credentials) reaches it.

Enforcement, and what happens where the machine does not allow it:

- CPU: `sched_setaffinity` to ceil(cpu) cores among those this process may use, picking the cores least used by
  the other jobs this process is running (workers in other processes do not coordinate; a request above the
  allowed core count gets all of them). Fractional cpu is rounded up: there is no CFS quota.
  With a time limit, RLIMIT_CPU (per process: (time limit + grace) x cores) backs up the wall clock limit.
- Memory: a cgroup with the limit when one can be created under this process's own cgroup: cgroup v2
  `memory.max` (+ `memory.swap.max` 0) if the memory controller is enabled there, else cgroup v1
  `memory.limit_in_bytes` (+ memsw). The cgroup limits the whole process tree and the kernel OOM-kills it.
  Otherwise (not root, no writable memory cgroup) RLIMIT_AS = memory_gb on every process of the job: allocations
  beyond it fail (MemoryError in Python). RLIMIT_AS counts address space, not resident memory, so programs that
  reserve large virtual ranges (CUDA, JIT runtimes) can fail under it well below the limit; GPU jobs want the
  cgroup. Core dumps are off (RLIMIT_CORE 0).
  A job that fails is reported as over its memory limit when (a heuristic, first match wins): the cgroup counted
  an OOM kill; or its stderr ends with an out-of-memory error (`MemoryError`, numpy's `_ArrayMemoryError`,
  `std::bad_alloc`, `Cannot allocate memory`, Go's `runtime: out of memory`; not "CUDA out of memory", which is
  GPU memory we do not limit); or it was killed by SIGKILL/SIGSEGV/SIGABRT/SIGBUS with a peak RSS of at least
  90% of the limit.
- Time: the wall clock limit is enforced here: at the limit the process group (and every process left in the
  job's cgroup) gets SIGTERM, then SIGKILL after `GRACE_SECONDS`. `should_stop()` (cancel, preemption) is polled
  every `POLL_SECONDS` and stops the job the same way. When the command exits, whatever it left running in its
  process group or cgroup is killed. Without a cgroup, a process that left the group (setsid) is not tracked.
- Isolation: as root, the command runs as a per-tenant unprivileged uid/gid (100000 + a stable hash of the tenant
  name mod 50000; no /etc/passwd entry needed; supplementary groups cleared). `MF_HOME/tenants` is root-owned
  0711; the tenant's directory, `jobs/`, the job directory and `logs/` are owned by root with the tenant's group,
  mode 0750 (the tenant can read its logs but cannot swap them for symlinks); `work/`, `outputs/` and `tmp/` are
  owned by the tenant's uid, mode 0700. Another tenant's job therefore gets EACCES on all of it. Two tenant names
  hashing to the same uid are refused rather than silently sharing one. The directories above `MF_HOME/tenants`
  must be searchable by other users (o+x) so the job can use its absolute paths; if not, a clear MFError says
  which one. The job can still read what is world-readable on the machine, so keep MF_HOME's other contents
  (database, artifacts) private to the platform's user.
  Not root: everything is 0700 and owned by the current user, and the command runs as that user. Tenants are
  then NOT isolated from each other (they share a uid); only other users of the machine are kept out.
  Run the worker as root (or in a container per tenant) where tenants must not see each other.

The API is plain data in and out: nothing is pickled, no shell is involved.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import re
import resource
import secrets
import signal
import stat
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelfactory.config import settings
from modelfactory.errors import MFError

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL when a job is stopped (time limit, cancel, preemption)
POLL_SECONDS = 0.05  # how often the parent checks the process, the clock and should_stop()

UID_BASE = 100_000
UID_RANGE = 50_000

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_OOM_MARKERS = re.compile(
    r"^(?:[\w.]*\.)?(?:_Array)?MemoryError\b"  # Python's MemoryError, numpy's _ArrayMemoryError (not torch's CUDA one)
    r"|std::bad_alloc"
    r"|Cannot allocate memory"
    r"|runtime: out of memory",
    re.MULTILINE,
)
_MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}


@dataclass
class SandboxResult:
    exit_code: int | None  # None when the process was killed by a signal (or could not be started)
    reason: str  # 'ok' | 'failed' | 'memory limit' | 'time limit' | 'stopped'
    wall_seconds: float
    cpu_seconds: float  # user + sys of the process and the descendants it waited for (os.wait4 rusage)
    max_rss_mb: float  # peak resident set of the largest single process among those
    stdout_path: Path
    stderr_path: Path
    outputs_dir: Path
    message: str


# ---------------------------------------------------------------------------------------------------- durations


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


def _format_duration(seconds: float) -> str:
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


# ---------------------------------------------------------------------------------------------------- directories


def _is_root() -> bool:
    return os.geteuid() == 0


def tenant_ids(tenant: str) -> tuple[int, int]:
    """The uid and gid a tenant's jobs run as (when the worker is root): stable across machines and restarts."""
    digest = hashlib.sha256(tenant.encode()).digest()
    uid = UID_BASE + int.from_bytes(digest[:8], "big") % UID_RANGE
    return uid, uid


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not _TENANT_RE.match(tenant):
        raise MFError(f"invalid tenant name {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                      "letter or digit")


def _tenants_root() -> Path:
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


def _prepare_job_dir(tenant: str, job_dir: Path) -> None:
    """Create (or re-check) the job directory's layout, ownership and modes. job_dir = tenants/<t>/jobs/<id>."""
    root = _tenants_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    tenant_dir = root / tenant
    if not _is_root():
        for d in (root, tenant_dir, tenant_dir / "jobs", job_dir, *(job_dir / s for s in ("logs", "work", "outputs",
                                                                                              "tmp"))):
            _ensure_dir(d, 0o700)
        return
    uid, gid = tenant_ids(tenant)
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
    _check_tenant(tenant)
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise MFError(f"invalid job id {job_id!r}: a non-negative integer")
    job_dir = _tenants_root() / tenant / "jobs" / str(job_id)
    _prepare_job_dir(tenant, job_dir)
    return job_dir


# ---------------------------------------------------------------------------------------------------- cores


_cores_lock = threading.Lock()
_cores_in_use: Counter[int] = Counter()


def _acquire_cores(n: int) -> set[int]:
    allowed = sorted(os.sched_getaffinity(0))
    with _cores_lock:
        chosen = sorted(allowed, key=lambda c: (_cores_in_use[c], c))[: max(1, min(n, len(allowed)))]
        _cores_in_use.update(chosen)
    return set(chosen)


def _release_cores(cores: set[int]) -> None:
    with _cores_lock:
        _cores_in_use.subtract(cores)
        for c in [c for c, k in _cores_in_use.items() if k <= 0]:
            del _cores_in_use[c]


# ---------------------------------------------------------------------------------------------------- cgroups


def _cgroup_bases() -> list[tuple[int, Path]]:
    """Where this process could create a child memory cgroup: [(2, dir), (1, dir)], v2 first; [] if nowhere."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    v2_path = v1_path = None
    for line in own:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    bases: list[tuple[int, Path]] = []
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2_path is not None:
            own_path = v2_path
        elif fstype == "cgroup" and "memory" in options and v1_path is not None:
            own_path = v1_path
        else:
            continue
        rel = own_path
        if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root + "/")):
            rel = rel[len(mount_root):]
        base = Path(mount_point) / rel.lstrip("/")
        if base.is_dir():
            bases.append((2 if fstype == "cgroup2" else 1, base))
    bases.sort(key=lambda vb: -vb[0])
    return bases


def _read_int_field(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


class _MemoryCgroup:
    """A per-job memory cgroup (v2 or v1) holding the limit; the child joins it before exec."""

    def __init__(self, path: Path, version: int):
        self.path = path
        self.version = version

    @classmethod
    def create(cls, name: str, limit_bytes: int) -> _MemoryCgroup | None:
        for version, base in _cgroup_bases():
            path = base / name
            try:
                path.mkdir()
            except OSError:
                continue
            try:
                if version == 2:
                    (path / "memory.max").write_text(str(limit_bytes))  # absent unless the controller is enabled
                    _best_effort_write(path / "memory.swap.max", "0")
                else:
                    (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                    _best_effort_write(path / "memory.memsw.limit_in_bytes", str(limit_bytes))
                return cls(path, version)
            except OSError as e:
                log.debug("memory cgroup v%d at %s unusable: %s", version, base, e)
                _best_effort_rmdir(path)
        return None

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def oom_killed(self) -> bool:
        if self.version == 2:
            return (_read_int_field(self.path / "memory.events", "oom_kill") or 0) > 0
        kills = _read_int_field(self.path / "memory.oom_control", "oom_kill")
        if kills is not None:
            return kills > 0
        return (_read_int_field(self.path / "memory.oom_control", "under_oom") or 0) > 0  # old kernels

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        while True:
            self.signal(signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s: %s", self.path, e)
                    return
            time.sleep(0.02)


def _best_effort_write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass


def _best_effort_rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------- running


def _capped(res: int, value: int) -> tuple[int, int]:
    """(soft, hard) = value, but never above the current hard limit (raising it needs privileges)."""
    _, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return value, value


def _signal_job(pid: int, sig: int, cgroup: _MemoryCgroup | None) -> None:
    try:
        os.killpg(pid, sig)  # the command leads its own session and group: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is not None:
        cgroup.signal(sig)


def _exited(pid: int) -> bool:
    """Has the child exited? Leaves it a zombie (WNOWAIT), so its pid and process group id cannot be reused yet."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _open_log(path: Path, gid: int | None) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    if gid is not None:
        os.fchown(fd, 0, gid)
        os.fchmod(fd, 0o640)
    return fd


def _stderr_tail(path: Path, start: int, size: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _memory_verdict(*, oom_killed: bool, code: int, stderr_tail: str, max_rss_mb: float, limit_mb: float) -> bool:
    """Did the job die of its memory limit? The heuristic documented in the module docstring."""
    if oom_killed:
        return True
    if code == 0:
        return False
    if _OOM_MARKERS.search(stderr_tail):
        return True
    return code < 0 and -code in _MEMORY_SIGNALS and max_rss_mb >= 0.9 * limit_mb


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def run_command(argv: list[str], *, tenant: str, workdir: Path, cpu: float, memory_gb: float,
                time_limit_s: float | None, env: dict[str, str] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> SandboxResult:
    """Run `argv` as tenant `tenant` in the job directory `workdir` (from `tenant_workdir`), enforcing the limits.

    Blocks until the command ends; returns how it ended. Raises MFError for bad arguments or a job directory that
    is not the tenant's; a command that cannot be started (not found, not executable) is a 'failed' result."""
    _check_tenant(tenant)
    if not argv or not isinstance(argv, list | tuple) or not all(isinstance(a, str) for a in argv):
        raise MFError("the command must be a non-empty list of strings")
    if not cpu or cpu <= 0 or not math.isfinite(cpu):
        raise MFError(f"cpu must be a positive number of cores, not {cpu!r}")
    if not memory_gb or memory_gb <= 0 or not math.isfinite(memory_gb):
        raise MFError(f"memory_gb must be positive, not {memory_gb!r}")
    if time_limit_s is not None and (time_limit_s <= 0 or not math.isfinite(time_limit_s)):
        raise MFError(f"time limit must be positive, not {time_limit_s!r}")
    job_dir = Path(workdir).resolve()
    jobs_dir = (_tenants_root() / tenant / "jobs").resolve()
    if job_dir.parent != jobs_dir:
        raise MFError(f"{workdir} is not a job directory of tenant {tenant!r} (use tenant_workdir)")
    _prepare_job_dir(tenant, job_dir)

    as_root = _is_root()
    uid, gid = tenant_ids(tenant) if as_root else (None, None)
    work, outputs, logs = job_dir / "work", job_dir / "outputs", job_dir / "logs"
    stdout_path, stderr_path = logs / "stdout.log", logs / "stderr.log"
    limit_bytes = int(memory_gb * 1024**3)
    ncores = math.ceil(cpu)

    cores = _acquire_cores(ncores)
    child_env = {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "HOME": str(work),
        "TMPDIR": str(job_dir / "tmp"),
        "MF_OUTPUT_DIR": str(outputs),
        "OMP_NUM_THREADS": str(len(cores)),
        "MKL_NUM_THREADS": str(len(cores)),
        "OPENBLAS_NUM_THREADS": str(len(cores)),
        **(env or {}),
    }
    cgroup: _MemoryCgroup | None = None
    fds: list[int] = []
    proc: subprocess.Popen | None = None
    reaped = False
    try:
        if as_root:
            cgroup = _MemoryCgroup.create(f"mf-{tenant}-{job_dir.name}-{os.getpid()}-{secrets.token_hex(3)}",
                                          limit_bytes)
        limits = [(resource.RLIMIT_CORE, (0, 0))]
        cpu_soft = None
        if time_limit_s is not None:
            cpu_soft = math.ceil((time_limit_s + GRACE_SECONDS) * len(cores)) + 1
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)  # SIGXCPU at the soft limit, SIGKILL 5 s later
            limits.append((resource.RLIMIT_CPU, (cpu_soft, cpu_soft + 5) if hard == resource.RLIM_INFINITY
                           else (min(cpu_soft, hard), hard)))
        if cgroup is None:
            limits.append((resource.RLIMIT_AS, _capped(resource.RLIMIT_AS, limit_bytes)))  # last: see _child_setup
        procs_file = cgroup.procs_file if cgroup else None

        def _child_setup() -> None:  # runs in the forked child before exec: os calls only, nothing imported
            if procs_file is not None:
                fd = os.open(procs_file, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
            os.sched_setaffinity(0, cores)
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            for res, value in limits:  # RLIMIT_AS last: the forked copy of this process may already exceed it
                resource.setrlimit(res, value)

        stderr_start = stderr_path.stat().st_size if stderr_path.exists() else 0
        fds = [_open_log(stdout_path, gid), _open_log(stderr_path, gid)]
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=work, env=child_env, stdin=subprocess.DEVNULL, stdout=fds[0],
                                    stderr=fds[1], start_new_session=True, umask=0o077, preexec_fn=_child_setup)
        except OSError as e:  # exec failed in the child: not found, not executable, permission denied
            os.write(fds[1], f"mf: could not start {argv[0]!r}: {e.strerror}\n".encode())
            return SandboxResult(None, "failed", time.monotonic() - start, 0.0, 0.0, stdout_path, stderr_path,
                                 outputs, f"failed: could not start {argv[0]!r}: {e.strerror}")
        finally:
            for fd in fds:
                os.close(fd)
            fds = []
        pid = proc.pid

        stop_reason = None
        term_at = 0.0
        killed = False
        while not _exited(pid):
            now = time.monotonic()
            if stop_reason is None:
                if time_limit_s is not None and now - start >= time_limit_s:
                    stop_reason = "time limit"
                elif should_stop():
                    stop_reason = "stopped"
                if stop_reason is not None:
                    _signal_job(pid, signal.SIGTERM, cgroup)
                    term_at = now
            elif not killed and now - term_at >= GRACE_SECONDS:
                _signal_job(pid, signal.SIGKILL, cgroup)
                killed = True
            time.sleep(POLL_SECONDS)

        _signal_job(pid, signal.SIGKILL, cgroup)  # whatever it left running in its group or cgroup
        _, status, usage = os.wait4(pid, 0)
        reaped = True
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - start
        oom_killed = cgroup.oom_killed() if cgroup is not None else False
    finally:
        for fd in fds:
            os.close(fd)
        if proc is not None and not reaped:  # an exception (should_stop raised, KeyboardInterrupt): leave nothing
            _signal_job(proc.pid, signal.SIGKILL, cgroup)
            proc.wait()
        if cgroup is not None:
            cgroup.remove()
        _release_cores(cores)

    cpu_seconds = usage.ru_utime + usage.ru_stime
    max_rss_mb = usage.ru_maxrss / 1024
    exit_code = code if code >= 0 else None
    how = f"exited with code {code}" if code >= 0 else f"was killed by {_signal_name(-code)}"
    cpu_limited = cpu_soft is not None and (code == -signal.SIGXCPU or (code == -signal.SIGKILL
                                                                         and cpu_seconds >= cpu_soft))
    if stop_reason == "stopped":
        reason, message = "stopped", f"stopped: cancelled or preempted while running ({how})"
    elif stop_reason == "time limit" or cpu_limited:
        reason, message = "time limit", f"stopped: over its time limit of {_format_duration(time_limit_s)}"
    elif _memory_verdict(oom_killed=oom_killed, code=code, stderr_tail=_stderr_tail(stderr_path, stderr_start),
                         max_rss_mb=max_rss_mb, limit_mb=memory_gb * 1024):
        reason, message = "memory limit", f"stopped: over its memory limit of {memory_gb:g} GB"
    elif code == 0:
        reason, message = "ok", f"finished: exited with code 0 after {wall:.1f}s"
    else:
        reason, message = "failed", f"failed: the command {how}"
    return SandboxResult(exit_code, reason, wall, cpu_seconds, max_rss_mb, stdout_path, stderr_path, outputs,
                         message)
