"""Scheduling policies on tiny hand-built pools: FIFO's head-of-line blocking, EASY backfilling, gangs, the soft
slot limit, preemption by class and by fair share (with its anti-thrashing rules), DRF weights, determinism."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from modelfactory.compute import policies
from modelfactory.compute.policies import Decision, Fair, Fifo, JobView, Priority, Resources, TenantView, WorkerView
from modelfactory.compute.simulate import simulate
from modelfactory.compute.traces import TraceJob, default_pool

ALL = [Fifo(), Priority(), Fair()]
BACKFILLING = [Priority(), Fair()]


def job(jid: int, gpu: float = 1, *, tenant: str = "a", slots: int = 1, prio: str = "standard", cpu: float = 0,
        submitted: float | None = None, dur: float | None = None, started: float | None = None) -> JobView:
    return JobView(id=jid, tenant=tenant, priority=prio, resources=Resources(cpu=cpu, gpu=gpu),
                   submitted=float(jid) if submitted is None else submitted, slots=slots, started=started,
                   expected_duration=dur)


def decide(policy, queued: list[JobView], running: list[tuple[JobView, list[str]]] = (),
           gpus: dict[str, float] | None = None, tenants: dict[str, TenantView] | None = None,
           now: float = 100.0) -> Decision:
    """Ask `policy` once, on workers (id -> GPUs, as many CPUs) less what `running` holds."""
    gpus = gpus or {"w1": 4}
    used = {w: Resources() for w in gpus}
    for view, wids in running:
        for wid in wids:
            used[wid] = used[wid] + view.resources
    workers = [WorkerView(w, Resources(cpu=g, gpu=g), Resources(cpu=g, gpu=g) - used[w]) for w, g in gpus.items()]
    return policy.schedule(now, list(queued), list(running), workers, tenants or {})


def test_registry_and_configuration():
    assert set(policies.POLICIES) == {"fifo", "priority", "fair"}
    fair = policies.get("fair", min_runtime=5, unknown_knob=1)
    assert isinstance(fair, Fair) and fair.min_runtime == 5
    assert isinstance(policies.get("fifo", min_runtime=5), Fifo)  # parameters a policy does not take are ignored
    with pytest.raises(ValueError, match="unknown scheduling policy 'lottery'; known: fair, fifo, priority"):
        policies.get("lottery")


def test_entitlements_are_weighted_max_min_fair():
    assert policies.entitlements({"a": 1.0, "b": 1.0}, {"a": 1, "b": 3}) == pytest.approx({"a": 0.25, "b": 0.75})
    # a asks for less than its weight's half: it gets what it asks, b the rest
    assert policies.entitlements({"a": 0.1, "b": 2.0}, {"a": 1, "b": 1}) == pytest.approx({"a": 0.1, "b": 0.9})
    assert policies.entitlements({"a": 0.2, "b": 0.3}, {}) == pytest.approx({"a": 0.2, "b": 0.3})
    assert policies.dominant_share(Resources(cpu=32, gpu=1), Resources(cpu=64, gpu=8)) == 0.5


def test_fifo_blocks_behind_its_head_where_backfilling_does_not():
    running = [(job(9, 2, started=0, dur=1000), ["w1"])]  # 2 of 4 GPUs until t=1000
    queued = [job(1, 4), job(2, 1, dur=300)]
    d = decide(Fifo(), queued, running)
    assert d.starts == [] and d.waiting == {1: "waiting for 2 GPUs", 2: "behind job 1, first in line (FIFO)"}
    for policy in BACKFILLING:  # job 2 ends at 400, before job 1 can start at 1000
        d = decide(policy, queued, running)
        assert d.starts == [(2, ["w1"])]
        assert d.waiting[1] == "waiting for 2 GPUs; next in line, expected to start in 15 min"


def test_backfill_never_delays_the_heads_reservation():
    running = [(job(9, 2, started=0, dur=1000), ["w1"])]
    queued = [job(1, 4), job(2, 1, dur=5000), job(3, 1), job(4, 1, dur=900)]
    for policy in BACKFILLING:
        d = decide(policy, queued, running)
        assert d.starts == [(4, ["w1"])]  # ends at 1000, exactly when job 1 is due
        assert d.waiting[2] == "would delay job 1 (next in line, expected to start in 15 min)"
        assert d.waiting[3].startswith("would delay job 1") and "declares no expected duration" in d.waiting[3]


def test_backfill_may_run_long_in_what_the_head_cannot_use():
    # w1 has 8 GPUs, 6 busy until t=1000: job 1 (8 GPUs) is reserved there. w2's 2 GPUs are of no use to it.
    running = [(job(9, 6, started=0, dur=1000), ["w1"])]
    queued = [job(1, 8), job(2, 2), job(3, 2)]  # 2 and 3 declare no duration: they may only use what 1 cannot
    for policy in BACKFILLING:
        d = decide(policy, queued, running, gpus={"w1": 8, "w2": 2})
        assert d.starts == [(2, ["w2"])]
        assert d.waiting[3].startswith("would delay job 1")


def test_gangs_start_whole_or_not_at_all():
    running = [(job(8, 2, started=0), ["w1"]), (job(9, 2, started=0), ["w2"])]
    gpus = {"w1": 4, "w2": 4, "w3": 4}  # 2 + 2 + 4 GPUs free: 8 in all, but only one worker with 4
    for policy in ALL:
        d = decide(policy, [job(1, 4, slots=2)], running, gpus)
        assert d.starts == []
        assert d.waiting[1].startswith("gang of 2 slots (4 GPUs each) does not fit the free workers")
        d = decide(policy, [job(1, 2, slots=3)], running, gpus)
        assert d.starts == [(1, ["w1", "w2", "w3"])]
        d = decide(policy, [job(1, 4, slots=4)], [], gpus)  # bigger than the pool: waits, blocks nobody
        assert d.waiting[1] == "gang of 4 slots (4 GPUs each) does not fit even the empty pool"


def test_max_slots_is_a_soft_limit_that_holds_back_only_its_tenant():
    running = [(job(8, 1, started=0), ["w1"]), (job(9, 1, started=0), ["w1"])]
    tenants = {"a": TenantView("a", max_slots=2), "b": TenantView("b")}
    queued = [job(1, 1, tenant="a"), job(2, 1, tenant="b")]
    for policy in ALL:
        d = decide(policy, queued, running, tenants=tenants)
        assert d.starts == [(2, ["w1"])]
        assert d.waiting == {1: "tenant 'a' is at its limit of 2 concurrent slots"}
        assert d.preempt == []


@pytest.mark.parametrize("policy", [Priority(min_runtime=60), Fair(min_runtime=60)], ids=["priority", "fair"])
def test_urgent_preempts_batch_after_min_runtime_and_not_the_other_way(policy):
    batch = job(9, 4, tenant="x", prio="batch", started=0, dur=10_000)
    d = decide(policy, [job(1, 4, tenant="y", prio="urgent", dur=100)], [(batch, ["w1"])], now=100)
    assert d.preempt == [9] and d.starts == []
    assert "preempting job(s) 9: its class 'urgent' outranks theirs" in d.waiting[1]
    d = decide(policy, [job(1, 4, tenant="y", prio="urgent")], [(batch, ["w1"])], now=30)  # batch ran only 30 s
    assert d.preempt == [] and d.retry_at == 60
    urgent = job(9, 4, tenant="x", prio="urgent", started=0, dur=10_000)
    d = decide(policy, [job(1, 4, tenant="y", prio="batch")], [(urgent, ["w1"])], now=5000)
    assert d.preempt == [] and d.retry_at is None
    unpreemptible = JobView(9, "x", "batch", Resources(4, 4), 0.0, started=0, preemptible=False)
    assert decide(policy, [job(1, 4, tenant="y", prio="urgent")], [(unpreemptible, ["w1"])]).preempt == []


def test_preemption_takes_the_fewest_cheapest_jobs_and_waits_for_those_stopping():
    running = [(job(7, 2, tenant="x", prio="batch", started=0), ["w1"]),
               (job(8, 1, tenant="x", prio="batch", started=50), ["w1"]),
               (job(9, 1, tenant="x", prio="standard", started=0), ["w1"])]
    for policy in BACKFILLING:
        d = decide(policy, [job(1, 2, tenant="y", prio="urgent")], running, now=5000)
        assert d.preempt == [7]  # batch before standard; 7 alone frees enough, so 8 is spared after all
        stopping = [(job(7, 2, tenant="x", prio="batch", started=0), ["w1"])]
        stopping[0][0].stopping = True
        d = decide(policy, [job(1, 2, tenant="y", prio="urgent")], stopping + running[1:], now=5000)
        assert d.preempt == [] and d.waiting[1].endswith("preempted job(s) 7 are stopping")


def test_a_tenant_never_preempts_its_own_job_of_the_same_or_higher_class():
    running = [(job(9, 4, tenant="a", prio="standard", started=0), ["w1"])]
    for policy in BACKFILLING:
        for prio in ("batch", "standard"):
            assert decide(policy, [job(1, 4, tenant="a", prio=prio)], running, now=5000).preempt == []
        assert decide(policy, [job(1, 4, tenant="a", prio="urgent")], running, now=5000).preempt == [9]


def test_fair_share_preemption_for_a_starved_tenant_only():
    # a holds all 4 GPUs; b asks for 1 (so is entitled to 25%) and holds none: a's last-started job makes way
    running = [(job(10 + i, 1, tenant="a", started=i * 10), ["w1"]) for i in range(4)]
    d = decide(Fair(min_runtime=60), [job(1, 1, tenant="b")], running, now=5000)
    assert d.preempt == [13]
    assert d.waiting[1].endswith("tenant 'b' holds 0% of the pool, entitled to 25%")
    assert decide(Priority(), [job(1, 1, tenant="b")], running, now=5000).preempt == []  # no fair share there
    # b already holds its half: not starved, no preemption
    running = [(job(10, 2, tenant="a", started=0), ["w1"]), (job(11, 2, tenant="b", started=0), ["w1"])]
    assert decide(Fair(min_runtime=60), [job(1, 1, tenant="b")], running, now=5000).preempt == []


def test_weights_1_to_3_split_a_saturated_pool_1_to_3():
    rng = random.Random(7)
    trace = [TraceJob(f"{t}{i}", t, 0.0, rng.uniform(300, 1500), 1.0, 1.0) for t in "ab" for i in range(60)]
    tenants = {"a": TenantView("a", weight=1), "b": TenantView("b", weight=3)}
    result = simulate(trace, Fair(), pool=default_pool(nodes=1), tenants=tenants)
    # GPU-seconds each got while both still had work queued (until the first of them ran out)
    until = min(max(r.first_start for r in result.job_results if r.tenant == t) for t in "ab")
    got = {t: sum(max(0.0, min(r.finish, until) - r.first_start) * r.gpus for r in result.job_results
                  if r.tenant == t) for t in "ab"}
    assert got["b"] / got["a"] == pytest.approx(3.0, rel=0.1)
    assert result.preemptions == 0


def test_decisions_are_deterministic_whatever_the_input_order():
    rng = random.Random(3)
    gpus = {f"w{i}": 8 for i in range(4)}
    running, free = [], dict(gpus)
    for i in range(12):
        g = rng.choice([1, 2, 4])
        wid = next((w for w, f in free.items() if f >= g), None)
        if wid:
            free[wid] -= g
            running.append((job(100 + i, g, tenant=rng.choice("abc"), prio=rng.choice(list(policies.PRIORITIES)),
                                started=rng.uniform(0, 900), dur=rng.uniform(100, 5000)), [wid]))
    queued = [job(i, rng.choice([1, 2, 8]), tenant=rng.choice("abc"), prio=rng.choice(list(policies.PRIORITIES)),
                  slots=rng.choice([1, 1, 2]), submitted=rng.choice([1.0, 2.0]), dur=rng.choice([None, 300.0]))
              for i in range(30)]
    for policy in ALL:
        first = decide(policy, queued, running, gpus, now=1000)
        for _ in range(3):
            rng.shuffle(queued)
            rng.shuffle(running)
            assert decide(policy, queued, running, gpus, now=1000) == first
        assert set(first.waiting) | {j for j, _ in first.starts} == {j.id for j in queued}  # every job accounted


def test_a_big_gang_may_preempt_for_its_starved_tenant_and_is_then_never_preempted_for_share():
    gpus = {"w1": 4, "w2": 4}
    # a holds the pool with four 2-GPU jobs; b's gang wants all of it, more than b's 50% entitlement
    running = [(job(10 + i, 2, tenant="a", started=i), [f"w{1 + i // 2}"]) for i in range(4)]
    d = decide(Fair(min_runtime=60), [job(1, 4, tenant="b", slots=2)], running, gpus, now=5000)
    assert sorted(d.preempt) == [10, 11, 12, 13]
    # once running, the gang is not given back to a, however far below its share a is
    gang = job(1, 4, tenant="b", slots=2, started=0)
    d = decide(Fair(min_runtime=60), [job(20, 2, tenant="a")], [(gang, ["w1", "w2"])], gpus, now=5000)
    assert d.preempt == [] and d.waiting[20].startswith("waiting for 2 GPUs")


OLD_FAIR = Fair(patience=math.inf)  # `fair` before its starving-job rule: no job is ever starving


def test_a_starving_gang_gets_its_share_where_the_old_rule_left_it_waiting():
    hour, pool = 3600.0, default_pool(nodes=2)  # 2 nodes x 8 GPUs
    # A: a's 16-GPU gang takes the whole pool for 20 h just before b's 1-hour gang arrives. A big gang is never
    # preempted for fair share by the old rule: b waits 20 h while entitled to half the pool
    hog = [TraceJob("a-gang", "a", 0.0, 20 * hour, 32.0, 8.0, slots=2),
           TraceJob("b-gang", "b", 100.0, hour, 32.0, 8.0, slots=2)]
    # B: a and c keep both nodes busy with long 1-GPU jobs; c holds less than its share and is starved itself, so
    # under the old rule its jobs are not preempted for b's gang, which needs both nodes whole
    drain = ([TraceJob(f"a{i}", "a", 0.0, 20 * hour, 4.0, 1.0) for i in range(14)]
             + [TraceJob(f"c{i}", "c", 0.0 if i < 2 else 50.0 + i, 20 * hour, 4.0, 1.0) for i in range(8)]
             + [TraceJob("b-gang", "b", 100.0, hour, 32.0, 8.0, slots=2)])
    for trace in (hog, drain):
        old = simulate(trace, OLD_FAIR, pool=pool)
        new = simulate(trace, Fair(), pool=pool)
        share = {r.name: r.share_ratio for r in old.tenants}
        assert share["b"] < 0.2 and old.min_share_ratio < 0.2
        assert new.min_share_ratio >= 0.8, {r.name: r.share_ratio for r in new.tenants}
        assert new.busy_gpu_s == pytest.approx(new.work_gpu_s + new.lost_gpu_s)
    # in A the gang preempts a's once a has held the pool over its share for `quantum`, and a does not preempt
    # back (b's gang is younger than `quantum` when a's requeued gang has waited `patience`)
    result = simulate(hog, Fair(), pool=pool)
    gangs = {r.id: r for r in result.job_results}
    assert result.preemptions == 1 and gangs["a-gang"].preemptions == 1
    assert gangs["b-gang"].first_start == Fair().quantum and gangs["b-gang"].preemptions == 0


def test_starving_jobs_wait_patience_then_preempt_whole_workers_and_over_share_gangs_after_quantum():
    gpus = {"w1": 4, "w2": 4}
    gang = job(1, 4, tenant="b", slots=2, submitted=0)  # needs both workers whole
    # a holds 3 GPUs of each worker; c holds 1 of each and wants more (starved: 25% held, entitled to a third)
    running = ([(job(10 + i, 1, tenant="a", started=0), [f"w{1 + i % 2}"]) for i in range(6)]
               + [(job(20 + i, 1, tenant="c", started=0), [f"w{1 + i}"]) for i in range(2)])
    queued = [gang] + [job(30 + i, 1, tenant="c", submitted=0) for i in range(4)]
    assert decide(OLD_FAIR, queued, running, gpus, now=5000).preempt == []  # c's jobs pin both workers
    early = decide(Fair(), queued, running, gpus, now=100)
    assert early.preempt == [] and early.retry_at == Fair().patience  # ask again when the gang has waited enough
    d = decide(Fair(), queued, running, gpus, now=5000)
    assert sorted(d.preempt) == [10, 11, 12, 13, 14, 15, 20, 21]
    assert d.waiting[1].endswith("has waited 83 min for whole workers")
    # an over-share gang goes once it has run `quantum`, not before (the old rule never lets it go)
    hog = (job(40, 4, tenant="a", slots=2, started=0), ["w1", "w2"])
    young = decide(Fair(), [gang], [hog], gpus, now=1000)
    assert young.preempt == [] and young.retry_at == Fair().quantum
    assert decide(Fair(), [gang], [hog], gpus, now=3600).preempt == [40]
    assert decide(OLD_FAIR, [gang], [hog], gpus, now=3600).preempt == []
    # the requeued victim waits `patience` again, and then may not take back a gang younger than `quantum`
    requeued = dataclasses.replace(hog[0], started=None, queued_since=3600.0)
    b_runs = (dataclasses.replace(gang, started=3600.0), ["w1", "w2"])
    d = decide(Fair(), [requeued], [b_runs], gpus, now=3700)
    assert d.preempt == [] and d.retry_at == 3600 + Fair().patience
    d = decide(Fair(), [requeued], [b_runs], gpus, now=4200)
    assert d.preempt == [] and d.retry_at == 3600 + Fair().quantum
