"""The factory's job kinds on the pool: an order's stage DAG as `stage` jobs (a search order as one `order` job),
one job's run, and the order's registration. Importing this module registers both kinds with compute.kinds.

A stage's cache key is known before it runs (the hash of its name, version, params and input artifact ids, and an
artifact's id *is* its key), so the whole plan is keyed at submit time: a node whose artifact exists is a cache
hit and gets no job, any other node becomes a job that depends on the jobs of its inputs. A stage job runs its
node through the factory's own runner (`run_plan` on a one-node plan whose inputs are artifact ids), so it gets
the runner's behaviour unchanged: the same key, checkpoints under MF_HOME/work/<key>/ that the next attempt
resumes from, the artifact renamed into place only on success, a StageRun row per run.

When every job of an order has succeeded, `finalize_orders` (run by `mf server` after each scheduling round,
as registered with `kinds.after_round`) registers it with `factory.order.finish_order`, the same code `mf order
run` ends with.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update

from ..artifacts import Artifact, ArtifactStore
from ..compute import kinds
from ..compute.jobs import Spec, admit, create, job_dict, last_workers
from ..compute.tables import Job, PoolOrder, pool_read, pool_tx
from ..config import settings
from ..data.versions import DatasetRef, resolve
from ..errors import MFError, NotFound
from ..store import Order, StageRun, session, utcnow
from ..train import distributed
from . import cost
from .order import execute_order, fail_order, finish_order, ingest, open_order
from .planner import Node, Plan, plan
from .runner import NodeResult, Reporter, node_key, run_plan
from .spec import OrderSpec
from .stages import STAGES, StageContext
from .trials import search_prefix

REGISTER_RETRY_S = 120  # an order left 'registering' this long (its registrar died) is registered again


def plan_keys(the_plan: Plan) -> dict[str, tuple[str, dict[str, str]]]:
    """node -> (cache key, {input role: artifact id}) for every node, before anything runs."""
    store = ArtifactStore()
    produced: dict[str, NodeResult] = {}
    out = {}
    for node in the_plan.nodes:
        key, ids = node_key(node, produced)
        produced[node.name] = NodeResult(Artifact(key, store.path(key)), cached=False)
        out[node.name] = (key, ids)
    return out


@dataclass
class Submitted:
    order_id: int
    dataset: DatasetRef
    jobs: dict[str, int] = field(default_factory=dict)  # node -> job id
    cached: list[str] = field(default_factory=list)  # nodes whose artifact already existed
    shared: list[str] = field(default_factory=list)  # nodes another of the tenant's orders is already computing


def submit_order(spec: OrderSpec, *, tenant: str | None = None, priority: str = "standard", cpu: float = 1.0,
                 memory_gb: float = 2.0, max_attempts: int = 3, skip_bad_rows: bool = False) -> Submitted:
    """Ingest the order's data, plan it, and queue a stage job per node that is not a cache hit. An order with a
    recipe search is one job instead (SEARCH_NODE): which stages the search runs is only known as it runs."""
    if tenant and tenant != spec.tenant:
        spec = spec.model_copy(update={"tenant": tenant})
    probe = Spec(kind="stage", payload={}, priority=priority, cpu=cpu, memory_gb=memory_gb,
                 max_attempts=max_attempts)
    with pool_tx() as s:
        admit(s, spec.tenant, [probe])  # unknown tenant, bad priority/resources, over quota: refuse before ingest
    order_id = open_order(spec)
    resources = {"priority": priority, "cpu": cpu, "memory_gb": memory_gb, "max_attempts": max_attempts}
    try:
        dataset = ingest(spec, skip_bad_rows)
        if spec.searched() is not None:  # the search's prefix (teacher half, transfer set), then one `order` job
            return _queue_order(spec, order_id, dataset, search_prefix(spec, dataset.artifact_id), probe,
                                search=True, **resources)
        out = _queue_order(spec, order_id, dataset, plan(spec, dataset.artifact_id), probe, search=False,
                           **resources)
    except BaseException as e:
        fail_order(order_id, e)
        raise
    if not out.jobs:  # every stage was a cache hit: register now
        finalize_orders(order_ids=[order_id])
    return out


SEARCH_NODE = "search"  # the one node of a pool order with a recipe search: its job runs the whole order


def _queue_order(spec: OrderSpec, order_id: int, dataset: DatasetRef, the_plan: Plan, probe: Spec, *,
                 search: bool, **resources) -> Submitted:
    """Queue the order's jobs, check its estimate against the tenant's quota and register the pool order, in one
    transaction. Why one: the pool's write lock is held from its first statement (compute/tables.pool_tx), so the
    check sees every other order's reservation and this order's own is committed with it; two orders submitted
    at once by one tenant cannot both fit in what is left for one. Refused: the transaction rolls back, nothing
    is queued. A search order's one `order` job waits for its prefix's stage jobs (shared like any order's: a
    search never trains a teacher another job is already training) and carries the whole search's estimate."""
    out = Submitted(order_id, dataset)
    nodes: dict[str, dict] = {}
    now = utcnow()
    with pool_tx() as s:
        admit(s, spec.tenant, [probe], now=now)
        _queue_nodes(s, spec, the_plan, plan_keys(the_plan), out, nodes, order_id=order_id, now=now, **resources)
        if search:
            deps = tuple(sorted({n["job"] for n in nodes.values() if n["job"] is not None}))
            job = create(s, spec.tenant, Spec(kind="order", payload={"dataset": str(dataset)},
                                              name=f"{spec.name}/{SEARCH_NODE}", **resources, order_id=order_id,
                                              depends_on=deps), now=now,
                         reason=f"submitted with order {order_id} (recipe search: one job runs the trials)")
            nodes[SEARCH_NODE] = {"stage": SEARCH_NODE, "key": None, "job": job.id}
            out.jobs[SEARCH_NODE] = job.id
            cost.check_search_order(s, spec, dataset, job, cpu=resources["cpu"], now=now)  # refused: rollback
        else:
            cost.check_order(s, spec, the_plan, dataset, out.jobs, order_id=order_id, now=now)  # refused: rollback
        s.add(PoolOrder(order_id=order_id, tenant=spec.tenant, priority=resources["priority"], dataset=str(dataset),
                        dataset_artifact=dataset.artifact_id, nodes=nodes, state="running", updated=now))
    return out


