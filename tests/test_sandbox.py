"""Compute leasing sandbox: real processes with their limits enforced (modelfactory/compute/sandbox.py)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from modelfactory.compute import sandbox
from modelfactory.compute.sandbox import parse_duration, run_command, tenant_workdir
from modelfactory.errors import MFError

IS_ROOT = sandbox._is_root()
needs_root = pytest.mark.skipif(not IS_ROOT, reason="tenant isolation runs jobs as per-tenant uids, which needs "
                                                    "root; without root all tenants share the worker's uid")


def _usable_by_others(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in [*real.parents, real])


def _job_python() -> str | None:
    """A Python the job can execute: as root the job runs as an unprivileged uid (the venv may live under /root)."""
    if not IS_ROOT:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _usable_by_others(candidate):
            return candidate
    return None


PY = _job_python()
needs_py = pytest.mark.skipif(PY is None, reason="no Python interpreter that an unprivileged tenant uid can run")


@pytest.fixture(autouse=True)
def sandbox_home(monkeypatch):
    """MF_HOME in a directory other users can search: pytest's tmp dirs are 0700, which a tenant uid cannot cross."""
    home = Path(tempfile.mkdtemp(prefix="mf-sandbox-"))
    home.chmod(0o711)
    monkeypatch.setenv("MF_HOME", str(home / "home"))
    yield home / "home"
    shutil.rmtree(home, ignore_errors=True)


def run(argv, tenant="acme", job_id=1, **kw):
    kw.setdefault("cpu", 1)
    kw.setdefault("memory_gb", 1)
    kw.setdefault("time_limit_s", 20)
    return run_command(argv, tenant=tenant, workdir=tenant_workdir(tenant, job_id), **kw)


