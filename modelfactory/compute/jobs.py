"""Jobs: the state machine, submission, cancellation, and ending an attempt.

    (submit) -> queued -> running -> succeeded | failed | cancelled
                  ^          |
                  +----------+   preempted, worker lost, failed attempt with retries left

`transition()` is the only code that changes `Job.state`. It refuses what the table below does not allow (a
finished job never runs again; a queued job cannot succeed without running) and records every change as a
`JobEvent` with its time, reason, attempt and worker. The lease bookkeeping that goes with a state (who holds the
job, until when, on which workers) is set there too, so a job's fields always agree with its state.

`end_attempt()` is the only code that ends an attempt: it writes the attempt's ledger row and makes the
transition in the caller's transaction, so an attempt is never billed twice nor left unbilled.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..accounts.ledger import record_attempt
from ..accounts.tables import Usage
from ..accounts.tenants import Request, check_quota, tenant_row
from ..config import settings
from ..errors import MFError, NotFound
from ..store import utcnow
from . import kinds
from .policies import PRIORITIES
from .poolconfig import PoolConfig, pool_config
from .tables import Job, JobEvent, pool_read, pool_tx

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ALLOWED: dict[str | None, frozenset[str]] = {
    None: frozenset({"queued"}),  # submitted
    "queued": frozenset({"running", "failed", "cancelled"}),  # failed: a dependency failed
    "running": frozenset({"queued", "succeeded", "failed", "cancelled"}),  # queued: preempted / lost / retry
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class IllegalTransition(MFError):
    """A state change the job's state machine does not allow (e.g. a finished job started again)."""


def transition(s: Session, job: Job, to: str, reason: str, *, now: dt.datetime | None = None,
               placement: Sequence[str] | None = None, lease_s: float | None = None,
               worker: str | None = None) -> JobEvent:
    """Move `job` to state `to` for `reason`, recording a JobEvent; raise IllegalTransition if not allowed.

    To `running`, `placement` (a worker id per slot; the first runs the process) and `lease_s` are required: the
    attempt counter goes up and the lease is written. Leaving `running` clears the lease."""
    now = now or utcnow()
    current = job.state
    if to not in STATES:
        raise IllegalTransition(f"job {job.id}: unknown state '{to}'")
    if to not in ALLOWED[current]:
        raise IllegalTransition(f"job {job.id}: cannot go from {current or 'new'} to {to} ({reason})")
    holder = worker or job.lease_worker
    if to == "running":
        if not placement or lease_s is None:
            raise IllegalTransition(f"job {job.id}: starting needs a placement and a lease")
        job.attempts = (job.attempts or 0) + 1
        job.lease_worker, job.placement = placement[0], list(placement)
        job.lease_expires = now + dt.timedelta(seconds=lease_s)
        job.started, job.preempt_requested, job.waiting = now, False, None
        holder = placement[0]
    elif current == "running":
        job.lease_worker = job.placement = job.lease_expires = None
        job.preempt_requested = False
    if to in TERMINAL:
        job.finished, job.waiting = now, None
    job.state = to
    if job.id is None:  # a new job: its id is the event's key
        s.add(job)
        s.flush()
    event = JobEvent(job_id=job.id, at=now, from_state=current, to_state=to, reason=reason,
                     attempt=job.attempts or 0, worker=holder)
    s.add(event)
    return event


def note(s: Session, job: Job, reason: str, *, now: dt.datetime | None = None) -> JobEvent:
    """Record something that happened to a job without changing its state (e.g. a preemption request): an event
    whose from_state equals its to_state. Not a transition."""
    event = JobEvent(job_id=job.id, at=now or utcnow(), from_state=job.state, to_state=job.state, reason=reason,
                     attempt=job.attempts or 0, worker=job.lease_worker)
    s.add(event)
    return event


@dataclass(frozen=True)
class Spec:
    """What a job asks for. `depends_on`: job ids that must succeed before it may start."""

    kind: str
    payload: dict
    name: str = ""
    key: str | None = None
    priority: str = "standard"
    cpu: float = 1.0
    gpu: float = 0.0
    memory_gb: float = 1.0
    slots: int = 1
    time_limit_s: float | None = None
    max_attempts: int = 3
    preemptible: bool = True
    order_id: int | None = None
    depends_on: tuple[int, ...] = ()

    def validate(self) -> None:
        if self.kind not in kinds.names():
            raise MFError(f"unknown job kind '{self.kind}'; known: {', '.join(kinds.names())}")
        if self.priority not in PRIORITIES:
            raise MFError(f"unknown priority '{self.priority}'; choose one of: {', '.join(PRIORITIES)}")
        if self.cpu <= 0 or self.gpu < 0 or self.memory_gb <= 0 or self.slots < 1:
            raise MFError(f"bad resources: cpu={self.cpu} (> 0), gpu={self.gpu} (>= 0), "
                          f"memory_gb={self.memory_gb} (> 0), slots={self.slots} (>= 1)")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise MFError(f"time limit must be > 0 seconds (got {self.time_limit_s})")
        if self.max_attempts < 1:
            raise MFError(f"max attempts must be >= 1 (got {self.max_attempts})")

    def request(self) -> Request:
        return Request(self.cpu, self.gpu, self.slots, self.time_limit_s)


