"""The policies that take the queue in one fixed order: `fifo` (the baseline) and `priority` (classes first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .model import PRIORITIES, Decision, JobView, Running, TenantView, WorkerView
from .preemption import KeepsShare, Preempting, VictimRule
from .rounds import Round


@dataclass
class Fifo:
    """Submission order, strictly: the head of the queue blocks everything behind it (the baseline). A job held
    back by its tenant's `max_slots`, or one that can never fit the pool, waits without blocking the others."""

    name: ClassVar[str] = "fifo"

    def schedule(self, now: float, queued: list[JobView], running: Running,
                 workers: list[WorkerView], tenants: dict[str, TenantView]) -> Decision:
        rnd = Round(now, running, workers, tenants)
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
class Priority(Preempting):
    """Priority classes highest first, then submission order, with EASY backfilling; a blocked job may preempt
    jobs of a strictly lower class (see docs/scheduling.md)."""

    name: ClassVar[str] = "priority"
    min_runtime: float = 60.0  # seconds a job runs before it may be preempted
    preempt: bool = True
    max_tries: int = 4  # blocked jobs whose preemption is tried per round

    def _pass(self, now: float, queued: list[JobView], running: Running, workers: list[WorkerView],
              tenants: dict[str, TenantView], until: int | None = None) -> Round:
        rnd = Round(now, running, workers, tenants)
        for job in sorted(queued, key=lambda j: (-j.rank, j.submitted, j.id)):
            rnd.consider(job)
            if job.id == until:
                break
        return rnd

    def _rules(self, rnd: Round, job: JobView) -> tuple[VictimRule, KeepsShare | None] | None:
        if job.rank == min(PRIORITIES.values()):
            return None

        def lower_class(v: JobView) -> tuple[tuple, str] | None:
            return ((v.rank, -(v.started or 0.0)), "class") if v.rank < job.rank else None

        return lower_class, None
