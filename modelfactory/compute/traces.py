"""Job traces for the scheduler simulator: readers for the public Helios and Philly logs, and a synthetic
Helios-like generator (neither real trace can be fetched here, so the benchmark's default trace is synthetic).

A trace is a list of `TraceJob`s: who submitted what, when, needing how much for how long (seconds from the
trace's first submission; resources per slot). The published figures the generator follows, and where it
approximates them, are in docs/scheduling.md ("Traces").
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .policies import PRIORITIES, Resources, WorkerView

DURATION_MEDIAN = 206.0  # s, Helios GPU jobs (HeliosArtifact helios_cluster_summary.csv, `total`)
DURATION_MEAN = 6652.0  # s, same source
DURATION_CAP = 3 * 86400.0  # s, ours: keeps one job from outlasting a 2,000-job trace
DURATION_SIGMA = 2.9355  # log-normal sigma giving DURATION_MEAN under the cap (solved numerically)
GPU_MIX = {1: 0.60, 2: 0.12, 4: 0.10, 8: 0.12, 16: 0.035, 32: 0.025}  # ours, median 1 and mean 3.56
CPUS_PER_GPU = 4


@dataclass(frozen=True)
class TraceJob:
    id: str
    tenant: str
    submit: float  # seconds from the trace's first submission
    duration: float  # seconds of work, as run uninterrupted
    cpu: float  # per slot
    gpu: float  # per slot
    slots: int = 1
    priority: str = "standard"  # a key of policies.PRIORITIES

    @property
    def resources(self) -> Resources:
        return Resources(cpu=self.cpu, gpu=self.gpu)

    @property
    def gpus(self) -> float:
        return self.gpu * self.slots


def default_pool(nodes: int = 8, gpus: int = 8, cpus: int = 64, memory_gb: float = 512.0) -> list[WorkerView]:
    """The benchmark's pool: `nodes` identical workers (default 8 nodes x 8 GPUs x 64 CPUs)."""
    cap = Resources(cpu=cpus, gpu=gpus, memory_gb=memory_gb)
    return [WorkerView(id=f"node{i:02d}", capacity=cap, free=cap) for i in range(nodes)]


# -- readers


