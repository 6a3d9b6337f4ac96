"""The pool on a real multi-node Ray cluster (`MF_EXECUTOR=ray`): a head with no CPUs and two 1-CPU nodes on this
machine (`ray.cluster_utils.Cluster`, each node its own raylet), PostgreSQL as the database, the artifact store
shared by path. A teacher that asks for 2 workers runs as a gang of 2 Ray tasks in a placement group, one on each
node; every attempt records the node it ran on; killing the node under a training stage loses nothing (the job
resumes on the other node from its checkpoint)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from modelfactory.accounts.tenants import add_tenant
from modelfactory.compute import jobs
from modelfactory.factory.jobkinds import submit_order
from modelfactory.factory.spec import parse_spec

from .conftest import tiny_order
from .test_pool_e2e import (
    TEACHER,
    SchedulerThread,
    _order_state,
    checkpoint_step,
    job,
    mf_process,
    reviews_csv,
    stop_all,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.ci_required,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")]
__all__ = ["reviews_csv"]  # the fixture, imported for its name

PLACED = re.compile(r"attempt (\d+)(?: rank (\d+)/\d+)? runs on Ray node ([0-9a-f]+)")


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": 100 * 2**20})
    try:
        nodes = [cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()  # every raylet, the GCS, their workers


@pytest.fixture
def on_cluster(ray_cluster, pg_database, monkeypatch):
    cluster, nodes = ray_cluster
    monkeypatch.setenv("MF_EXECUTOR", "ray")
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    for k, v in {"MF_LEASE_TIMEOUT_S": "60", "MF_HEARTBEAT_S": "0.5", "MF_WORKER_POLL_S": "0.1",
                 "MF_SCHEDULE_INTERVAL_S": "0.2", "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(k, v)
    add_tenant("acme")
    return cluster, nodes


def placements(job_id: int) -> list[tuple[int, int, str]]:
    """(attempt, rank, node id) for every attempt (and gang rank) of a job, from its history."""
    return [(int(m[1]), int(m[2] or 0), m[3]) for e in jobs.events(job_id) if (m := PLACED.search(e.reason))]


def test_a_gang_teacher_runs_across_both_nodes(on_cluster, reviews_csv, tiny_teacher, tmp_path):
    _, nodes = on_cluster
    spec = parse_spec(tiny_order("spread", reviews_csv, tiny_teacher, teacher={**TEACHER, "workers": 2},
                                 optimize_onnx=False, quantize="none"))
    sub = submit_order(spec, tenant="acme")
    log = tmp_path / "worker.log"
    worker = mf_process("worker", "--id", "ray-front", "--cpu", "2", "--memory-gb", "4", log=log)
    try:
        with SchedulerThread():
            wait_for(lambda: _order_state(sub.order_id) != "running", "the order on the cluster", timeout=600,
                     every=0.5)
    finally:
        stop_all([worker])
    assert _order_state(sub.order_id) == "done", log.read_text()[-3000:]
    teacher = job(sub.jobs["teacher"])
    assert teacher.slots == 2 and teacher.result["world_size"] == 2 and teacher.attempts == 1
    ranks = placements(teacher.id)
    assert sorted(r for _, r, _ in ranks) == [0, 1]
    assert {n for _, _, n in ranks} == {node.node_id for node in nodes}  # one rank on each node
    for job_id in sub.jobs.values():  # every stage's attempt says where it ran: one of the two CPU nodes
        assert {n for _, _, n in placements(job_id)} <= {node.node_id for node in nodes}, job_id


def test_killing_the_node_under_a_stage_loses_nothing(on_cluster, reviews_csv, tiny_teacher, tmp_path, mf_home):
    cluster, nodes = on_cluster
    spec = parse_spec(tiny_order("survivor", reviews_csv, tiny_teacher, teacher={**TEACHER, "epochs": 8},
                                 optimize_onnx=False, quantize="none"))
    sub = submit_order(spec, tenant="acme")
    teacher = sub.jobs["teacher"]
    key = job(teacher).key
    log = tmp_path / "worker.log"
    worker = mf_process("worker", "--id", "ray-front", "--cpu", "1", "--memory-gb", "4", log=log)
    try:
        with SchedulerThread():
            step = wait_for(lambda: job(teacher).state == "running" and checkpoint_step(mf_home, key),
                            "the teacher's first checkpoint", every=0.2)
            first = wait_for(lambda: [n for a, _, n in placements(teacher) if a == 1], "attempt 1's node")[0]
            victim = next(node for node in nodes if node.node_id == first)
            cluster.remove_node(victim, allow_graceful=False)  # the node dies, with the task on it
            done = wait_for(lambda: job(teacher).state in ("succeeded", "failed") and job(teacher), "the teacher",
                            timeout=600, every=0.5)
            wait_for(lambda: _order_state(sub.order_id) != "running", "the order", timeout=600, every=0.5)
    finally:
        stop_all([worker])
    assert done.state == "succeeded", (done.last_error, log.read_text()[-3000:])
    assert done.attempts == 2 and done.result["resumed_from_step"] >= step >= 5
    survivor = next(node.node_id for node in nodes if node is not victim)
    assert [n for a, _, n in placements(teacher) if a == 2] == [survivor]
    assert _order_state(sub.order_id) == "done"
