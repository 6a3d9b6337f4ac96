"""One scheduling round's working state and the pass the backfilling policies share: start what fits in the
policy's order, reserve for the first blocked job (the head), backfill behind it (EASY)."""

from __future__ import annotations

import functools

from .model import (
    EPS,
    NEVER,
    Decision,
    JobView,
    Resources,
    Running,
    TenantView,
    WorkerView,
    describe,
    dominant_share,
    duration,
    place,
    reservation,
    total,
)


def _shape(job: JobView) -> tuple[Resources, int]:
    return job.resources, job.slots


@functools.lru_cache(maxsize=4096)
def is_large(resources: Resources, slots: int, capacities: tuple[Resources, ...]) -> bool:
    """A gang, or a job taking more than half of every worker (so it needs a worker nearly to itself)."""
    two = resources.scaled(2)
    return slots > 1 or not any(two.fits_in(c) for c in capacities)


@functools.lru_cache(maxsize=4096)
def _never_fits(resources: Resources, slots: int, capacities: tuple[Resources, ...]) -> bool:
    """Whether a job of this shape fits not even the empty pool (cached: pools and shapes repeat)."""
    probe = JobView(id=-1, tenant="", priority="batch", resources=resources, submitted=0.0, slots=slots)
    return place(probe, {str(i): c for i, c in enumerate(capacities)}) is None


class Round:
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
        # the dominant share of the largest worker: one whole worker's worth of the pool
        self.worker_share = max((dominant_share(w.capacity, self.pool) for w in workers), default=0.0)

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
