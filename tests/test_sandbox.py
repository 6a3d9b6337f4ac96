"""Compute leasing sandbox: real processes with their limits enforced and the tenant boundary attacked
(modelfactory/compute/sandbox/, the command path of compute/worker.py).

Isolation is tested the way CI runs (as root): each attack runs in both root modes, `uid+bwrap` (per-tenant uid
inside bubblewrap's namespaces) and `uid` (per-tenant uid and a network namespace, bubblewrap turned off), and in
the non-root modes by a driver process that drops to `nobody`: `bwrap`, and `none` (refused unless the operator
allows it). A test that cannot run here says why; under CI (CI=true) it fails instead of skipping."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from modelfactory.compute import sandbox
from modelfactory.compute.sandbox import parse_duration, run_command, tenant_workdir
from modelfactory.errors import MFError

IS_ROOT = sandbox.dirs.is_root()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]


def require(condition: object, why: str) -> None:
    """Skip with the reason, except under CI, where an isolation test that cannot run is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"cannot run under CI: {why}")
        pytest.skip(why)


needs_root = pytest.mark.skipif(not IS_ROOT and not IN_CI, reason="tenant isolation runs jobs as per-tenant uids, "
                                                                   "which needs root (CI runs as root)")


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
needs_py = pytest.mark.skipif(PY is None and not IN_CI,
                              reason="no Python interpreter that an unprivileged tenant uid can run")
ROOT_MODES = ["uid+bwrap", "uid"] if IS_ROOT or IN_CI else ["bwrap"]


@pytest.fixture(autouse=True)
def sandbox_home(monkeypatch):
    """MF_HOME in a directory other users can search: pytest's tmp dirs are 0700, which a tenant uid cannot cross."""
    home = Path(tempfile.mkdtemp(prefix="mf-sandbox-"))
    home.chmod(0o711)
    monkeypatch.setenv("MF_HOME", str(home / "home"))
    monkeypatch.delenv("MF_DATABASE_URL", raising=False)
    yield home / "home"
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=ROOT_MODES)
def mode(request, monkeypatch):
    """The isolation the tests in this process get: bubblewrap's namespaces, or (as root) uid + netns only."""
    if request.param == "uid":
        monkeypatch.setenv("MF_SANDBOX_BWRAP", "off")
    got, detail = sandbox.isolation("acme")
    require(got == request.param, f"isolation mode {request.param} is not available here: got {got} ({detail}); "
                                  "install bubblewrap (apt-get install bubblewrap) and run as root")
    return got


def run(argv, tenant="acme", job_id=1, **kw):
    kw.setdefault("cpu", 1)
    kw.setdefault("memory_gb", 1)
    kw.setdefault("time_limit_s", 20)
    kw.setdefault("allow_unisolated", sandbox.isolation(tenant)[0] == "none")  # plain limits tests, any machine
    return run_command(argv, tenant=tenant, workdir=tenant_workdir(tenant, job_id), **kw)


def survivors(marker: str, timeout: float = 10.0) -> list[int]:
    """Live (not zombie) processes whose command line holds `marker`, once they had `timeout` s to go."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker in cmdline and state not in ("Z", "X"):
                alive.append(int(entry.name))
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def cgroup_dirs(prefix: str) -> list[Path]:
    """The cgroups under /sys/fs/cgroup whose names start with `prefix`. A walk that tolerates directories vanishing
    under it: the worker removes a job's cgroups while we look (Path.rglob raises FileNotFoundError then)."""
    return [Path(root) / d for root, dirs, _ in os.walk("/sys/fs/cgroup") for d in dirs if d.startswith(prefix)]


