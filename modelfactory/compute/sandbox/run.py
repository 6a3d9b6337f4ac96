"""Running one command in the sandbox: `run_command` (start it isolated, enforce its limits, say how it ended)
and `kill_recorded` (kill what a run started, from the record it left, when the process that ran it is gone).

What isolation and limits mean is the package's docstring (compute/sandbox/__init__.py)."""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelfactory.config import settings
from modelfactory.errors import MFError

from .cgroups import JobCgroup, kill_cgroup_dirs, remove_cgroup_dirs
from .devices import present_gpus, rules_for
from .dirs import check_tenant, format_duration, is_root, prepare_job_dir, tenant_ids, tenants_root
from .limits import (
    acquire_cores,
    capped,
    disk_usage,
    memory_verdict,
    processes_of,
    release_cores,
    signal_name,
    stderr_tail,
)
from .namespaces import (
    CLONE_NEWNET,
    DEFAULT_PATH,
    PR_SET_PDEATHSIG,
    PRCTL,
    UNSHARE,
    bwrap_argv,
    bwrap_path,
    isolation,
    unisolated_refusal,
)

GRACE_SECONDS = 10.0  # between SIGTERM and SIGKILL when a job is stopped (time limit, cancel, preemption)
POLL_SECONDS = 0.05  # how often the parent checks the process, the clock and should_stop()
DISK_CHECK_SECONDS = 2.0  # how often the job directory's size is measured


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
        kill_cgroup_dirs(dirs, kill_file, freezer)
        remove_cgroup_dirs(dirs, kill_file, freezer)
    Path(state_path).unlink(missing_ok=True)  # done: a later call must not signal a reused pid
    return True


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


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


def _signal_job(pid: int, sig: int, cgroup: JobCgroup | None) -> None:
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


def _resolve(argv0: str, path: str) -> bool:
    if "/" in argv0:
        return os.path.isfile(argv0) and os.access(argv0, os.X_OK)
    return shutil.which(argv0, path=path) is not None