def outstanding(s: Session, tenant: str) -> list[Request]:
    """What `tenant`'s queued and running jobs with a time limit may still use (the quota's reservations)."""
    return [Request(j.cpu, j.gpu, j.slots, j.time_limit_s) for j in s.scalars(
        select(Job).where(Job.tenant == tenant, Job.state.in_(("queued", "running")), Job.time_limit_s.is_not(None)))]


def names(ids: Collection[int]) -> dict[int, str]:
    """Job id -> name, for invoices (accounts.ledger.invoice's `job_names`)."""
    with pool_read() as s:
        return dict(s.execute(select(Job.id, Job.name).where(Job.id.in_(list(ids)))).all())


def admit(s: Session, tenant: str, specs: Sequence[Spec], *, now: dt.datetime | None = None) -> None:
    """Raise MFError unless `specs` are well-formed, `tenant` exists, and the batch as a whole fits the tenant's
    hard quotas (see accounts/tenants.py)."""
    for spec in specs:
        spec.validate()
    check_quota(s, tenant_row(s, tenant), [spec.request() for spec in specs], now or utcnow(),
                outstanding(s, tenant))


def create(s: Session, tenant: str, spec: Spec, *, now: dt.datetime | None = None,
           reason: str = "submitted") -> Job:
    """Queue one admitted job inside the caller's pool transaction; returns it, with its id."""
    now = now or utcnow()
    job = Job(tenant=tenant, order_id=spec.order_id, kind=spec.kind, name=spec.name[:200], key=spec.key,
              payload=spec.payload, priority=spec.priority, cpu=spec.cpu, gpu=spec.gpu, memory_gb=spec.memory_gb,
              slots=spec.slots, time_limit_s=spec.time_limit_s, preemptible=spec.preemptible, state=None,
              attempts=0, failures=0, max_attempts=spec.max_attempts, depends_on=list(spec.depends_on),
              submitted=now, preempt_requested=False)
    transition(s, job, "queued", reason, now=now)
    return job


def add_jobs(s: Session, tenant: str, specs: Sequence[Spec], *, now: dt.datetime | None = None) -> list[Job]:
    """admit() then create() each: queue a batch for `tenant` inside the caller's pool transaction."""
    now = now or utcnow()
    admit(s, tenant, specs, now=now)
    return [create(s, tenant, spec, now=now) for spec in specs]


def submit(tenant: str, spec: Spec) -> int:
    """Queue one job; returns its id."""
    with pool_tx() as s:
        return add_jobs(s, tenant, [spec])[0].id


def command_spec(argv: list[str], **kw) -> Spec:
    """A `command` job: run `argv` in the tenant's sandbox (compute/sandbox/). Not preemptible by default:
    an arbitrary command cannot be assumed to checkpoint."""
    if not argv:
        raise MFError("no command given: put it after `--`, e.g. mf jobs submit --tenant acme -- python train.py")
    return Spec(kind="command", payload={"argv": list(argv), "env": kw.pop("env", None) or {}},
                name=shlex.join(argv), preemptible=kw.pop("preemptible", False), **kw)


def end_attempt(s: Session, job: Job, outcome: str, reason: str, *, ended: dt.datetime | None = None,
                now: dt.datetime | None = None, error: str | None = None, result: dict | None = None,
                retry: bool = True, config: PoolConfig | None = None) -> JobEvent:
    """End `job`'s running attempt: bill it, then move the job on.

    succeeded -> succeeded (with `result`); preempted -> queued (free: it does not count against max_attempts);
    failed -> queued again while fewer than max_attempts attempts have failed and `retry`, else failed with the
    last error; lost (the worker vanished or its lease expired: the infrastructure's fault, not the job's) ->
    queued again while the job has been lost fewer than `max_lost_attempts` times (`MF_MAX_LOST_ATTEMPTS`), so a
    user's order survives worker crashes and restarts, while a job that kills every worker it touches still ends;
    cancelled -> cancelled."""
    now = now or utcnow()
    if job.state != "running":
        raise IllegalTransition(f"job {job.id} is {job.state}, not running: no attempt to end")
    record_attempt(s, job, outcome=outcome, started=job.started or now, ended=ended or now,
                   worker=job.lease_worker, config=config)
    if result is not None:
        job.result = result
    if outcome == "succeeded":
        return transition(s, job, "succeeded", reason, now=now)
    if outcome == "preempted":
        return transition(s, job, "queued", reason, now=now)
    if outcome == "cancelled":
        return transition(s, job, "cancelled", reason, now=now)
    job.failures = (job.failures or 0) + 1  # failed or lost (the column's meaning); lost ones are in the ledger
    job.last_error = error or reason
    lost = lost_attempts(s, job.id)
    if outcome == "lost":
        cap = (config or pool_config()).max_lost_attempts
        if retry and lost < cap:
            return transition(s, job, "queued", f"{reason}; retrying (worker lost {lost} of {cap} times)", now=now)
        capped = f" (worker lost {lost} times, the most MF_MAX_LOST_ATTEMPTS allows)" if retry else ""
        return transition(s, job, "failed", f"{reason}{capped}", now=now)
    failed = job.failures - lost
    if retry and failed < job.max_attempts:
        return transition(s, job, "queued", f"{reason}; retrying ({failed} of {job.max_attempts} "
                                            f"attempts failed)", now=now)
    capped = f" after {failed} failed attempts" if retry and failed > 1 else ""
    return transition(s, job, "failed", f"{reason}{capped}: {job.last_error}" if error else f"{reason}{capped}",
                      now=now)