def wait_for(cond, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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


def _cgroup_controllers() -> dict[str, str]:
    """Which limits this machine lets a job's cgroup hold: {controller: how}, and {'problems': why not}."""
    probe = sandbox.JobCgroup.create(f"mf-probe-{os.getpid()}", cpu=1, cores={min(os.sched_getaffinity(0))},
                                      memory_bytes=1 << 30, pids_max=100)
    probe.remove()
    return {**probe.enforcement, "problems": "; ".join(probe.problems)}


def require_cgroup(controller: str) -> None:
    have = _cgroup_controllers()
    require(controller in have, f"no writable {controller} cgroup here ({have['problems']}): the limit falls back "
                                "to an rlimit (see the job's enforcement record)")


@needs_py
@pytest.mark.parametrize("mechanism", ["best available", "rlimit fallback"])
def test_memory_limit(mechanism, monkeypatch):
    if mechanism == "rlimit fallback":
        monkeypatch.setattr(sandbox.cgroups, "_cgroup_hierarchies", lambda: (None, {}))  # no writable cgroup at all
    else:
        require_cgroup("memory")
    r = run([PY, "-c", "x = b'a' * (1 << 30); print('allocated', len(x))"], memory_gb=0.2)
    assert r.reason == "memory limit", (r, r.stderr_path.read_text()[-500:])
    if mechanism == "rlimit fallback":
        assert r.exit_code == 1 and "MemoryError" in r.stderr_path.read_text()  # RLIMIT_AS: the allocation fails
        assert r.enforcement["memory"].startswith("RLIMIT_AS 0.2 GB per process, not for the whole job (no memory "
                                                  "cgroup: this process is in no cgroup hierarchy it can see)")
    else:
        assert r.exit_code is None  # the cgroup's OOM killer
        assert r.enforcement["memory"].startswith("cgroup v")
    assert r.message == "stopped: over its memory limit of 0.2 GB"
    assert "allocated" not in r.stdout_path.read_text()


def test_memory_heuristic():
    verdict = sandbox.limits.memory_verdict
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
    r = run(["sh", "-c", "sleep 30.11 & wait"], time_limit_s=1)
    elapsed = time.monotonic() - t0
    assert r.reason == "time limit" and r.exit_code is None, r
    assert r.message == "stopped: over its time limit of 1s"
    assert 1 <= elapsed < 30  # stopped at its limit, not when `sleep 30` ran out (no stopwatch on a shared box)
    assert not survivors("sleep 30.11"), "the job's child survived"


@needs_py
def test_sigterm_ignored_then_sigkill(monkeypatch):
    monkeypatch.setattr(sandbox.run, "GRACE_SECONDS", 0.5)
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
        run_command(["sh", "-c", "echo $$ > me.pid; sleep 30.12"], tenant="acme", workdir=wd, cpu=1, memory_gb=1,
                    time_limit_s=None, should_stop=lambda: (wd / "work" / "me.pid").exists() and boom(),
                    allow_unisolated=sandbox.isolation("acme")[0] == "none")
    assert not survivors("sleep 30.12")


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
    assert wd == sandbox.dirs.settings().home / "tenants" / "acme" / "jobs" / "7"
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


DENIED = ("Permission denied", "No such file or directory")  # uid mode: file modes; bubblewrap: not even there


@needs_root
def test_one_tenant_cannot_read_anothers_artifacts(mode):
    from modelfactory.artifacts import ArtifactStore
    from modelfactory.compute.worker import collect_outputs

    r = run(["sh", "-c", 'echo weights > "$MF_OUTPUT_DIR/model.bin"'], tenant="beta")
    artifact = ArtifactStore().get(collect_outputs("beta", 1, r.outputs_dir))
    assert (artifact.path / "model.bin").read_text() == "weights\n"  # the platform reads it
    r = run(["sh", "-c", f"cat {artifact.path}/model.bin"], tenant="alpha", job_id=2)
    assert r.reason == "failed" and any(d in r.stderr_path.read_text() for d in DENIED), r.stderr_path.read_text()


@needs_root
def test_one_tenant_cannot_read_anothers_job_dir(mode):
    b_dir = tenant_workdir("beta", 1)
    b_secret = b_dir / "work" / "secret.txt"
    b_out = b_dir / "outputs"
    r = run(["sh", "-c", f"echo beta-secret > {b_secret} && echo model > {b_out}/model.bin && cat {b_secret}"],
            tenant="beta")
    assert r.reason == "ok" and r.stdout_path.read_text() == "beta-secret\n"  # B's own job can

    for target in (f"cat {b_secret}", f"ls {b_out}", f"cat {b_out}/model.bin", f"ls {b_dir.parent}"):
        r = run(["sh", "-c", target], tenant="alpha")
        assert r.reason == "failed", (target, r)
        assert any(d in r.stderr_path.read_text() for d in DENIED), (target, r.stderr_path.read_text())
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
        run_command(["true"], tenant="acme", workdir=other, cpu=1, memory_gb=1, time_limit_s=None,
                    allow_unisolated=True)
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
        assert sandbox.dirs.format_duration(parse_duration(text)) == text


def test_signal_names():
    assert sandbox.limits.signal_name(signal.SIGKILL) == "SIGKILL"


# ---------------------------------------------------------------------------------------------------- attacks
# Each test below is a tenant trying to break one guarantee (README: "Security: tenant isolation").

ATTACK = textwrap.dedent("""
    import json, os, socket, sys
    home, other_file, port, platform_pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read(200).decode("latin-1")
        except OSError:
            return None

    def listing(path):
        try:
            return sorted(os.listdir(path))
        except OSError:
            return None

    got = {"admin_key": os.environ.get("MF_ADMIN_KEY"), "database_url": os.environ.get("MF_DATABASE_URL"),
           "database": read(os.path.join(home, "mf.db")), "other_job_file": read(other_file),
           "home": listing(home), "artifacts": listing(os.path.join(home, "artifacts")),
           "platform_environ": read(f"/proc/{platform_pid}/environ"), "uid": os.getuid()}
    try:
        import sqlite3
        got["sqlite"] = sqlite3.connect(f"file:{home}/mf.db?mode=ro", uri=True).execute(
            "select count(*) from sqlite_master").fetchone()[0]
    except Exception:
        got["sqlite"] = None
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        got["connected"] = True
    except OSError:
        got["connected"] = False
    print(json.dumps(got))
""")
SECRETS = {"MF_ADMIN_KEY": "mfadmin-5ecret-k3y", "MF_DATABASE_URL": "postgresql://admin:hunter2@db/mf",
           "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws"}


class Listener:
    """A TCP server on 127.0.0.1 standing in for the control plane (or Ray, or PostgreSQL)."""

    def __enter__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __exit__(self, *exc):
        self.sock.close()


def _platform_state(home: Path) -> Path:
    """What a tenant must not reach: the database (with a row), an artifact, another tenant's job file."""
    from modelfactory.artifacts import ArtifactStore
    from modelfactory.store import engine

    with engine().begin() as conn:
        conn.exec_driver_sql("create table if not exists secrets (v text)")
        conn.exec_driver_sql("insert into secrets values ('platform-only')")
    with ArtifactStore().create("a" * 64, kind="model", producer="test", params={}) as (tmp, _extra):
        (tmp / "weights.bin").write_text("platform weights")
    other = tenant_workdir("beta", 9) / "work" / "secret.txt"
    other.write_text("beta-only")
    if IS_ROOT:
        os.chown(other, *sandbox.tenant_ids("beta"))
    assert (home / "mf.db").exists()
    return other


def _attack_result(r) -> dict:
    assert r.reason == "ok", (r, r.stderr_path.read_text()[-2000:])
    out = r.stdout_path.read_text()
    for secret in SECRETS.values():
        assert secret not in out
    return json.loads(out)


@needs_root
@needs_py
def test_attack_tenant_cannot_reach_secrets_database_artifacts_jobs_or_network(mode, monkeypatch, sandbox_home):
    """The command job of tenant `acme` looks for the platform's environment (MF_ADMIN_KEY, MF_DATABASE_URL), the
    SQLite database, the artifact store, another tenant's job file, the worker's /proc/PID/environ, and connects to
    a port on 127.0.0.1 (the control plane, Ray, PostgreSQL): it gets none of them, and it is not the platform's
    uid. Then the operator grants `acme` network: the same connect succeeds."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MF_DATABASE_URL")  # the platform's own database stays SQLite under MF_HOME here
    other = _platform_state(sandbox_home)
    monkeypatch.setenv("MF_DATABASE_URL", SECRETS["MF_DATABASE_URL"])
    with Listener() as server:
        argv = [PY, "-c", ATTACK, str(sandbox_home), str(other), str(server.port), str(os.getpid())]
        got = _attack_result(run(argv))
        assert got.pop("home") in (None, ["tenants"])  # at most the empty skeleton of its own job's path
        assert got == {"admin_key": None, "database_url": None, "database": None, "other_job_file": None,
                       "artifacts": None, "platform_environ": None, "uid": sandbox.tenant_ids("acme")[0],
                       "sqlite": None, "connected": False}
        assert server.accepted == 0
        r = run(argv, network=True, job_id=2)  # the operator's grant (mf tenants set acme --network)
        assert _attack_result(r)["connected"] is True and server.accepted == 1
        assert r.enforcement["network"] == "shared with the machine (granted to this tenant)"


@needs_root
def test_attack_network_is_off_by_default_and_recorded(mode):
    require(shutil.which("bash"), "bash is not installed")
    with Listener() as server:
        r = run(["bash", "-c", f"(exec 3<>/dev/tcp/127.0.0.1/{server.port}) 2>/dev/null && echo reached "
                               "|| echo refused"])
        assert r.stdout_path.read_text().strip() == "refused" and server.accepted == 0
    assert r.enforcement["network"].startswith("none: a fresh network namespace")


@needs_root
@needs_py
def test_attack_fork_bomb_stops_at_pids_max(mode):
    """A (bounded) fork bomb: it keeps forking sleepers until the kernel says no; pids.max stops it."""
    require_cgroup("pids")
    bomb = textwrap.dedent("""
        import os, sys, time
        n = 0
        for _ in range(300):
            try:
                if os.fork() == 0:
                    time.sleep(60.13)
                    os._exit(0)
                n += 1
            except OSError:
                break
        print(n, flush=True)
    """)
    r = run([PY, "-c", bomb], pids_max=20)
    assert r.reason == "ok", (r, r.stderr_path.read_text()[-1000:])
    assert int(r.stdout_path.read_text()) < 20
    assert r.enforcement["pids"].startswith("cgroup v") and "(20 processes)" in r.enforcement["pids"]
    assert not survivors("60.13")  # and its sleepers died with it (cmdline is python's: match the number)


@needs_root
@needs_py
def test_attack_memory_limit_holds_for_the_whole_job(mode):
    """Two processes of one job each take 60% of its memory: per-process limits would let both live; the job's
    cgroup does not."""
    require_cgroup("memory")
    hog = textwrap.dedent("""
        import os, time
        pid = os.fork()
        x = b"a" * (150 << 20)  # 150 MiB each, 300 MiB in all, limit 256 MiB
        time.sleep(3)
        if pid:
            _, status = os.waitpid(pid, 0)
            print("both held their memory", status, flush=True)
    """)
    r = run([PY, "-c", hog], memory_gb=0.25)
    assert r.reason == "memory limit", (r, r.stdout_path.read_text(), r.stderr_path.read_text()[-1000:])
    assert "both held their memory 0" not in r.stdout_path.read_text()


@needs_root
@pytest.mark.parametrize("how", ["time limit", "stop", "exit"])
def test_attack_setsid_child_does_not_outlive_the_job(mode, how):
    """The command starts a child in a new session (setsid) that double-forks away; the job ends (time limit,
    cancel/preemption, or the command simply exits): nothing of it remains."""
    require(shutil.which("setsid"), "setsid(1) is not installed")
    script = "setsid sh -c 'sleep 77.%s & sleep 77.%s' & sleep 1; echo started; %s"
    tag = {"time limit": "21", "stop": "22", "exit": "23"}[how]
    argv = ["sh", "-c", script % (tag, tag, "exit 0" if how == "exit" else "sleep 60")]
    kw = {"time limit": dict(time_limit_s=2),
          "stop": dict(should_stop=lambda: "started" in (tenant_workdir("acme", 1) / "logs" / "stdout.log")
                       .read_text())}.get(how, {})
    r = run(argv, **kw)
    assert r.reason == {"time limit": "time limit", "stop": "stopped", "exit": "ok"}[how], r
    assert not survivors(f"sleep 77.{tag}"), f"a setsid child of the job survived ({r.enforcement['lifetime']})"


@needs_root
def test_attack_disk_cap(mode, monkeypatch):
    monkeypatch.setattr(sandbox.run, "DISK_CHECK_SECONDS", 0.2)
    many = "i=0; while [ $i -lt 400 ]; do head -c 1048576 /dev/zero > f$i; i=$((i+1)); sleep 0.05; done"
    r = run(["sh", "-c", many], disk_gb=8 / 1024, time_limit_s=120)  # 8 MiB; it would write 400 in 20 s or more
    assert r.reason == "disk limit" and r.message == f"stopped: over its disk limit of {8 / 1024:g} GB", r
    assert len(list((tenant_workdir("acme", 1) / "work").iterdir())) < 400  # stopped, not finished
    one = "head -c 50000000 /dev/zero > big"  # one file past the cap between two checks: RLIMIT_FSIZE
    r = run(["sh", "-c", one], disk_gb=8 / 1024, job_id=2)
    assert r.reason in ("disk limit", "failed") and (tenant_workdir("acme", 2) / "work" / "big").stat().st_size \
        <= 8 << 20
    if "bwrap" in mode:  # /tmp is a tmpfs of at most the cap (or 1 GiB)
        r = run(["sh", "-c", "head -c 20000000 /dev/zero > /tmp/x; ls -l /tmp/x"], disk_gb=8 / 1024, job_id=3)
        assert r.reason != "ok" or int(r.stdout_path.read_text().split()[4]) <= 8 << 20


@needs_root
@needs_py
def test_attack_cpu_quota_and_cores_cannot_be_widened(mode):
    """The command widens its affinity mask to every core and spins two threads: the cpuset keeps it on its core
    and the quota keeps it under its share of CPU time."""
    require_cgroup("cpu")
    spin = textwrap.dedent("""
        import os, threading, time
        try:
            os.sched_setaffinity(0, range(os.cpu_count()))
        except OSError as e:
            print("refused", e)
        print(sorted(os.sched_getaffinity(0)), flush=True)
        def burn():
            t = time.monotonic()
            while time.monotonic() - t < 3:
                pass
        ts = [threading.Thread(target=burn) for _ in range(2)]
        [t.start() for t in ts]
        [t.join() for t in ts]
    """)
    r = run([PY, "-c", spin], cpu=0.5)
    assert r.reason == "ok", (r, r.stderr_path.read_text())
    assert r.enforcement["cpu"].startswith("cgroup v") and "0.5 cores of time" in r.enforcement["cpu"]
    if "cpuset" in _cgroup_controllers():
        assert len(json.loads(r.stdout_path.read_text().splitlines()[-1])) == 1
    # 0.5 cores for the ~3 s it spun: well under the 6 CPU-seconds two free threads would take. Load only lowers it.
    assert r.cpu_seconds <= 0.5 * r.wall_seconds + 0.5, r


def test_enforcement_is_recorded_for_every_resource():
    r = run(["true"])
    assert set(r.enforcement) == {"isolation", "network", "cpu", "pids", "memory", "lifetime", "disk", "gpu"}


# ---------------------------------------------------------------------------------------------------- not root
_DRIVER = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from modelfactory.compute import sandbox
    from modelfactory.errors import MFError
    cases = json.loads(sys.argv[2])
    out = {"isolation": sandbox.isolation("acme")[0]}
    for name, case in cases.items():
        try:
            wd = sandbox.tenant_workdir(case.get("tenant", "acme"), case.get("job", 1))
            argv = [str(os.getpid()) if a == "PLATFORM_PID" else a for a in case["argv"]]
            r = sandbox.run_command(argv, tenant=case.get("tenant", "acme"), workdir=wd, cpu=1,
                                    memory_gb=1, time_limit_s=case.get("time_limit"),
                                    allow_unisolated=case.get("allow_unisolated", False))
            out[name] = {"reason": r.reason, "stdout": r.stdout_path.read_text(),
                         "stderr": r.stderr_path.read_text()[-2000:], "enforcement": r.enforcement}
        except MFError as e:
            out[name] = {"error": str(e)}
    print(json.dumps(out))
""")
NOBODY = 65534


