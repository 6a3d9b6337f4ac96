"""What a scheduling policy sees and decides, and the arithmetic every policy shares: first-fit placement,
dominant shares, weighted max-min entitlements and EASY reservations. Pure: the caller passes `now` and snapshots."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

PRIORITIES = {"batch": 0, "standard": 1, "urgent": 2}  # priority classes, lowest first
EPS = 1e-9
NEVER = math.inf


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float = 0.0
    gpu: float = 0.0
    memory_gb: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.gpu + other.gpu, self.memory_gb + other.memory_gb)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.gpu - other.gpu, self.memory_gb - other.memory_gb)

    def scaled(self, k: float) -> Resources:
        return Resources(self.cpu * k, self.gpu * k, self.memory_gb * k)

    def fits_in(self, free: Resources) -> bool:
        eps = 1e-9
        return self.cpu <= free.cpu + eps and self.gpu <= free.gpu + eps and self.memory_gb <= free.memory_gb + eps

    def min(self, other: Resources) -> Resources:
        return Resources(min(self.cpu, other.cpu), min(self.gpu, other.gpu), min(self.memory_gb, other.memory_gb))


@dataclass
class JobView:
    """A job as a policy sees it. A gang job needs `slots` placements of `resources` at once (each on one
    worker, several may share a worker), or none."""

    id: int
    tenant: str
    priority: str  # a key of PRIORITIES
    resources: Resources
    submitted: float  # seconds, the caller's clock
    slots: int = 1
    started: float | None = None  # set for running jobs
    expected_duration: float | None = None  # seconds (of the work left); backfilling only trusts jobs that declare it
    preemptible: bool = True
    stopping: bool = False  # running, already asked to checkpoint and stop: its resources count as about to be free
    queued_since: float | None = None  # when it last entered the queue (a requeue after preemption); None: submitted

    @property
    def waited(self) -> float:
        """When the job's current wait in the queue began."""
        return self.submitted if self.queued_since is None else self.queued_since

    @property
    def total(self) -> Resources:
        return self.resources.scaled(self.slots)

    @property
    def rank(self) -> int:
        return PRIORITIES[self.priority]


@dataclass
class WorkerView:
    id: str
    capacity: Resources
    free: Resources


@dataclass
class TenantView:
    name: str
    weight: float = 1.0
    max_slots: int | None = None  # soft limit: jobs beyond it wait
    # Dominant-share-seconds the tenant has held so far (the pool's memory of who was served); `fair` breaks ties
    # between equal shares with it, which is what turns a 2:1 weight into 2:1 over time on a pool of two slots.
    served: float = 0.0


@dataclass
class Decision:
    starts: list[tuple[int, list[str]]] = field(default_factory=list)  # job id -> one worker id per slot
    preempt: list[int] = field(default_factory=list)  # running job ids to checkpoint and requeue
    waiting: dict[int, str] = field(default_factory=dict)  # queued job id -> why it is not starting
    retry_at: float | None = None  # ask again at this time even if nothing changes (a preemption then allowed)


class Policy(Protocol):
    name: ClassVar[str]

    def schedule(self, now: float, queued: list[JobView], running: list[tuple[JobView, list[str]]],
                 workers: list[WorkerView], tenants: dict[str, TenantView]) -> Decision: ...


Running = list[tuple[JobView, list[str]]]


def place(job: JobView, free: dict[str, Resources]) -> list[str] | None:
    """First-fit placement of every slot of `job` on `free` (worker id -> free resources), or None. On success
    `free` is updated; on failure it is left as it was."""
    need = job.resources
    if job.slots == 1:  # the common case, without copying `free`
        for wid, f in free.items():
            if need.fits_in(f):
                free[wid] = f - need
                return [wid]
        return None
    trial = dict(free)
    chosen: list[str] = []
    for _ in range(job.slots):
        wid = next((w for w, f in trial.items() if job.resources.fits_in(f)), None)
        if wid is None:
            return None
        trial[wid] = trial[wid] - job.resources
        chosen.append(wid)
    free.update(trial)
    return chosen


def total(resources: Iterable[Resources]) -> Resources:
    out = Resources()
    for r in resources:
        out = out + r
    return out


def dominant_share(used: Resources, pool: Resources) -> float:
    """DRF's dominant share over CPU and GPU: the larger of the two fractions of the pool `used` takes."""
    cpu = used.cpu / pool.cpu if pool.cpu > EPS else 0.0
    gpu = used.gpu / pool.gpu if pool.gpu > EPS else 0.0
    return max(cpu, gpu)


def entitlements(demand: dict[str, float], weights: dict[str, float], capacity: float = 1.0) -> dict[str, float]:
    """Weighted max-min fair split of `capacity` (water-filling): a tenant demanding less than its weight's share
    is entitled to its demand, and what it leaves is split among the others in proportion to their weights."""
    out = {t: 0.0 for t in demand}
    active = {t: d for t, d in demand.items() if d > EPS}
    left = capacity
    while active and left > EPS:
        wsum = sum(max(weights.get(t, 1.0), EPS) for t in active)
        level = left / wsum
        capped = [t for t, d in active.items() if d <= max(weights.get(t, 1.0), EPS) * level + EPS]
        if not capped:
            for t in active:
                out[t] = max(weights.get(t, 1.0), EPS) * level
            break
        for t in capped:
            out[t] = active.pop(t)
            left -= out[t]
    return out


def expected_end(job: JobView, now: float) -> float:
    """When a running job is expected to release its resources: now if it is stopping or past its estimate,
    NEVER if it declared no duration."""
    if job.stopping:
        return now
    if job.started is None or job.expected_duration is None:
        return NEVER
    return max(now, job.started + job.expected_duration)


def release(free: dict[str, Resources], job: JobView, workers: list[str]) -> None:
    """Give a running job's resources back to `free` (in place); slots on workers not in `free` are ignored."""
    for wid in workers:
        if wid in free:
            free[wid] = free[wid] + job.resources


def reservation(job: JobView, now: float, free: dict[str, Resources],
                running: Running) -> tuple[float, dict[str, Resources]] | None:
    """EASY's reservation for the blocked head: the earliest time `job` fits as running jobs end when they said
    (releasing them in order of expected end), and what is left spare then once it is placed; None if it does
    not fit even when every running job has ended."""
    trial = dict(free)
    if place(job, trial) is not None:
        return now, trial
    need = job.total
    have = total(trial.values())
    ends = sorted(running, key=lambda r: (expected_end(r[0], now), r[0].started or 0.0, r[0].id))
    for view, wids in ends:
        release(trial, view, wids)
        have = have + view.resources.scaled(len(wids))
        if not need.fits_in(have):  # cheap test first: not enough in total yet
            continue
        spare = dict(trial)
        if place(job, spare) is not None:
            return expected_end(view, now), spare
    return None


def describe(r: Resources) -> str:
    """'2 GPUs, 8 CPUs and 16 GB of memory', leaving out what is zero."""
    def n(x: float, one: str, many: str) -> str:
        x = round(x, 2)
        return f"{x:g} {one if x == 1 else many}"

    parts = []
    if r.gpu > EPS:
        parts.append(n(r.gpu, "GPU", "GPUs"))
    if r.cpu > EPS:
        parts.append(n(r.cpu, "CPU", "CPUs"))
    if r.memory_gb > EPS:
        parts.append(f"{round(r.memory_gb, 2):g} GB of memory")
    if not parts:
        return "nothing"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def duration(seconds: float) -> str:
    """A short human duration: '45 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
