"""Preemption for the backfilling policies: after a pass, free room for at most one blocked job per round, and
only when the policy itself, re-run on the state the preemption leads to, then starts that job."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .model import NEVER, Decision, JobView, Resources, Running, TenantView, WorkerView, place, release
from .rounds import Round


@dataclass
class Victim:
    key: tuple  # cheapest first
    job: JobView
    workers: list[str]
    rule: str  # "class" or "share"


VictimRule = Callable[[JobView], "tuple[tuple, str] | None"]  # running job -> (cheapness key, rule) if allowed
KeepsShare = Callable[[JobView, dict[str, Resources]], bool]  # may this share victim go, given what is taken?


def _greedy(job: JobView, free: dict[str, Resources], candidates: list[Victim],
            keeps_share: KeepsShare | None) -> list[Victim] | None:
    """Add victims, cheapest first, until `job` fits; then drop those it fits without (dearest first)."""
    trial = dict(free)
    taken: dict[str, Resources] = {}
    chosen: list[Victim] = []
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


class Preempting:
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
              tenants: dict[str, TenantView], until: int | None = None) -> Round:
        """Consider the queue in the policy's order (stopping once job `until` has been considered)."""
        raise NotImplementedError

    def _rules(self, rnd: Round, job: JobView) -> tuple[VictimRule, KeepsShare | None] | None:
        raise NotImplementedError

    def _why(self, rnd: Round, job: JobView, chosen: list[Victim]) -> str:
        return f"its class '{job.priority}' outranks theirs"

    def _order(self, rnd: Round, job: JobView, candidates: list[Victim]) -> list[Victim]:
        """The order in which `_greedy` takes victims for `job` (default: cheapest first, as given)."""
        return candidates

    def _wakeups(self, rnd: Round) -> list[float]:
        """Times at which a blocked job may gain rights it lacks now (default: none)."""
        return []

    def _preempt(self, rnd: Round, queued: list[JobView], workers: list[WorkerView]) -> None:
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

    def _candidates(self, rnd: Round, rule: VictimRule, young: list[float]) -> list[Victim]:
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
            out.append(Victim(allowed[0], view, wids, allowed[1]))
        out.sort(key=lambda c: (c.key, c.job.id))
        return out

    def _would_start(self, rnd: Round, job: JobView, chosen: list[Victim], queued: list[JobView],
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