def _as_nobody(tmp: Path, cases: dict, env: dict) -> dict:
    """Run `cases` through run_command in a process of its own that is not root (uid `nobody`): a copy of the
    sandbox module (it imports only config and errors) under a system Python `nobody` can run."""
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable)
                   if os.path.exists(p) and _usable_by_others(p)), None)
    require(python, "no Python that the unprivileged user can run")
    pkg = tmp / "pkg"
    for rel in ("modelfactory/__init__.py", "modelfactory/config.py", "modelfactory/errors.py",
                "modelfactory/compute/__init__.py",
                *(str(f.relative_to(REPO)) for f in sorted((REPO / "modelfactory/compute/sandbox").glob("*.py")))):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, pkg / rel)
    for p in [tmp, pkg, *pkg.rglob("*")]:  # the test process's umask may be the platform's 077
        p.chmod(0o755 if p.is_dir() else 0o644)

    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    p = subprocess.run([python, "-c", _DRIVER, str(pkg), json.dumps(cases)], capture_output=True, text=True,
                       timeout=300, preexec_fn=drop, env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env}, cwd="/")
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


@pytest.fixture
def nobody_home():
    """An MF_HOME owned by `nobody`, as a non-root platform's would be, with its secrets in it."""
    require(IS_ROOT, "dropping to an unprivileged user needs root (CI runs as root)")
    top = Path(tempfile.mkdtemp(prefix="mf-nonroot-"))
    top.chmod(0o755)
    home = top / "home"
    home.mkdir(mode=0o700)
    (home / "mf.db").write_text("SQLite format 3 platform-only")
    (home / "artifacts").mkdir(mode=0o700)
    (home / "artifacts" / "weights.bin").write_text("platform weights")
    other = home / "tenants" / "beta" / "jobs" / "9" / "work"
    other.mkdir(parents=True, mode=0o700)
    (other / "secret.txt").write_text("beta-only")
    for p in [home, *home.rglob("*")]:
        os.chown(p, NOBODY, NOBODY)
        p.chmod(0o700 if p.is_dir() else 0o600)
    yield top, home, other / "secret.txt"
    shutil.rmtree(top, ignore_errors=True)


