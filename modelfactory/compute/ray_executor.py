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


def runtime_env() -> dict:
    """What a task needs of this worker's environment on whichever node runs it: the MF_* settings (the shared
    database, the artifact store's path, ...) and the job kinds' modules; a node started with other values (or
    none) still runs our jobs against the same pool."""
    import os

    keep = {k: v for k, v in os.environ.items() if k.startswith(("MF_", "HF_"))}
    return {"env_vars": keep} if keep else {}


def _stop_path(spec: dict) -> Path:
    return Path(spec["result_path"] + ".stop")


def _where() -> str:
    import ray

    ctx = ray.get_runtime_context()
    return f"Ray node {ctx.get_node_id()} ({ray.util.get_node_ip_address()})"


def _note_placement(spec: dict) -> None:
    """Record, in the job's history, which node this attempt (or rank of a gang) runs on."""
    from .jobs import note
    from .tables import Job, pool_tx

    rank = f" rank {spec['gang']['rank']}/{spec['gang']['world_size']}" if spec.get("gang") else ""
    try:
        with pool_tx() as s:
            job = s.get(Job, spec["job_id"])
            if job is not None and job.attempts == spec["attempt"]:
                note(s, job, f"attempt {spec['attempt']}{rank} runs on {_where()}")
    except Exception as e:  # a note is not worth failing the job for
        print(f"could not record the node: {type(e).__name__}: {e}", flush=True)


def _rendezvous() -> dict:
    """Run in the gang's first bundle: rank 0's address and a port free on its node."""
    import socket

    import ray

    addr = ray.util.get_node_ip_address()
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return {"master_addr": addr, "master_port": sock.getsockname()[1]}


def _run_remote(spec: dict, run_job: Callable[[dict, threading.Event], None], rendezvous: dict | None = None) -> None:
    """The body of the Ray task: the worker's own `run_job` (passed in, so this module never imports the worker),
    with the stop file as the stop signal and the attempt's log as stdout/stderr. A gang's rank gets its
    rendezvous (resolved by Ray from the first bundle's `_rendezvous` task) merged into spec['gang']."""
    if rendezvous is not None:
        spec = {**spec, "gang": {**rendezvous, **spec["gang"]}}
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
            print(f"on {_where()}", flush=True)
            _note_placement(spec)
            run_job(spec, stop)
    finally:
        done.set()


class RayTask:
    """One attempt on Ray: a task, or for a gang (spec['slots'] > 1) one task per rank in a placement group
    with a bundle per slot, spread over the nodes where possible. Rank 0's task reports the attempt; a failed
    rank ends the whole gang (the pool then retries it from the last checkpoint)."""

    def __init__(self, spec: dict, run_job: Callable[[dict, threading.Event], None], *, cpu: float, gpu: float):
        self.spec, self.run_job, self.cpu, self.gpu = spec, run_job, cpu, gpu
        self.refs: list = []
        self.pg = None
        self.pid = None  # nothing local to signal
        self._exitcode: int | None = None

    @property
    def ref(self):
        return self.refs[0] if self.refs else None

    def start(self) -> None:
        import ray

        _stop_path(self.spec).unlink(missing_ok=True)
        slots = int(self.spec.get("slots") or 1)
        name = f"mf-job-{self.spec['job_id']}"
        if slots == 1:
            remote = ray.remote(_run_remote).options(num_cpus=self.cpu, num_gpus=self.gpu, max_retries=0, name=name,
                                                     runtime_env=runtime_env())
            self.refs = [remote.remote(self.spec, self.run_job)]
            return
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu else {})}
        self.pg = placement_group([bundle] * slots, strategy="SPREAD", name=name)

        def in_bundle(i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=i)

        # Rank 0's address is only known once its bundle has a node: a zero-CPU task there finds it, and Ray
        # hands its result to every rank's task (which waits for it), so nothing here blocks on the cluster.
        where = ray.remote(_rendezvous).options(num_cpus=0, scheduling_strategy=in_bundle(0), max_retries=0)
        address = where.remote()
        for r in range(slots):
            spec = {**self.spec, "gang": {"rank": r, "world_size": slots}}
            if r:
                spec["result_path"] = f"{self.spec['result_path']}.rank{r}"
                spec["log_path"] = f"{self.spec['log_path']}.rank{r}"
            remote = ray.remote(_run_remote).options(num_cpus=self.cpu, num_gpus=self.gpu, max_retries=0,
                                                     name=f"{name}-rank{r}", scheduling_strategy=in_bundle(r),
                                                     runtime_env=runtime_env())
            self.refs.append(remote.remote(spec, self.run_job, address))

    @property
    def exitcode(self) -> int | None:
        """0 once rank 0 ended well, 1 if any rank raised or was cancelled; None while it runs."""
        import ray

        if self._exitcode is None and self.refs:
            ready, _ = ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
            failed = False
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception:  # a rank crashed, its node died, or it was cancelled
                    failed = True
            if failed or len(ready) == len(self.refs):
                if failed:
                    self._cancel()
                self._exitcode = 1 if failed else 0
                self._release()
        return self._exitcode

    def join(self, timeout: float | None = None) -> None:
        import ray

        if self.refs:
            ray.wait(self.refs, num_returns=len(self.refs), timeout=timeout)

    def request_stop(self) -> None:
        for r in range(int(self.spec.get("slots") or 1)):  # every rank watches its own stop file
            Path(_stop_path(self.spec) if r == 0 else f"{self.spec['result_path']}.rank{r}.stop").touch()

    def kill(self) -> None:
        if self.refs and self.exitcode is None:
            self._cancel()
            self._release()

    def _cancel(self) -> None:
        import ray

        for ref in self.refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def _release(self) -> None:
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
            self.pg = None
