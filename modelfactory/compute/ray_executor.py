"""Run a worker's jobs as Ray tasks, for when one machine is not enough (`MF_EXECUTOR=ray`).

The pool does not change: the scheduler still leases jobs to a worker and the ledger still bills attempts; the
worker hands each attempt to Ray instead of forking it, so Ray places it on any node of the cluster with the
CPUs/GPUs the job asked for. `RayTask` offers the surface of `multiprocessing.Process` the worker uses (start,
exitcode, join) plus `request_stop` and `kill`, because a task on another node has no pid of ours to signal:
a stop is a file beside the attempt's result (the artifacts store is shared by every node, see
ARCHITECTURE.md), polled by the task, which then checkpoints exactly as a signalled local job does.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.2


def connect(cpu: float, gpu: float) -> str:
    """Join the cluster at RAY_ADDRESS, or start a local Ray instance sized to this worker's capacity."""
    import os

    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, int(cpu)), num_gpus=int(gpu), include_dashboard=False, log_to_driver=False)
    return os.environ.get("RAY_ADDRESS") or "a local instance"


def _stop_path(spec: dict) -> Path:
    return Path(spec["result_path"] + ".stop")


def _run_remote(spec: dict, run_job: Callable[[dict, threading.Event], None]) -> None:
    """The body of the Ray task: the worker's own `run_job` (passed in, so this module never imports the worker),
    with the stop file as the stop signal and the attempt's log as stdout/stderr."""
    stop = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if _stop_path(spec).exists():
                stop.set()
                return
            time.sleep(POLL_S)

    threading.Thread(target=watch, daemon=True).start()
    try:
        with open(spec["log_path"], "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run_job(spec, stop)
    finally:
        done.set()


class RayTask:
    def __init__(self, spec: dict, run_job: Callable[[dict, threading.Event], None], *, cpu: float, gpu: float):
        self.spec, self.run_job, self.cpu, self.gpu = spec, run_job, cpu, gpu
        self.ref = None
        self.pid = None  # nothing local to signal
        self._exitcode: int | None = None

    def start(self) -> None:
        import ray

        _stop_path(self.spec).unlink(missing_ok=True)
        remote = ray.remote(_run_remote).options(num_cpus=self.cpu, num_gpus=self.gpu, max_retries=0,
                                                 name=f"mf-job-{self.spec['job_id']}")
        self.ref = remote.remote(self.spec, self.run_job)

    @property
    def exitcode(self) -> int | None:
        """0 once the task ended well, 1 if it raised or was cancelled; None while it runs."""
        import ray

        if self._exitcode is None and self.ref is not None:
            ready, _ = ray.wait([self.ref], timeout=0)
            if ready:
                try:
                    ray.get(self.ref)
                    self._exitcode = 0
                except Exception:  # the task crashed or was cancelled: the worker reads "died" from no result
                    self._exitcode = 1
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        import ray

        if self.ref is not None:
            ray.wait([self.ref], timeout=timeout)

    def request_stop(self) -> None:
        _stop_path(self.spec).touch()

    def kill(self) -> None:
        import ray

        if self.ref is not None and self.exitcode is None:
            ray.cancel(self.ref, force=True)