def test_attack_non_root_worker_isolates_with_bubblewrap(nobody_home):
    """A worker that is not root (uid nobody) runs the same attack under bubblewrap: everything of the platform
    it could read as the same uid (its database, artifacts, another job's file, its environment) is absent, the
    network is unreachable, and a setsid child dies with the job."""
    top, home, other = nobody_home
    path, why = sandbox.namespaces.bwrap_path()
    require(path, why)
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PY
    with Listener() as server:
        cases = {"attack": {"argv": [py, "-c", ATTACK, str(home), str(other), str(server.port), "PLATFORM_PID"]},
                 "escape": {"argv": ["sh", "-c", "setsid sh -c 'sleep 78.5 & sleep 78.5' & sleep 1; exit 0"],
                            "job": 2}}
        got = _as_nobody(top, cases, {"MF_HOME": str(home), **SECRETS})
        assert server.accepted == 0
    assert got["isolation"] == "bwrap", (got, "is kernel.unprivileged_userns_clone / user.max_user_namespaces 0?")
    attack = got["attack"]
    assert attack.get("reason") == "ok", attack
    seen = json.loads(attack["stdout"])
    assert seen.pop("home") in (None, ["tenants"])  # at most the empty skeleton of its own job's path
    assert seen == {"admin_key": None, "database_url": None, "database": None, "other_job_file": None,
                    "artifacts": None, "platform_environ": None, "uid": NOBODY, "sqlite": None, "connected": False}
    assert attack["enforcement"]["isolation"].startswith("bwrap")
    assert got["escape"]["reason"] == "ok" and not survivors("sleep 78.5")
    assert "pid namespace" in got["escape"]["enforcement"]["lifetime"]


