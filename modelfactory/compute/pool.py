"""`mf server`: the scheduler loop plus N local worker processes (configured by `poolconfig.PoolConfig`).

Restarting the server loses nothing: queued, running and finished jobs are rows in the database. A killed server's
workers die with it (they are its children, bound to it with PR_SET_PDEATHSIG); their jobs' leases expire, or are
released at once when a worker with the same id registers again (the server gives its workers stable ids), and
the jobs resume from their stage's last checkpoint on the next attempt.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from ..artifacts import sweep_dead_tmpdirs
from .poolconfig import PoolConfig, pool_config

SAMPLE_EVERY_S = 5.0

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In a child process (Linux): get SIGKILL when the parent dies, so `kill -9` of a parent leaves no orphan
    running a job nobody is accounting for. Elsewhere a no-op (job processes also watch their worker's pid)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_server(*, workers: int = 1, config: PoolConfig | None = None, worker_cpu: float | None = None,
               worker_memory_gb: float | None = None, worker_gpu: float = 0.0,
               on_tick: Callable[[object], None] | None = None, stop: Callable[[], bool] = lambda: False) -> None:
    """Run the scheduler every `schedule_interval_s` and keep `workers` local worker processes alive, until
    SIGINT/SIGTERM (when run on the main thread) or `stop()`. Workers get ids `<host>-<i>`, the same on every
    start. Every SAMPLE_EVERY_S the pool's load is sampled for the dashboard's utilisation chart."""
    import threading

    from . import kinds, utilisation
    from .scheduler import next_round_in, policy, schedule_once

    cfg = config or pool_config()
    policy(cfg)  # an unknown policy name fails here, before any worker starts
    sweep_dead_tmpdirs()  # the temp folders of killed workers (artifacts.process_tmpdir)
    host = socket.gethostname()
    env = {**os.environ, "MF_POOL_POLICY": cfg.policy, "MF_LEASE_TIMEOUT_S": str(cfg.lease_timeout_s),
           "MF_HEARTBEAT_S": str(cfg.heartbeat_s), "MF_WORKER_POLL_S": str(cfg.worker_poll_s),
           "MF_PREEMPT_GRACE_S": str(cfg.preempt_grace_s),
           "MF_PREEMPT_MIN_RUNTIME_S": str(cfg.min_runtime_s), "MF_PRICE_CPU_HOUR": str(cfg.price_cpu_hour),
           "MF_PRICE_GPU_HOUR": str(cfg.price_gpu_hour), "MF_EXECUTOR": cfg.executor}
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        stopping = True

    on_main = threading.current_thread() is threading.main_thread()
    old = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    sampled = 0.0
    procs: dict[int, subprocess.Popen] = {}
    spawned: dict[int, float] = {}

    def spawn(i: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "modelfactory.cli", "worker", "--id", f"{host}-{i}", "--gpu", str(worker_gpu)]
        if worker_cpu is not None:
            cmd += ["--cpu", str(worker_cpu)]
        if worker_memory_gb is not None:
            cmd += ["--memory-gb", str(worker_memory_gb)]
        spawned[i] = time.monotonic()
        return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)

    try:
        for i in range(1, workers + 1):
            procs[i] = spawn(i)
        while not stopping and not stop():
            t0 = time.monotonic()
            report = None
            try:
                report = schedule_once(config=cfg)
                kinds.run_after_round()  # e.g. the factory registers the orders whose jobs all finished
                if time.monotonic() - sampled >= SAMPLE_EVERY_S:
                    utilisation.record()
                    sampled = time.monotonic()
                if on_tick:
                    on_tick(report)
            except Exception as e:  # e.g. the database busy for longer than its timeout: try again next round
                print(f"mf server: scheduling round failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            for i, p in list(procs.items()):  # a worker died: start it again (same id), at most every 10 s
                if p.poll() is not None and not stopping and time.monotonic() - spawned[i] > 10:
                    procs[i] = spawn(i)
            wait = cfg.schedule_interval_s - (time.monotonic() - t0)
            if report is not None:  # the policy may want the next round sooner (Decision.retry_at)
                wait = min(wait, next_round_in(report, cfg.schedule_interval_s))
            time.sleep(max(0.0, wait))
    finally:
        for p in procs.values():  # graceful: workers checkpoint and requeue their jobs
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + cfg.preempt_grace_s + 10
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sig, handler in old.items():
            signal.signal(sig, handler)
