"""The live scheduler: one round, `schedule_once(now)`, in one pool transaction.

A round (1) marks workers that stopped heartbeating as lost and takes back the leases they held (the attempt is
billed as `lost`; the job is requeued, or failed once it has been lost MF_MAX_LOST_ATTEMPTS times: lost
attempts are the infrastructure's fault and do not count toward the job's max_attempts),
(2) settles queued jobs whose dependencies failed or were cancelled, (3) snapshots the pool as the policy sees it
(`policies.JobView` / `WorkerView` / `TenantView`) and asks the configured policy what to do, and (4) writes what
it decided: leases for the jobs it starts, preemption requests for the jobs it wants back, and why the others
wait. The policy is the same pure function the trace simulator replays; everything with a clock, a database or a
process is here.

Running two schedulers is safe (pool_tx serialises their rounds; the second sees the first's leases), merely
useless. Workers act on what a round wrote: they start the processes for their new leases and signal the jobs
asked to stop.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..accounts.ledger import month_bounds
from ..accounts.tables import Tenant, Usage
from ..errors import MFError
from ..store import utcnow
from . import policies
from .jobs import end_attempt, note, transition
from .policies import JobView, Resources, TenantView, WorkerView
from .poolconfig import PoolConfig, pool_config
from .tables import Job, JobEvent, Worker, pool_tx


@dataclass
class ScheduleReport:
    started: list[tuple[int, list[str]]] = field(default_factory=list)
    preempt_requested: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # jobs whose lease was taken back
    settled: list[int] = field(default_factory=list)  # queued jobs failed/cancelled because a dependency was
    workers_lost: list[str] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    retry_at: dt.datetime | None = None  # the policy asks for a round by then even if nothing changes


def seconds(t: dt.datetime) -> float:
    """The policies' clock: seconds since the epoch of a naive-UTC datetime."""
    return t.replace(tzinfo=dt.UTC).timestamp()


def moment(t: float) -> dt.datetime:
    """The inverse of `seconds`: a naive-UTC datetime."""
    return dt.datetime.fromtimestamp(t, dt.UTC).replace(tzinfo=None)


def next_round_in(report: ScheduleReport, interval_s: float, now: dt.datetime | None = None) -> float:
    """Seconds until the next round: `interval_s`, or less when the policy asked for a round sooner
    (`retry_at`: a preemption, or a starving job's rights, then allowed)."""
    if report.retry_at is None:
        return interval_s
    return max(0.0, min(interval_s, (report.retry_at - (now or utcnow())).total_seconds()))


def resources(job: Job) -> Resources:
    return Resources(job.cpu, job.gpu, job.memory_gb)


def policy(cfg: PoolConfig) -> policies.Policy:
    """The configured policy (MFError for an unknown name), with the pool's preemption `min_runtime`."""
    try:
        return policies.get(cfg.policy, min_runtime=cfg.min_runtime_s)
    except ValueError as e:
        raise MFError(str(e)) from None


def schedule_once(now: dt.datetime | None = None, *, config: PoolConfig | None = None) -> ScheduleReport:
    """One scheduling round at `now` (default: the clock), with `config` (default: pool_config())."""
    cfg = config or pool_config()
    chosen = policy(cfg)
    now = now or utcnow()
    report = ScheduleReport()
    with pool_tx() as s:
        live = _expire(s, now, cfg, report)
        _settle_dependents(s, now, report)
        queued, running, workers, tenants = _snapshot(s, live, report, now)
        decision = chosen.schedule(seconds(now), [view for view, _ in queued.values()],
                                   [(view, list(job.placement or [])) for view, job in running.values()],
                                   workers, tenants)
        _apply(s, now, cfg, decision, queued, running, workers, live, report)
        if decision.retry_at is not None and math.isfinite(decision.retry_at):
            report.retry_at = moment(decision.retry_at)
    return report