def test_non_root_worker_without_isolation_refuses_unless_allowed(nobody_home):
    """No root and no bubblewrap: a command job is refused with a clear message; with --allow-unisolated it runs
    as the worker's own user, and (this is why it is for single-user machines) reads the platform's files."""
    top, home, _ = nobody_home
    cases = {"refused": {"argv": ["cat", str(home / "mf.db")]},
             "allowed": {"argv": ["cat", str(home / "mf.db")], "allow_unisolated": True, "job": 2}}
    got = _as_nobody(top, cases, {"MF_HOME": str(home), "MF_SANDBOX_BWRAP": "off"})
    assert got["isolation"] == "none"
    assert got["refused"]["error"].startswith("this worker cannot isolate tenants' commands: it is not root and "
                                              "bubblewrap is turned off (MF_SANDBOX_BWRAP=off). Install bubblewrap")
    assert "--allow-unisolated" in got["refused"]["error"]
    assert got["allowed"]["reason"] == "ok" and "platform-only" in got["allowed"]["stdout"]
    assert got["allowed"]["enforcement"]["isolation"].startswith("none: commands run as the worker's own user")


# ---------------------------------------------------------------------------------------------------- the worker
_WORKER = ("import sys\n"
           "from modelfactory.compute import worker\n"
           "if hasattr(worker, 'PRELOAD'):  # the forkserver need not import torch for a command job\n"
           "    worker.PRELOAD[:] = []\n"
           "if hasattr(worker, 'preload'):\n"
           "    worker.preload = lambda: []\n"
           "worker.PoolWorker(sys.argv[1], worker.Capacity(cpu=2, gpu=0, memory_gb=2)).run()\n")


