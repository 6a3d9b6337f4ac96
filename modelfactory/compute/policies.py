"""Scheduling policies: pure functions from the pool's state to decisions.

The live scheduler (which reads and writes the database) and the trace simulator (`simulate.py`) both call the
same `Policy.schedule`, so a policy measured in replay is the policy that runs. Nothing here touches a clock, a
process or a database: the caller passes `now` and snapshots of jobs, workers and tenants.

Three policies, all honouring gangs (every slot of a job at once, or none) and each tenant's `max_slots` (a soft
limit: a job that would take its tenant past it waits, and does not hold up anybody else's):

- `fifo`: submission order, strictly. The head of the queue blocks everything behind it (the baseline).
- `priority`: priority classes highest first, then submission order, with EASY backfilling and class preemption.
- `fair`: weighted Dominant Resource Fairness across tenants, with EASY backfilling and preemption by class and
  by fair share.

**Backfilling (EASY).** The first job in the policy's order that does not fit is the *head*; it gets a
reservation: the earliest time it fits if every running job ends at `started + expected_duration` (a running job
that declared no duration is assumed to end never; one past its estimate, or being preempted, ends now). Every
later job may start now if it fits and either (a) it declares an `expected_duration` and will end by the head's
reservation, or (b) it fits in what the head leaves spare at its reserved start, on the same workers (resources
the head cannot use anyway). A job without `expected_duration` only gets (b). Only the head is protected (that is
EASY, not conservative backfilling); if it can never fit the pool, it waits and reserves nothing.

**Preemption.** After its pass, a policy may preempt for one blocked job per round: the first, in its order (at
most `max_tries` of distinct tenant, class and shape are tried), that has a set of victims whose release lets it
fit and that the policy itself, re-run on the state the preemption would lead to, then starts. That check keeps a
preemption from being wasted: the freed resources cannot go to a job ahead of it, nor be refused to it by
backfilling (the caller runs the next round once they are free: the simulator at once, the live scheduler a
second later). The victims are the minimal set, chosen greedily cheapest first (lowest class, then the tenant
most over its share, then the most recently started) and then pruned, among running preemptible jobs of:
- (class) a strictly lower priority class, any tenant: so a tenant may preempt its own batch job for its urgent
  one, but never a same-or-higher class job of its own;
- (share, `fair` only) the same or a lower class, of other tenants above their entitlement, when the job's tenant
  holds less than `starve_below` (0.8) of its entitlement and will not exceed it with the job running; a victim
  tenant is never pushed below `starve_below` of its own, so a share preemption cannot provoke one back. A job
  larger than its tenant's whole entitlement (a big gang) could never start that way on a busy pool: for it, a
  starved tenant may take from any tenant not starved itself, with no floor, and in exchange such big jobs are
  never preempted for fair share (two big gangs would otherwise take turns preempting each other).
- (starving, `fair` only) a *starving* job: a large one (a gang, or more than half of a worker, so it needs whole
  workers) whose tenant holds less than `starve_below` of its entitlement and which has waited `patience`
  seconds since it last entered the queue. Without this rule such a job waits for whole workers to drain behind
  heavy-tailed jobs while its tenant's entitlement accrues. It goes first in its class (so, blocked, it is the
  head that backfilling protects), and it may preempt same-class jobs of every tenant better served than its
  own, with no floor, clearing whole workers cheapest first; also its own tenant's jobs submitted after it.
  Gangs and jobs larger than their tenant's entitlement go only once they have run `quantum` seconds while their
  tenant holds more than its entitlement: a cap on how long one tenant keeps more than its share. A requeued
  victim starts waiting again, so its tenant cannot preempt straight back: swaps are at least `patience` apart.
Jobs that started less than `min_runtime` seconds ago are never preempted; when only such jobs would do,
`Decision.retry_at` says when to ask again (as it does for when a blocked large job will become starving, or an
over-share gang will have run `quantum`). Jobs already told to stop (`JobView.stopping`) count as free.

**Fairness (`fair`).** A tenant's dominant share is max(its CPUs / pool CPUs, its GPUs / pool GPUs); the policy
repeatedly serves the tenant with the lowest dominant share divided by its weight, highest priority class first
(classes outrank fairness: an urgent job goes before a standard one of a poorer tenant, as it could preempt it
anyway), and within a tenant by class then submission. A tenant's *entitlement* is its weighted max-min fair share
of the pool given every tenant's demand (running + queued dominant shares): a tenant asking for less than its
weight's share is entitled to what it asks, the rest is split among the others by weight (water-filling).

Every decision is deterministic: ties are broken by submission time, then job id.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import math
from collections.abc import Callable, Iterable
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


def _shape(job: JobView) -> tuple[Resources, int]:
    return job.resources, job.slots


@functools.lru_cache(maxsize=4096)
def _large(resources: Resources, slots: int, capacities: tuple[Resources, ...]) -> bool:
    """A gang, or a job taking more than half of every worker (so it needs a worker nearly to itself)."""
    two = resources.scaled(2)
    return slots > 1 or not any(two.fits_in(c) for c in capacities)


@functools.lru_cache(maxsize=4096)
def _never_fits(resources: Resources, slots: int, capacities: tuple[Resources, ...]) -> bool:
    """Whether a job of this shape fits not even the empty pool (cached: pools and shapes repeat)."""
    probe = JobView(id=-1, tenant="", priority="batch", resources=resources, submitted=0.0, slots=slots)
    return place(probe, {str(i): c for i, c in enumerate(capacities)}) is None


class _Round:
    """One scheduling round's working state: what is free now, who holds what, the blocked head and its
    reservation, and the decision being built. Free resources only shrink during a round, so a job shape that
    did not fit once does not fit for the rest of it (remembered, to keep rounds over long queues cheap)."""

    def __init__(self, now: float, running: Running, workers: list[WorkerView], tenants: dict[str, TenantView]):
        self.now = now
        self.running = running
        self.tenants = tenants
        self.decision = Decision()
        self.free = {w.id: w.free for w in workers}
        self.capacity = {w.id: w.capacity for w in workers}
        self.pool = total(self.capacity.values())
        self.slots: dict[str, int] = {}
        self.usage: dict[str, Resources] = {}
        for view, wids in running:
            self.slots[view.tenant] = self.slots.get(view.tenant, 0) + len(wids)
            self.usage[view.tenant] = self.usage.get(view.tenant, Resources()) + view.resources.scaled(len(wids))
        self.head: JobView | None = None
        self.head_at = NEVER
        self.spare: dict[str, Resources] = {}
        self._never: dict[tuple[Resources, int], bool] = {}
        self._no_fit: set[tuple[Resources, int]] = set()
        self._no_spare: set[tuple[Resources, int]] = set()
        self._why: dict[tuple[Resources, int], str] = {}
        self.blocked: list[JobView] = []  # jobs waiting for resources (not for a limit), in the order considered
        self.weights: dict[str, float] = {}  # set by policies that need them (fair)
        self.entitled: dict[str, float] = {}
        self._shares: dict[str, float] = {}
        self._job_shares: dict[int, float] = {}
        self.later: list[float] = []  # times at which a rule will allow more than now (Decision.retry_at)

    # -- bookkeeping

    def share(self, tenant: str) -> float:
        """The tenant's dominant share of the pool, as this round stands."""
        if tenant not in self._shares:
            self._shares[tenant] = dominant_share(self.usage.get(tenant, Resources()), self.pool)
        return self._shares[tenant]

    def job_share(self, job: JobView) -> float:
        if job.id not in self._job_shares:
            self._job_shares[job.id] = dominant_share(job.total, self.pool)
        return self._job_shares[job.id]

    def tenant(self, name: str) -> TenantView:
        return self.tenants.get(name) or TenantView(name)

    def wait(self, job: JobView, reason: str) -> None:
        self.decision.waiting[job.id] = reason

    def start(self, job: JobView, placement: list[str]) -> None:
        self.decision.starts.append((job.id, placement))
        self.slots[job.tenant] = self.slots.get(job.tenant, 0) + job.slots
        self.usage[job.tenant] = self.usage.get(job.tenant, Resources()) + job.total
        self._shares.pop(job.tenant, None)
        self._why.clear()

    def over_limit(self, job: JobView) -> str | None:
        limit = self.tenant(job.tenant).max_slots
        if limit is not None and self.slots.get(job.tenant, 0) + job.slots > limit:
            return f"tenant '{job.tenant}' is at its limit of {limit} concurrent slots"
        return None

    def never_fits(self, job: JobView) -> bool:
        key = _shape(job)
        if key not in self._never:
            self._never[key] = _never_fits(job.resources, job.slots, tuple(self.capacity.values()))
        return self._never[key]

    def fits_now(self, job: JobView) -> bool:
        return self.take(job, dict(self.free)) is not None

    def take(self, job: JobView, free: dict[str, Resources]) -> list[str] | None:
        """`place` on `free` (the round's own map, or a copy of it), remembering shapes that do not fit."""
        key = _shape(job)
        if key in self._no_fit:
            return None
        placement = place(job, free)
        if placement is None:
            self._no_fit.add(key)
        return placement

    def shortfall(self, job: JobView) -> str:
        """Why `job` does not fit now, in words."""
        key = _shape(job)
        if key not in self._why:
            self._why[key] = self._explain(job)
        return self._why[key]

    def _explain(self, job: JobView) -> str:
        each = describe(job.resources)
        if self.never_fits(job):
            if not any(job.resources.fits_in(c) for c in self.capacity.values()):
                return f"needs {each} per slot and no worker has that much"
            return f"gang of {job.slots} slots ({each} each) does not fit even the empty pool"
        have = total(self.free.values())
        need = job.total
        short = Resources(max(0.0, need.cpu - have.cpu), max(0.0, need.gpu - have.gpu),
                          max(0.0, need.memory_gb - have.memory_gb))
        if short.cpu > EPS or short.gpu > EPS or short.memory_gb > EPS:
            return f"waiting for {describe(short)}"
        if job.slots > 1:
            return f"gang of {job.slots} slots ({each} each) does not fit the free workers"
        return f"waiting for {each} on one worker (the free resources are spread over several)"

    # -- the common pass: start what fits, reserve for the head, backfill behind it

    def consider(self, job: JobView) -> bool:
        """Start `job` if the rules allow; otherwise record why it waits (and make it the head if it is the first
        to be blocked). True if it starts."""
        limited = self.over_limit(job)
        if limited:
            self.wait(job, limited)
            return False
        if self.never_fits(job):
            self.wait(job, self.shortfall(job))
            return False
        if self.head is None:
            placement = self.take(job, self.free)
            if placement is not None:
                self.start(job, placement)
                return True
            self.blocked.append(job)
            self.reserve(job)
            return False
        started = self.backfill(job)
        if not started:
            self.blocked.append(job)
        return started

    def reserve(self, job: JobView) -> None:
        why = self.shortfall(job)
        found = reservation(job, self.now, self.free, self.running)
        if found is None:  # running jobs sit on workers we do not know: nothing to reserve
            self.wait(job, why)
            return
        self.head, (self.head_at, self.spare) = job, found
        when = "" if self.head_at == NEVER else f", expected to start in {duration(self.head_at - self.now)}"
        self.wait(job, f"{why}; next in line{when}")

    def backfill(self, job: JobView) -> bool:
        assert self.head is not None
        if not self.fits_now(job):
            self.wait(job, self.shortfall(job))
            return False
        ends_in_time = job.expected_duration is not None and self.now + job.expected_duration <= self.head_at + EPS
        if ends_in_time:
            placement = place(job, self.free)
            assert placement is not None
            self.start(job, placement)
            return True
        key = _shape(job)
        combined = None if key in self._no_spare else {w: f.min(self.spare.get(w, Resources()))
                                                       for w, f in self.free.items()}
        placement = place(job, combined) if combined is not None else None
        if placement is None:
            self._no_spare.add(key)
            self.wait(job, self._would_delay(job))
            return False
        for wid in placement:
            self.free[wid] = self.free[wid] - job.resources
            self.spare[wid] = self.spare[wid] - job.resources
        self.start(job, placement)
        return True

    def _would_delay(self, job: JobView) -> str:
        head = self.head
        assert head is not None
        when = "" if self.head_at == NEVER else f", expected to start in {duration(self.head_at - self.now)}"
        why = f"would delay job {head.id} (next in line{when})"
        if job.expected_duration is None:
            why += "; it declares no expected duration, so it may only use what that job cannot"
        return why


