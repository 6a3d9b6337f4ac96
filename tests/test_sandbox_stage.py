"""Stage jobs get a time limit and memory enforcement like command jobs (compute/worker.py, compute/sandbox/stage.py).

Attacked on a real worker process: job kinds registered by this test (a module the worker imports through
MF_JOB_KINDS, as a package's kinds would be) allocate far past their memory_gb or sleep past the pool's default
time limit. Each ends failed after one attempt with a reason that names the limit, and the same worker then runs
the next job. Twice: with the job's cgroup (memory for the whole job, the kernel's OOM killer) where this machine
lets the worker create one, and with no cgroup at all (RLIMIT_AS in the job process, which the worker's log says).
No stopwatch: the time limit is 2 s and the sleeper would sleep 10 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from modelfactory.compute import sandbox

from .test_sandbox import cgroup_dirs, stop_worker

REPO = Path(__file__).resolve().parents[1]

KINDS = textwrap.dedent("""
    import time
    from modelfactory.compute import kinds

    def hog(ctx):
        blocks = []
        for _ in range(48):  # 3 GiB in 64 MiB blocks, every page written
            blocks.append(b"x" * (64 << 20))
        return {"allocated_mb": 64 * len(blocks)}

    def sleeper(ctx):
        for _ in range(6000):
            time.sleep(0.1)
        return {"slept": True}

    def fine(ctx):
        return {"fine": ctx.payload.get("n")}

    def gang_limits(ctx):  # each rank says what holds it; rank 0 (whose end ends the attempt) waits for rank 1
        import json, os, resource
        from pathlib import Path
        out, rank = Path(ctx.payload["dir"]), os.environ.get("RANK", "0")
        tmp = out / f"rank{rank}.tmp"
        tmp.write_text(json.dumps({"rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
                                   "cgroup": Path("/proc/self/cgroup").read_text()}))
        os.replace(tmp, out / f"rank{rank}.json")
        for _ in range(6000 if rank == "0" else 0):
            if (out / "rank1.json").exists():
                break
            time.sleep(0.1)
        return {"rank": rank}

    kinds.register(kinds.JobKind("mftest_hog", hog))
    kinds.register(kinds.JobKind("mftest_gang_limits", gang_limits))
    kinds.register(kinds.JobKind("mftest_sleeper", sleeper))
    kinds.register(kinds.JobKind("mftest_fine", fine))
""")

WORKER = textwrap.dedent("""
    import sys
    from modelfactory.compute import worker
    if sys.argv[2] == "rlimit":  # a machine where this process can create no cgroup
        from modelfactory.compute.sandbox import cgroups
        cgroups._cgroup_hierarchies = lambda: (None, {})
    worker.preload = lambda: ["mftest_kinds"]
    worker.PoolWorker(sys.argv[1], worker.Capacity(cpu=2, gpu=0, memory_gb=2)).run()