def _queue_nodes(s, spec: OrderSpec, the_plan: Plan, keys: dict[str, tuple[str, dict[str, str]]], out: Submitted,
                 nodes: dict[str, dict], *, order_id: int, now: dt.datetime, **resources) -> None:
    """A stage job per node of `the_plan` (into `nodes` and `out`), except cache hits and nodes the same stage
    of another of the tenant's orders is still computing (shared: that job is the node's job)."""
    store = ArtifactStore()
    for node in the_plan.nodes:
        key, ids = keys[node.name]
        nodes[node.name] = {"stage": node.stage, "key": key, "job": None}
        if store.exists(key):
            out.cached.append(node.name)
            continue
        active = s.scalar(select(Job).where(Job.key == key, Job.tenant == spec.tenant,
                                            Job.state.in_(("queued", "running"))).limit(1))
        if active is not None:  # the same stage of another order of this tenant, still in flight
            nodes[node.name]["job"] = out.jobs[node.name] = active.id
            out.shared.append(node.name)
            continue
        deps = sorted({nodes[ref]["job"] for ref in node.inputs.values()
                       if not ref.startswith("@") and nodes[ref]["job"] is not None})
        payload = {"node": node.name, "stage": node.stage, "params": node.params, "inputs": ids, "key": key}
        job = create(s, spec.tenant, Spec(kind="stage", payload=payload, name=f"{spec.name}/{node.name}", key=key,
                                          order_id=order_id, depends_on=tuple(deps),
                                          slots=int(node.params.get("_workers") or 1), **resources), now=now,
                     reason=f"submitted with order {order_id}")
        nodes[node.name]["job"] = out.jobs[node.name] = job.id


