"""A discrete-event simulator that replays a job trace through the same `Policy` objects the live scheduler uses,
so a policy's JCT, utilisation and fairness can be measured before it runs a pool. How preemption, checkpoints
and estimates are modelled, and what each metric in `SimResult` means, is in docs/scheduling.md ("Replay").
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from . import policies
from .policies import EPS, JobView, Policy, Resources, TenantView, WorkerView, dominant_share, entitlements
from .traces import TraceJob, default_pool

FINISH, ARRIVE, WAKE = 0, 1, 2  # at equal times: completions free resources before arrivals are considered


@dataclass
class JobResult:
    id: str
    tenant: str
    submit: float
    first_start: float
    finish: float
    duration: float
    gpus: float
    preemptions: int
    lost_s: float  # seconds of work redone after preemptions

    @property
    def jct(self) -> float:
        return self.finish - self.submit

    @property
    def queued_s(self) -> float:
        return self.jct - self.duration - self.lost_s


@dataclass
class TenantResult:
    name: str
    weight: float
    jobs: int
    avg_jct_s: float
    share: float  # time-average dominant share held, over the run
    entitled: float  # time-average entitlement to the pool, over the run
    share_ratio: float  # held / entitled to the pool, integrated
    alloc_ratio: float  # held / entitled to what was allocated, integrated
    gang_shortfall: float  # of its entitlement to the pool not held, the part while it had a gang job queued


@dataclass
class SimResult:
    policy: str
    jobs: int
    avg_jct_s: float
    p99_jct_s: float
    avg_queue_s: float
    utilisation: float
    utilisation_makespan: float
    offered_load: float
    jain: float  # over tenants' share_ratio
    min_share_ratio: float
    jain_alloc: float  # over tenants' alloc_ratio
    min_alloc_ratio: float
    preemptions: int
    lost_gpu_s: float
    busy_gpu_s: float
    work_gpu_s: float
    makespan_s: float
    skipped: int  # trace jobs that can never fit the pool
    wall_s: float
    tenants: list[TenantResult] = field(default_factory=list)
    job_results: list[JobResult] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("job_results")
        return out


@dataclass
class _Job:
    """A trace job's life in the simulator."""

    trace: TraceJob
    view: JobView
    remaining: float
    attempt: int = 0  # bumped on every start and preemption, so a stale completion event is recognised
    placement: list[str] = field(default_factory=list)
    first_start: float | None = None
    finish: float | None = None
    preemptions: int = 0
    lost: float = 0.0


