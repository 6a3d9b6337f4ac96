"""Trace readers (Helios CSV, Philly JSON), the synthetic Helios-like generator, and the simulator's bookkeeping:
every job finishes, preempted work resumes from its checkpoint, and busy GPU-time adds up."""

from __future__ import annotations

import json

import pytest

from modelfactory.compute import traces
from modelfactory.compute.policies import Fair, Fifo, Priority, TenantView
from modelfactory.compute.simulate import jain, simulate
from modelfactory.compute.traces import TraceJob, default_pool, describe_trace, synthetic_helios

HELIOS = """job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue
1425511,uXBbc,vcJkd,1,1,1,COMPLETED,2020-06-09 18:41:01,2020-06-09 18:41:01,2020-06-10 04:55:09,36848,0
1425512,uVMrF,vchbv,16,64,2,FAILED,2020-06-09 18:41:27,2020-06-09 18:41:27,2020-06-09 18:45:36,249,0
1425513,uzqls,vcpDC,0,4,1,COMPLETED,2020-06-09 18:41:28,2020-06-09 18:41:28,2020-06-09 18:41:30,2,0
1425514,uzqls,vcpDC,2,8,1,CANCELLED,2020-06-09 18:41:30,,,0,10
1425515,uXBbc,vcJkd,4,16,1,COMPLETED,2020-06-09 18:42:00,2020-06-09 18:42:10,2020-06-09 18:52:10,,10
"""


def test_read_helios_cluster_log(tmp_path):
    path = tmp_path / "cluster_log.csv"
    path.write_text(HELIOS)
    jobs = traces.read_helios(path)
    # the CPU-only job and the one that never ran are left out; the last one's duration is end - start
    assert [j.id for j in jobs] == ["1425511", "1425512", "1425515"]
    first, gang, last = jobs
    assert (first.tenant, first.submit, first.duration, first.gpu, first.slots) == ("vcJkd", 0.0, 36848, 1, 1)
    assert (gang.submit, gang.slots, gang.gpu, gang.cpu, gang.gpus) == (26.0, 2, 8.0, 32.0, 16.0)
    assert (last.submit, last.duration) == (59.0, 600.0)
    assert [j.tenant for j in traces.read_helios(path, tenant="user")] == ["uXBbc", "uVMrF", "uXBbc"]
    assert len(traces.read_helios(path, gpu_only=False)) == 4