def run_order_job(payload: dict, *, order_id: int, should_stop: Callable[[], bool],
                  reporter: Reporter | None = None) -> dict:
    """A search order's job: the whole order (teacher, trials, registration) as `mf order run` runs it, each
    stage cached, so an attempt after a preemption picks up where the last one stopped."""
    with session() as s:
        spec = OrderSpec.model_validate(s.get(Order, order_id).spec)
    result = execute_order(spec, order_id, resolve(payload["dataset"]), reporter=reporter,
                           should_stop=should_stop, retried=True)
    return {"model": str(result.model) if result.model else None, "missed": result.missed}


# --- one stage job (runs in the worker's job process) --------------------------------------------------------------
def run_stage(payload: dict, *, order_id: int | None, should_stop: Callable[[], bool],
              reporter: Reporter | None = None) -> dict:
    """Run one node of a plan as factory/runner.py does; returns the job's result. Raises StopRequested (from the
    training loop, after a checkpoint) when `should_stop()` turns true during training."""
    node = Node(payload["node"], payload["stage"], payload["params"],
                {role: f"@{aid}" for role, aid in payload["inputs"].items()})
    key, _ = node_key(node, {})
    if key != payload["key"]:
        raise MFError(f"stage '{node.stage}' no longer has the cache key it was submitted with (its code version "
                      "changed since?): submit the order again")
    missing = [aid for aid in payload["inputs"].values() if not ArtifactStore().exists(aid)]
    if missing:
        raise MFError(f"input artifact(s) {', '.join(a[:12] for a in missing)} missing: was MF_HOME shared?")
    with distributed.joined() as gang:  # a gang job's process group, set up by the pool (or Ray); else alone
        if not gang.lead:
            return _follow_stage(node, payload, should_stop)
        results = run_plan(Plan([node], {}, node.name), order_id=order_id, should_stop=should_stop,
                           reporter=reporter)
    r = results[node.name]
    return {"artifact": r.artifact.id, "cached": r.cached, "resumed_from_step": r.resumed_from_step,
            **({"world_size": gang.size} if gang.size > 1 else {})}


def _follow_stage(node: Node, payload: dict, should_stop: Callable[[], bool]) -> dict:
    """A gang's rank > 0: train beside rank 0 (same work dir, so the same checkpoints to resume from) into a
    scratch folder; rank 0 alone writes the artifact, its StageRun row and the job's result."""
    import tempfile

    store = ArtifactStore()
    if store.exists(payload["key"]):  # rank 0 finds it cached and trains nothing: neither do we
        return {"rank": distributed.world().rank, "cached": True}
    stage = STAGES[node.stage]
    inputs = {role: store.get(aid) for role, aid in payload["inputs"].items()}
    with tempfile.TemporaryDirectory(prefix="mf-rank-") as scratch:
        stage.fn(StageContext(out=Path(scratch), work=settings().work / payload["key"], should_stop=should_stop),
                 inputs, node.params)
    return {"rank": distributed.world().rank}


