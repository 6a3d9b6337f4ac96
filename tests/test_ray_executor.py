"""The compute pool on Ray (`MF_EXECUTOR=ray`): a worker hands its jobs to a local Ray instance as tasks, and a
small order runs end to end on the pool and is registered as `mf order run` would register it."""

from __future__ import annotations

import importlib.util

import pytest

from modelfactory import registry
from modelfactory.accounts.tenants import add_tenant
from modelfactory.compute import jobs
from modelfactory.factory.jobkinds import submit_order
from modelfactory.factory.spec import parse_spec

from .conftest import tiny_order
from .test_pool_e2e import TEACHER, SchedulerThread, _order_state, mf_process, reviews_csv, stop_all, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")]
__all__ = ["reviews_csv"]  # the fixture, imported for its name


def test_a_small_order_runs_end_to_end_on_ray(reviews_csv, tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("MF_EXECUTOR", "ray")
    monkeypatch.setenv("MF_LEASE_TIMEOUT_S", "60")  # Ray's start-up must not look like a lost worker
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray instance, started by the worker
    add_tenant("acme")
    spec = parse_spec(tiny_order("on-ray", reviews_csv, tiny_teacher, teacher=TEACHER, optimize_onnx=False,
                                 quantize="none"))
    sub = submit_order(spec, tenant="acme")
    log = tmp_path / "worker.log"
    worker = mf_process("worker", "--id", "ray-worker", "--cpu", "2", "--memory-gb", "4", log=log)
    try:
        with SchedulerThread():
            wait_for(lambda: _order_state(sub.order_id) != "running", "the order to finish on Ray", timeout=240,
                     every=0.5)
    finally:
        stop_all([worker])
    text = log.read_text()
    assert _order_state(sub.order_id) == "done", text[-3000:]
    assert "executor: Ray at a local instance" in text
    assert text.count("as a Ray task") == len(sub.jobs)  # every stage ran as a Ray task
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 for j in jobs.list_jobs(order_id=sub.order_id))
    ref = registry.resolve("on-ray")
    assert ref.tenant == "acme" and ref.lineage["order"] == sub.order_id