def stop_worker(worker: subprocess.Popen, log) -> None:
    """Stop a worker process the way an operator does (SIGTERM: it drains), killing it if it hangs."""
    worker.terminate()
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    log.close()


@needs_root
def test_cancelling_a_running_command_job_leaves_nothing_of_it(mode, monkeypatch, tmp_path):
    """A command job on a real worker starts a child that escapes with setsid; the job is cancelled while it runs:
    the worker kills the job process and the command's cgroup (or bubblewrap's namespace) and nothing of it remains
    (before the fix, `_kill` only killed the job process: the command, in a session of its own, ran on)."""
    from modelfactory.accounts.tenants import add_tenant
    from modelfactory.compute import jobs
    from modelfactory.compute.scheduler import schedule_once
    from modelfactory.compute.tables import Job, pool_read

    for k, v in {"MF_LEASE_TIMEOUT_S": "30", "MF_HEARTBEAT_S": "0.5", "MF_WORKER_POLL_S": "0.1"}.items():
        monkeypatch.setenv(k, v)
    tag = "80.1" if mode == "uid" else "80.2"
    add_tenant("acme")
    script = (f"setsid sh -c 'sleep {tag} & sleep {tag}' & sleep {tag} & "
              'echo started > "$MF_OUTPUT_DIR/started"; wait')
    job_id = jobs.submit("acme", jobs.command_spec(["sh", "-c", script], time_limit_s=600))
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, f"cancel-{mode}"], cwd=REPO, env=os.environ.copy(),
                              stdout=log, stderr=subprocess.STDOUT)

    def state() -> str:
        with pool_read() as s:
            return s.get(Job, job_id).state

    try:
        def started() -> bool:
            schedule_once()
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            return (tenant_workdir("acme", job_id) / "outputs" / "started").exists()

        wait_for(started, "the command to start", timeout=600)  # generous: a loaded CI box
        assert len(survivors(tag, timeout=0)) >= 3  # the job's sleepers, the setsid one among them
        jobs.cancel(job_id)
        wait_for(lambda: not survivors(tag, timeout=0), "every process of the cancelled job to be gone", timeout=120)
        assert state() == "cancelled"
        assert "killing attempt 1" in (tmp_path / "worker.log").read_text()
        def leftover():
            return cgroup_dirs(f"mf-acme-{job_id}-")

        wait_for(lambda: not leftover(), "the cancelled job's cgroups to be removed", timeout=120)
    finally:
        stop_worker(worker, log)
        for pid in survivors(tag, timeout=0):
            os.kill(pid, signal.SIGKILL)