def _seconds(value: object) -> float | None:
    """A time as seconds: a number is taken as seconds, text as an ISO-like datetime; blanks and 'None' are None."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return None if math.isnan(value) else float(value)
    text = str(value).strip()
    if not text or text.lower() in ("none", "nan", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        pass
    stamp = dt.datetime.fromisoformat(text.replace("/", "-"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def _rebase(jobs: list[TraceJob], limit: int | None) -> list[TraceJob]:
    """Sort by submission, keep the first `limit`, and count time from the first submission."""
    jobs.sort(key=lambda j: (j.submit, j.id))
    if limit is not None:
        jobs = jobs[:limit]
    if not jobs:
        return []
    t0 = jobs[0].submit
    return [TraceJob(j.id, j.tenant, j.submit - t0, j.duration, j.cpu, j.gpu, j.slots, j.priority) for j in jobs]


def read_helios(path: str | Path, *, tenant: str = "vc", gpu_only: bool = True,
                limit: int | None = None) -> list[TraceJob]:
    """Read a Helios `cluster_log.csv` (columns job_id, user, vc, gpu_num, cpu_num, node_num, state,
    submit_time, start_time, end_time, duration, queue; times as datetimes or seconds).

    Each job becomes a gang of `node_num` slots sharing its GPUs and CPUs evenly; its work is `duration` (or
    end - start when that is blank), whatever its final state, since a failed or cancelled job used the pool as
    long as it ran. Jobs that never ran (no positive duration) are dropped, and so are CPU-only jobs unless
    `gpu_only` is False. Tenants are virtual clusters (`vc`, Helios' unit of quota) or, with tenant='user',
    users."""
    jobs: list[TraceJob] = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            gpus = float(row.get("gpu_num") or 0)
            if gpu_only and gpus <= 0:
                continue
            submit = _seconds(row.get("submit_time"))
            run = _seconds(row.get("duration"))
            if run is None:
                start, end = _seconds(row.get("start_time")), _seconds(row.get("end_time"))
                run = end - start if start is not None and end is not None else None
            if submit is None or run is None or run <= 0:
                continue
            slots = max(1, int(float(row.get("node_num") or 1)))
            cpus = float(row.get("cpu_num") or 0)
            jobs.append(TraceJob(id=str(row["job_id"]), tenant=str(row.get(tenant) or "unknown"), submit=submit,
                                 duration=run, cpu=cpus / slots, gpu=gpus / slots, slots=slots))
    return _rebase(jobs, limit)


def read_philly(path: str | Path, *, limit: int | None = None) -> list[TraceJob]:
    """Read the Philly `cluster_job_log` (a JSON list of jobs with jobid, user, vc, submitted_time, status and
    attempts [{start_time, end_time, detail: [{ip, gpus: [...]}]}]).

    A job's work is the sum of its finished attempts' run times (every attempt held its GPUs); its size is that
    of its largest attempt, one slot per machine in `detail`, GPUs split evenly. Philly logs no CPU counts, so
    jobs ask for none. Jobs with no finished attempt or no GPUs are dropped. Tenants are virtual clusters."""
    with open(path) as f:
        records = json.load(f)
    jobs: list[TraceJob] = []
    for rec in records:
        submit = _seconds(rec.get("submitted_time"))
        run, gpus, machines = 0.0, 0, 0
        for attempt in rec.get("attempts") or []:
            start, end = _seconds(attempt.get("start_time")), _seconds(attempt.get("end_time"))
            if start is None or end is None or end <= start:
                continue
            run += end - start
            detail = attempt.get("detail") or []
            used = sum(len(d.get("gpus") or []) for d in detail)
            if used > gpus:
                gpus, machines = used, max(1, len(detail))
        if submit is None or run <= 0 or gpus <= 0:
            continue
        jobs.append(TraceJob(id=str(rec.get("jobid")), tenant=str(rec.get("vc") or "unknown"), submit=submit,
                             duration=run, cpu=0.0, gpu=gpus / machines, slots=machines))
    return _rebase(jobs, limit)


# -- synthetic


def _pick(rng: random.Random, mix: Mapping) -> object:
    x, acc = rng.random(), 0.0
    for value, p in mix.items():
        acc += p
        if x < acc:
            return value
    return next(reversed(mix))


def _size(gpus: int, per_node: float) -> tuple[int, float]:
    """(slots, GPUs per slot): one node up to a node's worth of GPUs, whole nodes beyond it."""
    if gpus <= per_node:
        return 1, float(gpus)
    slots = math.ceil(gpus / per_node)
    return slots, gpus / slots


def synthetic_helios(n_jobs: int = 2000, n_tenants: int = 4, seed: int = 0, target_utilisation: float = 0.9,
                     pool: Sequence[WorkerView] | None = None,
                     priority_mix: Mapping[str, float] | None = None) -> list[TraceJob]:
    """A Helios-like trace (see the module docstring for the published figures it follows and what is ours):
    heavy-tailed durations, mostly 1-GPU jobs with a few large gangs, Poisson arrivals at the rate giving an
    offered load of `target_utilisation` on `pool`, tenants of unequal demand. Same arguments, same trace."""
    pool = list(pool) if pool is not None else default_pool()
    per_node = max(w.capacity.gpu for w in pool)
    pool_gpus = sum(w.capacity.gpu for w in pool)
    largest = max((g for g in GPU_MIX if g <= pool_gpus / 2), default=1)
    mix = {g: p for g, p in GPU_MIX.items() if g <= largest}
    mix = {g: p / sum(mix.values()) for g, p in mix.items()}
    for name in priority_mix or {}:
        if name not in PRIORITIES:
            raise ValueError(f"unknown priority class '{name}'; known: {', '.join(PRIORITIES)}")
    rng = random.Random(seed)
    zipf = [1.0 / (i + 1) for i in range(n_tenants)]
    tenants = {f"t{i}": z / sum(zipf) for i, z in enumerate(zipf)}
    drafts = []
    for i in range(n_jobs):
        gpus = int(_pick(rng, mix))  # type: ignore[call-overload]
        slots, per_slot = _size(gpus, per_node)
        run = min(DURATION_CAP, max(1.0, rng.lognormvariate(math.log(DURATION_MEDIAN), DURATION_SIGMA)))
        tenant = str(_pick(rng, tenants))
        prio = str(_pick(rng, priority_mix)) if priority_mix else "standard"
        drafts.append((f"s{i:05d}", tenant, run, per_slot * CPUS_PER_GPU, per_slot, slots, prio))
    work = sum(run * per_slot * slots for _, _, run, _, per_slot, slots, _ in drafts)
    window = work / (pool_gpus * target_utilisation)
    gaps = [rng.expovariate(1.0) for _ in range(n_jobs)]
    scale = window / sum(gaps[1:]) if n_jobs > 1 else 0.0
    t, jobs = 0.0, []
    for gap, (jid, tenant, run, cpu, gpu, slots, prio) in zip(gaps, drafts):
        t += gap * scale if jobs else 0.0
        jobs.append(TraceJob(jid, tenant, t, run, cpu, gpu, slots, prio))
    return jobs


def offered_load(trace: Sequence[TraceJob], pool: Sequence[WorkerView]) -> float:
    """GPU-seconds submitted / pool GPU-seconds over the arrival window (first to last submission)."""
    if len(trace) < 2:
        return 0.0
    window = max(j.submit for j in trace) - min(j.submit for j in trace)
    gpus = sum(w.capacity.gpu for w in pool)
    return sum(j.duration * j.gpus for j in trace) / (gpus * window) if window > 0 and gpus > 0 else math.inf


def describe_trace(trace: Sequence[TraceJob], pool: Sequence[WorkerView]) -> dict:
    """The figures a synthetic trace is meant to match, measured on it: share of 1-GPU jobs, median and mean
    duration, mean GPUs per job, offered load, and each tenant's share of the GPU-seconds submitted."""
    runs = sorted(j.duration for j in trace)
    n = len(runs)
    median = (runs[(n - 1) // 2] + runs[n // 2]) / 2 if n else 0.0
    work = sum(j.duration * j.gpus for j in trace)
    by_tenant: dict[str, float] = {}
    for j in trace:
        by_tenant[j.tenant] = by_tenant.get(j.tenant, 0.0) + j.duration * j.gpus
    return {"jobs": n, "one_gpu_share": sum(1 for j in trace if j.gpus == 1) / n if n else 0.0,
            "median_duration_s": median, "mean_duration_s": sum(runs) / n if n else 0.0,
            "mean_gpus": sum(j.gpus for j in trace) / n if n else 0.0,
            "max_gpus": max((j.gpus for j in trace), default=0.0),
            "offered_load": offered_load(trace, pool),
            "arrival_window_s": (max(j.submit for j in trace) - min(j.submit for j in trace)) if n else 0.0,
            "tenant_work_share": {t: w / work for t, w in sorted(by_tenant.items())} if work else {}}
