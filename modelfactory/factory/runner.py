"""Run a plan: for each node in order, a finished artifact with the node's key is a cache hit; otherwise the
stage runs into a temporary folder that is renamed into place only when it succeeds. A stage killed half-way
leaves its checkpoints in MF_HOME/work/<key>/, and the next run of the same node resumes from them."""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass
from typing import Protocol

from ..artifacts import Artifact, ArtifactStore
from ..config import settings
from ..store import StageRun, session, utcnow
from .cache import stage_key
from .planner import Node, Plan
from .stages import STAGES, StageContext


class Reporter(Protocol):
    def stage_started(self, node: Node, key: str) -> None: ...
    def stage_progress(self, node: Node, done: int, total: int, info: str) -> None: ...
    def stage_finished(self, node: Node, artifact: Artifact, cached: bool, seconds: float,
                       resumed_from_step: int | None) -> None: ...


class SilentReporter:
    def stage_started(self, node, key): pass
    def stage_progress(self, node, done, total, info): pass
    def stage_finished(self, node, artifact, cached, seconds, resumed_from_step): pass


@dataclass
class NodeResult:
    artifact: Artifact
    cached: bool
    resumed_from_step: int | None = None


def node_key(node: Node, produced: dict[str, NodeResult]) -> tuple[str, dict[str, str]]:
    ids = {role: (ref[1:] if ref.startswith("@") else produced[ref].artifact.id) for role, ref in node.inputs.items()}
    return stage_key(node.stage, STAGES[node.stage].version, node.params, ids), ids


def run_plan(plan: Plan, *, order_id: int | None = None, reporter: Reporter | None = None,
             should_stop=lambda: False, produced: dict[str, NodeResult] | None = None) -> dict[str, NodeResult]:
    """Run `plan`'s nodes in order; `produced` seeds results of nodes run before (e.g. the shared teacher)."""
    reporter = reporter or SilentReporter()
    store = ArtifactStore()
    produced = dict(produced or {})
    for node in plan.nodes:
        key, ids = node_key(node, produced)
        stage = STAGES[node.stage]
        reporter.stage_started(node, key)
        t0 = time.perf_counter()
        if store.exists(key):
            produced[node.name] = NodeResult(store.get(key), cached=True)
            _record(order_id, node, key, "cached")
            reporter.stage_finished(node, produced[node.name].artifact, True, 0.0, None)
            continue
        run_id = _record(order_id, node, key, "running")
        inputs = {role: store.get(aid) for role, aid in ids.items()}
        work = settings().work / key
        work.mkdir(parents=True, exist_ok=True)
        try:
            with store.create(key, kind=stage.kind, producer=f"{stage.name}@v{stage.version}", params=node.params,
                              inputs=ids) as (tmp, extra):
                ctx = StageContext(out=tmp, work=work, should_stop=should_stop,
                                   progress=lambda d, t, info, n=node: reporter.stage_progress(n, d, t, info))
                extra.update(stage.fn(ctx, inputs, node.params))
        except BaseException as e:
            _finish(run_id, "failed", error="".join(traceback.format_exception_only(e)).strip())
            raise
        shutil.rmtree(work, ignore_errors=True)
        resumed = ctx.notes.get("resumed_from_step") or None
        produced[node.name] = NodeResult(store.get(key), cached=False, resumed_from_step=resumed)
        _finish(run_id, "done", resumed=resumed)
        reporter.stage_finished(node, produced[node.name].artifact, False, time.perf_counter() - t0, resumed)
    return produced


def _record(order_id: int | None, node: Node, key: str, state: str) -> int | None:
    if order_id is None:
        return None
    with session() as s:
        run = StageRun(order_id=order_id, node=node.name, stage=node.stage, key=key, state=state,
                       finished=utcnow() if state == "cached" else None)
        s.add(run)
        s.flush()
        return run.id


def _finish(run_id: int | None, state: str, *, error: str | None = None, resumed: int | None = None) -> None:
    if run_id is None:
        return
    with session() as s:
        run = s.get(StageRun, run_id)
        run.state, run.error, run.finished, run.resumed_from_step = state, error, utcnow(), resumed
