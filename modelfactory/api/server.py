"""`mf server`: the control plane's HTTP server (uvicorn, main thread) beside the scheduler and its local workers
(compute.pool.run_server, on a thread of its own). Ctrl-C / SIGTERM stop uvicorn first, then the scheduler, whose
workers checkpoint and requeue their jobs."""

from __future__ import annotations

import signal
import sys
import threading

from ..compute.pool import run_server
from ..compute.poolconfig import PoolConfig


def run_control_plane(*, host: str, port: int, workers: int, config: PoolConfig, worker_cpu: float | None,
                      worker_memory_gb: float | None, log_level: str = "warning") -> None:
    import uvicorn

    from .app import create_app

    stop = threading.Event()
    failed: list[BaseException] = []

    def scheduler() -> None:
        try:
            run_server(workers=workers, config=config, worker_cpu=worker_cpu, worker_memory_gb=worker_memory_gb,
                       stop=stop.is_set)
        except BaseException as e:  # the API keeps answering; the log says why nothing gets scheduled
            failed.append(e)
            print(f"mf server: the scheduler stopped: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=scheduler, name="mf-scheduler")
    thread.start()
    # uvicorn re-raises the signal that stopped it once it has shut down (signal.raise_signal). With SIGTERM's
    # default action that ended this process there and then, before the `finally` below could stop the scheduler:
    # the workers (bound to it with PR_SET_PDEATHSIG) died with SIGKILL instead of checkpointing their jobs.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if on_main else None
    try:
        uvicorn.run(create_app(), host=host, port=port, log_level=log_level, access_log=False)
    finally:
        stop.set()
        thread.join()
        if on_main:
            signal.signal(signal.SIGTERM, previous)