class _Sim:
    """The simulation state: the pool, the queue, the running jobs, the event heap and the integrals for metrics."""

    def __init__(self, trace: Sequence[TraceJob], policy: Policy, pool: Sequence[WorkerView],
                 tenants: Mapping[str, TenantView], checkpoint_interval: float, estimates: str, max_rounds: int):
        self.policy = policy
        self.workers = [WorkerView(w.id, w.capacity, w.capacity) for w in pool]
        self.by_id = {w.id: w for w in self.workers}
        self.capacity = policies.total(w.capacity for w in self.workers)
        self.tenants = {t: replace(tenants[t]) if t in tenants else TenantView(t)  # copies: `served` changes
                        for t in sorted({j.tenant for j in trace} | set(tenants))}
        self.checkpoint = checkpoint_interval
        self.exact = estimates == "exact"
        self.max_rounds = max_rounds
        empty = {w.id: w.capacity for w in self.workers}
        self.jobs: list[_Job] = []
        self.skipped = 0
        for t in trace:
            view = JobView(id=len(self.jobs), tenant=t.tenant, priority=t.priority, resources=t.resources,
                           submitted=t.submit, slots=t.slots, expected_duration=t.duration if self.exact else None)
            if policies.place(view, dict(empty)) is None:
                self.skipped += 1
                continue
            self.jobs.append(_Job(t, view, t.duration))
        self.queued: dict[int, JobView] = {}
        self.running: dict[int, tuple[JobView, list[str]]] = {}
        self.events: list[tuple[float, int, int, int]] = [(j.trace.submit, ARRIVE, j.view.id, 0) for j in self.jobs]
        heapq.heapify(self.events)
        self.wakes: set[float] = set()
        # metrics, integrated between events
        self.last = min((j.trace.submit for j in self.jobs), default=0.0)
        self.window = (self.last, max((j.trace.submit for j in self.jobs), default=0.0))
        self.busy_gpu = 0.0
        self.busy_gpu_s = 0.0
        self.busy_in_window = 0.0
        self.usage = {t: Resources() for t in self.tenants}
        self.demand = {t: Resources() for t in self.tenants}
        self.held = dict.fromkeys(self.tenants, 0.0)
        self.owed = dict.fromkeys(self.tenants, 0.0)  # entitlement to the pool, integrated
        self.owed_alloc = dict.fromkeys(self.tenants, 0.0)  # entitlement to what was allocated, integrated
        self.short = dict.fromkeys(self.tenants, 0.0)  # entitlement to the pool not held, integrated
        self.short_gang = dict.fromkeys(self.tenants, 0.0)  # the same, while a gang job of the tenant was queued
        self.gangs_queued = dict.fromkeys(self.tenants, 0)
        self._entitled: tuple[dict[str, float], dict[str, float]] | None = None
        self.preemptions = 0

    # -- the event loop

    def run(self) -> None:
        while self.events:
            now = self.events[0][0]
            self.advance(now)
            while self.events and self.events[0][0] <= now:
                _, kind, jid, attempt = heapq.heappop(self.events)
                if kind == ARRIVE:
                    self.arrive(self.jobs[jid])
                elif kind == FINISH and self.jobs[jid].attempt == attempt:
                    self.complete(self.jobs[jid], now)
                elif kind == WAKE:
                    self.wakes.discard(now)
            self.schedule(now)
        unfinished = [j.trace.id for j in self.jobs if j.finish is None]
        if unfinished:
            raise RuntimeError(f"{len(unfinished)} job(s) never finished under '{self.policy.name}', "
                               f"e.g. {unfinished[:5]}: the policy stopped starting them")

    def schedule(self, now: float) -> None:
        for t, view in self.tenants.items():  # what the live scheduler reads from the ledger
            view.served = self.held[t]
        for _ in range(self.max_rounds):
            decision = self.policy.schedule(now, list(self.queued.values()), list(self.running.values()),
                                            self.workers, self.tenants)
            for jid, placement in decision.starts:
                self.start(self.jobs[jid], placement, now)
            for jid in decision.preempt:
                self.preempt(self.jobs[jid], now)
            if decision.retry_at is not None and decision.retry_at > now and decision.retry_at not in self.wakes:
                self.wakes.add(decision.retry_at)
                heapq.heappush(self.events, (decision.retry_at, WAKE, -1, 0))
            if not decision.preempt:
                return

    # -- state changes

    def arrive(self, job: _Job) -> None:
        self._enqueue(job.view)
        self.demand[job.view.tenant] = self.demand[job.view.tenant] + job.view.total
        self._entitled = None

    def _enqueue(self, view: JobView) -> None:
        self.queued[view.id] = view
        self.gangs_queued[view.tenant] += view.slots > 1

    def start(self, job: _Job, placement: list[str], now: float) -> None:
        view = job.view
        if view.id not in self.queued or len(placement) != view.slots:
            raise RuntimeError(f"policy '{self.policy.name}' started job {view.id} wrongly: {placement}")
        for wid in placement:
            w = self.by_id[wid]
            if not view.resources.fits_in(w.free):
                raise RuntimeError(f"policy '{self.policy.name}' overcommitted worker {wid} with job {view.id}")
            w.free = w.free - view.resources
        del self.queued[view.id]
        self.gangs_queued[view.tenant] -= view.slots > 1
        view.started = now
        job.placement = list(placement)
        job.attempt += 1
        job.first_start = now if job.first_start is None else job.first_start
        self.running[view.id] = (view, job.placement)
        self.busy_gpu += view.total.gpu
        self.usage[view.tenant] = self.usage[view.tenant] + view.total
        self._entitled = None
        heapq.heappush(self.events, (now + job.remaining, FINISH, view.id, job.attempt))

    def _release(self, job: _Job) -> None:
        view = job.view
        for wid in job.placement:
            w = self.by_id[wid]
            w.free = w.free + view.resources
        del self.running[view.id]
        self.busy_gpu -= view.total.gpu
        self.usage[view.tenant] = self.usage[view.tenant] - view.total
        self._entitled = None
        job.placement = []
        view.started = None

    def complete(self, job: _Job, now: float) -> None:
        self._release(job)
        job.remaining = 0.0
        job.finish = now
        self.demand[job.view.tenant] = self.demand[job.view.tenant] - job.view.total
        self._entitled = None

    def preempt(self, job: _Job, now: float) -> None:
        view = job.view
        if view.id not in self.running or not view.preemptible:
            raise RuntimeError(f"policy '{self.policy.name}' preempted job {view.id}, which it may not")
        ran = now - (view.started if view.started is not None else now)
        lost = ran % self.checkpoint if self.checkpoint > 0 else 0.0
        job.remaining -= ran - lost
        job.lost += lost
        job.preemptions += 1
        job.attempt += 1
        self.preemptions += 1
        self._release(job)
        view.expected_duration = job.remaining if self.exact else None
        view.queued_since = now
        self._enqueue(view)

    # -- metrics

    def entitled(self) -> tuple[dict[str, float], dict[str, float]]:
        """Each tenant's entitlement to the whole pool, and to the part of it allocated right now."""
        if self._entitled is None:
            demand = {t: dominant_share(d, self.capacity) if d.gpu > EPS or d.cpu > EPS else 0.0
                      for t, d in self.demand.items()}
            weights = {t: v.weight for t, v in self.tenants.items()}
            allocated = sum(dominant_share(u, self.capacity) for u in self.usage.values())
            self._entitled = entitlements(demand, weights), entitlements(demand, weights, allocated)
        return self._entitled

    def advance(self, now: float) -> None:
        dt = now - self.last
        if dt <= 0:
            return
        self.busy_gpu_s += self.busy_gpu * dt
        lo, hi = max(self.last, self.window[0]), min(now, self.window[1])
        if hi > lo:
            self.busy_in_window += self.busy_gpu * (hi - lo)
        if self.queued or self.running:
            pool, allocated = self.entitled()
            for t in self.tenants:
                held = dominant_share(self.usage[t], self.capacity)
                self.owed[t] += pool[t] * dt
                self.owed_alloc[t] += allocated[t] * dt
                self.held[t] += held * dt
                if pool[t] > held:
                    self.short[t] += (pool[t] - held) * dt
                    if self.gangs_queued[t]:
                        self.short_gang[t] += (pool[t] - held) * dt
        self.last = now

    def result(self, wall: float) -> SimResult:
        done = [JobResult(j.trace.id, j.trace.tenant, j.trace.submit, j.first_start or 0.0, j.finish or 0.0,
                          j.trace.duration, j.trace.gpus, j.preemptions, j.lost) for j in self.jobs]
        jcts = sorted(r.jct for r in done)
        n = len(done)
        start, end = self.window[0], max((r.finish for r in done), default=self.window[0])
        gpus = self.capacity.gpu
        ratios = {t: self.held[t] / self.owed[t] for t in self.tenants if self.owed[t] > EPS}
        alloc = {t: self.held[t] / self.owed_alloc[t] for t in self.tenants if self.owed_alloc[t] > EPS}
        per_tenant = []
        for t, view in self.tenants.items():
            mine = [r.jct for r in done if r.tenant == t]
            span = max(end - start, EPS)
            per_tenant.append(TenantResult(t, view.weight, len(mine), sum(mine) / len(mine) if mine else 0.0,
                                           self.held[t] / span, self.owed[t] / span, ratios.get(t, math.nan),
                                           alloc.get(t, math.nan),
                                           self.short_gang[t] / self.short[t] if self.short[t] > EPS else 0.0))
        window = self.window[1] - self.window[0]
        work = sum(r.duration * r.gpus for r in done)
        return SimResult(
            policy=self.policy.name, jobs=n, avg_jct_s=sum(jcts) / n if n else 0.0,
            p99_jct_s=jcts[max(0, math.ceil(0.99 * n) - 1)] if n else 0.0,
            avg_queue_s=sum(r.queued_s for r in done) / n if n else 0.0,
            utilisation=self.busy_in_window / (gpus * window) if window > 0 and gpus > 0 else math.nan,
            utilisation_makespan=self.busy_gpu_s / (gpus * (end - start)) if end > start and gpus > 0 else math.nan,
            offered_load=work / (gpus * window) if window > 0 and gpus > 0 else math.nan,
            jain=jain(ratios.values()), min_share_ratio=min(ratios.values(), default=math.nan),
            jain_alloc=jain(alloc.values()), min_alloc_ratio=min(alloc.values(), default=math.nan),
            preemptions=self.preemptions,
            lost_gpu_s=sum(r.lost_s * r.gpus for r in done), busy_gpu_s=self.busy_gpu_s, work_gpu_s=work,
            makespan_s=end - start, skipped=self.skipped, wall_s=wall, tenants=per_tenant, job_results=done)


