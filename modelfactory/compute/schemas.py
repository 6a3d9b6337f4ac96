"""Jobs and the pool as the world sees them: one typed shape for `mf jobs ls|show --json` (on this machine or
through `--server`) and for `/api/v1/jobs` and `/api/v1/pool`, so the API's OpenAPI schema says what comes back."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobOut(BaseModel):
    """A job on the pool (`jobs.job_dict`), with the worker of its latest attempt."""

    id: int
    tenant: str
    order_id: int | None
    kind: str
    name: str
    key: str | None
    priority: str
    cpu: float
    gpu: float
    memory_gb: float
    slots: int
    time_limit_s: float | None
    preemptible: bool
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    attempts: int
    failures: int
    max_attempts: int
    last_error: str | None
    lease_worker: str | None
    placement: list[str] | None
    lease_expires: dt.datetime | None
    preempt_requested: bool
    depends_on: list[int]
    result: dict[str, Any] | None
    waiting: str | None = Field(description="why a queued job is not starting")
    submitted: dt.datetime
    started: dt.datetime | None
    finished: dt.datetime | None
    worker: str | None = Field(description="the worker of the latest attempt")


class JobEventOut(BaseModel):
    """One state change of a job."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    at: dt.datetime
    from_state: str | None = Field(alias="from", description="null: submitted")
    to: str
    reason: str
    attempt: int
    worker: str | None


class JobDetail(JobOut):
    """A job and its history, oldest first."""

    events: list[JobEventOut]


class JobSubmitted(BaseModel):
    job: int


class WorkerOut(BaseModel):
    id: str
    host: str | None
    state: str
    cpu: float
    gpu: float
    memory_gb: float
    running: list[int] | int = Field(description="ids of the jobs it runs (admins), or how many (tenants)")
    started: dt.datetime | None
    last_heartbeat: dt.datetime | None


class JobCounts(BaseModel):
    queued: int
    running: int


class Resources(BaseModel):
    cpu: float
    gpu: float


class PoolOut(BaseModel):
    """The pool now: live workers, job counts, capacity and what is in use."""

    workers: list[WorkerOut]
    jobs: JobCounts
    capacity: Resources
    used: Resources


class PoolSampleOut(BaseModel):
    t: dt.datetime
    workers: int
    cpu_used: float
    cpu_capacity: float
    gpu_used: float
    gpu_capacity: float
    queued: int
    running: int


class UtilisationOut(BaseModel):
    points: list[PoolSampleOut]


def job_out(row: dict[str, Any]) -> JobOut:
    """`jobs.list_jobs` rows as the typed shape."""
    return JobOut.model_validate(row)


def job_detail(row: dict[str, Any]) -> JobDetail:
    """`jobs.describe` as the typed shape."""
    return JobDetail.model_validate(row)
