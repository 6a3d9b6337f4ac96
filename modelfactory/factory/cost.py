"""An order's estimated cost, checked against what is left of the tenant's quota before the order is accepted.

Why an estimate: the pool prices a job by resources x time limit (accounts/tenants.check_quota), but an order's
stage jobs have no time limit (how long a fine-tune takes depends on its data), so without this an order could
be accepted by a tenant with minutes of quota left and run for hours. The estimate is meant to bound, not to
predict: per stage kind, generous core-seconds per row (and per epoch for training: the teacher at the rate of a
BERT-base on one CPU core, scaled by max_length / 128; students, transfer labelling, evaluation likewise), over
every row of the dataset (not only the training split), plus a fixed start-up per job. A search order's job is
bounded by its search budget (max_minutes on its cores) plus its teacher's stages. Stages whose artifact already
exists (cache hits) and stages another of the tenant's orders is computing cost nothing. A stage job's estimate
is kept in its payload (`estimate_s`), so later orders count it as reserved while it is queued or running. The
check runs in the transaction that queues the order's jobs, under the pool's write lock (factory/jobkinds.py), so
two orders submitted at once cannot both take what is left for one.

Billing is unchanged: the ledger bills what attempts actually use (accounts/ledger.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..accounts.quota import refuse_over_quota
from ..artifacts import ArtifactStore
from ..compute.jobs import outstanding
from ..compute.tables import Job
from ..data.versions import DatasetRef
from ..store import utcnow
from .planner import Node, Plan, teacher_plan
from .spec import OrderSpec

START_S = 30.0  # per stage job: process start, imports, loading its inputs
# Core-seconds per row (x epochs for training stages); see the module docstring for what they are meant to bound.
PER_ROW_S = {
    "split": 0.001, "finetune_teacher": 0.2, "adapt": 2.0, "distill": 0.1, "transfer_set": 0.05,
    "fit_student": 0.01, "evaluate_majority": 0.0, "export_onnx": 0.0, "optimize_onnx": 0.0, "quantize": 0.01,
    "prune": 0.01, "evaluate": 0.05, "evaluate_generative": 0.5,
}
FIXED_S = {"export_onnx": 60.0, "optimize_onnx": 60.0}
UNKNOWN_PER_ROW_S = 0.2  # a stage this table does not know: priced like a teacher epoch
TRAINING = ("finetune_teacher", "adapt", "distill")
DEFAULT_COPIES = 20  # the transfer set's most augmented copies per row (spec.TransferSpec)


@dataclass
class OrderEstimate:
    """Core-seconds per stage job the order would queue (cached and shared stages are absent), and which were
    free."""

    stages: dict[str, float] = field(default_factory=dict)
    free: list[str] = field(default_factory=list)
    search_s: float = 0.0  # a search order: its budget, in core-seconds

    @property
    def cpu_hours(self) -> float:
        return (sum(self.stages.values()) + self.search_s) / 3600

    def detail(self) -> str:
        top = sorted(self.stages.items(), key=lambda kv: -kv[1])[:3]
        parts = [f"{name} {s / 3600:.2f}" for name, s in top]
        if self.search_s:
            parts.insert(0, f"search budget {self.search_s / 3600:.2f}")
        if len(self.stages) > len(top):
            parts.append(f"{len(self.stages) - len(top)} more stage(s)")
        parts.append(f"{len(self.free)} cached or shared stage(s) free")
        return "; ".join(parts)


def stage_seconds(node: Node, rows: int) -> float:
    """Core-seconds one stage job may take on a dataset of `rows` rows (an upper envelope, not a prediction)."""
    p = node.params
    per_row = PER_ROW_S.get(node.stage, UNKNOWN_PER_ROW_S)
    work = float(rows)
    if node.stage in TRAINING:
        epochs = float(p.get("epochs") or 3.0)
        work = max(rows * epochs, float(p.get("min_steps") or 0) * int(p.get("batch_size") or 32))
        work *= 1 + int(p.get("retries") or 0)  # a collapsed teacher is trained again
        per_row *= max(1.0, int(p.get("max_length") or 128) / 128)
    elif node.stage == "transfer_set":
        copies = p.get("copies")
        work = rows * (1 + (DEFAULT_COPIES if copies is None else int(copies)))
    elif node.stage == "quantize":
        work = min(rows, int(p.get("calibration_rows") or 128))
    return START_S + FIXED_S.get(node.stage, 0.0) + per_row * work


def estimate_plan(the_plan: Plan, rows: int, free: set[str]) -> OrderEstimate:
    """Every node of `the_plan` not in `free` (cache hits, shared stages)."""
    est = OrderEstimate(free=[n.name for n in the_plan.nodes if n.name in free])
    for node in the_plan.nodes:
        if node.name not in free:
            est.stages[node.name] = stage_seconds(node, rows)
    return est


def _reserved_hours(s: Session, tenant: str, exclude_order: int | None) -> tuple[float, float]:
    """CPU- and GPU-hours the tenant's queued and running jobs may still use: those with a time limit priced by
    it (compute.jobs.outstanding), the factory's untimed jobs by the estimate in their payload."""
    cpu = sum(r.cpu * r.slots * r.time_limit_s for r in outstanding(s, tenant))
    gpu = sum(r.gpu * r.slots * r.time_limit_s for r in outstanding(s, tenant))
    for job in s.scalars(select(Job).where(Job.tenant == tenant, Job.state.in_(("queued", "running")),
                                           Job.time_limit_s.is_(None))):
        if job.order_id == exclude_order or not isinstance(job.payload, dict):
            continue
        core_s = float(job.payload.get("estimate_s") or 0.0)
        cpu += core_s * job.slots
        gpu += core_s / max(job.cpu, 1e-9) * job.gpu * job.slots
    return cpu / 3600, gpu / 3600


