"""Memory and lifetime for the platform's own jobs (factory stages, search orders), the way a tenant's command
gets them: the worker creates a cgroup for the job (the same `JobCgroup` as `run_command`: memory for the whole
job, processes, GPU devices) and the job process joins it before it runs anything. Where this process cannot
create one (not root, no delegated cgroup), the job process caps its own address space instead (RLIMIT_AS = its
size at the start + the job's memory_gb: per process, counting address space, not resident memory) and the worker
says so in its log. The wall-clock limit is the worker's (compute/worker.py): it kills the job at the limit.

Why the job joins rather than the worker moving it: a process cannot allocate before it is inside; the worker
only learns the pid once the fork is done."""

from __future__ import annotations

import os
import resource
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelfactory.config import settings

from .cgroups import JobCgroup
from .devices import rules_for
from .limits import capped


@dataclass
class StageLimits:
    """A stage job's cgroup (possibly holding nothing) and what enforces each limit."""

    cgroup: JobCgroup
    memory_gb: float
    enforcement: dict[str, str] = field(default_factory=dict)

    @property
    def rlimit_fallback(self) -> bool:
        """True when no memory cgroup holds the limit: the job process caps its address space itself."""
        return "memory" not in self.cgroup.controllers

    def spec(self) -> dict:
        """What the job process needs (JSON): the cgroup files to join, and the RLIMIT_AS fallback if any."""
        return {"procs": self.cgroup.procs_files, "rlimit_as_gb": self.memory_gb if self.rlimit_fallback else None}

    def record(self, state_path: Path) -> None:
        """Write what `kill_recorded` needs to kill the whole job later (as `run_command` does)."""
        self.cgroup.record(state_path)

    def over_memory(self) -> bool:
        """Did the kernel OOM-kill something of the job in its cgroup?"""
        return self.cgroup.oom_killed()

    def remove(self) -> None:
        self.cgroup.remove()


def stage_limits(name: str, *, memory_gb: float, gpu_ids: Sequence[int] = (),
                 pids_max: int | None = None) -> StageLimits:
    """Create the cgroup of one stage job attempt (`name`: unique per attempt) with its memory, process and GPU
    device limits; `enforcement` says per resource what holds it, or why nothing does."""
    pids = int(pids_max or settings().job_pids_max)
    g = JobCgroup.create(f"{name}-{os.getpid()}-{secrets.token_hex(3)}", memory_bytes=int(memory_gb * 1024**3),
                         pids_max=pids, devices=rules_for(list(gpu_ids)))
    enforcement = {
        "memory": g.enforcement.get("memory") or (f"RLIMIT_AS {memory_gb:g} GB above the job process's size at its "
                                                  f"start, per process (no memory cgroup: {g.why_not('memory')})"),
        "pids": g.enforcement.get("pids") or f"none (no pids cgroup: {g.why_not('pids')})",
        "gpu": g.enforcement.get("devices") or f"CUDA_VISIBLE_DEVICES only (no device cgroup: {g.why_not('devices')})",
        "lifetime": g.describe_kill() if g.holds_lifetime else "the job's process group only (no cgroup)",
    }
    return StageLimits(g, memory_gb, enforcement)


def enter(spec: dict) -> None:
    """In the job process, before anything else: join the job's cgroups; or, where there is no memory cgroup,
    cap this process's address space at its present size + the job's memory."""
    for procs in spec.get("procs") or []:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    gb = spec.get("rlimit_as_gb")
    if gb:
        limit = _address_space() + int(gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, capped(resource.RLIMIT_AS, limit))


def _address_space() -> int:
    """This process's virtual size now (bytes): what it already holds before the job allocates anything."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