def checkpoint_step(key: str) -> int | None:
    """The step of the checkpoint a stage left in MF_HOME/work/<key>/, if any."""
    state = settings().work / key / "checkpoint" / "state.json"
    try:
        return int(json.loads(state.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


# --- closing orders ------------------------------------------------------------------------------------------------
def _claim(order_id: int, from_states: tuple[str, ...], to: str, *, stale_before: dt.datetime | None = None) -> bool:
    """Atomically move a pool order between states; False if someone else already did."""
    with pool_tx() as s:
        q = update(PoolOrder).where(PoolOrder.order_id == order_id, PoolOrder.state.in_(from_states))
        if stale_before is not None:
            q = q.where(PoolOrder.updated < stale_before)
        return s.execute(q.values(state=to, updated=utcnow())).rowcount == 1


def finalize_orders(order_ids: list[int] | None = None, now: dt.datetime | None = None) -> list[int]:
    """Register the pool orders whose jobs all succeeded, fail those with a failed or cancelled job; returns the
    ids of the orders closed."""
    now = now or utcnow()
    with pool_read() as s:
        q = select(PoolOrder).where(PoolOrder.state.in_(("running", "registering")))
        if order_ids is not None:
            q = q.where(PoolOrder.order_id.in_(order_ids))
        orders = list(s.scalars(q))
        job_ids = {n["job"] for po in orders for n in po.nodes.values() if n["job"] is not None}
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    closed = []
    for po in orders:
        mine = [jobs[n["job"]] for n in po.nodes.values() if n["job"] is not None]
        bad = next((j for j in mine if j.state in ("failed", "cancelled")), None)
        if bad is not None:
            if _claim(po.order_id, ("running",), "failed") and not _closed(po.order_id):
                fail_order(po.order_id, f"job {bad.id} ({bad.name}) {bad.state}: {bad.last_error or 'cancelled'}")
                closed.append(po.order_id)
            continue
        if not all(j.state == "succeeded" for j in mine):
            continue
        if SEARCH_NODE in po.nodes:  # its job registered the order itself
            _claim(po.order_id, ("running",), "done")
            closed.append(po.order_id)
            continue
        stale = now - dt.timedelta(seconds=REGISTER_RETRY_S)
        if not (_claim(po.order_id, ("running",), "registering")
                or _claim(po.order_id, ("registering",), "registering", stale_before=stale)):
            continue
        try:
            _register(po, jobs)
        except Exception as e:  # e.g. an evaluation artifact without metrics: the order fails, with the error
            fail_order(po.order_id, e)
            _claim(po.order_id, ("registering",), "failed")
            closed.append(po.order_id)
            continue
        _claim(po.order_id, ("registering",), "done")
        closed.append(po.order_id)
    return closed


def _closed(order_id: int) -> bool:
    """Whether the order already has its outcome (a search order's job closes it itself, e.g. as infeasible)."""
    with session() as s:
        return s.get(Order, order_id).state != "running"


def _register(po: PoolOrder, jobs: dict[int, Job]) -> None:
    with session() as s:
        order = s.get(Order, po.order_id)
        spec = OrderSpec.model_validate(order.spec)
    dataset = resolve(po.dataset)
    the_plan = plan(spec, po.dataset_artifact)
    store = ArtifactStore()
    results = {}
    for node in the_plan.nodes:
        info = po.nodes[node.name]
        job = jobs.get(info["job"]) if info["job"] is not None else None
        result = (job.result or {}) if job is not None else {}
        results[node.name] = NodeResult(store.get(info["key"]), cached=job is None or bool(result.get("cached")),
                                        resumed_from_step=result.get("resumed_from_step") or None)
    finish_order(spec, po.order_id, dataset, the_plan, results)


# --- looking at orders ---------------------------------------------------------------------------------------------
def list_orders(*, tenant: str | None = None, state: str | None = None, limit: int = 200) -> list[dict]:
    """Orders, newest first (pool orders and `mf order run` ones alike)."""
    with pool_read() as s:
        q = select(Order).order_by(Order.id.desc()).limit(limit)
        if tenant is not None:
            q = q.where(Order.tenant == tenant)
        if state is not None:
            q = q.where(Order.state == state)
        return [{"order": o.id, "name": o.name, "tenant": o.tenant, "state": o.state, "error": o.error,
                 "created": o.created, "finished": o.finished} for o in s.scalars(q)]


def _stage_runs(s, order_id: int) -> list[dict]:
    return [{"node": run.node, "stage": run.stage, "key": run.key, "state": run.state,
             "resumed_from_step": run.resumed_from_step, "error": run.error}
            for run in s.scalars(select(StageRun).where(StageRun.order_id == order_id).order_by(StageRun.id))]


def order_status(order_id: int) -> dict:
    """An order and its stages: for a pool order each node's job (or cache hit); for an order run in one
    process (`mf order run`) its stage runs."""
    with pool_read() as s:
        order = s.get(Order, order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        po = s.get(PoolOrder, order_id)
        out = {"order": order.id, "name": order.name, "tenant": order.tenant, "state": order.state,
               "error": order.error, "report": order.report_path, "created": order.created,
               "finished": order.finished, "on_pool": po is not None, "nodes": [], "edges": []}
        if po is None:
            out["nodes"] = _stage_runs(s, order_id)
            return out
        spec = OrderSpec.model_validate(order.spec)
        out |= {"priority": po.priority, "dataset": po.dataset, "pool_state": po.state}
        if SEARCH_NODE not in po.nodes:
            the_plan = plan(spec, po.dataset_artifact)
            out["edges"] = [(src, n.name) for n in the_plan.nodes for src in n.inputs.values()
                            if not src.startswith("@")]
        job_ids = [n["job"] for n in po.nodes.values() if n["job"] is not None]
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
        workers = last_workers(s, job_ids)
        for name, info in po.nodes.items():
            job = jobs.get(info["job"])
            row = {"node": name, "stage": info["stage"], "key": info["key"], "job": info["job"],
                   "state": "cached" if job is None else job.state}
            if job is not None:
                d = job_dict(job)
                row |= {k: d[k] for k in ("attempts", "waiting", "last_error", "started", "finished",
                                          "preempt_requested")}
                row["worker"] = job.lease_worker or workers.get(job.id)
                row["resumed_from_step"] = (job.result or {}).get("resumed_from_step")
                row["artifact"] = (job.result or {}).get("artifact")
            out["nodes"].append(row)
        if SEARCH_NODE in po.nodes:  # the stages its job has run so far (each trial's chain)
            out["nodes"] += [r for r in _stage_runs(s, order_id) if r["node"] not in po.nodes]
        return out



def cancel_order(order_id: int, reason: str = "cancelled by user") -> None:
    """Cancel a pool order: its queued and running jobs are cancelled (except those another running order of the
    tenant shares), and the order closes as `cancelled`. Finished stages stay in the cache."""
    from ..compute.jobs import cancel

    with pool_read() as s:
        order = s.get(Order, order_id)
        if order is None:
            raise NotFound(f"no order {order_id}")
        po = s.get(PoolOrder, order_id)
        if po is None:
            raise MFError(f"order {order_id} runs in its own `mf order run` process; stop that process instead")
        others = {n["job"] for o in s.scalars(select(PoolOrder).where(PoolOrder.state == "running",
                                                                        PoolOrder.order_id != order_id))
                  for n in o.nodes.values()}
        mine = [n["job"] for n in po.nodes.values() if n["job"] is not None and n["job"] not in others]
    if not _claim(order_id, ("running",), "failed"):
        raise MFError(f"order {order_id} is already {order.state}: nothing to cancel")
    for job_id in mine:
        try:
            cancel(job_id, f"{reason} (order {order_id})")
        except MFError:  # finished meanwhile
            pass
    with session() as s:
        o = s.get(Order, order_id)
        o.state, o.error, o.finished = "cancelled", reason, utcnow()


# --- registration with the pool ------------------------------------------------------------------------------------
class _LogReporter:
    """Stage progress into the job's log, at most every few seconds."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.last = every_s, 0.0

    def stage_started(self, node, key):
        print(f"[{utcnow():%H:%M:%S}] {node.name}: stage {node.stage}, key {key[:12]}", flush=True)

    def stage_progress(self, node, done, total, info):
        if time.monotonic() - self.last >= self.every_s or done == total:
            self.last = time.monotonic()
            print(f"[{utcnow():%H:%M:%S}] {node.name}: {done}/{total} {info}", flush=True)

    def stage_finished(self, node, artifact, cached, seconds, resumed_from_step):
        how = "cache hit" if cached else f"done in {seconds:.1f} s"
        how += f", resumed from step {resumed_from_step}" if resumed_from_step else ""
        print(f"[{utcnow():%H:%M:%S}] {node.name}: {how} -> {artifact.id[:12]}", flush=True)


def _stage_job(ctx: kinds.JobContext) -> dict:
    return run_stage(ctx.payload, order_id=ctx.order_id, should_stop=ctx.should_stop, reporter=_LogReporter())


def _order_job(ctx: kinds.JobContext) -> dict:
    return run_order_job(ctx.payload, order_id=ctx.order_id, should_stop=ctx.should_stop, reporter=_LogReporter())


def _stage_checkpoint(payload: dict) -> int | None:
    return checkpoint_step(payload.get("key", ""))


kinds.register(kinds.JobKind("stage", _stage_job, _stage_checkpoint))
kinds.register(kinds.JobKind("order", _order_job))
kinds.after_round(finalize_orders)
