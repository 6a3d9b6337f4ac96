"""What processes killed, stopped or started together left behind, found by bench/chaos.py and fixed since:

- a job process killed mid-stage left its half-written artifact folder (`.tmp-*` in the artifact store) forever;
  the next writer on the same host now removes the folders of writers that no longer exist;
- a worker killed while its forkserver was still importing its preload list (a minute or more on a loaded box)
  left the forkserver running alone; it now dies with the worker (compute/forkserver_guard.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from modelfactory.artifacts import ArtifactStore
from modelfactory.compute.worker import pid_alive

from .conftest import REPO


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_killed_writers_half_written_artifact_is_swept_by_the_next_writer(mf_home):
    store = ArtifactStore()
    # A writer killed inside create(): its folder is all that is left of it.
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal\n"
        "from modelfactory.artifacts import ArtifactStore\n"
        "with ArtifactStore().create('ab' * 32, kind='model', producer='test') as (tmp, extra):\n"
        "    (tmp / 'weights.bin').write_bytes(b'x' * 1000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")], cwd=REPO, env=os.environ.copy())
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in store.root.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1
    # A live writer's folder (this process) and one of another host sharing MF_HOME are not touched.
    mine = store.root / f".tmp-{'cd' * 6}-{left[0].split('-')[2]}-{os.getpid()}-00000000"
    mine.mkdir()
    elsewhere = store.root / f".tmp-{'ef' * 6}-some-other-host-{_dead_pid()}-00000000"
    elsewhere.mkdir()

    with store.create("12" * 32, kind="model", producer="test") as (tmp, extra):
        (tmp / "ok").write_text("ok")
    assert store.exists("12" * 32)
    assert sorted(p.name for p in store.root.iterdir() if p.name.startswith(".tmp-")) == sorted(
        [mine.name, elsewhere.name])


def test_a_forkserver_still_importing_dies_with_its_killed_worker(tmp_path):
    """The worker's preload list, with a module that takes a minute to import standing in for torch on a loaded
    machine: the worker is killed while the forkserver imports it, and the forkserver must not outlive it."""
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import multiprocessing, sys, time\n"
        "from multiprocessing import forkserver\n"
        "from modelfactory.compute.worker import preload\n"
        "multiprocessing.set_forkserver_preload([preload()[0], 'slow_import'])\n"
        "forkserver.ensure_running()\n"
        "print(forkserver._forkserver._forkserver_pid, flush=True)\n"
        "time.sleep(120)\n")], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])})
    try:
        server = int(parent.stdout.readline())
        assert pid_alive(server)
        time.sleep(2)  # it is inside the slow import now
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while pid_alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pid_alive(server), "the forkserver outlived its killed worker"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.slow
def test_sigterm_to_mf_server_stops_its_workers_gracefully(tmp_path):
    """SIGTERM to `mf server` (what `kill`, systemd and bench/chaos.py send): its worker drains and logs that it
    stopped. uvicorn re-raised the signal after its own shutdown, which ended the server before it stopped its
    workers, so they died with SIGKILL (PR_SET_PDEATHSIG), leaving their jobs unchecked and their temp dirs."""
    log = tmp_path / "server.log"
    env = {**os.environ, "MF_HOME": str(tmp_path / "home"), "MF_HEARTBEAT_S": "0.5", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "server", "--workers", "1", "--port",
                               str(_free_port())], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600  # a worker imports torch and friends before it is up: slow on a busy box
        while " up: " not in log.read_text() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.5)
        assert " up: " in log.read_text(), log.read_text()[-3000:]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert re.search(r"\] \S+-1: stopped$", text, re.M), text[-3000:]  # the worker's last words: it drained


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_processes_opening_a_fresh_sqlite_database_at_once_all_get_its_schema(tmp_path):
    """`mf server` and its workers open a new MF_HOME's database at the same moment: each creates the schema, and
    one found a table the other had just made (`table dataset_lineage already exists`: an HTTP 500 on the first
    request, seen by bench/chaos.py). Eight processes, released together, must all succeed."""
    go = tmp_path / "go"
    script = ("import os, sys, time\n"
              "from modelfactory import store\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
              "store.engine()\n"
              "print('ok')\n")
    env = {**os.environ, "MF_HOME": str(tmp_path / "home")}
    env.pop("MF_DATABASE_URL", None)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    time.sleep(15)  # all of them have imported the store (a loaded machine is slow) and wait for the signal
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    failed = [next((line for line in err.splitlines() if "Error" in line), err[-300:])
              for (out, err), p in zip(outs, procs) if p.returncode != 0]
    assert not failed, failed