def test_read_helios_with_times_in_seconds(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("job_id,user,vc,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,queue\n"
                    "a,u1,vc1,8,32,1,COMPLETED,1000,1010,1510,,10\nb,u2,vc2,1,4,1,COMPLETED,900,900,960,60,0\n")
    jobs = traces.read_helios(path)
    assert [(j.id, j.submit, j.duration) for j in jobs] == [("b", 0.0, 60.0), ("a", 100.0, 500.0)]


def test_read_philly_job_log(tmp_path):
    log = [
        {"status": "Pass", "vc": "vc1", "jobid": "application_1", "user": "u1",
         "submitted_time": "2017-10-03 02:55:57",
         "attempts": [  # a failed attempt on one machine, then the job on two machines
             {"start_time": "2017-10-03 02:56:00", "end_time": "2017-10-03 02:57:00",
              "detail": [{"ip": "m1", "gpus": ["gpu0", "gpu1"]}]},
             {"start_time": "2017-10-03 03:00:00", "end_time": "2017-10-03 04:00:00",
              "detail": [{"ip": "m2", "gpus": ["gpu0", "gpu1", "gpu2", "gpu3"]},
                         {"ip": "m3", "gpus": ["gpu0", "gpu1", "gpu2", "gpu3"]}]}]},
        {"status": "Killed", "vc": "vc2", "jobid": "application_2", "user": "u2",
         "submitted_time": "2017-10-03 02:55:50",
         "attempts": [{"start_time": "2017-10-03 02:56:00", "end_time": None,  # never finished: no usable run
                       "detail": [{"ip": "m4", "gpus": ["gpu0"]}]}]},
        {"status": "Pass", "vc": "vc2", "jobid": "application_3", "user": "u2",
         "submitted_time": "2017-10-03 03:05:57",
         "attempts": [{"start_time": "2017-10-03 03:06:00", "end_time": "2017-10-03 03:16:00",
                       "detail": [{"ip": "m5", "gpus": ["gpu3"]}]}]},
    ]
    path = tmp_path / "cluster_job_log"
    path.write_text(json.dumps(log))
    first, second = traces.read_philly(path)
    assert (first.id, first.tenant, first.submit, first.duration) == ("application_1", "vc1", 0.0, 60 + 3600)
    assert (first.slots, first.gpu, first.gpus, first.cpu) == (2, 4.0, 8.0, 0.0)
    assert (second.id, second.tenant, second.submit, second.duration, second.gpus) == (
        "application_3", "vc2", 600.0, 600.0, 1.0)


def test_synthetic_trace_is_reproducible_and_matches_the_figures_it_cites():
    pool = default_pool()
    a = synthetic_helios(3000, 4, seed=5, target_utilisation=0.9, pool=pool)
    assert a == synthetic_helios(3000, 4, seed=5, target_utilisation=0.9, pool=pool)
    assert a != synthetic_helios(3000, 4, seed=6, target_utilisation=0.9, pool=pool)
    shape = describe_trace(a, pool)
    assert shape["one_gpu_share"] == pytest.approx(traces.GPU_MIX[1], abs=0.03)  # the docstring's 60%
    assert traces.DURATION_MEDIAN * 0.8 < shape["median_duration_s"] < traces.DURATION_MEDIAN * 1.25  # 206 s
    assert shape["mean_duration_s"] > 10 * shape["median_duration_s"]  # heavy-tailed (published mean 6,652 s)
    assert max(j.duration for j in a) <= traces.DURATION_CAP
    assert shape["max_gpus"] == 32 and shape["offered_load"] == pytest.approx(0.9)
    counts = [sum(1 for j in a if j.tenant == f"t{i}") / len(a) for i in range(4)]  # Zipf: 48%, 24%, 16%, 12%
    assert counts == pytest.approx([0.48, 0.24, 0.16, 0.12], abs=0.03)
    assert len(shape["tenant_work_share"]) == 4
    assert {j.priority for j in a} == {"standard"}
    mixed = synthetic_helios(200, 2, seed=1, priority_mix={"urgent": 0.5, "batch": 0.5})
    assert {j.priority for j in mixed} == {"urgent", "batch"}
    with pytest.raises(ValueError, match="unknown priority class 'vip'"):
        synthetic_helios(10, 2, priority_mix={"vip": 1.0})


def test_a_preempted_job_resumes_from_its_last_checkpoint():
    trace = [TraceJob("batch", "x", 0.0, 10_000.0, 8.0, 8.0, priority="batch"),
             TraceJob("urgent", "y", 2_000.0, 1_000.0, 8.0, 8.0, priority="urgent")]
    for policy in (Priority(min_runtime=600), Fair(min_runtime=600)):
        result = simulate(trace, policy, pool=default_pool(nodes=1), checkpoint_interval=300)
        batch, urgent = result.job_results
        assert (urgent.first_start, urgent.finish) == (2_000.0, 3_000.0)
        # preempted at 2,000 s, last checkpoint at 1,800 s: 200 s redone, resumes at 3,000 s
        assert (batch.preemptions, batch.lost_s, batch.finish) == (1, 200.0, 3_000.0 + 8_200.0)
        assert result.lost_gpu_s == 200.0 * 8 and result.preemptions == 1
    # the urgent job comes when the batch job has run only 300 s: it is preempted at 600 s (min_runtime), on a
    # wake-up the policy asked for, right after a checkpoint
    early = [trace[0], TraceJob("urgent", "y", 300.0, 1_000.0, 8.0, 8.0, priority="urgent")]
    batch, urgent = simulate(early, Fair(min_runtime=600), pool=default_pool(nodes=1)).job_results
    assert (urgent.first_start, batch.lost_s, batch.finish) == (600.0, 0.0, 1_600.0 + 9_400.0)
    fifo = simulate(trace, Fifo(), pool=default_pool(nodes=1)).job_results
    assert (fifo[0].finish, fifo[1].first_start, fifo[1].preemptions) == (10_000.0, 10_000.0, 0)


def test_simulator_conserves_work_under_every_policy():
    pool = default_pool(nodes=2)
    trace = synthetic_helios(250, 3, seed=2, target_utilisation=0.95, pool=pool,
                             priority_mix={"urgent": 0.2, "standard": 0.5, "batch": 0.3})
    tenants = {"t0": TenantView("t0", weight=2.0), "t2": TenantView("t2", max_slots=3)}
    for name in ("fifo", "priority", "fair"):
        r = simulate(trace, name, pool=pool, tenants=tenants, min_runtime=120, checkpoint_interval=300)
        assert r.jobs == len(trace) and r.skipped == 0
        assert all(j.finish >= j.first_start >= j.submit for j in r.job_results)
        assert all(j.lost_s <= 300 * j.preemptions for j in r.job_results)
        assert r.busy_gpu_s == pytest.approx(r.work_gpu_s + r.lost_gpu_s, rel=1e-9)
        assert r.work_gpu_s == pytest.approx(sum(j.duration * j.gpus for j in trace))
        assert 0 < r.utilisation_makespan <= 1 and 0 < r.jain <= 1 and 0 < r.jain_alloc <= 1
        assert (r.preemptions > 0) == (name != "fifo")
        assert all(0 <= t.gang_shortfall <= 1 for t in r.tenants)
    assert jain([1, 1, 1]) == pytest.approx(1.0) and jain([1, 0, 0]) == pytest.approx(1 / 3)


def test_jobs_that_can_never_fit_are_skipped_not_waited_for():
    trace = [TraceJob("ok", "a", 0.0, 10.0, 1.0, 1.0), TraceJob("huge", "a", 0.0, 10.0, 8.0, 8.0, slots=9)]
    r = simulate(trace, "fair", pool=default_pool(nodes=8))
    assert (r.jobs, r.skipped) == (1, 1)


def test_fair_gives_a_2_to_1_weight_2_to_1_of_a_two_slot_pool_over_time():
    """Two one-CPU slots, like the factory's two workers: the share *before* a start tells the tenants apart only
    in whole slots (whoever holds none goes next: 1:1 whatever the weights); the share after it ties, and the tie
    goes to whoever was served least per weight, so the time-integrated split follows the weights."""
    from modelfactory.compute.policies import Resources, WorkerView

    pool = [WorkerView(f"w{i}", Resources(cpu=1.0), Resources(cpu=1.0)) for i in range(2)]
    trace = [TraceJob(f"{t}{i}", t, 0.0, 60.0, 1.0, 0.0) for i in range(60) for t in ("a", "b")]
    result = simulate(trace, Fair(preempt=False), pool=pool,
                      tenants={"a": TenantView("a", weight=2.0), "b": TenantView("b", weight=1.0)})
    a_done = sorted(j.finish for j in result.job_results if j.tenant == "a")
    b_done = sorted(j.finish for j in result.job_results if j.tenant == "b")
    halfway = a_done[29]  # a's 30th job ends; with 2/3 of the two slots till then, b has finished 15
    assert sum(f <= halfway for f in b_done) == pytest.approx(15, abs=2)