def jain(values: Iterable[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one has everything."""
    xs = list(values)
    squares = sum(x * x for x in xs)
    return sum(xs) ** 2 / (len(xs) * squares) if xs and squares > 0 else math.nan


def simulate(trace: Sequence[TraceJob], policy: Policy | str, *, pool: Sequence[WorkerView] | None = None,
             tenants: Mapping[str, TenantView] | None = None, checkpoint_interval: float = 300.0,
             min_runtime: float = 600.0, estimates: str = "exact", max_rounds: int = 8) -> SimResult:
    """Replay `trace` on `pool` (default: 8 nodes x 8 GPUs x 64 CPUs) under `policy` (an object, or a name
    configured with `min_runtime`), with `tenants`' weights and limits (default: weight 1, no limit), and
    measure it (see the module docstring). Jobs that can never fit the pool are skipped and counted."""
    if estimates not in ("exact", "none"):
        raise ValueError(f"estimates must be 'exact' or 'none', not '{estimates}'")
    if isinstance(policy, str):
        policy = policies.get(policy, min_runtime=min_runtime)
    began = time.perf_counter()
    sim = _Sim(trace, policy, pool if pool is not None else default_pool(), tenants or {}, checkpoint_interval,
               estimates, max_rounds)
    sim.run()
    return sim.result(time.perf_counter() - began)