def check_order(s: Session, spec: OrderSpec, the_plan: Plan, dataset: DatasetRef, queued: dict[str, int],
                *, order_id: int, now: dt.datetime | None = None) -> OrderEstimate:
    """Inside the transaction that queued the order's stage jobs (`queued`: node -> job id; nodes missing from
    it, or whose job belongs to another order, are free): raise QuotaExceeded (the transaction rolls back, no
    job is queued) when the estimate exceeds what is left of the tenant's quota; else note each job's estimate."""
    mine = {name: job_id for name, job_id in queued.items() if (job := s.get(Job, job_id)) is not None
            and job.order_id == order_id}
    est = estimate_plan(the_plan, dataset.n_rows, {n.name for n in the_plan.nodes if n.name not in mine})
    gpu_s = sum(est.stages[name] / max(s.get(Job, j).cpu, 1e-9) * s.get(Job, j).gpu for name, j in mine.items())
    reserved_cpu, reserved_gpu = _reserved_hours(s, spec.tenant, exclude_order=order_id)
    refuse_over_quota(s, spec.tenant, what=f"order '{spec.name}'", cpu_hours=est.cpu_hours, gpu_hours=gpu_s / 3600,
                      now=now or utcnow(), reserved_cpu_hours=reserved_cpu, reserved_gpu_hours=reserved_gpu,
                      detail=est.detail())
    for name, job_id in mine.items():
        job = s.get(Job, job_id)
        job.payload = {**job.payload, "estimate_s": round(est.stages[name], 1)}
    return est


def check_search_order(s: Session, spec: OrderSpec, dataset: DatasetRef, job: Job, *, cpu: float, gpu: float = 0.0,
                       now: dt.datetime | None = None) -> OrderEstimate:
    """Inside the transaction that queued a search order's `order` job (`job`): its teacher's stages that are
    not cached, plus its search budget (max_minutes on `cpu` cores). Raise QuotaExceeded (the transaction rolls
    back) when that exceeds what is left; else keep the estimate in the job's payload (reserved for later orders
    while it is queued or running)."""
    from .jobkinds import plan_keys  # the keys the runner will use (jobkinds imports this module)

    tplan = teacher_plan(spec, dataset.artifact_id)
    store = ArtifactStore()
    cached = {name for name, (key, _) in plan_keys(tplan).items() if store.exists(key)}
    est = estimate_plan(tplan, dataset.n_rows, cached)
    est.search_s = spec.searched().max_minutes * 60 * cpu  # type: ignore[union-attr]
    reserved_cpu, reserved_gpu = _reserved_hours(s, spec.tenant, exclude_order=job.order_id)
    refuse_over_quota(s, spec.tenant, what=f"order '{spec.name}'", cpu_hours=est.cpu_hours,
                      gpu_hours=est.cpu_hours / max(cpu, 1e-9) * gpu, now=now or utcnow(),
                      reserved_cpu_hours=reserved_cpu, reserved_gpu_hours=reserved_gpu, detail=est.detail())
    job.payload = {**job.payload, "estimate_s": round(est.cpu_hours * 3600, 1)}
    return est