def _expire(s: Session, now: dt.datetime, cfg: PoolConfig, report: ScheduleReport) -> dict[str, Worker]:
    """Mark silent workers lost, take back the leases of jobs they held; return the workers still alive."""
    cutoff = now - dt.timedelta(seconds=cfg.lease_timeout_s)
    workers = {w.id: w for w in s.scalars(select(Worker))}
    for w in workers.values():
        if w.state in ("up", "stopping") and w.last_heartbeat < cutoff:
            w.state = "lost"
            report.workers_lost.append(w.id)
    for job in s.scalars(select(Job).where(Job.state == "running").order_by(Job.id)):
        placed = [workers.get(wid) for wid in (job.placement or [job.lease_worker])]
        gone = next((w for w in placed if w is None or w.state in ("lost", "stopped")), None)
        if gone is None and job.lease_expires is not None and job.lease_expires >= now:
            continue
        lead = workers.get(job.lease_worker or "")
        last_seen = lead.last_heartbeat if lead else job.started
        if gone is not None:
            silent = (now - gone.last_heartbeat).total_seconds() if gone.last_heartbeat else float("nan")
            why = (f"worker lost: {gone.id} {'stopped' if gone.state == 'stopped' else 'sent no heartbeat'} "
                   f"for {silent:.0f} s")
        else:
            why = f"worker lost: {job.lease_worker} did not renew its lease (expired {job.lease_expires:%H:%M:%S})"
        ended = min(now, max(job.started or now, last_seen or now))
        end_attempt(s, job, "lost", why, ended=ended, now=now, error=why, config=cfg)
        report.lost.append(job.id)
    return {wid: w for wid, w in workers.items() if w.state in ("up", "stopping")}


def _settle_dependents(s: Session, now: dt.datetime, report: ScheduleReport) -> None:
    """A queued job whose dependency failed (or was cancelled) can never run: fail (or cancel) it, and so on
    down the chain."""
    waiting = [j for j in s.scalars(select(Job).where(Job.state == "queued").order_by(Job.id)) if j.depends_on]
    if not waiting:
        return
    dep_ids = {d for job in waiting for d in job.depends_on}
    states = {j.id: j.state for j in s.scalars(select(Job).where(Job.id.in_(dep_ids)))}
    changed = True
    while changed:
        changed = False
        for job in waiting:
            if job.state != "queued":
                continue
            bad = next((d for d in job.depends_on if states.get(d) in ("failed", "cancelled")), None)
            if bad is None:
                continue
            to = "cancelled" if states[bad] == "cancelled" else "failed"
            job.last_error = f"dependency job {bad} {states[bad]}"
            transition(s, job, to, job.last_error, now=now)
            states[job.id] = to
            report.settled.append(job.id)
            changed = True


def _snapshot(s: Session, live: dict[str, Worker], report: ScheduleReport, now: dt.datetime | None = None):
    jobs = list(s.scalars(select(Job).where(Job.state.in_(("queued", "running"))).order_by(Job.id)))
    dep_ids = {d for j in jobs for d in (j.depends_on or [])}
    dep_state = {j.id: j.state for j in s.scalars(select(Job).where(Job.id.in_(dep_ids)))} if dep_ids else {}
    queued: dict[int, tuple[JobView, Job]] = {}
    running: dict[int, tuple[JobView, Job]] = {}
    used: dict[str, Resources] = {wid: Resources() for wid in live}
    requeued = [j.id for j in jobs if j.state == "queued" and j.attempts]
    since = dict(s.execute(select(JobEvent.job_id, func.max(JobEvent.at))  # when each went back to the queue
                           .where(JobEvent.job_id.in_(requeued), JobEvent.from_state == "running",
                                  JobEvent.to_state == "queued").group_by(JobEvent.job_id)).all()) if requeued else {}
    for job in jobs:
        view = JobView(id=job.id, tenant=job.tenant, priority=job.priority, resources=resources(job),
                       submitted=seconds(job.submitted), slots=job.slots, expected_duration=job.time_limit_s,
                       preemptible=job.preemptible,
                       queued_since=seconds(since[job.id]) if job.id in since else None)
        if job.state == "running":
            view.started = seconds(job.started) if job.started else None
            view.stopping = bool(job.preempt_requested)  # asked to checkpoint: about to give its resources back
            running[job.id] = (view, job)
            for wid in job.placement or []:
                if wid in used:
                    used[wid] = used[wid] + view.resources
            continue
        pending = [d for d in job.depends_on or [] if dep_state.get(d) != "succeeded"]
        if pending:
            _set_waiting(job, "waiting for job" + ("s " if len(pending) > 1 else " ")
                         + ", ".join(map(str, pending)), report)
            continue
        queued[job.id] = (view, job)
    workers = [WorkerView(id=w.id, capacity=Resources(w.cpu, w.gpu, w.memory_gb),
                          free=Resources(w.cpu, w.gpu, w.memory_gb) - used[w.id]) for w in live.values()]
    now = now or utcnow()
    served = _served(s, [view for view, _ in running.values()], workers, now)
    tenants = {t.name: TenantView(name=t.name, weight=t.weight, max_slots=t.max_slots, served=served.get(t.name, 0.0))
               for t in s.scalars(select(Tenant))}
    return queued, running, workers, tenants