# -- preemption


@dataclass
class _Victim:
    key: tuple  # cheapest first
    job: JobView
    workers: list[str]
    rule: str  # "class" or "share"


VictimRule = Callable[[JobView], "tuple[tuple, str] | None"]  # running job -> (cheapness key, rule) if allowed
KeepsShare = Callable[[JobView, dict[str, Resources]], bool]  # may this share victim go, given what is taken?


def _greedy(job: JobView, free: dict[str, Resources], candidates: list[_Victim],
            keeps_share: KeepsShare | None) -> list[_Victim] | None:
    """Add victims, cheapest first, until `job` fits; then drop those it fits without (dearest first)."""
    trial = dict(free)
    taken: dict[str, Resources] = {}
    chosen: list[_Victim] = []
    for cand in candidates:
        if cand.rule == "share" and keeps_share is not None and not keeps_share(cand.job, taken):
            continue
        chosen.append(cand)
        release(trial, cand.job, cand.workers)
        if cand.rule == "share":
            taken[cand.job.tenant] = taken.get(cand.job.tenant, Resources()) + cand.job.total
        if place(job, dict(trial)) is not None:
            break
    else:
        return None
    for cand in reversed(chosen[:-1]):
        without = dict(free)
        for other in chosen:
            if other is not cand:
                release(without, other.job, other.workers)
        if place(job, without) is not None:
            chosen.remove(cand)
    return chosen