""")


def _memory_cgroup() -> str | None:
    """None if this process can give a job a memory cgroup, else why not."""
    probe = sandbox.JobCgroup.create(f"mf-probe-stage-{os.getpid()}", memory_bytes=1 << 30, pids_max=100)
    probe.remove()
    return None if "memory" in probe.controllers else probe.why_not("memory")


@pytest.fixture
def pool_home(monkeypatch):
    home = Path(tempfile.mkdtemp(prefix="mf-stage-"))
    (home / "kinds").mkdir()
    (home / "kinds" / "mftest_kinds.py").write_text(KINDS)
    monkeypatch.setenv("MF_HOME", str(home / "home"))
    monkeypatch.delenv("MF_DATABASE_URL", raising=False)
    monkeypatch.setenv("MF_JOB_KINDS", "mftest_kinds")
    monkeypatch.setenv("MF_STAGE_TIME_LIMIT_S", "2")
    for k, v in {"MF_LEASE_TIMEOUT_S": "30", "MF_HEARTBEAT_S": "0.5", "MF_WORKER_POLL_S": "0.1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.syspath_prepend(str(home / "kinds"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(home / "kinds"), str(REPO)]))
    yield home
    import shutil

    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("mechanism", [pytest.param("cgroup", marks=pytest.mark.ci_required), "rlimit"])
def test_stage_jobs_over_memory_or_time_fail_once_and_the_worker_goes_on(mechanism, pool_home, tmp_path):
    if mechanism == "cgroup" and (why := _memory_cgroup()):
        pytest.skip(f"no writable memory cgroup here ({why}); the rlimit case covers the fallback")
    import mftest_kinds  # noqa: F401  (registers the kinds in this process too, for submit's validation)

    from modelfactory.accounts.tenants import add_tenant
    from modelfactory.compute import jobs
    from modelfactory.compute.scheduler import schedule_once
    from modelfactory.compute.tables import Job, pool_read

    add_tenant("acme")
    hog = jobs.submit("acme", jobs.Spec(kind="mftest_hog", payload={}, memory_gb=0.25, time_limit_s=600))
    sleeper = jobs.submit("acme", jobs.Spec(kind="mftest_sleeper", payload={}, memory_gb=0.25))  # the default: 2 s
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, f"stage-{mechanism}", mechanism], cwd=REPO,
                              env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)

    def job(job_id: int) -> Job:
        with pool_read() as s:
            return s.get(Job, job_id)

    def ended(*ids: int) -> bool:
        schedule_once()
        assert worker.poll() is None, log_path.read_text()
        return all(job(i).state in ("succeeded", "failed", "cancelled") for i in ids)

    def wait_until(cond, what: str, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout  # a generous bound for a loaded box, not a speed assertion
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {log_path.read_text()[-3000:]}"
            time.sleep(0.2)

    try:
        wait_until(lambda: ended(hog, sleeper), "the hog and the sleeper to end")
        h, z = job(hog), job(sleeper)
        assert (h.state, h.attempts) == ("failed", 1), (h.state, h.attempts, h.last_error)
        assert h.last_error.startswith("memory limit: the job went over its memory limit of 0.25 GB"), h.last_error
        assert (z.state, z.attempts) == ("failed", 1), (z.state, z.attempts, z.last_error)
        assert z.last_error == "time limit of 2 s exceeded: the job was killed", z.last_error
        # the same worker serves the next job
        fine = jobs.submit("acme", jobs.Spec(kind="mftest_fine", payload={"n": 7}, memory_gb=0.25,
                                             time_limit_s=600))  # its own limit, not the default 2 s
        wait_until(lambda: ended(fine), "the next job to end")
        assert job(fine).state == "succeeded" and job(fine).result == {"fine": 7}, job(fine).last_error
        text = log_path.read_text()
        if mechanism == "rlimit":
            assert "memory limit by RLIMIT_AS 0.25 GB above the job process's size at its start" in text, text
            assert "MemoryError" not in (h.last_error or "") or "RLIMIT_AS" in h.last_error
        else:
            assert "RLIMIT_AS" not in text
            assert not cgroup_dirs(f"mf-job-{hog}.1-"), \
                "the hog's cgroup was left behind"
    finally:
        stop_worker(worker, log)


@pytest.mark.parametrize("mechanism", [pytest.param("cgroup", marks=pytest.mark.ci_required), "rlimit"])
def test_every_rank_of_a_gang_is_held_to_the_stage_limits(mechanism, pool_home, tmp_path):
    """A gang's other ranks are job processes too: each gets the job's cgroup (or RLIMIT_AS) like rank 0, and
    its cgroup is removed once the gang's attempt is over. (Before, only rank 0 was limited.)"""
    if mechanism == "cgroup" and (why := _memory_cgroup()):
        pytest.skip(f"no writable memory cgroup here ({why}); the rlimit case covers the fallback")
    import resource

    import mftest_kinds  # noqa: F401

    from modelfactory.accounts.tenants import add_tenant
    from modelfactory.compute import jobs
    from modelfactory.compute.scheduler import schedule_once
    from modelfactory.compute.tables import Job, pool_read

    add_tenant("acme")
    out = tmp_path / "ranks"
    out.mkdir()
    gang = jobs.submit("acme", jobs.Spec(kind="mftest_gang_limits", payload={"dir": str(out)}, memory_gb=0.5,
                                         slots=2, time_limit_s=600))
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, f"gang-{mechanism}", mechanism], cwd=REPO,
                              env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)

    def state() -> str:
        schedule_once()
        assert worker.poll() is None, log_path.read_text()
        with pool_read() as s:
            return s.get(Job, gang).state

    try:
        deadline = time.monotonic() + 300  # a generous bound for a loaded box, not a speed assertion
        while state() not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        assert state() == "succeeded", log_path.read_text()[-3000:]
        ranks = {r: json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)}
        if mechanism == "rlimit":
            for r in (0, 1):
                assert ranks[r]["rlimit_as"] != resource.RLIM_INFINITY, (r, ranks[r])
        else:
            assert f"mf-job-{gang}.1-" in ranks[0]["cgroup"], ranks[0]
            assert f"mf-job-{gang}.1.rank1-" in ranks[1]["cgroup"], ranks[1]
            while cgroup_dirs(f"mf-job-{gang}.1.rank1-"):  # removed once the member is seen to have ended
                assert time.monotonic() < deadline, "the member's cgroup was left behind"
                time.sleep(0.2)
    finally:
        stop_worker(worker, log)
