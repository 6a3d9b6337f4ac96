"""Per-process limits and the verdicts on how a job ended: rlimits (what is left where cgroups are not writable),
the cores a job is pinned to, the disk a job directory takes, and whether a dead job died of its memory limit.

Why apart from the runner: the worker applies the same fallbacks to its own stage jobs (compute/worker.py)."""

from __future__ import annotations

import os
import re
import resource
import signal
import stat
import threading
from collections import Counter
from pathlib import Path

_OOM_MARKERS = re.compile(
    r"^(?:[\w.]*\.)?(?:_Array)?MemoryError\b"  # Python's MemoryError, numpy's _ArrayMemoryError (not torch's CUDA one)
    r"|std::bad_alloc"
    r"|Cannot allocate memory"
    r"|runtime: out of memory",
    re.MULTILINE,
)
_MEMORY_SIGNALS = {signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS}


_cores_lock = threading.Lock()
_cores_in_use: Counter[int] = Counter()


def acquire_cores(n: int) -> set[int]:
    allowed = sorted(os.sched_getaffinity(0))
    with _cores_lock:
        chosen = sorted(allowed, key=lambda c: (_cores_in_use[c], c))[: max(1, min(n, len(allowed)))]
        _cores_in_use.update(chosen)
    return set(chosen)


def release_cores(cores: set[int]) -> None:
    with _cores_lock:
        _cores_in_use.subtract(cores)
        for c in [c for c, k in _cores_in_use.items() if k <= 0]:
            del _cores_in_use[c]


def capped(res: int, value: int) -> tuple[int, int]:
    """(soft, hard) = value, but never above the current hard limit (raising it needs privileges)."""
    _, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return value, value


def stderr_tail(path: Path, start: int, size: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(start, end - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def memory_verdict(*, oom_killed: bool, code: int, stderr_tail: str, max_rss_mb: float, limit_mb: float) -> bool:
    """Did the job die of its memory limit? The heuristic documented in the module docstring."""
    if oom_killed:
        return True
    if code == 0:
        return False
    if _OOM_MARKERS.search(stderr_tail):
        return True
    return code < 0 and -code in _MEMORY_SIGNALS and max_rss_mb >= 0.9 * limit_mb


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def disk_usage(paths: list[Path]) -> int:
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


def processes_of(uid: int) -> int:
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                n += entry.stat().st_uid == uid
            except OSError:
                pass
    return n