def run_command(argv: list[str], *, tenant: str, workdir: Path, cpu: float, memory_gb: float,
                time_limit_s: float | None, env: dict[str, str] | None = None,
                should_stop: Callable[[], bool] = lambda: False, network: bool = False,
                allow_unisolated: bool = False, gpus: bool = False, pids_max: int | None = None,
                disk_gb: float | None = None, state_path: Path | str | None = None,
                gpu_ids: Sequence[int] | None = None) -> SandboxResult:
    """Run `argv` as tenant `tenant` in the job directory `workdir` (from `tenant_workdir`), isolated (see the
    package docstring), enforcing the limits. `network`: the tenant's grant; `gpus`: whether the job was given any
    (`gpu_ids`: which; the device cgroup and bubblewrap's /dev hold it to them);
    `state_path`: where to record what `kill_recorded` needs.

    Blocks until the command ends; returns how it ended. Raises MFError for bad arguments, a job directory that
    is not the tenant's, or a machine that cannot isolate it (unless `allow_unisolated`); a command that cannot be
    started (not found, not executable) is a 'failed' result."""
    check_tenant(tenant)
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
    jobs_dir = (tenants_root() / tenant / "jobs").resolve()
    if job_dir.parent != jobs_dir:
        raise MFError(f"{workdir} is not a job directory of tenant {tenant!r} (use tenant_workdir)")
    mode, detail = isolation(tenant)
    if mode == "none" and not allow_unisolated:
        raise MFError(unisolated_refusal(detail))
    prepare_job_dir(tenant, job_dir)

    as_root = is_root()
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
    if UNSHARE is None and mode == "uid" and not network:
        raise MFError("cannot create a network namespace here (no unshare(2))")

    cores = acquire_cores(ncores)
    child_env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "HOME": str(work),
        "TMPDIR": str(job_dir / "tmp"),
        "MF_OUTPUT_DIR": str(outputs),
        "OMP_NUM_THREADS": str(len(cores)),
        "MKL_NUM_THREADS": str(len(cores)),
        "OPENBLAS_NUM_THREADS": str(len(cores)),
        **(env or {}),
    }
    cgroup: JobCgroup | None = None
    fds: list[int] = []
    proc: subprocess.Popen | None = None
    reaped = False
    state = Path(state_path) if state_path is not None else None
    try:
        assigned = list(gpu_ids) if gpu_ids is not None else (present_gpus() if gpus else [])
        cgroup = JobCgroup.create(f"mf-{tenant}-{job_dir.name}-{os.getpid()}-{secrets.token_hex(3)}", cpu=cpu,
                                  cores=cores, memory_bytes=limit_bytes, pids_max=pids_max,
                                  devices=rules_for(assigned))
        limits = [(resource.RLIMIT_CORE, (0, 0)), (resource.RLIMIT_FSIZE, capped(resource.RLIMIT_FSIZE, disk_bytes))]
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
            nproc = pids_max + processes_of(uid if uid is not None else os.getuid())
            limits.append((resource.RLIMIT_NPROC, capped(resource.RLIMIT_NPROC, nproc)))
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
        enforcement["gpu"] = "; ".join(
            ([cgroup.enforcement["devices"]] if "devices" in cgroup.enforcement else
             [f"CUDA_VISIBLE_DEVICES only: no device cgroup ({cgroup.why_not('devices')})"])
            + (["no GPU device nodes in the sandbox"] if "bwrap" in mode and not gpus else []))
        if "memory" not in cgroup.controllers:
            limits.append((resource.RLIMIT_AS, capped(resource.RLIMIT_AS, limit_bytes)))  # last: see _child_setup
        procs_files = cgroup.procs_files
        join_net = mode == "uid" and not network
        unshare, prctl = UNSHARE, PRCTL

        def _child_setup() -> None:  # runs in the forked child before exec: os calls only, nothing imported
            for procs in procs_files:
                fd = os.open(procs, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
            os.sched_setaffinity(0, cores)
            if join_net and unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            if uid is not None:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            if prctl is not None:  # after setuid, which clears it: the command (bubblewrap) dies with its parent
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            for res, value in limits:  # RLIMIT_AS last: the forked copy of this process may already exceed it
                resource.setrlimit(res, value)

        if state is not None:  # before the start: a job process killed right after still leaves its record
            cgroup.record(state)
        stderr_start = stderr_path.stat().st_size if stderr_path.exists() else 0
        fds = [_open_log(stdout_path, gid), _open_log(stderr_path, gid)]
        start = time.monotonic()
        full_argv = list(argv)
        if "bwrap" in mode:
            full_argv = [*bwrap_argv(bwrap_path()[0], job_dir=job_dir, network=network, gpus=gpus,  # type: ignore
                                     tmp_bytes=min(disk_bytes, 2**30), uid=uid, gpu_ids=assigned), *argv]
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
                    if disk_usage([work, outputs, job_dir / "tmp"]) > disk_bytes:
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
        release_cores(cores)

    cpu_seconds = max(usage.ru_utime + usage.ru_stime, cgroup_cpu or 0.0)
    max_rss_mb = max(usage.ru_maxrss / 1024, cgroup_peak_mb or 0.0)  # the cgroup's: all processes together
    exit_code = code if code >= 0 else None
    how = f"exited with code {code}" if code >= 0 else f"was killed by {signal_name(-code)}"
    cpu_limited = cpu_soft is not None and (code == -signal.SIGXCPU or (code == -signal.SIGKILL
                                                                         and cpu_seconds >= cpu_soft))
    if stop_reason == "stopped":
        reason, message = "stopped", f"stopped: cancelled or preempted while running ({how})"
    elif stop_reason == "time limit" or cpu_limited:
        reason, message = "time limit", f"stopped: over its time limit of {format_duration(time_limit_s)}"
    elif stop_reason == "disk limit" or code == -signal.SIGXFSZ:
        reason, message = "disk limit", f"stopped: over its disk limit of {disk_bytes / 1024**3:g} GB"
    elif memory_verdict(oom_killed=oom_killed, code=code, stderr_tail=stderr_tail(stderr_path, stderr_start),
                         max_rss_mb=max_rss_mb, limit_mb=memory_gb * 1024):
        reason, message = "memory limit", f"stopped: over its memory limit of {memory_gb:g} GB"
    elif code == 0:
        reason, message = "ok", f"finished: exited with code 0 after {wall:.1f}s"
    else:
        reason, message = "failed", f"failed: the command {how}"
    return SandboxResult(exit_code, reason, wall, cpu_seconds, max_rss_mb, stdout_path, stderr_path, outputs,
                         message, enforcement)