class _Preempting:
    """A round of the backfilling policies: a pass (start what the order allows, reserve for the head, backfill
    behind it), then, if jobs are blocked, at most one preemption, for the first blocked job (in the pass's order,
    at most `max_tries` tried) that has a set of victims it may preempt and for which the policy itself, re-run
    on the state the preemption leads to, starts it. That check is what keeps preemption from being wasted: the
    freed resources cannot go to a job ahead of it, nor be refused to it by backfilling."""

    min_runtime: float
    preempt: bool
    max_tries: int  # blocked jobs (of distinct tenant, class and shape) whose preemption is tried per round

    def schedule(self, now: float, queued: list[JobView], running: Running,
                 workers: list[WorkerView], tenants: dict[str, TenantView]) -> Decision:
        rnd = self._pass(now, queued, running, workers, tenants)
        if self.preempt and rnd.blocked:
            self._preempt(rnd, queued, workers)
        return rnd.decision

    def _pass(self, now: float, queued: list[JobView], running: Running, workers: list[WorkerView],
              tenants: dict[str, TenantView], until: int | None = None) -> _Round:
        """Consider the queue in the policy's order (stopping once job `until` has been considered)."""
        raise NotImplementedError

    def _rules(self, rnd: _Round, job: JobView) -> tuple[VictimRule, KeepsShare | None] | None:
        raise NotImplementedError

    def _why(self, rnd: _Round, job: JobView, chosen: list[_Victim]) -> str:
        return f"its class '{job.priority}' outranks theirs"

    def _order(self, rnd: _Round, job: JobView, candidates: list[_Victim]) -> list[_Victim]:
        """The order in which `_greedy` takes victims for `job` (default: cheapest first, as given)."""
        return candidates

    def _wakeups(self, rnd: _Round) -> list[float]:
        """Times at which a blocked job may gain rights it lacks now (default: none)."""
        return []

    def _preempt(self, rnd: _Round, queued: list[JobView], workers: list[WorkerView]) -> None:
        stopping = [(v, w) for v, w in rnd.running if v.stopping]
        base = dict(rnd.free)
        for v, w in stopping:
            release(base, v, w)
        young: list[float] = []
        seen: set[tuple] = set()
        tries = 0
        for job in rnd.blocked:
            if tries >= self.max_tries:
                break
            if stopping and place(job, dict(base)) is not None:
                ids = ", ".join(str(v.id) for v, _ in stopping)
                rnd.wait(job, rnd.decision.waiting[job.id] + f"; preempted job(s) {ids} are stopping")
                continue
            alike = (job.tenant, job.rank, job.resources, job.slots)  # same rules, same victims, same outcome
            if alike in seen:
                continue
            seen.add(alike)
            rules = self._rules(rnd, job)
            if rules is None:
                continue
            tries += 1
            candidates = self._order(rnd, job, self._candidates(rnd, rules[0], young))
            chosen = _greedy(job, base, candidates, rules[1]) if candidates else None
            if chosen is not None and self._would_start(rnd, job, chosen, queued, workers):
                rnd.decision.preempt.extend(c.job.id for c in chosen)
                ids = ", ".join(str(c.job.id) for c in chosen)
                rnd.wait(job, rnd.decision.waiting[job.id] + f"; preempting job(s) {ids}: "
                         + self._why(rnd, job, chosen))
                return
        wake = [t for t in young + rnd.later + self._wakeups(rnd) if rnd.now < t < NEVER]
        if wake:
            rnd.decision.retry_at = min(wake)

    def _candidates(self, rnd: _Round, rule: VictimRule, young: list[float]) -> list[_Victim]:
        """Running jobs `rule` lets go, cheapest first; those too young to preempt go to `young` (when they may)."""
        out = []
        for view, wids in rnd.running:
            if view.stopping or not view.preemptible:
                continue
            allowed = rule(view)
            if allowed is None:
                continue
            if view.started is not None and rnd.now - view.started < self.min_runtime:
                young.append(view.started + self.min_runtime)
                continue
            out.append(_Victim(allowed[0], view, wids, allowed[1]))
        out.sort(key=lambda c: (c.key, c.job.id))
        return out

    def _would_start(self, rnd: _Round, job: JobView, chosen: list[_Victim], queued: list[JobView],
                     workers: list[WorkerView]) -> bool:
        """Re-run the pass on the state after this round's starts and the preemption: does `job` start?"""
        gone = {c.job.id for c in chosen}
        started = dict(rnd.decision.starts)
        by_id = {v.id: v for v in queued}
        running = [(v, w) for v, w in rnd.running if v.id not in gone]
        running += [(dataclasses.replace(by_id[i], started=rnd.now), p) for i, p in rnd.decision.starts]
        still = [v for v in queued if v.id not in started]
        still += [dataclasses.replace(c.job, started=None, stopping=False, queued_since=rnd.now) for c in chosen]
        free = dict(rnd.free)
        for c in chosen:
            release(free, c.job, c.workers)
        views = [WorkerView(w.id, w.capacity, free[w.id]) for w in workers]
        after = self._pass(rnd.now, still, running, views, rnd.tenants, until=job.id)
        return any(i == job.id for i, _ in after.decision.starts)