def _gone(pid: int, timeout: float = 3.0) -> bool:
    """No such process, or only a zombie left for init to reap."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@needs_py
def test_ok_logs_outputs_and_cpu_time():
    code = (
        "import os, sys\n"
        "print('hello from the job', os.getcwd(), os.environ['HOME'])\n"
        "print('a warning', file=sys.stderr)\n"
        "open(os.path.join(os.environ['MF_OUTPUT_DIR'], 'result.txt'), 'w').write('42')\n"
        "s = 0\n"
        "for i in range(4_000_000): s += i\n"
    )
    r = run([PY, "-c", code])
    assert (r.reason, r.exit_code) == ("ok", 0), r
    wd = tenant_workdir("acme", 1)
    assert r.stdout_path.read_text().split() == ["hello", "from", "the", "job", str(wd / "work"), str(wd / "work")]
    assert r.stderr_path.read_text() == "a warning\n"
    assert r.outputs_dir == wd / "outputs"
    assert (r.outputs_dir / "result.txt").read_text() == "42"
    assert r.cpu_seconds > 0.05 and r.wall_seconds > 0 and r.max_rss_mb > 1
    assert r.message.startswith("finished")


def test_nonzero_exit_is_failed_with_code():
    r = run(["sh", "-c", "echo bad input >&2; exit 3"])
    assert (r.reason, r.exit_code) == ("failed", 3)
    assert r.message == "failed: the command exited with code 3"
    assert "bad input" in r.stderr_path.read_text()


def test_command_not_found_is_failed():
    r = run(["no-such-command-mf"])
    assert (r.reason, r.exit_code) == ("failed", None)
    assert "could not start 'no-such-command-mf'" in r.message
    assert "could not start" in r.stderr_path.read_text()


def _memory_cgroup_available() -> bool:
    if not IS_ROOT:
        return False
    probe = sandbox._MemoryCgroup.create(f"mf-probe-{os.getpid()}", 1 << 30)
    if probe is not None:
        probe.remove()
    return probe is not None


@needs_py
@pytest.mark.parametrize("mechanism", ["best available", "rlimit fallback"])
def test_memory_limit(mechanism, monkeypatch):
    if mechanism == "rlimit fallback":
        monkeypatch.setattr(sandbox, "_cgroup_bases", lambda: [])  # as on a machine with no writable memory cgroup
    r = run([PY, "-c", "x = b'a' * (1 << 30); print('allocated', len(x))"], memory_gb=0.2)
    assert r.reason == "memory limit", (r, r.stderr_path.read_text()[-500:])
    if mechanism == "rlimit fallback" or not _memory_cgroup_available():
        assert r.exit_code == 1 and "MemoryError" in r.stderr_path.read_text()  # RLIMIT_AS: the allocation fails
    else:
        assert r.exit_code is None  # the cgroup's OOM killer
    assert r.message == "stopped: over its memory limit of 0.2 GB"
    assert "allocated" not in r.stdout_path.read_text()


def test_memory_heuristic():
    verdict = sandbox._memory_verdict
    base = dict(oom_killed=False, stderr_tail="", max_rss_mb=10, limit_mb=1024)
    assert verdict(**{**base, "oom_killed": True, "code": -9})
    assert not verdict(**{**base, "code": 0, "stderr_tail": "MemoryError\n"})
    assert verdict(**{**base, "code": 1, "stderr_tail": "Traceback ...\nMemoryError\n"})
    assert verdict(**{**base, "code": 1, "stderr_tail": "numpy.core._exceptions._ArrayMemoryError: Unable to"})
    assert verdict(**{**base, "code": -6, "stderr_tail": "terminate called after 'std::bad_alloc'"})
    assert not verdict(**{**base, "code": 1, "stderr_tail": "torch.OutOfMemoryError: CUDA out of memory."})
    assert not verdict(**{**base, "code": -9})  # killed, but nowhere near its limit
    assert verdict(**{**base, "code": -9, "max_rss_mb": 1000})


def test_time_limit_kills_the_whole_process_group():
    t0 = time.monotonic()
    r = run(["sh", "-c", "sleep 30 & echo $! > child.pid; wait"], time_limit_s=1)
    elapsed = time.monotonic() - t0
    assert r.reason == "time limit" and r.exit_code is None, r
    assert r.message == "stopped: over its time limit of 1s"
    assert 1 <= elapsed < 30  # stopped at its limit, not when `sleep 30` ran out (no stopwatch on a shared box)
    child = int((tenant_workdir("acme", 1) / "work" / "child.pid").read_text())
    assert _gone(child), f"the job's child {child} survived"


@needs_py
def test_sigterm_ignored_then_sigkill(monkeypatch):
    monkeypatch.setattr(sandbox, "GRACE_SECONDS", 0.5)
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(30)"
    t0 = time.monotonic()
    r = run([PY, "-c", code], time_limit_s=1)
    assert r.reason == "time limit" and r.exit_code is None
    assert time.monotonic() - t0 < 30  # SIGKILLed after the grace, not left to finish its sleep(30)


def test_should_stop_stops_the_job():
    t0 = time.monotonic()
    r = run(["sleep", "30"], should_stop=lambda: time.monotonic() - t0 > 0.5)
    assert r.reason == "stopped" and r.message.startswith("stopped: cancelled or preempted"), r
    assert 0.5 <= r.wall_seconds < 30  # stopped when asked, not when `sleep 30` ran out


def test_should_stop_raising_leaves_nothing_running():
    def boom():
        raise RuntimeError("queue unreachable")

    wd = tenant_workdir("acme", 2)
    with pytest.raises(RuntimeError, match="queue unreachable"):
        run_command(["sh", "-c", "echo $$ > me.pid; sleep 30"], tenant="acme", workdir=wd, cpu=1, memory_gb=1,
                    time_limit_s=None, should_stop=lambda: (wd / "work" / "me.pid").exists() and boom())
    assert _gone(int((wd / "work" / "me.pid").read_text()))


@pytest.mark.parametrize("cpu", [1, 1.5])
def test_cpu_affinity_is_ceil_cpu_cores(cpu):
    r = run(["sh", "-c", "grep Cpus_allowed_list /proc/self/status; echo threads=$OMP_NUM_THREADS"], cpu=cpu)
    assert r.reason == "ok", r
    lines = r.stdout_path.read_text().splitlines()
    cores = set()
    for part in lines[0].split(":")[1].strip().split(","):
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    expected = min(math.ceil(cpu), len(os.sched_getaffinity(0)))
    assert len(cores) == expected and cores <= os.sched_getaffinity(0)
    assert lines[1] == f"threads={expected}"


def test_concurrent_jobs_get_different_cores():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 usable cores to tell the jobs' cores apart")
    results = {}

    def job(i):
        results[i] = run(["sh", "-c", "grep Cpus_allowed_list /proc/self/status; sleep 0.5"], job_id=10 + i)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lists = {results[i].stdout_path.read_text().split(":")[1].strip() for i in range(2)}
    assert len(lists) == 2, lists  # one core each, not the same one


def test_env_is_minimal_and_secrets_do_not_leak(monkeypatch):
    monkeypatch.setenv("MF_DATABASE_URL", "postgresql://admin:hunter2@db/mf")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-key")
    r = run(["env"], env={"WANDB_MODE": "offline"})
    env = dict(line.split("=", 1) for line in r.stdout_path.read_text().splitlines())
    assert "MF_DATABASE_URL" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert "hunter2" not in r.stdout_path.read_text() and "s3cr3t" not in r.stdout_path.read_text()
    wd = tenant_workdir("acme", 1)
    assert env["WANDB_MODE"] == "offline"
    assert env["HOME"] == str(wd / "work") and env["MF_OUTPUT_DIR"] == str(wd / "outputs")
    assert set(env) <= {"PATH", "LANG", "HOME", "TMPDIR", "MF_OUTPUT_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                        "OPENBLAS_NUM_THREADS", "WANDB_MODE", "PWD", "SHLVL", "_"}


def test_job_dir_layout_is_private():
    wd = tenant_workdir("acme", 7)
    assert wd == sandbox.settings().home / "tenants" / "acme" / "jobs" / "7"
    assert tenant_workdir("acme", 7) == wd  # a requeued attempt gets the same directory back
    for sub in ("work", "outputs", "tmp"):
        st = (wd / sub).stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == (sandbox.tenant_ids("acme")[0] if IS_ROOT else os.geteuid())
    for d in (wd, wd / "logs", wd.parent, wd.parent.parent):
        st = d.stat()
        assert not st.st_mode & stat.S_IRWXO  # nothing for other users
        if IS_ROOT:
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, sandbox.tenant_ids("acme")[1], 0o750)


@needs_root
def test_one_tenant_cannot_read_anothers_artifacts():
    from modelfactory.artifacts import ArtifactStore
    from modelfactory.compute.worker import collect_outputs

    r = run(["sh", "-c", 'echo weights > "$MF_OUTPUT_DIR/model.bin"'], tenant="beta")
    artifact = ArtifactStore().get(collect_outputs("beta", 1, r.outputs_dir))
    assert (artifact.path / "model.bin").read_text() == "weights\n"  # the platform reads it
    r = run(["sh", "-c", f"cat {artifact.path}/model.bin"], tenant="alpha", job_id=2)
    assert r.reason == "failed" and "Permission denied" in r.stderr_path.read_text()


@needs_root
def test_one_tenant_cannot_read_anothers_job_dir():
    b_dir = tenant_workdir("beta", 1)
    b_secret = b_dir / "work" / "secret.txt"
    b_out = b_dir / "outputs"
    r = run(["sh", "-c", f"echo beta-secret > {b_secret} && echo model > {b_out}/model.bin && cat {b_secret}"],
            tenant="beta")
    assert r.reason == "ok" and r.stdout_path.read_text() == "beta-secret\n"  # B's own job can

    for target in (f"cat {b_secret}", f"ls {b_out}", f"cat {b_out}/model.bin", f"ls {b_dir.parent}"):
        r = run(["sh", "-c", target], tenant="alpha")
        assert r.reason == "failed", (target, r)
        assert "Permission denied" in r.stderr_path.read_text(), target
    r = run(["id", "-u"], tenant="alpha", job_id=2)
    assert int(r.stdout_path.read_text()) == sandbox.tenant_ids("alpha")[0] != sandbox.tenant_ids("beta")[0]


@needs_root
def test_unsearchable_mf_home_is_a_clear_error(monkeypatch, sandbox_home):
    private = sandbox_home.parent / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("MF_HOME", str(private / "home"))
    with pytest.raises(MFError, match=r"is not searchable by other users \(chmod o\+x"):
        tenant_workdir("acme", 1)


def test_bad_arguments_are_refused():
    with pytest.raises(MFError, match="invalid tenant name"):
        tenant_workdir("../etc", 1)
    with pytest.raises(MFError, match="invalid job id"):
        tenant_workdir("acme", -1)
    other = tenant_workdir("beta", 1)
    with pytest.raises(MFError, match="not a job directory of tenant 'acme'"):
        run_command(["true"], tenant="acme", workdir=other, cpu=1, memory_gb=1, time_limit_s=None)
    for bad in (dict(cpu=0), dict(memory_gb=-1), dict(time_limit_s=0)):
        with pytest.raises(MFError):
            run(["true"], **bad)
    with pytest.raises(MFError, match="non-empty list"):
        run([])


def test_tenant_ids_are_stable_and_in_range():
    uid, gid = sandbox.tenant_ids("acme")
    assert uid == gid and 100_000 <= uid < 150_000
    assert sandbox.tenant_ids("acme") == (uid, gid) and sandbox.tenant_ids("acme2") != (uid, gid)


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("90s", 90), ("1h30m", 5400),
                                           (" 1h 30m ", 5400), ("1.5h", 5400), ("1d", 86400), ("2m30s", 150),
                                           ("45S", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, match", [("30", "unit is missing"), ("", "use a number with a unit"),
                                         ("abc", "use a number with a unit"), ("30m2h", "use a number"),
                                         ("-5m", "use a number"), ("0s", "longer than zero"), ("5 minutes", "use")])
def test_parse_duration_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_duration(text)


def test_format_duration_round_trips():
    for text in ("30m", "2h", "1h30m", "1s", "1m30s"):
        assert sandbox._format_duration(parse_duration(text)) == text


def test_signal_names():
    assert sandbox._signal_name(signal.SIGKILL) == "SIGKILL"
