"""Compute leasing: run a tenant's own command isolated from the platform, with its declared resources enforced.

`mf jobs submit --tenant T --cpu 2 --memory-gb 4 --time-limit 30m -- python train.py` ends up here: the worker
calls `tenant_workdir(tenant, job_id)` for the job's private directory and `run_command(argv, ...)` to run it.

Job directory (`MF_HOME/tenants/<tenant>/jobs/<job_id>/`):

    work/      the command's cwd and $HOME; files it leaves here stay (a requeued attempt of the same job reuses
               the directory, so it can resume from its own checkpoints)
    outputs/   $MF_OUTPUT_DIR: files the command writes here are the job's outputs; `SandboxResult.outputs_dir`
               points at it (nothing is copied)
    tmp/       $TMPDIR, private to the job
    logs/      stdout.log and stderr.log; attempts append to them

The process: argv is executed directly (never through a shell) in its own session and process group, with stdin
on /dev/null, stdout/stderr to the log files, umask 077, and a minimal environment: PATH (the parent's), LANG,
HOME, TMPDIR, MF_OUTPUT_DIR, OMP/MKL/OPENBLAS_NUM_THREADS = its core count, then the caller's `env` on top. Nothing
else of the parent's environment (MF_ADMIN_KEY, MF_DATABASE_URL, cloud credentials) reaches it.

Isolation (`isolation()` says which applies; the job's record says which did):

- `uid+bwrap` (worker is root, bubblewrap works): the command runs as a per-tenant unprivileged uid/gid (100000 +
  a stable hash of the tenant name mod 50000; no /etc/passwd entry needed; no supplementary groups), inside
  bubblewrap's fresh user, mount, pid, ipc, uts and (unless the tenant was granted network) network namespaces.
  Its filesystem is a new root holding read-only system directories (/usr, /bin, /lib*, /sbin, a few /etc files,
  the platform's Python if readable), a private /proc, a minimal /dev (no GPU device nodes unless the job asked for
  GPUs), a size-capped /tmp, and only its own work/, outputs/ and tmp/ read-write. MF_HOME, the database, the
  artifacts and every other job's directory are simply not there; nor is any process outside the job.
- `bwrap` (worker not root, unprivileged user namespaces allowed): the same namespaces and filesystem view. The
  command's processes keep the worker's uid outside their user namespace (only root can hand out other uids);
  it is the namespaces that keep them from the platform's files, processes, sockets and network.
- `uid` (root, bubblewrap missing or unusable): the per-tenant uid, and a fresh network namespace (unshare(2)
  CLONE_NEWNET before dropping root) unless network was granted. The filesystem is shared: file modes keep tenants
  apart (MF_HOME is made 0711 and `MF_HOME/tenants` is root-owned 0711; a tenant's directory, `jobs/`, the job
  directory and `logs/` are root:tenant-gid 0750; `work/`, `outputs/`, `tmp/` tenant-owned 0700), and the
  platform's own files must be private to it (the platform runs with umask 077; MF_HOME's other contents are
  0700/0600).
- `none`: not root and no usable bubblewrap. `run_command` refuses with a clear MFError unless the caller passed
  `allow_unisolated=True` (`mf worker --allow-unisolated`, for a single-user machine): then the command runs as
  the worker's own user and can read everything the worker can.

Network: none by default (a namespace with only loopback, so the control plane, Ray, the database and anything
else on the machine or beyond are unreachable; in `uid` mode even loopback is down). `network=True` (the operator's
per-tenant grant, `mf tenants set T --network`) shares the machine's network.

Limits, and what happens where the machine does not allow them (`SandboxResult.enforcement` says, per resource,
how it was enforced or why it was not; the worker stores it in the job's record):

The job gets a cgroup when this process can create one under its own cgroup (v2, or the v1 hierarchies of a
hybrid setup; as a rule only when root): per controller, v2 if the controller is enabled there, else v1.
- CPU: a quota of `cpu` cores per period (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), and a cpuset of ceil(cpu) cores
  (`cpuset.cpus`) the command cannot widen; the cores least used by this process's other jobs. Without a cpu
  controller: only `sched_setaffinity` to those cores, which a command can undo. With a time limit, RLIMIT_CPU
  ((time limit + grace) x cores per process) backs up the wall clock limit.
- Processes: `pids.max` (`MF_JOB_PIDS_MAX`, default 1024) for the whole job; without a pids controller,
  RLIMIT_NPROC = that many more processes than the job's uid already has (per uid, not per job).
- Memory: `memory.max` (+ `memory.swap.max` 0, `memory.oom.group` 1) or v1 `memory.limit_in_bytes` (+ memsw) for
  the whole job, all its processes together; the kernel OOM-kills it. Without a memory controller: RLIMIT_AS =
  memory_gb on every process (per process only, and it counts address space: CUDA or JIT runtimes can fail under
  it well below the limit). Core dumps are off.
  A job that fails is reported as over its memory limit when (a heuristic, first match wins): the cgroup counted
  an OOM kill; or its stderr ends with an out-of-memory error (`MemoryError`, numpy's `_ArrayMemoryError`,
  `std::bad_alloc`, `Cannot allocate memory`, Go's `runtime: out of memory`; not "CUDA out of memory", which is
  GPU memory we do not limit); or it was killed by SIGKILL/SIGSEGV/SIGABRT/SIGBUS with a peak RSS of at least
  90% of the limit.
- Lifetime: at the time limit, on `should_stop()` (cancel, preemption; polled every `POLL_SECONDS`) the job gets
  SIGTERM, then SIGKILL after `GRACE_SECONDS`; when the command exits, whatever it left running is killed. "The
  job" is its cgroup (killed with v2 `cgroup.kill`, else frozen with the v1 freezer and killed) and, under
  bubblewrap, its pid namespace (its init is killed, and with it every process in it). Either way a `setsid` or
  double-forked child does not survive. The command also asks for SIGKILL when the process that ran it dies
  (PR_SET_PDEATHSIG, and bubblewrap's --die-with-parent), but only the cgroup kill is relied upon.
  With neither (root without bubblewrap and without cgroups), only the process group is killed. The cgroups a
  job uses are written to `state_path` before it starts, so `kill_recorded(state_path)` can kill it from another
  process (the worker cancelling a job whose job process is gone).
- Disk: the job directory's size (work/ + outputs/ + tmp/, allocated blocks) is measured every
  `DISK_CHECK_SECONDS` and the job is killed at `disk_gb` (`MF_JOB_DISK_GB`, default 20); RLIMIT_FSIZE = the same
  cap stops any single file from growing past it between two checks. Under bubblewrap /tmp is a tmpfs of at most
  1 GiB (and its pages count as the job's memory).
- GPUs: the worker sets CUDA_VISIBLE_DEVICES to the devices it assigned. Under bubblewrap a job that asked for no
  GPU has no /dev/nvidia* at all; a job with GPUs gets all of them and CUDA_VISIBLE_DEVICES picks (no device
  cgroup: v2 has none without eBPF, and this module does not program v1's).

The API is plain data in and out: nothing is pickled, no shell is involved.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modelfactory.config import settings
from modelfactory.errors import MFError

log = logging.getLogger(__name__)

GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL when a job is stopped (time limit, cancel, preemption)
POLL_SECONDS = 0.05  # how often the parent checks the process, the clock and should_stop()
DISK_CHECK_SECONDS = 2.0  # how often the job directory's size is measured

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
    reason: str  # 'ok' | 'failed' | 'memory limit' | 'time limit' | 'disk limit' | 'stopped'
    wall_seconds: float
    cpu_seconds: float  # user + sys: the cgroup's count where there is one, else os.wait4 rusage (undercounts under
    #                     bubblewrap without a cgroup: its init is not always waited for)
    max_rss_mb: float  # the memory cgroup's peak (all processes) where there is one, else the largest process's
    stdout_path: Path
    stderr_path: Path
    outputs_dir: Path
    message: str
    enforcement: dict[str, str] = field(default_factory=dict)  # per resource: how it was enforced, or why not


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


def _cgroup_hierarchies() -> tuple[Path | None, dict[str, Path]]:
    """This process's own cgroup directories: (the v2 one or None, {v1 controller: its directory})."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, {}
    v2_path = None
    v1_paths: dict[str, str] = {}
    for line in own:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        else:
            for ctrl in parts[1].split(","):
                v1_paths[ctrl] = parts[2]
    v2: Path | None = None
    v1: dict[str, Path] = {}
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_root, mount_point, fstype, options = fields[3], fields[4], rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2_path is not None and v2 is None:
            base = _under_mount(mount_point, mount_root, v2_path)
            if base.is_dir():
                v2 = base
        elif fstype == "cgroup":
            for ctrl in options:
                if ctrl in v1_paths and ctrl not in v1:
                    base = _under_mount(mount_point, mount_root, v1_paths[ctrl])
                    if base.is_dir():
                        v1[ctrl] = base
    return v2, v1