# -- the policies


@dataclass
class Fifo:
    """Submission order, strictly: the head of the queue blocks everything behind it (the baseline). A job held
    back by its tenant's `max_slots`, or one that can never fit the pool, waits without blocking the others."""

    name: ClassVar[str] = "fifo"

    def schedule(self, now: float, queued: list[JobView], running: Running,
                 workers: list[WorkerView], tenants: dict[str, TenantView]) -> Decision:
        rnd = _Round(now, running, workers, tenants)
        head: JobView | None = None
        for job in sorted(queued, key=lambda j: (j.submitted, j.id)):
            limited = rnd.over_limit(job)
            if limited:
                rnd.wait(job, limited)
            elif rnd.never_fits(job):
                rnd.wait(job, rnd.shortfall(job))
            elif head is not None:
                rnd.wait(job, f"behind job {head.id}, first in line (FIFO)")
            elif (placement := rnd.take(job, rnd.free)) is not None:
                rnd.start(job, placement)
            else:
                head = job
                rnd.wait(job, rnd.shortfall(job))
        return rnd.decision


@dataclass
class Priority(_Preempting):
    """Priority classes highest first, then submission order, with EASY backfilling; a blocked job may preempt
    jobs of a strictly lower class (see the module docstring)."""

    name: ClassVar[str] = "priority"
    min_runtime: float = 60.0  # seconds a job runs before it may be preempted
    preempt: bool = True
    max_tries: int = 4  # blocked jobs whose preemption is tried per round

    def _pass(self, now: float, queued: list[JobView], running: Running, workers: list[WorkerView],
              tenants: dict[str, TenantView], until: int | None = None) -> _Round:
        rnd = _Round(now, running, workers, tenants)
        for job in sorted(queued, key=lambda j: (-j.rank, j.submitted, j.id)):
            rnd.consider(job)
            if job.id == until:
                break
        return rnd

    def _rules(self, rnd: _Round, job: JobView) -> tuple[VictimRule, KeepsShare | None] | None:
        if job.rank == min(PRIORITIES.values()):
            return None

        def lower_class(v: JobView) -> tuple[tuple, str] | None:
            return ((v.rank, -(v.started or 0.0)), "class") if v.rank < job.rank else None

        return lower_class, None


