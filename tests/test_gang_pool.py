"""Gang stage jobs on the pool's local workers: a teacher fine-tune that asks for 2 workers runs as one 2-process
torch.distributed job (rank 0 on the lead worker, rank 1 on the other, rendezvous published by the lead), and
when its member dies mid-run the gang's attempt fails and the next one resumes, as a gang, from the checkpoint."""

from __future__ import annotations

import os
import re
import signal

import pytest

from modelfactory.accounts.tenants import add_tenant
from modelfactory.factory.jobkinds import submit_order
from modelfactory.factory.spec import parse_spec

from .conftest import tiny_order
from .test_pool_e2e import (
    TEACHER,
    SchedulerThread,
    _order_state,
    checkpoint_step,
    fast_pool,
    job,
    ledger,
    mf_process,
    reasons,
    reviews_csv,
    stop_all,
    wait_for,
)

pytestmark = pytest.mark.slow
__all__ = ["fast_pool", "reviews_csv"]  # fixtures, imported for their names


def member_pid(log, job_id: int, attempt: int) -> int:
    m = re.search(rf"job {job_id}: attempt {attempt} rank 1/2 started, pid (\d+)", log.read_text())
    return int(m.group(1)) if m else 0


def test_a_two_worker_teacher_runs_as_one_gang_and_resumes_after_its_member_dies(reviews_csv, tiny_teacher, tmp_path,
                                                                                  mf_home, monkeypatch):
    monkeypatch.setenv("MF_LEASE_TIMEOUT_S", "15")  # two ranks' start-up on a loaded box is no lost worker
    add_tenant("acme")
    spec = parse_spec(tiny_order("gang", reviews_csv, tiny_teacher, teacher={**TEACHER, "workers": 2},
                                 optimize_onnx=False, quantize="none"))
    sub = submit_order(spec, tenant="acme")
    teacher = sub.jobs["teacher"]
    key = job(teacher).key
    assert job(teacher).slots == 2
    logs = {w: tmp_path / f"{w}.log" for w in ("wa", "wb")}
    procs = {w: mf_process("worker", "--id", w, "--cpu", "1", "--memory-gb", "4", log=logs[w]) for w in logs}
    try:
        with SchedulerThread():
            step = wait_for(lambda: job(teacher).state == "running" and checkpoint_step(mf_home, key),
                            "the gang's first checkpoint")
            lead, member = job(teacher).placement
            assert {lead, member} == {"wa", "wb"}  # one slot on each worker (1 CPU each)
            pid = wait_for(lambda: member_pid(logs[member], teacher, 1), "rank 1's pid in its worker's log")
            os.kill(pid, signal.SIGKILL)
            done = wait_for(lambda: job(teacher).state in ("succeeded", "failed") and job(teacher), "the teacher")
            wait_for(lambda: _order_state(sub.order_id) != "running", "the order", timeout=300)
    finally:
        stop_all(list(procs.values()))
    text = {w: p.read_text() for w, p in logs.items()}
    assert done.state == "succeeded", (done.last_error, text)
    assert done.result["world_size"] == 2 and done.result["resumed_from_step"] >= step >= 5
    outcomes = [outcome for _, outcome, _ in ledger(teacher)]
    assert outcomes == ["failed", "succeeded"], (outcomes, reasons(teacher), text)
    assert f"job {teacher}: attempt 2 rank 1/2 started" in text[member]  # the second attempt is a gang again
    assert _order_state(sub.order_id) == "done"
