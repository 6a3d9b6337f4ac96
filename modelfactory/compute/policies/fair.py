"""`fair`: weighted Dominant Resource Fairness across tenants, with EASY backfilling and preemption by class,
by fair share, and for starving large jobs (docs/scheduling.md says why each rule is there)."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import ClassVar

from .model import (
    EPS,
    NEVER,
    PRIORITIES,
    JobView,
    Resources,
    Running,
    TenantView,
    WorkerView,
    dominant_share,
    duration,
    entitlements,
)
from .preemption import KeepsShare, Preempting, Victim, VictimRule
from .rounds import Round, is_large


@dataclass
class Fair(Preempting):
    """Weighted Dominant Resource Fairness across tenants (classes first), EASY backfilling, and preemption of
    lower classes, or of tenants above their entitlement for a tenant below `starve_below` of its own (see
    docs/scheduling.md)."""

    name: ClassVar[str] = "fair"
    min_runtime: float = 60.0  # seconds a job runs before it may be preempted
    starve_below: float = 0.8  # a tenant under this fraction of its entitlement may preempt for fair share
    patience: float = 600.0  # s a starved tenant's large job waits in the queue before it is *starving*
    quantum: float = 3600.0  # s an over-share tenant's gang runs before a starving job may preempt it
    preempt: bool = True
    max_tries: int = 4  # blocked jobs whose preemption is tried per round

    def _pass(self, now: float, queued: list[JobView], running: Running, workers: list[WorkerView],
              tenants: dict[str, TenantView], until: int | None = None) -> Round:
        rnd = Round(now, running, workers, tenants)
        rnd.weights = {t: max(rnd.tenant(t).weight, EPS) for t in sorted({j.tenant for j in queued} | set(rnd.usage))}
        demand = dict(rnd.usage)
        for job in queued:
            demand[job.tenant] = demand.get(job.tenant, Resources()) + job.total
        rnd.entitled = entitlements({t: dominant_share(d, rnd.pool) for t, d in demand.items()}, rnd.weights)
        self._fill(rnd, queued, until)
        return rnd

    def _fill(self, rnd: Round, queued: list[JobView], until: int | None = None) -> None:
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
            # Tenants are compared by the share they would hold with their next job started (per weight, or per
            # entitlement for starving jobs): on a pool of few slots the share *before* a start cannot tell weights
            # apart (on two slots, whoever holds none always goes next: 1:1 whatever the weights); after it, equal
            # shares tie, and the tie goes to the tenant served least so far per weight.
            job = lines[t][at[t]]
            served = rnd.tenant(t).served / rnd.weights[t]
            if job.id in starving:  # a gang counts as one worker's worth: "after" must not push the big ones back
                held = rnd.share(t) + min(rnd.job_share(job), rnd.worker_share)
                return -job.rank, 0, round(self._ratio(rnd, t, held), 9), served, job.submitted, job.id
            held = rnd.share(t) + rnd.job_share(job)
            return -job.rank, 1, round(held / rnd.weights[t], 9), served, job.submitted, job.id

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

    def _ratio(self, rnd: Round, tenant: str, held: float | None = None) -> float:
        """Share held (or `held`) / entitlement (inf for a tenant entitled to nothing)."""
        entitled = rnd.entitled.get(tenant, 0.0)
        return (rnd.share(tenant) if held is None else held) / entitled if entitled > EPS else math.inf

    def _starving(self, rnd: Round, job: JobView) -> bool:
        """A queued job is *starving* when it is large (a gang, or more than half of any worker: it needs whole
        workers, which small jobs keep busy), its tenant holds less than `starve_below` of its entitlement, and it
        has waited `patience` seconds since it last entered the queue (a job requeued by a preemption starts
        waiting again, so its tenant cannot preempt straight back)."""
        return (rnd.now - job.waited >= self.patience - EPS and self._ratio(rnd, job.tenant) < self.starve_below
                and is_large(job.resources, job.slots, tuple(rnd.capacity.values())))

    def _rules(self, rnd: Round, job: JobView) -> tuple[VictimRule, KeepsShare | None] | None:
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

    def _wakeups(self, rnd: Round) -> list[float]:
        """When blocked large jobs of tenants below `starve_below` will have waited `patience`."""
        capacities = tuple(rnd.capacity.values())
        return [job.waited + self.patience for job in rnd.blocked
                if rnd.now - job.waited < self.patience - EPS and self._ratio(rnd, job.tenant) < self.starve_below
                and is_large(job.resources, job.slots, capacities)]

    def _starving_rules(self, rnd: Round, job: JobView) -> tuple[VictimRule, KeepsShare | None]:
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

    def _order(self, rnd: Round, job: JobView, candidates: list[Victim]) -> list[Victim]:
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

    def _why(self, rnd: Round, job: JobView, chosen: list[Victim]) -> str:
        if all(c.rule == "class" for c in chosen):
            return super()._why(rnd, job, chosen)
        why = (f"tenant '{job.tenant}' holds {rnd.share(job.tenant):.0%} of the pool, entitled to "
               f"{rnd.entitled.get(job.tenant, 0.0):.0%}")
        if self._starving(rnd, job):
            why += f", and this job has waited {duration(rnd.now - job.waited)} for whole workers"
        return why
