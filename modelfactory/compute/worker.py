"""A worker: registers its capacity, heartbeats, runs the jobs leased to it, each in its own process.

Who writes what: the scheduler writes leases; the worker starts a process for each new lease (compute/jobprocess.py
says why a process, and why it cannot outlive the worker), renews its leases with every heartbeat
(compute/registration.py), and ends the attempt when the process ends (jobs.end_attempt: ledger row + transition).
If the job was cancelled or its lease taken back meanwhile, the worker kills the process and writes nothing:
whoever ended the attempt has billed it.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from ..artifacts import process_tmpdir
from ..config import settings
from ..errors import MFError
from ..store import utcnow
from . import gang
from .jobprocess import (
    EXIT_STOPPED,
    LAZY_IMPORTS,
    collect_outputs,
    job_process,
    noop,
    preload,
    run_job,
    sandbox_state_path,
)
from .jobs import end_attempt, log_path
from .poolconfig import PoolConfig, pool_config
from .registration import Capacity, default_capacity, heartbeat, pid_alive, register, set_state
from .tables import Job, pool_read, pool_tx

__all__ = ["EXIT_STOPPED", "LAZY_IMPORTS", "Capacity", "PoolWorker", "collect_outputs", "default_capacity",
           "heartbeat", "kill_attempt", "pid_alive", "preload", "register", "run_job", "sandbox_state_path",
           "set_state"]


@dataclass
class _Attempt:
    job_id: int
    attempt: int
    kind: str
    process: multiprocessing.process.BaseProcess
    started: float  # monotonic
    result_path: Path
    log_path: Path
    time_limit_s: float | None
    stop_sent: float | None = None  # monotonic time we asked it to checkpoint and stop
    stop_reason: str = ""
    forced: str | None = None  # we killed it: 'time limit' | 'stop grace'
    discard: bool = False  # the attempt was ended elsewhere (cancelled, lease taken back): write nothing
    gpus: tuple[int, ...] = ()  # the devices it may see (CUDA_VISIBLE_DEVICES)
    limits: Any = None  # a local stage job's sandbox.stage.StageLimits (its cgroup), removed when it ends


class PoolWorker:
    def __init__(self, worker_id: str | None = None, capacity: Capacity | None = None,
                 config: PoolConfig | None = None, log: Callable[[str], None] | None = None,
                 allow_unisolated: bool | None = None):
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        # Run tenants' commands without isolation where none is possible (not root, no bubblewrap): only for a
        # single-user machine. `mf worker/server --allow-unisolated` (MF_ALLOW_UNISOLATED=1 for its workers).
        self.allow_unisolated = settings().allow_unisolated if allow_unisolated is None else allow_unisolated
        self.capacity = capacity or default_capacity()
        self.cfg = config or pool_config()
        self.log = log or (lambda msg: print(f"[{utcnow():%H:%M:%S}] {self.id}: {msg}", file=sys.stderr,
                                             flush=True))
        self.running: dict[int, _Attempt] = {}
        self.member_limits: dict[Any, tuple[Any, Path]] = {}  # a gang member's process -> its limits, result path
        self.gang = gang.Members(self.id, self._start_member, kill_process, self._signal_stop,
                                 lambda job: self.attempts_dir / f"{job.id}.{job.attempts}.json", self.log,
                                 release=self._release_member)
        self.stopping = False
        self._hb_stop = threading.Event()
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload())
        if self.cfg.executor not in ("local", "ray"):
            raise MFError(f"unknown executor '{self.cfg.executor}' (MF_EXECUTOR): use 'local' or 'ray'")
        self.ray = self.cfg.executor == "ray"
        home = settings().home
        self.attempts_dir, self.logs_dir = home / "pool" / "attempts", home / "logs" / "jobs"

    # life cycle
    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Work until SIGTERM/SIGINT (or `until()`), then stop gracefully: running jobs are asked to checkpoint
        and are requeued as preempted."""
        # Before the forkserver starts: its pymp-* folders and its job processes' temp files go to a folder of this
        # worker's own, which the next worker or server to start removes if this one is killed.
        self.log(f"temp dir: {process_tmpdir('worker')}")
        for d in (self.attempts_dir, self.logs_dir):  # private to the platform, like the artifacts
            d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            d.mkdir(exist_ok=True, mode=0o700)
        # Start the forkserver (it imports torch and the stages, seconds) before registering: no lease is given
        # to a worker that could not start its job yet, nor expires while it warms up.
        if self.ray:
            from .ray_executor import connect

            self.log(f"executor: Ray at {connect(self.capacity.cpu, self.capacity.gpu)}")
        else:
            warm = self.ctx.Process(target=noop)
            warm.start()
            warm.join()
        if not self.ray:  # a Ray task decides on the node it runs on
            from .sandbox import isolation, unisolated_refusal

            mode, detail = isolation()
            self.log(f"tenant commands: isolation {mode} ({detail})" if mode != "none" else
                     f"tenant commands: NOT isolated, run as this worker's user (--allow-unisolated): {detail}"
                     if self.allow_unisolated else f"tenant commands will be refused: {unisolated_refusal(detail)}")
        orphans = register(self.id, self.capacity, config=self.cfg)
        if orphans:
            self.log(f"released the leases of a dead predecessor: jobs {', '.join(map(str, orphans))}")
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        hb = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        hb.start()
        self.log(f"up: {self.capacity.cpu:g} CPU, {self.capacity.gpu:g} GPU, {self.capacity.memory_gb:g} GB "
                 f"(heartbeat {self.cfg.heartbeat_s:g} s, lease {self.cfg.lease_timeout_s:g} s)")
        try:
            while not self.stopping and not until():
                try:
                    self.tick()
                except Exception as e:  # e.g. the database busy beyond its timeout: look again shortly
                    self.log(f"{type(e).__name__}: {e}")
                time.sleep(self.cfg.worker_poll_s)
            self.drain("worker stopping")
        finally:
            self._hb_stop.set()
            hb.join(timeout=5)
            for a in self.running.values():  # only on an unexpected error: leave nothing behind
                kill_attempt(a)
            self.gang.kill_all()
            set_state(self.id, "stopped")
            for sig, handler in old.items():
                signal.signal(sig, handler)
            self.log("stopped")

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True

    def _heartbeats(self) -> None:
        while not self._hb_stop.wait(self.cfg.heartbeat_s):
            try:
                heartbeat(self.id, config=self.cfg)
            except Exception as e:  # a busy database: try again next beat (the lease has slack)
                self.log(f"heartbeat failed: {e}")

    def drain(self, reason: str) -> None:
        """Ask every running job to checkpoint and stop; wait for them (killing those that overrun the grace)."""
        set_state(self.id, "stopping")  # no new leases meanwhile
        for a in self.running.values():
            self._ask_stop(a, reason)
        self.gang.stop_all()  # ranks of gangs led elsewhere: the whole gang checkpoints and stops together
        deadline = time.monotonic() + self.cfg.preempt_grace_s + 30
        # past the deadline, leases expire and the jobs are requeued
        while (self.running or self.gang.running()) and time.monotonic() < deadline:
            try:
                self.tick(accept_new=False)
            except Exception as e:
                self.log(f"{type(e).__name__}: {e}")
            time.sleep(min(0.2, self.cfg.worker_poll_s))

    # one look at the world
    def tick(self, accept_new: bool = True) -> None:
        for a in list(self.running.values()):
            if a.process.exitcode is not None:
                self._finish(a)
        with pool_read() as s:
            rows = list(s.scalars(select(Job).where(or_(
                Job.id.in_(list(self.running)), and_(Job.state == "running", Job.lease_worker == self.id)))))
        for job in rows:
            a = self.running.get(job.id)
            if a is None:
                if accept_new and not self.stopping and job.state == "running" and job.lease_worker == self.id:
                    self._start(job)
                continue
            if a.discard:
                continue
            if not (job.state == "running" and job.lease_worker == self.id and job.attempts == a.attempt):
                why = f"job {job.state}" if job.state != "running" else "lease taken back"
                self.log(f"job {a.job_id}: {why}; killing attempt {a.attempt}")
                a.discard = True
                kill_attempt(a)
            elif job.preempt_requested and a.stop_sent is None:
                self._ask_stop(a, "preempted")
        if not self.ray:  # on Ray the lead starts every rank of its gangs itself
            with pool_read() as s:
                gangs = list(s.scalars(select(Job).where(Job.state == "running", Job.slots > 1)))
            self.gang.tick(gangs, accept_new and not self.stopping)
        now = time.monotonic()
        for a in self.running.values():
            if a.discard or a.forced or a.process.exitcode is not None:
                continue
            slack = 30 if a.kind == "command" else 0  # the sandbox enforces a command's own limit
            if a.time_limit_s is not None and now - a.started > a.time_limit_s + slack:
                a.forced = "time limit"
                kill_attempt(a)
            elif a.stop_sent is not None and now - a.stop_sent > self.cfg.preempt_grace_s:
                a.forced = "stop grace"
                kill_attempt(a)

    def _ask_stop(self, a: _Attempt, reason: str) -> None:
        if a.stop_sent is not None or a.process.exitcode is not None:
            return
        a.stop_sent, a.stop_reason = time.monotonic(), reason
        self.log(f"job {a.job_id}: {reason}, asking it to checkpoint and stop")
        if hasattr(a.process, "request_stop"):  # a Ray task: no pid of ours to signal
            a.process.request_stop()
            return
        try:
            os.kill(a.process.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def _start(self, job: Job) -> None:
        base = f"{job.id}.{job.attempts}"
        a = _Attempt(job.id, job.attempts, job.kind, None, time.monotonic(),  # type: ignore[arg-type]
                     self.attempts_dir / f"{base}.json", log_path(job.id, job.attempts), job.time_limit_s)
        if job.kind != "command" and a.time_limit_s is None:  # a stage sets none: the pool's default holds it
            a.time_limit_s = self.cfg.stage_time_limit_s
        a.result_path.unlink(missing_ok=True)
        spec = {"job_id": job.id, "attempt": job.attempts, "kind": job.kind, "payload": job.payload,
                "tenant": job.tenant, "order_id": job.order_id, "cpu": job.cpu, "gpu": job.gpu,
                "memory_gb": job.memory_gb, "time_limit_s": job.time_limit_s, "worker": self.id,
                "worker_pid": os.getpid(), "result_path": str(a.result_path), "log_path": str(a.log_path),
                "allow_unisolated": self.allow_unisolated}
        if job.kind == "command":
            from .grants import network_granted

            spec["network"] = network_granted(job.tenant)
            sandbox_state_path(a.result_path).unlink(missing_ok=True)
        if not self.ray:  # Ray pins the devices of its own tasks
            a.gpus = self._assign_gpus(job.gpu)
            spec["gpu_ids"] = list(a.gpus)
            if job.kind != "command":
                self._limit_stage(a, job, spec)
        if job.slots > 1:  # a gang: this is rank 0; on Ray it starts the others too (compute/gang.py)
            if self.ray:
                spec["slots"] = job.slots
            else:
                spec["gang"] = gang.publish(a.result_path, job.slots)
        if self.ray:
            from .ray_executor import RayTask

            a.process = RayTask(spec, run_job, cpu=job.cpu, gpu=job.gpu)
        else:
            a.process = self.ctx.Process(target=job_process, args=(spec,), name=f"mf-job-{job.id}")
        a.process.start()
        self.running[job.id] = a
        where = "as a Ray task" if self.ray else f"pid {a.process.pid}"
        self.log(f"job {job.id} ({job.name}): attempt {job.attempts} started, {where}")

    def _limit_stage(self, a: _Attempt, job: Job, spec: dict) -> None:
        """Give a local stage job a cgroup with its memory (for the whole job), processes and GPU devices, as a
        command job gets (compute/sandbox/stage.py); say in the log when only an rlimit holds its memory."""
        a.limits = _stage_limits(f"mf-job-{job.id}.{job.attempts}", job.memory_gb, a.gpus, a.result_path, spec)
        if a.limits.rlimit_fallback:
            self.log(f"job {job.id}: memory limit by {a.limits.enforcement['memory']}")

    def _start_member(self, job: Job, rank: int, rendezvous: dict) -> multiprocessing.process.BaseProcess:
        """Rank `rank` (> 0) of a gang: a job process like the lead's, with its own result and log files (the
        lead records the attempt; a member's result is never read)."""
        base = f"{job.id}.{job.attempts}.rank{rank}"
        spec = {"job_id": job.id, "attempt": job.attempts, "kind": job.kind, "payload": job.payload,
                "tenant": job.tenant, "order_id": job.order_id, "cpu": job.cpu, "gpu": job.gpu,
                "memory_gb": job.memory_gb, "time_limit_s": job.time_limit_s, "worker": self.id,
                "worker_pid": os.getpid(), "result_path": str(self.attempts_dir / f"{base}.json"),
                "log_path": str(self.logs_dir / f"{base}.log"), "gang": rendezvous,
                "gpu_ids": list(self._assign_gpus(job.gpu))}
        limits = None
        if job.kind != "command":  # each rank is held to the job's limits, as the lead is (memory_gb is per slot)
            limits = _stage_limits(f"mf-job-{base}", job.memory_gb, spec["gpu_ids"], Path(spec["result_path"]), spec)
        p = self.ctx.Process(target=job_process, args=(spec,), name=f"mf-job-{job.id}-rank{rank}")
        if limits is not None:  # keyed by the process object, not its pid, which the OS may reuse meanwhile
            self.member_limits[p] = (limits, Path(spec["result_path"]))
        try:
            p.start()
        except BaseException:
            self._release_member(p)
            raise
        return p

    def _release_member(self, process: multiprocessing.process.BaseProcess) -> None:
        """A gang member ended and its gang's attempt is over: whatever it left in its cgroup, then the cgroup."""
        limits, result_path = self.member_limits.pop(process, (None, None))
        if limits is not None:
            _remove_limits(limits, result_path)

    @staticmethod
    def _signal_stop(process: multiprocessing.process.BaseProcess) -> None:
        try:
            os.kill(process.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def _assign_gpus(self, gpu: float) -> tuple[int, ...]:
        """Device indices for a job asking for `gpu` GPUs: free whole devices first; a fractional request may
        share the least-used one. A job asking for none sees none (so it cannot take a GPU it did not pay for)."""
        need = math.ceil(gpu)
        if need <= 0:
            return ()
        load = dict.fromkeys(range(int(self.capacity.gpu)), 0)
        for other in self.running.values():
            for g in other.gpus:
                load[g] = load.get(g, 0) + 1
        return tuple(sorted(sorted(load, key=lambda g: (load[g], g))[:need]))

    def _finish(self, a: _Attempt) -> None:
        a.process.join()
        if not a.discard:
            self._record(a)  # if this raises, the attempt stays in `running` and is recorded on a later tick
        if a.limits is not None:
            _remove_limits(a.limits, a.result_path)
        del self.running[a.job_id]

    def _record(self, a: _Attempt) -> None:
        try:
            out = json.loads(a.result_path.read_text())
        except (OSError, ValueError):
            out = {"status": "died"}
        with pool_tx() as s:
            job = s.get(Job, a.job_id)
            if job is None or not (job.state == "running" and job.lease_worker == self.id
                                   and job.attempts == a.attempt):
                self.log(f"job {a.job_id}: attempt {a.attempt} ended after it was taken back; not recorded")
                return
            status = out["status"]
            if a.forced == "time limit":
                end_attempt(s, job, "failed", f"time limit: stopped after {a.time_limit_s:g} s",
                            error=f"time limit of {a.time_limit_s:g} s exceeded: the job was killed", retry=False,
                            config=self.cfg)
            elif a.limits is not None and status != "ok" and a.limits.over_memory():
                why = (f"memory limit: the job went over its memory limit of {job.memory_gb:g} GB and was killed "
                       f"({a.limits.enforcement['memory']})")
                end_attempt(s, job, "failed", "failed", error=why, retry=False, config=self.cfg)
            elif status == "ok":
                result = out["result"]
                resumed = result.get("resumed_from_step") if isinstance(result, dict) else None
                how = " (cache hit)" if isinstance(result, dict) and result.get("cached") else ""
                how += f" (resumed from step {resumed})" if resumed else ""
                end_attempt(s, job, "succeeded", f"succeeded{how}", result=result, config=self.cfg)
            elif status == "stopped" or (a.forced == "stop grace" and a.stop_sent is not None):
                step = out.get("step")
                where = f": checkpointed at step {step}" if step else (
                    ": killed after the stop grace, nothing kept" if a.forced else ": stopped")
                end_attempt(s, job, "preempted", f"{a.stop_reason or 'preempted'}{where}", config=self.cfg)
            elif status == "error":
                end_attempt(s, job, "failed", "failed", error=out["error"], retry=bool(out.get("retry")),
                            result=out.get("result"), config=self.cfg)
            else:
                why = f"job process died (exit code {a.process.exitcode}; log {a.log_path})"
                end_attempt(s, job, "failed", "failed", error=why, config=self.cfg)
            self.log(f"job {a.job_id}: attempt {a.attempt} -> {job.state}")


def kill_process(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL a job process and its process group (a gang member's)."""
    if process.pid is not None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)


def kill_attempt(a: _Attempt) -> None:
    """Kill a job process and everything it started, or cancel its Ray task.

    A local job process leads its own process group (see jobprocess.job_process): the whole group gets SIGKILL.
    A tenant's command is not in that group (the sandbox gives it a session of its own, and it may have left even
    that with setsid): the sandbox recorded its cgroups and process group before starting it, and `kill_recorded` kills
    them, even though the job process that ran it is gone by then. Under bubblewrap the command also dies with
    its parent. A Ray task is cancelled through Ray (its command dies with the Ray worker under bubblewrap)."""
    if isinstance(a.process, multiprocessing.process.BaseProcess):
        kill_process(a.process)
    elif hasattr(a.process, "kill"):
        a.process.kill()
    if a.kind == "command" or a.limits is not None:
        from .sandbox import kill_recorded

        kill_recorded(sandbox_state_path(a.result_path))


def _stage_limits(name: str, memory_gb: float, gpus: tuple[int, ...] | list[int], result_path: Path,
                  spec: dict) -> Any:
    """The cgroup (or rlimit) of one stage job process, recorded beside its result so that killing the attempt
    kills the whole cgroup, as for commands, and described in `spec` for the job process to enter."""
    from .sandbox.stage import stage_limits

    limits = stage_limits(name, memory_gb=memory_gb, gpu_ids=gpus)
    limits.record(sandbox_state_path(result_path))
    spec["limits"] = {**limits.spec(), "enforcement": limits.enforcement}
    return limits


def _remove_limits(limits: Any, result_path: Path) -> None:
    """After a stage job process ended: whatever it left in its cgroup, then the cgroup."""
    from .sandbox import kill_recorded

    kill_recorded(sandbox_state_path(result_path))
    limits.remove()
