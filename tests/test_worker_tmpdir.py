"""Each worker's temp dir is its own (MF_HOME/tmp/worker-<host>-<pid>, or the system temp dir's mf-tmp-<uid> for
a deep MF_HOME): what a worker killed with SIGKILL leaves there (multiprocessing's pymp-* folders, library files)
is removed by the next worker or server to start on the host. bench/chaos.py found 14 such leftovers per pass in
the shared temp dir, with no owner left to remove them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from modelfactory.artifacts import pid_alive, sweep_dead_tmpdirs, tmpdir_roots

from .conftest import REPO

# A stand-in for a worker: takes its own temp dir, starts a forkserver and one process from it (as a worker does
# before its first job), writes a file as a library would, then ends as argv[1] says.
WORKER = """
import multiprocessing, os, signal, sys, tempfile
from modelfactory.artifacts import process_tmpdir

def child():
    open(os.path.join(tempfile.gettempdir(), 'from-the-job'), 'w').write('x')

if __name__ == '__main__':
    d = process_tmpdir('worker')
    ctx = multiprocessing.get_context('forkserver')
    p = ctx.Process(target=child)
    p.start()
    p.join()
    open(os.path.join(tempfile.gettempdir(), '.ses'), 'w').write('x' * 51)
    print(d, flush=True)
    if sys.argv[1] == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _worker(how: str, env: dict, script: Path) -> subprocess.CompletedProcess:
    script.write_text(WORKER)  # a file: the forkserver's children import the main module from it
    return subprocess.run([sys.executable, str(script), how], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


@pytest.mark.parametrize("deep", [False, True])
def test_a_killed_workers_temp_dir_is_removed_by_the_next_worker_start(tmp_path, monkeypatch, deep):
    # deep: the forkserver's socket path would not fit under it; shallow: a short path of the system's temp dir
    home = tmp_path / ("x" * 80) if deep else Path(tempfile.mkdtemp(prefix="mf"))
    monkeypatch.setenv("MF_HOME", str(home))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    killed = _worker("kill", env, tmp_path / "worker.py")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = Path(killed.stdout.strip())
    assert left.parent == (tmpdir_roots()[1] if deep else home / "tmp")
    assert re.fullmatch(rf"worker-{re.escape(socket.gethostname())}-\d+", left.name)
    assert stat.S_IMODE(left.stat().st_mode) == 0o700
    contents = sorted(p.name for p in left.iterdir())
    assert "from-the-job" in contents and ".ses" in contents  # the job process's files went there too
    assert any(n.startswith("pymp-") for n in contents), contents  # the killed worker's, never cleaned up

    # Not touched by a start: a live process's folder (this one's) and a folder of another host sharing MF_HOME.
    live = left.parent / f"worker-{socket.gethostname()}-{os.getpid()}"
    live.mkdir()
    elsewhere = left.parent / f"worker-other-host-{_dead_pid()}"
    elsewhere.mkdir()

    # the next worker: sweeps at start, removes its own folder when it exits
    clean = _worker("exit", env, tmp_path / "worker.py")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert not left.exists() and not Path(clean.stdout.strip()).exists()
    assert live.is_dir() and elsewhere.is_dir()
    for made in (live, elsewhere, home):  # the deep case's are in the system temp dir: leave nothing there
        shutil.rmtree(made, ignore_errors=True)


def test_the_server_start_sweep_and_pid_alive(mf_home):
    gone, pid = _dead_pid(), os.getpid()
    root = tmpdir_roots()[0]
    root.mkdir(parents=True)
    host = socket.gethostname()
    for name in (f"worker-{host}-{gone}", f"worker-{host}-{pid}", "README", f"worker-{host}-notapid"):
        (root / name).mkdir()
    assert str(root / f"worker-{host}-{gone}") in sweep_dead_tmpdirs()
    assert sorted(p.name for p in root.iterdir()) == sorted(["README", f"worker-{host}-{pid}",
                                                             f"worker-{host}-notapid"])
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and is not reaped until wait()
    deadline = time.monotonic() + 60
    while _state(zombie.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_alive(pid) and not pid_alive(gone) and not pid_alive(zombie.pid)  # a zombie writes nothing more
    zombie.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_mf_worker_killed_with_sigkill_its_temp_dir_goes_at_the_next_worker_start(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="mf"))  # short: the folders go under MF_HOME/tmp
    env = {**os.environ, "MF_HOME": str(home), "MF_HEARTBEAT_S": "0.5", "HF_HUB_OFFLINE": "1"}
    env.pop("MF_DATABASE_URL", None)
    try:
        first = _start_worker(env, tmp_path / "w1.log")
        d1 = _temp_dir_of(first, tmp_path / "w1.log")
        assert d1.parent == home / "tmp" and any(p.name.startswith("pymp-") for p in d1.iterdir())
        first.kill()
        first.wait()
        assert d1.is_dir()  # nobody left to remove it
        second = _start_worker(env, tmp_path / "w2.log")
        try:
            d2 = _temp_dir_of(second, tmp_path / "w2.log")
            assert not d1.exists() and d2.is_dir() and d2 != d1
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=120)
        assert not d2.exists()  # a worker stopped gracefully removes its own
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _start_worker(env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "worker", "--cpu", "1", "--memory-gb", "1"],
                            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _temp_dir_of(worker: subprocess.Popen, log: Path) -> Path:
    """The worker's temp dir, once it is up (its forkserver started)."""
    deadline = time.monotonic() + 600  # it imports torch and friends first: slow on a busy box
    while " up: " not in log.read_text() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert " up: " in text, text[-3000:]
    return Path(re.search(r"temp dir: (\S+)", text).group(1))