def _served(s: Session, running: list[JobView], workers: list[WorkerView], now: dt.datetime) -> dict[str, float]:
    """Each tenant's dominant-share-seconds of the pool this month: the ledger's finished attempts plus the running
    ones so far (what the simulator integrates as `held`)."""
    start, _ = month_bounds(now)
    now_s = seconds(now)
    cpu: dict[str, float] = {}
    gpu: dict[str, float] = {}
    for tenant, c, g in s.execute(select(Usage.tenant, func.sum(Usage.cpu_seconds), func.sum(Usage.gpu_seconds))
                                  .where(Usage.ended >= start).group_by(Usage.tenant)):
        cpu[tenant], gpu[tenant] = float(c or 0.0), float(g or 0.0)
    for view in running:
        ran = max(0.0, now_s - (view.started or now_s))
        cpu[view.tenant] = cpu.get(view.tenant, 0.0) + view.total.cpu * ran
        gpu[view.tenant] = gpu.get(view.tenant, 0.0) + view.total.gpu * ran
    pool = policies.total(w.capacity for w in workers)
    return {t: max(cpu.get(t, 0.0) / pool.cpu if pool.cpu else 0.0, gpu.get(t, 0.0) / pool.gpu if pool.gpu else 0.0)
            for t in set(cpu) | set(gpu)}


def _set_waiting(job: Job, why: str, report: ScheduleReport) -> None:
    report.waiting[job.id] = why
    if job.waiting != why:
        job.waiting = why


def _apply(s: Session, now: dt.datetime, cfg: PoolConfig, decision: policies.Decision,
           queued: dict[int, tuple[JobView, Job]], running: dict[int, tuple[JobView, Job]],
           workers: list[WorkerView], live: dict[str, Worker], report: ScheduleReport) -> None:
    free = {w.id: w.free for w in workers if live[w.id].state == "up"}  # a stopping worker takes no new jobs
    for job_id, placement in decision.starts:
        view, job = queued.get(job_id, (None, None))
        if job is None or job.state != "queued":
            continue
        trial, ok = dict(free), len(placement) == job.slots
        for wid in placement if ok else []:
            if wid not in trial or not view.resources.fits_in(trial[wid]):
                ok = False
                break
            trial[wid] = trial[wid] - view.resources
        if not ok:  # the policy's placement does not fit what we know: leave it queued, say why
            _set_waiting(job, f"placement on {', '.join(placement)} does not fit the free resources", report)
            continue
        free = trial
        reason = f"leased to {', '.join(dict.fromkeys(placement))}"
        if job.attempts:
            reason += f" (attempt {job.attempts + 1})"
        transition(s, job, "running", reason, now=now, placement=placement, lease_s=cfg.lease_timeout_s)
        report.started.append((job_id, list(placement)))
    for job_id in decision.preempt:
        _, job = running.get(job_id, (None, None))
        if job is None or job.state != "running" or not job.preemptible or job.preempt_requested:
            continue
        job.preempt_requested = True
        note(s, job, f"preemption requested by the '{cfg.policy}' policy", now=now)
        report.preempt_requested.append(job_id)
    for job_id, why in decision.waiting.items():
        if job_id in queued and queued[job_id][1].state == "queued":
            _set_waiting(queued[job_id][1], why, report)