def lost_attempts(s: Session, job_id: int) -> int:
    """How many of the job's attempts were lost (worker gone), counted from the ledger that bills each attempt
    once, so the count needs no column of its own (and older databases no ALTER)."""
    return s.scalar(select(func.count()).select_from(Usage).where(Usage.job_id == job_id,
                                                                  Usage.outcome == "lost")) or 0


def cancel(job_id: int, reason: str = "cancelled by user", *, config: PoolConfig | None = None) -> Job:
    """Cancel a queued or running job (a running one's worker kills its process when it next looks; the attempt
    is billed up to now). Its dependents are cancelled by the scheduler's next round."""
    with pool_tx() as s:
        job = _existing(s, job_id)
        if job.state in TERMINAL:
            raise MFError(f"job {job_id} already {job.state}: nothing to cancel")
        if job.state == "running":
            end_attempt(s, job, "cancelled", reason, config=config)
        else:
            transition(s, job, "cancelled", reason)
        return job


def _existing(s: Session, job_id: int) -> Job:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id} (see `mf jobs ls`)")
    return job


def _history(s: Session, job_id: int) -> list[JobEvent]:
    return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def get(job_id: int) -> Job:
    with pool_read() as s:
        return _existing(s, job_id)


def describe(job_id: int) -> dict:
    """A job as job_dict, with `worker` (of its latest attempt) and `events` (its history, oldest first)."""
    with pool_read() as s:
        job = _existing(s, job_id)
        return job_dict(job) | {"worker": last_workers(s, [job_id]).get(job_id),
                                "events": [event_dict(e) for e in _history(s, job_id)]}


def events(job_id: int) -> list[JobEvent]:
    with pool_read() as s:
        return _history(s, job_id)


def list_jobs(*, tenant: str | None = None, state: str | None = None, order_id: int | None = None) -> list[dict]:
    """Jobs as dicts (job_dict), with `worker`: the worker of each one's latest attempt."""
    if state is not None and state not in STATES:
        raise MFError(f"unknown job state '{state}'; known: {', '.join(STATES)}")
    q = select(Job).order_by(Job.id)
    if tenant:
        q = q.where(Job.tenant == tenant)
    if state:
        q = q.where(Job.state == state)
    if order_id is not None:
        q = q.where(Job.order_id == order_id)
    with pool_read() as s:
        rows = list(s.scalars(q))
        workers = last_workers(s, [j.id for j in rows])
        return [job_dict(j) | {"worker": workers.get(j.id)} for j in rows]


def last_workers(s: Session, job_ids: Sequence[int]) -> dict[int, str]:
    """job id -> the worker its latest attempt was leased to (a finished job holds no lease any more)."""
    out: dict[int, str] = {}
    if job_ids:
        q = (select(JobEvent.job_id, JobEvent.worker)
             .where(JobEvent.job_id.in_(list(job_ids)), JobEvent.to_state == "running",
                    JobEvent.from_state == "queued").order_by(JobEvent.id))
        for job_id, worker in s.execute(q):
            out[job_id] = worker
    return out


def log_path(job_id: int, attempt: int) -> Path:
    """Where a job attempt's output goes (written by its worker, read by `mf jobs` and the API)."""
    return settings().home / "logs" / "jobs" / f"{job_id}.{attempt}.log"


def log_tail(job_id: int, attempt: int | None = None, lines: int = 200) -> str:
    """The last `lines` lines of an attempt's log (default: the latest attempt); '' before it has written any."""
    job = get(job_id)
    attempt = job.attempts if attempt is None else attempt
    if not 0 <= attempt <= job.attempts:
        raise NotFound(f"job {job_id} has no attempt {attempt} (attempts: {job.attempts})")
    try:
        with open(log_path(job_id, attempt), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 256 * 1024))  # the tail of a long log, not all of it
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")


def job_dict(job: Job) -> dict:
    """A job for --json output and the API."""
    keys = ("id", "tenant", "order_id", "kind", "name", "key", "priority", "cpu", "gpu", "memory_gb", "slots",
            "time_limit_s", "preemptible", "state", "attempts", "failures", "max_attempts", "last_error",
            "lease_worker", "placement", "lease_expires", "preempt_requested", "depends_on", "result", "waiting",
            "submitted", "started", "finished")
    return {k: getattr(job, k) for k in keys}


def event_dict(e: JobEvent) -> dict:
    return {"at": e.at, "from": e.from_state, "to": e.to_state, "reason": e.reason, "attempt": e.attempt,
            "worker": e.worker}