def _under_mount(mount_point: str, mount_root: str, own_path: str) -> Path:
    rel = own_path
    if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root + "/")):
        rel = rel[len(mount_root):]
    return Path(mount_point) / rel.lstrip("/")


def _read_int_field(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


class _JobCgroup:
    """The job's cgroup(s): one directory in the v2 hierarchy and/or one per v1 hierarchy it uses. The child
    joins all of them before exec (`procs_files`); `enforcement` says per resource what holds the limit."""

    def __init__(self) -> None:
        self.dirs: list[Path] = []
        self.controllers: dict[str, tuple[int, Path]] = {}  # memory/pids/cpu/cpuset -> (version, directory)
        self.kill_file: Path | None = None  # v2 cgroup.kill
        self.v2: Path | None = None  # the v2 directory (cpu.stat is always there)
        self.cpuacct: Path | None = None  # a v1 cpuacct directory, for CPU time when there is no v2 one
        self.freezer: Path | None = None  # v1 freezer directory
        self.enforcement: dict[str, str] = {}
        self.problems: list[str] = []

    @classmethod
    def create(cls, name: str, *, cpu: float, cores: set[int], memory_bytes: int, pids_max: int) -> _JobCgroup:
        g = cls()
        v2_base, v1_bases = _cgroup_hierarchies()
        if v2_base is None and not v1_bases:
            g.problems.append("this process is in no cgroup hierarchy it can see")
        v2_dir: Path | None = None
        v2_controllers: set[str] = set()
        if v2_base is not None:
            v2_dir = g._mkdir(v2_base / name, f"cgroup v2 at {v2_base}")
            if v2_dir is not None:
                enabled = set(_read_text(v2_base / "cgroup.subtree_control").split())
                for ctrl in ("memory", "pids", "cpu", "cpuset"):
                    if ctrl not in enabled:  # fails (EBUSY) where our own cgroup holds processes: v1 or nothing
                        _best_effort_write(v2_base / "cgroup.subtree_control", f"+{ctrl}")
                v2_controllers = set(_read_text(v2_dir / "cgroup.controllers").split())
                g.v2 = v2_dir
                if (v2_dir / "cgroup.kill").exists():
                    g.kill_file = v2_dir / "cgroup.kill"

        def v1_dir(ctrl: str) -> Path | None:
            base = v1_bases.get(ctrl)
            if base is None:
                return None
            path = base / name
            if path in g.dirs:  # co-mounted controllers (cpu,cpuacct) share one directory
                return path
            return g._mkdir(path, f"cgroup v1 {ctrl} at {base}")

        def apply(ctrl: str, v2_files: list[tuple[str, str]], v1_files: list[tuple[str, str]], what: str) -> None:
            tried = []
            if v2_dir is not None and ctrl in v2_controllers:
                try:
                    for fname, value in v2_files:
                        (v2_dir / fname).write_text(value)
                    g.controllers[ctrl] = (2, v2_dir)
                    g.enforcement[ctrl] = f"cgroup v2 {v2_files[0][0]} ({what})"
                    return
                except OSError as e:
                    tried.append(f"v2 {ctrl}: {e.strerror}")
            else:
                tried.append(f"no v2 {ctrl} controller" if v2_dir is not None else "no writable v2 cgroup")
            d = v1_dir(ctrl)
            if d is not None:
                try:
                    for fname, value in v1_files:
                        (d / fname).write_text(value)
                    g.controllers[ctrl] = (1, d)
                    g.enforcement[ctrl] = f"cgroup v1 {v1_files[-1][0]} ({what})"
                    return
                except OSError as e:
                    tried.append(f"v1 {ctrl}: {e.strerror}")
            else:
                tried.append(f"no writable v1 {ctrl} cgroup")
            g.problems.append(f"{ctrl}: " + "; ".join(tried))

        period = 100_000
        quota = max(1000, int(cpu * period))
        mib = memory_bytes / 2**20
        apply("memory", [("memory.max", str(memory_bytes))], [("memory.limit_in_bytes", str(memory_bytes))],
              f"{mib:.0f} MiB for the whole job")
        if g.controllers.get("memory", (0,))[0] == 2:
            _best_effort_write(v2_dir / "memory.swap.max", "0")  # type: ignore[operator]
            _best_effort_write(v2_dir / "memory.oom.group", "1")  # type: ignore[operator]
        elif "memory" in g.controllers:
            _best_effort_write(g.controllers["memory"][1] / "memory.memsw.limit_in_bytes", str(memory_bytes))
        apply("pids", [("pids.max", str(pids_max))], [("pids.max", str(pids_max))], f"{pids_max} processes")
        apply("cpu", [("cpu.max", f"{quota} {period}")],
              [("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(quota))], f"{cpu:g} cores of time")
        core_list = ",".join(map(str, sorted(cores)))
        mems = _read_text(v1_bases["cpuset"] / "cpuset.effective_mems").strip() if "cpuset" in v1_bases else ""
        mems = mems or (_read_text(v1_bases["cpuset"] / "cpuset.mems").strip() if "cpuset" in v1_bases else "")
        apply("cpuset", [("cpuset.cpus", core_list)], [("cpuset.mems", mems or "0"), ("cpuset.cpus", core_list)],
              f"cores {core_list}")
        if g.kill_file is None:
            d = v1_dir("freezer")
            if d is not None and (d / "freezer.state").exists():
                g.freezer = d
        if g.v2 is None:
            d = v1_dir("cpuacct")
            if d is not None and (d / "cpuacct.usage").exists():
                g.cpuacct = d
        # A v1 directory created for a controller whose limit could not be written would hold the job for nothing.
        used = {d for _, d in g.controllers.values()} | {v2_dir, g.freezer, g.cpuacct}
        for d in [d for d in g.dirs if d not in used]:
            _best_effort_rmdir(d)
            g.dirs.remove(d)
        return g

    def _mkdir(self, path: Path, what: str) -> Path | None:
        try:
            path.mkdir()
        except OSError as e:
            self.problems.append(f"{what}: {e.strerror}")
            return None
        self.dirs.append(path)
        return path

    def why_not(self, ctrl: str) -> str:
        """Why `ctrl` holds no limit for this job."""
        mine = [p.split(": ", 1)[1] for p in self.problems if p.startswith(f"{ctrl}: ")]
        general = [p for p in self.problems if p.split(": ", 1)[0] not in ("memory", "pids", "cpu", "cpuset")]
        return "; ".join(general or mine) or "none available"

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    @property
    def holds_lifetime(self) -> bool:
        return bool(self.dirs)

    def describe_kill(self) -> str:
        if self.kill_file is not None:
            return "the job's cgroup is killed as a whole (cgroup v2 cgroup.kill)"
        if self.freezer is not None:
            return "the job's cgroup is frozen and killed (cgroup v1 freezer)"
        return "every process in the job's cgroup is killed until none is left"

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    def signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.kill()
            return
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self, timeout: float = 5.0) -> None:
        """Kill every process of the job, including those that left its session (setsid) or double-forked."""
        _kill_cgroup_dirs(self.dirs, self.kill_file, self.freezer, timeout)

    def cpu_seconds(self) -> float | None:
        """CPU time of every process the job ever had (bubblewrap's own init does not always wait for them where
        we could see it in rusage)."""
        if self.v2 is not None:
            usec = _read_int_field(self.v2 / "cpu.stat", "usage_usec")
            return usec / 1e6 if usec is not None else None
        if self.cpuacct is not None:
            try:
                return int(_read_text(self.cpuacct / "cpuacct.usage")) / 1e9
            except ValueError:
                return None
        return None

    def peak_memory_mb(self) -> float | None:
        version, d = self.controllers.get("memory", (0, None))
        text = _read_text(d / ("memory.peak" if version == 2 else "memory.max_usage_in_bytes")) if d else ""
        try:
            return int(text) / 2**20
        except ValueError:
            return None

    def oom_killed(self) -> bool:
        version, d = self.controllers.get("memory", (0, None))
        if d is None:
            return False
        if version == 2:
            return (_read_int_field(d / "memory.events", "oom_kill") or 0) > 0
        kills = _read_int_field(d / "memory.oom_control", "oom_kill")
        if kills is not None:
            return kills > 0
        return (_read_int_field(d / "memory.oom_control", "under_oom") or 0) > 0  # old kernels

    def remove(self) -> None:
        _remove_cgroup_dirs(self.dirs, self.kill_file, self.freezer)


def _kill_cgroup_dirs(dirs: list[Path], kill_file: Path | None, freezer: Path | None, timeout: float = 5.0) -> None:
    def pids() -> list[int]:
        found: set[int] = set()
        for d in dirs:
            try:
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(found)

    if kill_file is not None:
        _best_effort_write(kill_file, "1")
    frozen = False
    if freezer is not None and pids():
        frozen = _best_effort_write(freezer / "freezer.state", "FROZEN")  # no fork between listing and killing
        deadline = time.monotonic() + 1
        while frozen and _read_text(freezer / "freezer.state").strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.01)
    deadline = time.monotonic() + timeout
    while True:
        left = pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if frozen:
            _best_effort_write(freezer / "freezer.state", "THAWED")  # type: ignore[operator]  # let them die
            frozen = False
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def _remove_cgroup_dirs(dirs: list[Path], kill_file: Path | None, freezer: Path | None) -> None:
    # A cgroup stays busy until the kernel has reaped its last process: seconds on a loaded machine, not ms.
    deadline = time.monotonic() + 30
    for d in dirs:
        while True:
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("could not remove cgroup %s: %s", d, e)
                    break
            _kill_cgroup_dirs(dirs, kill_file, freezer, timeout=0.5)
            time.sleep(0.02)


def kill_recorded(state_path: Path | str) -> bool:
    """Kill what a `run_command` started, from the record it wrote to `state_path` (its cgroups and its process
    group), even when the process that ran it is gone; remove its cgroups. True if there was a record of this
    machine (a Ray task on another node is cancelled through Ray)."""
    try:
        state = json.loads(Path(state_path).read_text())
    except (OSError, ValueError):
        return False
    if state.get("host") != socket.gethostname():  # MF_HOME is shared: pids and cgroups are another machine's
        return False
    dirs = [Path(d) for d in state.get("cgroups") or [] if str(d).startswith("/sys/fs/cgroup/")]
    kill_file = Path(state["kill_file"]) if state.get("kill_file") else None
    freezer = Path(state["freezer"]) if state.get("freezer") else None
    pid = state.get("pid")
    if isinstance(pid, int) and pid > 1 and dirs == [] and _pgid(pid) == pid:
        try:
            os.killpg(pid, signal.SIGKILL)  # bubblewrap's pid namespace dies with it; without, the group does
        except (ProcessLookupError, PermissionError):
            pass
    if dirs:
        _kill_cgroup_dirs(dirs, kill_file, freezer)
        _remove_cgroup_dirs(dirs, kill_file, freezer)
    Path(state_path).unlink(missing_ok=True)  # done: a later call must not signal a reused pid
    return True


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _best_effort_write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _best_effort_rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------- isolation


_ETC_FILES = ("passwd", "group", "hosts", "host.conf", "nsswitch.conf", "resolv.conf", "gai.conf", "protocols",
              "services", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "mime.types",
              "os-release", "alternatives", "ssl/certs", "ca-certificates", "ca-certificates.conf")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_GPU_DEVICES = re.compile(r"^nvidia(\d+|ctl|-uvm|-uvm-tools|-modeset)$")
_bwrap_checked: dict[tuple[str, int | None], str | None] = {}


def _bwrap() -> tuple[str | None, str]:
    """(path of bubblewrap or None, why not). MF_SANDBOX_BWRAP: a path, or 'off' to never use it."""
    setting = settings().sandbox_bwrap
    if setting.lower() in ("off", "0", "no", "none", "false"):
        return None, "bubblewrap is turned off (MF_SANDBOX_BWRAP=off)"
    path = setting or shutil.which("bwrap", path=os.environ.get("PATH") or _DEFAULT_PATH) \
        or shutil.which("bwrap", path=_DEFAULT_PATH)
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
                               env={"PATH": _DEFAULT_PATH})
            problem = None if p.returncode == 0 else \
                (p.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {p.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as e:
            problem = str(e)
        _bwrap_checked[key] = problem
    return _bwrap_checked[key]


def isolation(tenant: str | None = None) -> tuple[str, str]:
    """How this process would isolate a tenant's command: ('uid+bwrap' | 'uid' | 'bwrap' | 'none', detail)."""
    path, why_not = _bwrap()
    uid = (tenant_ids(tenant)[0] if tenant else UID_BASE + UID_RANGE) if _is_root() else None
    if path is not None:
        problem = _bwrap_problem(path, uid)
        if problem is None:
            return ("uid+bwrap" if _is_root() else "bwrap"), f"bubblewrap at {path}"
        why_not = f"bubblewrap cannot create namespaces here ({problem}; are unprivileged user namespaces off?)"
    if _is_root():
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


def _bwrap_argv(path: str, *, job_dir: Path, network: bool, gpus: bool, tmp_bytes: int,
                uid: int | None) -> list[str]:
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
            if _GPU_DEVICES.match(name):
                args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for sub in ("work", "outputs", "tmp"):
        args += ["--bind", str(job_dir / sub), str(job_dir / sub)]
    return [*args, "--chdir", str(job_dir / "work"), "--"]


_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _UNSHARE, _PRCTL = _LIBC.unshare, _LIBC.prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _UNSHARE = _PRCTL = None


# ---------------------------------------------------------------------------------------------------- running


def _capped(res: int, value: int) -> tuple[int, int]:
    """(soft, hard) = value, but never above the current hard limit (raising it needs privileges)."""
    _, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return value, value


def _descendants(root: int) -> list[int]:
    """Every process below `root` (by parent pid), found in /proc: processes that left its group, too."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal_job(pid: int, sig: int, cgroup: _JobCgroup | None) -> None:
    targets = _descendants(pid) if sig != signal.SIGKILL else []  # SIGKILL of bwrap's group kills its namespace
    try:
        os.killpg(pid, sig)  # the command leads its own session and group: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass
    for child in targets:  # e.g. a graceful SIGTERM to what left the group (and, under bwrap, its namespace)
        try:
            os.kill(child, sig)
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


def _disk_usage(paths: list[Path]) -> int:
    """Allocated bytes under `paths` (no links followed, nothing counted twice)."""
    total, seen, todo = 0, set(), [str(p) for p in paths]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                todo.append(e.path)
    return total


def _processes_of(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n


def _resolve(argv0: str, path: str) -> bool:
    if "/" in argv0:
        return os.path.isfile(argv0) and os.access(argv0, os.X_OK)
    return shutil.which(argv0, path=path) is not None


def run_command(argv: list[str], *, tenant: str, workdir: Path, cpu: float, memory_gb: float,
                time_limit_s: float | None, env: dict[str, str] | None = None,
                should_stop: Callable[[], bool] = lambda: False, network: bool = False,
                allow_unisolated: bool = False, gpus: bool = False, pids_max: int | None = None,
                disk_gb: float | None = None, state_path: Path | str | None = None) -> SandboxResult:
    """Run `argv` as tenant `tenant` in the job directory `workdir` (from `tenant_workdir`), isolated (see the
    module docstring), enforcing the limits. `network`: the tenant's grant; `gpus`: whether the job was given any;
    `state_path`: where to record what `kill_recorded` needs.

    Blocks until the command ends; returns how it ended. Raises MFError for bad arguments, a job directory that
    is not the tenant's, or a machine that cannot isolate it (unless `allow_unisolated`); a command that cannot be
    started (not found, not executable) is a 'failed' result."""
    _check_tenant(tenant)
    if not argv or not isinstance(argv, list | tuple) or not all(isinstance(a, str) for a in argv):
        raise MFError("the command must be a non-empty list of strings")
    if not cpu or cpu <= 0 or not math.isfinite(cpu):
        raise MFError(f"cpu must be a positive number of cores, not {cpu!r}")
    if not memory_gb or memory_gb <= 0 or not math.isfinite(memory_gb):
        raise MFError(f"memory_gb must be positive, not {memory_gb!r}")
    if time_limit_s is not None and (time_limit_s <= 0 or not math.isfinite(time_limit_s)):
        raise MFError(f"time limit must be positive, not {time_limit_s!r}")
    pids_max = int(pids_max or settings().job_pids_max)
    disk_bytes = int((disk_gb or settings().job_disk_gb) * 1024**3)
    job_dir = Path(workdir).resolve()
    jobs_dir = (_tenants_root() / tenant / "jobs").resolve()
    if job_dir.parent != jobs_dir:
        raise MFError(f"{workdir} is not a job directory of tenant {tenant!r} (use tenant_workdir)")
    mode, detail = isolation(tenant)
    if mode == "none" and not allow_unisolated:
        raise MFError(unisolated_refusal(detail))
    _prepare_job_dir(tenant, job_dir)

    as_root = _is_root()
    uid, gid = tenant_ids(tenant) if as_root else (None, None)
    work, outputs, logs = job_dir / "work", job_dir / "outputs", job_dir / "logs"
    stdout_path, stderr_path = logs / "stdout.log", logs / "stderr.log"
    limit_bytes = int(memory_gb * 1024**3)
    ncores = math.ceil(cpu)
    enforcement = {"isolation": f"{mode}: {detail}" if mode != "none" else
                   f"none: commands run as the worker's own user (--allow-unisolated; {detail})"}
    if mode == "none":
        enforcement["network"] = "shared: no isolation"
    elif network:
        enforcement["network"] = "shared with the machine (granted to this tenant)"
    elif "bwrap" in mode:
        enforcement["network"] = "none: a fresh network namespace (loopback only)"
    else:
        enforcement["network"] = "none: a fresh network namespace (no interfaces up)"
    if _UNSHARE is None and mode == "uid" and not network:
        raise MFError("cannot create a network namespace here (no unshare(2))")

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
    cgroup: _JobCgroup | None = None
    fds: list[int] = []
    proc: subprocess.Popen | None = None
    reaped = False
    state = Path(state_path) if state_path is not None else None
    try:
        cgroup = _JobCgroup.create(f"mf-{tenant}-{job_dir.name}-{os.getpid()}-{secrets.token_hex(3)}", cpu=cpu,
                                   cores=cores, memory_bytes=limit_bytes, pids_max=pids_max)
        limits = [(resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_FSIZE, _capped(resource.RLIMIT_FSIZE, disk_bytes))]
        cpu_soft = None
        if time_limit_s is not None:
            cpu_soft = math.ceil((time_limit_s + GRACE_SECONDS) * len(cores)) + 1
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)  # SIGXCPU at the soft limit, SIGKILL 5 s later
            limits.append((resource.RLIMIT_CPU, (cpu_soft, cpu_soft + 5) if hard == resource.RLIM_INFINITY
                           else (min(cpu_soft, hard), hard)))
        if "cpu" not in cgroup.controllers:
            enforcement["cpu"] = (f"affinity to {len(cores)} core(s) only, which the command can widen (no cpu "
                                  f"cgroup: {cgroup.why_not('cpu')})")
        else:
            enforcement["cpu"] = cgroup.enforcement["cpu"] + (f"; {cgroup.enforcement['cpuset']}"
                                                              if "cpuset" in cgroup.enforcement else "")
        if "pids" not in cgroup.controllers:
            nproc = pids_max + _processes_of(uid if uid is not None else os.getuid())
            limits.append((resource.RLIMIT_NPROC, _capped(resource.RLIMIT_NPROC, nproc)))
            enforcement["pids"] = (f"RLIMIT_NPROC {nproc} for the job's uid, not per job (no pids cgroup: "
                                   f"{cgroup.why_not('pids')})")
        else:
            enforcement["pids"] = cgroup.enforcement["pids"]
        if "memory" not in cgroup.controllers:
            enforcement["memory"] = (f"RLIMIT_AS {memory_gb:g} GB per process, not for the whole job (no memory "
                                     f"cgroup: {cgroup.why_not('memory')})")
        else:
            enforcement["memory"] = cgroup.enforcement["memory"]
        lifetime = []
        if cgroup.holds_lifetime:
            lifetime.append(cgroup.describe_kill())
        if "bwrap" in mode:
            lifetime.append("the job's pid namespace dies with its init")
        enforcement["lifetime"] = "; ".join(lifetime) or (
            f"process group only: a setsid child can survive (no cgroup: {cgroup.why_not('')}; no bubblewrap)")
        enforcement["disk"] = (f"job dir measured every {DISK_CHECK_SECONDS:g}s and killed over "
                               f"{disk_bytes / 1024**3:g} GB; RLIMIT_FSIZE the same per file")
        enforcement["gpu"] = ("no GPU device nodes in the sandbox" if "bwrap" in mode and not gpus else
                              "CUDA_VISIBLE_DEVICES only: no device cgroup")
        if "memory" not in cgroup.controllers:
            limits.append((resource.RLIMIT_AS, _capped(resource.RLIMIT_AS, limit_bytes)))  # last: see _child_setup
        procs_files = cgroup.procs_files
        join_net = mode == "uid" and not network
        unshare, prctl = _UNSHARE, _PRCTL

        def _child_setup() -> None:  # runs in the forked child before exec: os calls only, nothing imported
            for procs in procs_files:
                fd = os.open(procs, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
            os.sched_setaffinity(0, cores)
            if join_net and unshare(_CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            if prctl is not None:  # after setuid, which clears it: the command (bubblewrap) dies with its parent
                prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            for res, value in limits:  # RLIMIT_AS last: the forked copy of this process may already exceed it
                resource.setrlimit(res, value)

        if state is not None:  # before the start: a job process killed right after still leaves its record
            tmp_state = state.with_name(state.name + ".tmp")
            tmp_state.write_text(json.dumps({"host": socket.gethostname(), "cgroups": [str(d) for d in cgroup.dirs],
                                             "kill_file": str(cgroup.kill_file or "") or None,
                                             "freezer": str(cgroup.freezer or "") or None, "pid": None}))
            os.replace(tmp_state, state)
        stderr_start = stderr_path.stat().st_size if stderr_path.exists() else 0
        fds = [_open_log(stdout_path, gid), _open_log(stderr_path, gid)]
        start = time.monotonic()
        full_argv = list(argv)
        if "bwrap" in mode:
            full_argv = [*_bwrap_argv(_bwrap()[0], job_dir=job_dir, network=network, gpus=gpus,  # type: ignore
                                      tmp_bytes=min(disk_bytes, 2**30), uid=uid), *argv]
        try:
            if not _resolve(argv[0], child_env["PATH"]):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            proc = subprocess.Popen(full_argv, cwd=work, env=child_env, stdin=subprocess.DEVNULL, stdout=fds[0],
                                    stderr=fds[1], start_new_session=True, umask=0o077, preexec_fn=_child_setup)
        except OSError as e:  # exec failed in the child: not found, not executable, permission denied
            os.write(fds[1], f"mf: could not start {argv[0]!r}: {e.strerror}\n".encode())
            return SandboxResult(None, "failed", time.monotonic() - start, 0.0, 0.0, stdout_path, stderr_path,
                                 outputs, f"failed: could not start {argv[0]!r}: {e.strerror}", enforcement)
        finally:
            for fd in fds:
                os.close(fd)
            fds = []
        pid = proc.pid
        if state is not None:
            record = json.loads(state.read_text())
            record["pid"] = pid
            state.write_text(json.dumps(record))

        stop_reason = None
        term_at = 0.0
        killed = False
        disk_at = start
        while not _exited(pid):
            now = time.monotonic()
            if stop_reason is None:
                if time_limit_s is not None and now - start >= time_limit_s:
                    stop_reason = "time limit"
                elif should_stop():
                    stop_reason = "stopped"
                elif now - disk_at >= DISK_CHECK_SECONDS:
                    disk_at = now
                    if _disk_usage([work, outputs, job_dir / "tmp"]) > disk_bytes:
                        stop_reason, killed = "disk limit", True
                        _signal_job(pid, signal.SIGKILL, cgroup)  # no grace: it would keep writing
                if stop_reason is not None and not killed:
                    _signal_job(pid, signal.SIGTERM, cgroup)
                    term_at = now
            elif not killed and now - term_at >= GRACE_SECONDS:
                _signal_job(pid, signal.SIGKILL, cgroup)
                killed = True
            time.sleep(POLL_SECONDS)

        _signal_job(pid, signal.SIGKILL, cgroup)  # whatever it left running in its group, cgroup or namespace
        _, status, usage = os.wait4(pid, 0)
        reaped = True
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if "bwrap" in mode and 128 < code <= 128 + 64:  # bubblewrap reports a command killed by signal N as 128+N
            code = -(code - 128)
        wall = time.monotonic() - start
        oom_killed = cgroup.oom_killed()
        cgroup_cpu, cgroup_peak_mb = cgroup.cpu_seconds(), cgroup.peak_memory_mb()
    finally:
        for fd in fds:
            os.close(fd)
        if proc is not None and not reaped:  # an exception (should_stop raised, KeyboardInterrupt): leave nothing
            _signal_job(proc.pid, signal.SIGKILL, cgroup)
            proc.wait()
        if cgroup is not None:
            cgroup.remove()
        if state is not None:
            state.unlink(missing_ok=True)
        _release_cores(cores)

    cpu_seconds = max(usage.ru_utime + usage.ru_stime, cgroup_cpu or 0.0)
    max_rss_mb = max(usage.ru_maxrss / 1024, cgroup_peak_mb or 0.0)  # the cgroup's: all processes together
    exit_code = code if code >= 0 else None
    how = f"exited with code {code}" if code >= 0 else f"was killed by {_signal_name(-code)}"
    cpu_limited = cpu_soft is not None and (code == -signal.SIGXCPU or (code == -signal.SIGKILL
                                                                         and cpu_seconds >= cpu_soft))
    if stop_reason == "stopped":
        reason, message = "stopped", f"stopped: cancelled or preempted while running ({how})"
    elif stop_reason == "time limit" or cpu_limited:
        reason, message = "time limit", f"stopped: over its time limit of {_format_duration(time_limit_s)}"
    elif stop_reason == "disk limit" or code == -signal.SIGXFSZ:
        reason, message = "disk limit", f"stopped: over its disk limit of {disk_bytes / 1024**3:g} GB"
    elif _memory_verdict(oom_killed=oom_killed, code=code, stderr_tail=_stderr_tail(stderr_path, stderr_start),
                         max_rss_mb=max_rss_mb, limit_mb=memory_gb * 1024):
        reason, message = "memory limit", f"stopped: over its memory limit of {memory_gb:g} GB"
    elif code == 0:
        reason, message = "ok", f"finished: exited with code 0 after {wall:.1f}s"
    else:
        reason, message = "failed", f"failed: the command {how}"
    return SandboxResult(exit_code, reason, wall, cpu_seconds, max_rss_mb, stdout_path, stderr_path, outputs,
                         message, enforcement)
