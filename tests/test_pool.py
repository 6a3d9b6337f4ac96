"""The compute pool's bookkeeping, on the real database without worker processes: the job state machine, quotas,
leases that expire, the attempt cap, dependencies, two schedulers at once, the ledger and the invoice.

Time is passed explicitly (`schedule_once(now)`, `register(now=...)`), so "a worker stops heartbeating" is a
worker whose last heartbeat is older than the lease timeout at the scheduler's `now`."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import sys
import threading

import pytest
from sqlalchemy import select

from modelfactory.accounts.ledger import invoice
from modelfactory.accounts.tables import Usage
from modelfactory.accounts.tenants import add_tenant, hash_key, list_tenants, tenant_for_key
from modelfactory.cli import main
from modelfactory.compute import jobs
from modelfactory.compute.jobs import IllegalTransition, Spec, end_attempt, transition
from modelfactory.compute.poolconfig import PoolConfig
from modelfactory.compute.scheduler import schedule_once
from modelfactory.compute.tables import Job, JobEvent, pool_read, pool_tx
from modelfactory.compute.worker import Capacity, heartbeat, register
from modelfactory.errors import MFError
from modelfactory.store import utcnow

from .conftest import mf_in_process

CFG = PoolConfig(policy="fifo", lease_timeout_s=10, price_cpu_hour=0.10, price_gpu_hour=3.0)
T0 = dt.datetime(2026, 5, 10, 12, 0, 0)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def job(job_id: int) -> Job:
    with pool_read() as s:
        return s.get(Job, job_id)


def history(job_id: int) -> list[tuple[str | None, str, str]]:
    return [(e.from_state, e.to_state, e.reason) for e in jobs.events(job_id)]


def usage_rows(job_id: int) -> list[Usage]:
    with pool_read() as s:
        return list(s.scalars(select(Usage).where(Usage.job_id == job_id).order_by(Usage.attempt)))


def stage(name: str = "j", **kw) -> Spec:
    return Spec(kind="stage", payload={}, name=name, **kw)


def submit_at(now: dt.datetime, tenant: str, *specs: Spec) -> list[int]:
    with pool_tx() as s:
        return [j.id for j in jobs.add_jobs(s, tenant, list(specs), now=now)]


def succeed(job_id: int, now: dt.datetime) -> None:
    with pool_tx() as s:
        end_attempt(s, s.get(Job, job_id), "succeeded", "succeeded", now=now, ended=now, config=CFG)


def test_state_machine_refuses_illegal_transitions_and_records_every_one():
    _, key = add_tenant("acme")
    assert tenant_for_key(key).name == "acme" and tenant_for_key(key + "x") is None
    assert key not in str([vars(t) for t in list_tenants()]) and len(hash_key(key)) == 64
    register("w1", Capacity(2, 0, 8), now=at(0), config=CFG)
    (jid,) = submit_at(at(0), "acme", stage())

    with pool_tx() as s, pytest.raises(IllegalTransition, match="cannot go from queued to succeeded"):
        transition(s, s.get(Job, jid), "succeeded", "skipping ahead")
    with pool_tx() as s, pytest.raises(IllegalTransition, match="needs a placement"):
        transition(s, s.get(Job, jid), "running", "no lease")
    assert schedule_once(at(1), config=CFG).started == [(jid, ["w1"])]
    j = job(jid)
    assert (j.state, j.attempts, j.lease_worker, j.lease_expires) == ("running", 1, "w1", at(11))
    succeed(jid, at(5))
    for to in ("running", "queued", "cancelled", "failed"):
        with pool_tx() as s, pytest.raises(IllegalTransition, match=f"cannot go from succeeded to {to}"):
            transition(s, s.get(Job, jid), to, "again", placement=["w1"], lease_s=10)
    with pytest.raises(MFError, match="already succeeded"):
        jobs.cancel(jid)

    assert history(jid) == [(None, "queued", "submitted"), ("queued", "running", "leased to w1"),
                            ("running", "succeeded", "succeeded")]
    with pool_read() as s:
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == jid).order_by(JobEvent.id)))
    assert [e.at for e in events] == [at(0), at(1), at(5)] and [e.worker for e in events] == [None, "w1", "w1"]
    j = job(jid)
    assert (j.state, j.lease_worker, j.finished) == ("succeeded", None, at(5))
    (u,) = usage_rows(jid)
    assert (u.outcome, u.attempt, u.worker, u.cpu_seconds) == ("succeeded", 1, "w1", 4.0)  # 1 CPU x 4 s


def test_hard_quota_refuses_submit_with_a_clear_message_and_soft_limit_waits():
    add_tenant("small", cpu_hours_month=2, gpu_hours_month=0.5, max_slots=1)
    register("w1", Capacity(8, 1, 32), now=at(0), config=CFG)
    with pytest.raises(MFError, match=r"would exceed its monthly CPU quota: 0.00 CPU-hours used in 2026-05 \+ "
                                      r"0.00 reserved .* \+ 3.00 requested .* > 2; submit refused"):
        submit_at(at(0), "small", stage(cpu=3, time_limit_s=3600))
    with pytest.raises(MFError, match="would exceed its monthly GPU quota"):
        submit_at(at(0), "small", stage(gpu=1, time_limit_s=3600))
    a, b = submit_at(at(0), "small", stage("a", time_limit_s=3600), stage("b"))  # 1 CPU-hour reserved, b no limit
    with pytest.raises(MFError, match=r"1.00 reserved by queued/running jobs \+ 1.50 requested"):
        submit_at(at(0), "small", stage(cpu=1.5, time_limit_s=3600))

    # soft limit: one slot at a time, however much room the pool has
    report = schedule_once(at(1), config=CFG)
    assert report.started == [(a, ["w1"])]
    assert "limit of 1 concurrent slots" in job(b).waiting
    with pool_tx() as s:  # a ran for 2 hours: the month's CPU quota is used up
        end_attempt(s, s.get(Job, a), "succeeded", "succeeded", now=at(7201), ended=at(7201), config=CFG)
    heartbeat("w1", now=at(7201), config=CFG)
    assert schedule_once(at(7202), config=CFG).started == [(b, ["w1"])]
    with pytest.raises(MFError, match=r"tenant 'small' has used its monthly CPU quota: 2.00 of 2 CPU-hours in "
                                      r"2026-05; submit refused"):
        submit_at(at(7203), "small", stage())
    # next month starts afresh
    submit_at(dt.datetime(2026, 6, 1), "small", stage(time_limit_s=3600))
    with pytest.raises(MFError, match="unknown tenant 'nobody': add it first with `mf tenants add nobody`"):
        submit_at(at(0), "nobody", stage())


def test_silent_worker_loses_its_lease_and_the_lost_attempt_cap_fails_the_job_saying_how_often():
    cfg = dataclasses.replace(CFG, max_lost_attempts=2)
    add_tenant("acme")
    register("w1", Capacity(2, 0, 8), now=at(0), config=cfg)
    (jid,) = submit_at(at(0), "acme", stage(max_attempts=1))  # lost attempts are not held to max_attempts
    assert schedule_once(at(1), config=cfg).started == [(jid, ["w1"])]
    heartbeat("w1", now=at(6), config=cfg)  # renews the lease to at(16)
    assert job(jid).lease_expires == at(16)
    assert schedule_once(at(15), config=cfg).lost == []

    report = schedule_once(at(17), config=cfg)  # w1 silent for 11 s > 10 s
    assert report.workers_lost == ["w1"] and report.lost == [jid] and report.started == []
    j = job(jid)
    assert (j.state, j.lease_worker, j.failures, j.attempts) == ("queued", None, 1, 1)
    assert history(jid)[-1] == ("running", "queued", "worker lost: w1 sent no heartbeat for 11 s; retrying "
                                                     "(worker lost 1 of 2 times)")
    (lost,) = usage_rows(jid)
    assert (lost.outcome, lost.attempt, lost.started, lost.ended) == ("lost", 1, at(1), at(6))  # to last heartbeat

    register("w2", Capacity(2, 0, 8), now=at(20), config=cfg)
    assert schedule_once(at(20), config=cfg).started == [(jid, ["w2"])]
    assert schedule_once(at(31), config=cfg).lost == [jid]
    j = job(jid)
    assert (j.state, j.attempts, j.failures) == ("failed", 2, 2)
    assert j.last_error == "worker lost: w2 sent no heartbeat for 11 s"
    assert history(jid)[-1] == ("running", "failed", "worker lost: w2 sent no heartbeat for 11 s (worker lost 2 "
                                                     "times, the most MF_MAX_LOST_ATTEMPTS allows)")
    assert [(u.attempt, u.outcome, u.worker) for u in usage_rows(jid)] == [(1, "lost", "w1"), (2, "lost", "w2")]


def test_a_job_lost_more_often_than_max_attempts_is_retried_and_succeeds_while_its_own_failures_stay_capped():
    add_tenant("acme")
    (jid,) = submit_at(at(0), "acme", stage(max_attempts=2))
    for i in range(4):  # four workers die under it: twice max_attempts, under the lost cap (10)
        register(f"w{i}", Capacity(2, 0, 8), now=at(100 * i), config=CFG)
        assert schedule_once(at(100 * i + 1), config=CFG).started == [(jid, [f"w{i}"])]
        assert schedule_once(at(100 * i + 50), config=CFG).lost == [jid]
        assert job(jid).state == "queued"
    assert history(jid)[-1][2].endswith("; retrying (worker lost 4 of 10 times)")
    register("w9", Capacity(2, 0, 8), now=at(1000), config=CFG)
    assert schedule_once(at(1001), config=CFG).started == [(jid, ["w9"])]
    with pool_tx() as s:  # its own error: the first of max_attempts=2, so retried
        end_attempt(s, s.get(Job, jid), "failed", "failed", error="ValueError: boom", now=at(1002), config=CFG)
    assert history(jid)[-1] == ("running", "queued", "failed; retrying (1 of 2 attempts failed)")
    assert schedule_once(at(1003), config=CFG).started == [(jid, ["w9"])]
    with pool_tx() as s:
        end_attempt(s, s.get(Job, jid), "succeeded", "succeeded", now=at(1004), config=CFG)
    j = job(jid)
    assert (j.state, j.attempts, j.failures) == ("succeeded", 6, 5)
    assert [u.outcome for u in usage_rows(jid)] == ["lost"] * 4 + ["failed", "succeeded"]

    (other,) = submit_at(at(2000), "acme", stage(max_attempts=2))
    register("w8", Capacity(2, 0, 8), now=at(2000), config=CFG)
    assert schedule_once(at(2001), config=CFG).started == [(other, ["w8"])]
    assert schedule_once(at(2050), config=CFG).lost == [other]  # lost once: not one of its 2 own failures
    for t in (2101, 2201):
        register("w8", Capacity(2, 0, 8), now=at(t - 1), config=CFG)
        assert schedule_once(at(t), config=CFG).started == [(other, ["w8"])]
        with pool_tx() as s:
            end_attempt(s, s.get(Job, other), "failed", "failed", error="ValueError: boom", now=at(t + 1),
                        config=CFG)
    assert job(other).state == "failed"
    assert history(other)[-1][2] == "failed after 2 failed attempts: ValueError: boom"


def test_a_restarted_worker_releases_its_dead_predecessors_leases_at_once():
    add_tenant("acme")
    register("w1", Capacity(2, 0, 8), now=at(0), pid=999_999_999, config=CFG)  # a pid that is not running
    (jid,) = submit_at(at(0), "acme", stage())
    schedule_once(at(1), config=CFG)
    assert register("w1", Capacity(2, 0, 8), now=at(3), config=CFG) == [jid]
    assert job(jid).state == "queued" and "w1 restarted" in history(jid)[-1][2]
    assert [u.outcome for u in usage_rows(jid)] == ["lost"]
    with pytest.raises(MFError, match="worker id 'w1' is in use by pid"):  # this process is alive
        register("w1", Capacity(2, 0, 8), now=at(4), pid=12345, host="elsewhere", config=CFG)


def test_dependencies_gate_starts_and_failures_and_cancels_cascade():
    add_tenant("acme")
    register("w1", Capacity(4, 0, 8), now=at(0), config=CFG)
    a = submit_at(at(0), "acme", stage("a"))[0]
    b = submit_at(at(0), "acme", stage("b", depends_on=(a,)))[0]
    c = submit_at(at(0), "acme", stage("c", depends_on=(b,)))[0]
    d = submit_at(at(0), "acme", stage("d", max_attempts=1))[0]
    e = submit_at(at(0), "acme", stage("e", depends_on=(d,)))[0]
    report = schedule_once(at(1), config=CFG)
    assert sorted(j for j, _ in report.started) == [a, d]
    assert job(b).waiting == f"waiting for job {a}" and job(c).waiting == f"waiting for job {b}"
    succeed(a, at(2))
    with pool_tx() as s:
        end_attempt(s, s.get(Job, d), "failed", "failed", error="ValueError: boom", now=at(2), config=CFG)
    report = schedule_once(at(3), config=CFG)
    assert report.started == [(b, ["w1"])] and report.settled == [e]
    assert (job(e).state, job(e).last_error) == ("failed", f"dependency job {d} failed")
    assert job(d).last_error == "ValueError: boom"
    jobs.cancel(b)
    assert schedule_once(at(4), config=CFG).settled == [c]
    assert job(c).state == "cancelled" and history(c)[-1][2] == f"dependency job {b} cancelled"
    assert [u.outcome for u in usage_rows(b)] == ["cancelled"]  # a running job's attempt is billed on cancel


def test_two_schedulers_at_once_never_lease_a_job_twice_or_overcommit_a_worker():
    add_tenant("acme")
    now = utcnow()
    for w in ("w1", "w2"):
        register(w, Capacity(3, 0, 64), now=now, config=CFG)
    ids = submit_at(now, "acme", *[stage(f"j{i}") for i in range(10)])
    errors: list[BaseException] = []

    def loop():
        try:
            for _ in range(5):
                schedule_once(config=CFG)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    running = [job(i) for i in ids if job(i).state == "running"]
    assert len(running) == 6 and all(j.attempts == 1 for j in running)
    assert sorted(j.lease_worker for j in running) == ["w1"] * 3 + ["w2"] * 3
    with pool_read() as s:
        starts = s.scalars(select(JobEvent).where(JobEvent.to_state == "running")).all()
    assert len(starts) == 6


def test_invoice_bills_every_attempt_including_preempted_work(tmp_path, capsys, monkeypatch):
    add_tenant("acme")
    register("w1", Capacity(4, 1, 16), now=at(0), config=CFG)
    (jid,) = submit_at(at(0), "acme", stage("train", cpu=2, gpu=1))
    schedule_once(at(0), config=CFG)
    with pool_tx() as s:
        end_attempt(s, s.get(Job, jid), "preempted", "preempted: checkpointed at step 40", now=at(1800),
                    ended=at(1800), config=CFG)
    heartbeat("w1", now=at(1800), config=CFG)
    schedule_once(at(1800), config=CFG)
    succeed(jid, at(3600))
    inv = invoice("acme", "2026-05", config=CFG)
    assert [(line.attempt, line.outcome, line.cpu_hours, line.gpu_hours) for line in inv.lines] == [
        (1, "preempted", 1.0, 0.5), (2, "succeeded", 1.0, 0.5)]
    assert inv.total == pytest.approx(2 * (1.0 * 0.10 + 0.5 * 3.0))
    assert inv.by_outcome() == {"preempted": pytest.approx(1.6), "succeeded": pytest.approx(1.6)}
    assert invoice("acme", "2026-04", config=CFG).lines == []

    out = tmp_path / "inv.csv"
    monkeypatch.setenv("MF_PRICE_CPU_HOUR", "0.10")
    monkeypatch.setattr(sys, "argv", ["mf", "usage", "--tenant", "acme", "--month", "2026-05", "--csv", str(out)])
    main()
    shown = capsys.readouterr().out
    assert "preempted" in shown and "succeeded" in shown and "3.2000" in shown
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["job", "name", "order"] and [r[7] for r in rows[1:3]] == ["preempted", "succeeded"]
    assert rows[-1][0] == "total" and float(rows[-1][-1]) == pytest.approx(3.2)
    monkeypatch.setattr(sys, "argv", ["mf", "usage", "--tenant", "acme", "--month", "2026-13"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "bad month '2026-13'" in capsys.readouterr().err


def test_tenant_and_jobs_commands(capsys, monkeypatch):
    def mf(*args: str) -> tuple[int, str, str]:
        return mf_in_process(capsys, monkeypatch, *args)

    code, out, _ = mf("tenants", "add", "acme", "--weight", "3", "--cpu-hours", "100", "--max-slots", "4")
    assert code == 0 and "API key (shown once" in out and "mfk_" in out
    code, _, err = mf("tenants", "add", "acme")
    assert code == 2 and "tenant 'acme' already exists" in err
    code, out, _ = mf("tenants", "ls", "--json")
    assert '"weight": 3.0' in out and "mfk_" not in out and "api_key" not in out
    code, out, _ = mf("jobs", "ls", "--json")
    assert code == 0 and out.strip() == "[]"
    code, _, err = mf("jobs", "cancel", "42")
    assert code == 2 and "no job 42" in err
    (jid,) = submit_at(utcnow(), "acme", stage("x"))
    code, out, _ = mf("jobs", "cancel", str(jid))
    assert code == 0 and job(jid).state == "cancelled"
    code, out, _ = mf("jobs", "show", str(jid))
    assert "cancelled by user" in out
    code, out, _ = mf("jobs", "submit", "--tenant", "acme", "--cpu", "2", "--time-limit", "30m", "--json", "--",
                      "python", "-c", "print('hi')")
    cmd = job(json.loads(out)["job"])
    assert (code, cmd.kind, cmd.payload["argv"], cmd.cpu, cmd.time_limit_s, cmd.preemptible, cmd.state) == (
        0, "command", ["python", "-c", "print('hi')"], 2.0, 1800.0, False, "queued")
    code, _, err = mf("jobs", "submit", "--tenant", "acme", "--time-limit", "soon", "--", "true")
    assert code == 2 and "bad duration 'soon'" in err


@pytest.mark.parametrize("policy", ["priority", "fair"])
def test_preemption_requests_reach_the_running_job_once_and_the_urgent_job_takes_the_slot(policy):
    cfg = PoolConfig(policy=policy, lease_timeout_s=600, min_runtime_s=0)
    add_tenant("acme")
    register("w1", Capacity(1, 0, 8), now=at(0), config=cfg)
    (batch,) = submit_at(at(0), "acme", stage("batch", priority="batch"))
    assert schedule_once(at(1), config=cfg).started == [(batch, ["w1"])]
    (urgent,) = submit_at(at(2), "acme", stage("urgent", priority="urgent"))
    report = schedule_once(at(3), config=cfg)
    assert report.preempt_requested == [batch] and report.started == []
    assert job(batch).preempt_requested and job(batch).state == "running"
    assert history(batch)[-1] == ("running", "running", f"preemption requested by the '{policy}' policy")
    assert schedule_once(at(4), config=cfg).preempt_requested == []  # asked once; the job is stopping
    with pool_tx() as s:  # what the worker does when the job has checkpointed
        end_attempt(s, s.get(Job, batch), "preempted", "preempted: checkpointed at step 5", now=at(5), config=cfg)
    assert not job(batch).preempt_requested and job(batch).state == "queued"
    assert schedule_once(at(6), config=cfg).started == [(urgent, ["w1"])]
    assert [u.outcome for u in usage_rows(batch)] == ["preempted"] and job(batch).failures == 0


def test_the_scheduler_says_when_the_policy_wants_the_next_round_and_when_a_job_was_requeued():
    from modelfactory.compute import scheduler

    cfg = PoolConfig(policy="priority", lease_timeout_s=600, min_runtime_s=60)
    add_tenant("acme")
    register("w1", Capacity(1, 0, 8), now=at(0), config=cfg)
    (batch,) = submit_at(at(0), "acme", stage("batch", priority="batch"))
    assert schedule_once(at(1), config=cfg).started == [(batch, ["w1"])]
    assert schedule_once(at(2), config=cfg).retry_at is None  # nothing waits
    (urgent,) = submit_at(at(2), "acme", stage("urgent", priority="urgent"))
    report = schedule_once(at(3), config=cfg)  # batch may be preempted once it has run 60 s, at 61 s
    assert report.preempt_requested == [] and report.retry_at == at(61)
    # `mf server` sleeps until then rather than a whole interval (here 5 s: 3 s left at 58 s)
    assert scheduler.next_round_in(report, 5.0, now=at(58)) == 3.0
    assert scheduler.next_round_in(report, 5.0, now=at(50)) == 5.0
    assert scheduler.next_round_in(report, 5.0, now=at(70)) == 0.0
    assert scheduler.next_round_in(scheduler.ScheduleReport(), 5.0) == 5.0
    assert schedule_once(at(61), config=cfg).preempt_requested == [batch]
    with pool_tx() as s:  # batch checkpoints and goes back to the queue at 65 s
        end_attempt(s, s.get(Job, batch), "preempted", "preempted: checkpointed", now=at(65), config=cfg)
    assert schedule_once(at(66), config=cfg).started == [(urgent, ["w1"])]
    with pool_tx() as s:  # the policy sees when it was requeued (a starving job's patience counts from then)
        queued, *_ = scheduler._snapshot(s, {}, scheduler.ScheduleReport())
    view = queued[batch][0]
    assert (view.submitted, view.queued_since) == (scheduler.seconds(at(0)), scheduler.seconds(at(65)))


def test_fair_share_on_two_one_cpu_workers_follows_the_weights_over_time():
    """The factory's shape: two one-CPU workers, tenants weighted 2:1, one-CPU jobs. The live scheduler reads
    each tenant's served share from the ledger (finished attempts) and its running jobs, so over rounds the
    starts split 2:1, not the 1:1 that comparing shares before a start gives on two slots."""
    cfg = PoolConfig(policy="fair", lease_timeout_s=600)
    add_tenant("acme", weight=2.0)
    add_tenant("globex", weight=1.0)
    for w in ("w1", "w2"):
        register(w, Capacity(1, 0, 8), now=at(0), config=cfg)
    submit_at(at(0), "acme", *[stage(f"a{i}", memory_gb=1) for i in range(20)])
    submit_at(at(0), "globex", *[stage(f"g{i}", memory_gb=1) for i in range(20)])
    started = {"acme": 0, "globex": 0}
    t = 1.0
    for _ in range(9):  # rounds in lockstep: both slots free, two starts, both succeed a minute later
        for w in ("w1", "w2"):
            heartbeat(w, now=at(t), config=cfg)
        report = schedule_once(at(t), config=cfg)
        assert len(report.started) == 2
        for jid, _ in report.started:
            started[job(jid).tenant] += 1
        t += 60.0
        for jid, _ in report.started:
            succeed(jid, at(t))
    assert started == {"acme": 12, "globex": 6}