@dataclass
class Fair(_Preempting):
    """Weighted Dominant Resource Fairness across tenants (classes first), EASY backfilling, and preemption of
    lower classes, or of tenants above their entitlement for a tenant below `starve_below` of its own (see the
    module docstring)."""

    name: ClassVar[str] = "fair"
    min_runtime: float = 60.0  # seconds a job runs before it may be preempted
    starve_below: float = 0.8  # a tenant under this fraction of its entitlement may preempt for fair share
    patience: float = 600.0  # s a starved tenant's large job waits in the queue before it is *starving*
    quantum: float = 3600.0  # s an over-share tenant's gang runs before a starving job may preempt it
    preempt: bool = True
    max_tries: int = 4  # blocked jobs whose preemption is tried per round

    def _pass(self, now: float, queued: list[JobView], running: Running, workers: list[WorkerView],
              tenants: dict[str, TenantView], until: int | None = None) -> _Round:
        rnd = _Round(now, running, workers, tenants)
        rnd.weights = {t: max(rnd.tenant(t).weight, EPS) for t in sorted({j.tenant for j in queued} | set(rnd.usage))}
        demand = dict(rnd.usage)
        for job in queued:
            demand[job.tenant] = demand.get(job.tenant, Resources()) + job.total
        rnd.entitled = entitlements({t: dominant_share(d, rnd.pool) for t, d in demand.items()}, rnd.weights)
        self._fill(rnd, queued, until)
        return rnd

    def _fill(self, rnd: _Round, queued: list[JobView], until: int | None = None) -> None:
        """Progressive filling: serve the tenant whose next job has the highest class and, among equals, the
        lowest weighted dominant share; a start raises that tenant's share, so it is re-ranked. Within a class,
        starving jobs (see `_starving`) go first, the most starved tenant's first: the first of them that does not
        fit becomes the head, whose reservation backfilling respects."""
        starving = {j.id for j in queued if self._starving(rnd, j)}
        lines: dict[str, list[JobView]] = {}
        for job in sorted(queued, key=lambda j: (-j.rank, j.id not in starving, j.submitted, j.id)):
            lines.setdefault(job.tenant, []).append(job)
        at = dict.fromkeys(lines, 0)

        def key(t: str) -> tuple:
            job = lines[t][at[t]]
            if job.id in starving:
                return -job.rank, 0, self._ratio(rnd, t), job.submitted, job.id
            return -job.rank, 1, rnd.share(t) / rnd.weights[t], job.submitted, job.id

        heap = [(key(t), t) for t in lines]
        heapq.heapify(heap)
        while heap:
            _, t = heapq.heappop(heap)
            job = lines[t][at[t]]
            rnd.consider(job)
            if job.id == until:
                break
            at[t] += 1
            if at[t] < len(lines[t]):
                heapq.heappush(heap, (key(t), t))

    def _ratio(self, rnd: _Round, tenant: str) -> float:
        """Share held / entitlement (inf for a tenant entitled to nothing)."""
        entitled = rnd.entitled.get(tenant, 0.0)
        return rnd.share(tenant) / entitled if entitled > EPS else math.inf

    def _starving(self, rnd: _Round, job: JobView) -> bool:
        """A queued job is *starving* when it is large (a gang, or more than half of any worker: it needs whole
        workers, which small jobs keep busy), its tenant holds less than `starve_below` of its entitlement, and it
        has waited `patience` seconds since it last entered the queue (a job requeued by a preemption starts
        waiting again, so its tenant cannot preempt straight back)."""
        return (rnd.now - job.waited >= self.patience - EPS and self._ratio(rnd, job.tenant) < self.starve_below
                and _large(job.resources, job.slots, tuple(rnd.capacity.values())))

    def _rules(self, rnd: _Round, job: JobView) -> tuple[VictimRule, KeepsShare | None] | None:
        """Whom `job` may preempt. Any tenant's jobs of a lower class; and, when its tenant is starved (below
        `starve_below` of its entitlement, and not above it with `job` running), same-or-lower-class jobs of other
        tenants above their entitlement, each such tenant kept at `starve_below` of its own or more. A job larger
        than its tenant's whole entitlement (a big gang) could never start by that rule on a busy pool, so for it
        a starved tenant may take from any tenant not starved itself, with no floor; in exchange, such big jobs are
        never preempted for fair share (two big gangs would otherwise take turns preempting each other).
        A starving job has its own rule (`_starving_rules`)."""
        if self._starving(rnd, job):
            return self._starving_rules(rnd, job)
        mine = job.tenant
        entitled = rnd.entitled.get(mine, 0.0)
        big = rnd.job_share(job) > entitled + EPS
        after = dominant_share(rnd.usage.get(mine, Resources()) + job.total, rnd.pool)
        starved = self._ratio(rnd, mine) < self.starve_below and (after <= entitled + EPS or big)
        if not starved and job.rank == min(PRIORITIES.values()):
            return None
        floor = self.starve_below if big else 1.0
        ratios: dict[str, float] = {}

        def victim(v: JobView) -> tuple[tuple, str] | None:
            if v.rank < job.rank:
                return (v.rank, 0.0, -(v.started or 0.0)), "class"
            if not starved or v.tenant == mine or v.rank > job.rank:
                return None
            if v.tenant not in ratios:
                ratios[v.tenant] = self._ratio(rnd, v.tenant)
            if ratios[v.tenant] <= floor + EPS or rnd.job_share(v) > rnd.entitled.get(v.tenant, 0.0) + EPS:
                return None
            return (v.rank, -ratios[v.tenant], -(v.started or 0.0)), "share"

        def keeps_share(v: JobView, taken: dict[str, Resources]) -> bool:
            left = rnd.usage.get(v.tenant, Resources()) - taken.get(v.tenant, Resources()) - v.total
            return dominant_share(left, rnd.pool) >= self.starve_below * rnd.entitled.get(v.tenant, 0.0) - EPS

        return victim, None if big else keeps_share

    def _wakeups(self, rnd: _Round) -> list[float]:
        """When blocked large jobs of tenants below `starve_below` will have waited `patience`."""
        capacities = tuple(rnd.capacity.values())
        return [job.waited + self.patience for job in rnd.blocked
                if rnd.now - job.waited < self.patience - EPS and self._ratio(rnd, job.tenant) < self.starve_below
                and _large(job.resources, job.slots, capacities)]

    def _starving_rules(self, rnd: _Round, job: JobView) -> tuple[VictimRule, KeepsShare | None]:
        """Whom a starving job may preempt: any tenant's jobs of a lower class; same-class jobs of every tenant
        better served than its own (a higher share / entitlement), with no floor, except their gangs and jobs
        larger than their tenant's entitlement, which only go once they have run `quantum` seconds while their
        tenant holds more than its entitlement (a cap on how long one tenant keeps more than its share); and its
        own tenant's same-class jobs submitted after it (they got ahead of it only by backfilling). A victim is
        requeued and waits `patience` before it can be starving in turn, so preemptions cannot ping-pong faster
        than that."""
        mine = job.tenant
        mine_ratio = self._ratio(rnd, mine)
        ratios: dict[str, float] = {}

        def victim(v: JobView) -> tuple[tuple, str] | None:
            if v.rank < job.rank:
                return (v.rank, 0, 0.0, -(v.started or 0.0)), "class"
            if v.rank > job.rank:
                return None
            if v.tenant == mine:
                return ((v.rank, 1, 0.0, -(v.started or 0.0)), "own") if v.submitted > job.submitted else None
            if v.tenant not in ratios:
                ratios[v.tenant] = self._ratio(rnd, v.tenant)
            ratio = ratios[v.tenant]
            if ratio <= mine_ratio + EPS:
                return None
            big = v.slots > 1 or rnd.job_share(v) > rnd.entitled.get(v.tenant, 0.0) + EPS
            if big and not (ratio > 1.0 + EPS and v.started is not None and rnd.now - v.started >= self.quantum):
                if ratio > 1.0 + EPS and v.started is not None:
                    rnd.later.append(v.started + self.quantum)
                return None
            return (v.rank, 0, -ratio, -(v.started or 0.0)), "share"

        return victim, None

    def _order(self, rnd: _Round, job: JobView, candidates: list[_Victim]) -> list[_Victim]:
        """For a starving job, clear whole workers, cheapest first: a worker costs the dominant share of the
        victims on it, and one holding a job that may not be preempted for it comes last."""
        if not candidates or not self._starving(rnd, job):
            return candidates
        allowed = {c.job.id for c in candidates}
        cost = dict.fromkeys(rnd.capacity, 0.0)
        for view, wids in rnd.running:
            for wid in wids:
                if wid in cost:
                    cost[wid] += dominant_share(view.resources, rnd.pool) if view.id in allowed or view.stopping \
                        else NEVER
        return sorted(candidates, key=lambda c: (c.key[0], min(cost.get(w, NEVER) for w in c.workers),
                                                 min(c.workers), c.key, c.job.id))

    def _why(self, rnd: _Round, job: JobView, chosen: list[_Victim]) -> str:
        if all(c.rule == "class" for c in chosen):
            return super()._why(rnd, job, chosen)
        why = (f"tenant '{job.tenant}' holds {rnd.share(job.tenant):.0%} of the pool, entitled to "
               f"{rnd.entitled.get(job.tenant, 0.0):.0%}")
        if self._starving(rnd, job):
            why += f", and this job has waited {duration(rnd.now - job.waited)} for whole workers"
        return why


POLICIES: dict[str, type] = {Fifo.name: Fifo, Priority.name: Priority, Fair.name: Fair}


def get(name: str, **params: float | bool) -> Policy:
    """The policy called `name`, configured with those of `params` it takes (the others are ignored, so a caller
    can configure every policy alike, e.g. `get(name, min_runtime=600)`)."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy '{name}'; known: {', '.join(sorted(POLICIES))}") from None
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return cls(**{k: v for k, v in params.items() if k in known})