_RAY_BODY = ("import inspect, json, sys\n"
             "from modelfactory.compute import ray_executor, worker\n"
             "spec = json.loads(sys.argv[1])\n"
             "if 'run_job' in inspect.signature(ray_executor._run_remote).parameters:\n"
             "    ray_executor._run_remote(spec, worker.run_job)\n"
             "else:\n"
             "    ray_executor._run_remote(spec)\n")


@needs_root
@needs_py
@pytest.mark.parametrize("granted", [False, True])
def test_attack_under_the_ray_executor_body(mode, granted, monkeypatch, sandbox_home, tmp_path):
    """MF_EXECUTOR=ray runs a job as a Ray task whose body (`ray_executor._run_remote`) calls the worker's
    `run_job`, so a command gets the same sandbox: the attack finds nothing, the network only when granted, and
    the job's result carries the enforcement record. (Run here without a Ray cluster: the same function.)"""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MF_DATABASE_URL")
    other = _platform_state(sandbox_home)
    monkeypatch.setenv("MF_DATABASE_URL", SECRETS["MF_DATABASE_URL"])
    with Listener() as server:
        argv = [PY, "-c", ATTACK, str(sandbox_home), str(other), str(server.port), str(os.getpid())]
        spec = {"job_id": 5, "attempt": 1, "kind": "command", "payload": {"argv": argv, "env": {}},
                "tenant": "acme", "order_id": None, "cpu": 1, "gpu": 0, "memory_gb": 1, "time_limit_s": 60,
                "worker": "ray-test", "worker_pid": os.getpid(), "result_path": str(tmp_path / "5.1.json"),
                "log_path": str(tmp_path / "5.1.log"), "network": granted, "allow_unisolated": False}
        p = subprocess.run([sys.executable, "-c", _RAY_BODY, json.dumps(spec)], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        out = json.loads((tmp_path / "5.1.json").read_text())
        assert out["status"] == "ok", (out, (tmp_path / "5.1.log").read_text()[-2000:])
        got = json.loads(Path(out["result"]["stdout"]).read_text())
        assert got.pop("home") in (None, ["tenants"])
        assert got == {"admin_key": None, "database_url": None, "database": None, "other_job_file": None,
                       "artifacts": None, "platform_environ": None, "uid": sandbox.tenant_ids("acme")[0],
                       "sqlite": None, "connected": granted}
        assert server.accepted == int(granted)
        assert out["result"]["enforcement"]["isolation"].startswith(mode)


def test_network_grant_is_per_tenant_and_revocable():
    """`mf tenants set T --network/--no-network` (compute/grants.py): off unless granted; the worker reads it when
    it starts each attempt of a command job (spec['network'])."""
    from modelfactory.compute.grants import network_granted, set_network

    assert not network_granted("acme")
    set_network("acme", True)
    assert network_granted("acme") and not network_granted("beta")
    set_network("acme", False)
    assert not network_granted("acme")
