"""A worker: registers its capacity, heartbeats, runs the jobs leased to it, each in its own process.

Why a process per job: a job can then be signalled (preemption: SIGUSR1 -> `should_stop` -> its kind's handler
checkpoints and raises StopRequested), killed (cancel, time limit) and measured without taking the worker down,
and a crashing job takes nothing else with it. What a job computes is its kind's business (compute/kinds.py).
Job processes are forked from a `multiprocessing` forkserver that has already imported torch and the kinds'
modules, so a job starts in milliseconds rather than the seconds an import takes, and the fork happens in a
single-threaded process (this one has a heartbeat thread).

Why they cannot outlive the worker: `kill -9` of a worker must not leave a job running that the pool believes
lost (it would be running twice once requeued). Each job process asks for SIGKILL when its parent dies
(PR_SET_PDEATHSIG; its parent is the forkserver, which exits once the worker is gone and no job holds its
"alive" pipe, which is why the job closes its copy) and, belt and braces, watches the worker's pid itself.

Who writes what: the scheduler writes leases; the worker starts a process for each new lease, renews its leases
with every heartbeat, and ends the attempt when the process ends (jobs.end_attempt: ledger row + transition).
If the job was cancelled or its lease taken back meanwhile, the worker kills the process and writes nothing:
whoever ended the attempt has billed it. A worker that registers under an id whose previous incarnation died
releases that incarnation's leases at once (billed as lost) instead of waiting for them to expire.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update

from ..config import settings
from ..errors import MFError, StopRequested
from ..store import utcnow
from . import gang, kinds
from .jobs import end_attempt, log_path
from .pool import die_with_parent
from .poolconfig import PoolConfig, pool_config
from .tables import Job, Worker, pool_read, pool_tx

# Imported once by the forkserver, so job processes start with them loaded. Besides the kinds' modules, what
# their jobs import lazily on first use (ONNX export, onnxruntime, the optimizer, the demo teacher's BERT): each
# would otherwise cost every job process a second or more. A module that fails to import is skipped.
LAZY_IMPORTS = ["torch.onnx", "torch._dynamo", "onnx", "onnxruntime", "onnxruntime.quantization",
                "onnxruntime.transformers.optimizer", "transformers.models.bert.modeling_bert"]


def preload() -> list[str]:
    # forkserver_guard first: the forkserver dies with the worker even while it imports the rest
    return [f"{__package__}.forkserver_guard", *kinds.modules(), *LAZY_IMPORTS]
EXIT_STOPPED = 75  # the job process stopped on request, after a checkpoint


@dataclass(frozen=True)
class Capacity:
    cpu: float
    gpu: float
    memory_gb: float


def default_capacity() -> Capacity:
    """All of this machine's CPUs, no GPU (advertise GPUs with --gpu), 80% of its memory."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 * 0.8
    except (ValueError, OSError, AttributeError):
        mem = 4.0
    return Capacity(cpu=float(os.cpu_count() or 1), gpu=0.0, memory_gb=round(mem, 1))


def pid_alive(pid: int) -> bool:
    """Whether a process (on this host) is alive; a zombie is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def register(worker_id: str, capacity: Capacity, *, host: str | None = None, pid: int | None = None,
             now: dt.datetime | None = None, config: PoolConfig | None = None) -> list[int]:
    """Add or revive worker `worker_id`; returns the jobs its dead previous incarnation held (now requeued).
    Refuses an id that a live worker is using."""
    cfg = config or pool_config()
    host, pid, now = host or socket.gethostname(), pid or os.getpid(), now or utcnow()
    with pool_tx() as s:
        w = s.get(Worker, worker_id)
        if w is not None and w.state in ("up", "stopping") and (w.host, w.pid) != (host, pid):
            fresh = w.last_heartbeat >= now - dt.timedelta(seconds=cfg.lease_timeout_s)
            if fresh and (w.host != host or pid_alive(w.pid)):
                raise MFError(f"worker id '{worker_id}' is in use by pid {w.pid} on {w.host} (last heartbeat "
                              f"{(now - w.last_heartbeat).total_seconds():.0f} s ago); choose another --id")
        orphans = []
        if w is not None:
            for job in s.scalars(select(Job).where(Job.state == "running", Job.lease_worker == worker_id)):
                why = f"worker lost: {worker_id} restarted (pid {w.pid} on {w.host} is gone)"
                end_attempt(s, job, "lost", why, ended=max(job.started or now, w.last_heartbeat), now=now,
                            error=why, config=cfg)
                orphans.append(job.id)
        else:
            w = Worker(id=worker_id)
            s.add(w)
        w.host, w.pid, w.cpu, w.gpu, w.memory_gb = host, pid, capacity.cpu, capacity.gpu, capacity.memory_gb
        w.started = w.last_heartbeat = now
        w.state = "up"
        return orphans


def heartbeat(worker_id: str, *, now: dt.datetime | None = None, config: PoolConfig | None = None) -> None:
    """I am alive: renew the worker's heartbeat and the leases of the jobs it holds."""
    cfg = config or pool_config()
    now = now or utcnow()
    with pool_tx() as s:
        w = s.get(Worker, worker_id)
        if w is None:
            raise MFError(f"worker '{worker_id}' is not registered")
        w.last_heartbeat = now
        if w.state == "lost":  # back after a stall: its old leases were taken back, new ones may come
            w.state = "up"
        s.execute(update(Job).where(Job.state == "running", Job.lease_worker == worker_id)
                  .values(lease_expires=now + dt.timedelta(seconds=cfg.lease_timeout_s)))


def set_state(worker_id: str, state: str) -> None:
    with pool_tx() as s:
        w = s.get(Worker, worker_id)
        if w is not None:
            w.state = state


# --- the job process -----------------------------------------------------------------------------------------------
def _job_process(spec: dict) -> None:
    """Runs in a process forked by the forkserver; reports through the JSON file spec['result_path']."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)  # so the forkserver can exit when the worker dies (see module doc)
        server._forkserver_alive_fd = None
    die_with_parent()
    os.setpgid(0, 0)  # our own process group: the worker can kill us and anything we start in one go
    if spec.get("limits"):  # a stage job: into its cgroup (or under its RLIMIT_AS) before it allocates anything
        from .sandbox.stage import enter

        enter(spec["limits"])
    log = os.open(spec["log_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for what, how in ((spec.get("limits") or {}).get("enforcement") or {}).items():
        print(f"limit {what}: {how}", flush=True)
    worker_pid = spec["worker_pid"]

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            if not pid_alive(worker_pid):
                os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watchdog, daemon=True).start()
    stop = threading.Event()
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.get("gpu_ids") or []))
    run_job(spec, stop)


def run_job(spec: dict, stop: threading.Event) -> None:
    """Run one attempt wherever we are (a forked job process, a Ray task): the outcome goes to the JSON file
    spec['result_path'], written atomically, which is all the worker reads back."""
    os.umask(0o077)  # what the platform writes (checkpoints, logs, results) is private to it (also on Ray)
    print(f"[{utcnow():%H:%M:%S}] job {spec['job_id']} attempt {spec['attempt']} on worker {spec['worker']}",
          flush=True)
    try:
        import torch

        torch.set_num_threads(max(1, int(spec["cpu"])))
    except ImportError:
        pass
    out: dict
    try:
        if spec["kind"] == kinds.COMMAND:
            out = _run_command(spec, stop)
        else:
            kind = kinds.get(spec["kind"])
            ctx = kinds.JobContext(spec["job_id"], spec["attempt"], spec["tenant"], spec["order_id"],
                                   spec["payload"], stop.is_set)
            with gang.environment(spec.get("gang")):  # a gang's rank: its torch.distributed rendezvous
                out = {"status": "ok", "result": kind.run(ctx)}
    except MFError as e:
        out = {"status": "error", "error": str(e), "retry": False}
    except StopRequested as e:
        out = {"status": "stopped", "step": kinds.get(spec["kind"]).checkpoint_step(spec["payload"]),
               "message": str(e)}
    except BaseException as e:
        traceback.print_exc()
        out = {"status": "error", "error": "".join(traceback.format_exception_only(e)).strip(), "retry": True}
        if isinstance(e, MemoryError) and (spec.get("limits") or {}).get("rlimit_as_gb"):  # its own cap: not retried
            out.update(retry=False, error=f"memory limit: the job went over its memory limit of "
                                          f"{spec['memory_gb']:g} GB (RLIMIT_AS: an allocation failed)")
    print(f"[{utcnow():%H:%M:%S}] {out['status']}", flush=True)
    tmp = Path(spec["result_path"] + ".tmp")
    tmp.write_text(json.dumps(out, default=str))
    os.replace(tmp, spec["result_path"])


def _run_command(spec: dict, stop: threading.Event) -> dict:
    try:
        from . import sandbox
    except ImportError:
        raise MFError("command jobs need modelfactory.compute.sandbox, which this installation lacks") from None
    p = spec["payload"]
    workdir = sandbox.tenant_workdir(spec["tenant"], spec["job_id"])
    env = {**(p.get("env") or {}), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    r = sandbox.run_command(list(p["argv"]), tenant=spec["tenant"], workdir=workdir, cpu=spec["cpu"],
                            gpu_ids=spec.get("gpu_ids"),
                            memory_gb=spec["memory_gb"], time_limit_s=spec["time_limit_s"], env=env,
                            should_stop=stop.is_set, network=bool(spec.get("network")),
                            allow_unisolated=bool(spec.get("allow_unisolated")), gpus=bool(spec.get("gpu")),
                            state_path=sandbox_state_path(spec["result_path"]))
    message = getattr(r, "message", "") or (f"exit code {r.exit_code}" if r.reason == "failed" else r.reason)
    result = {"exit_code": r.exit_code, "reason": r.reason, "message": message, "wall_seconds": r.wall_seconds,
              "cpu_seconds": r.cpu_seconds, "max_rss_mb": r.max_rss_mb, "stdout": str(r.stdout_path),
              "stderr": str(r.stderr_path), "outputs": str(r.outputs_dir), "workdir": str(workdir),
              "enforcement": getattr(r, "enforcement", {})}
    if r.reason == "ok":
        result["artifact"] = collect_outputs(spec["tenant"], spec["job_id"], r.outputs_dir)
        return {"status": "ok", "result": result}
    if r.reason == "stopped":
        return {"status": "stopped", "step": None, "result": result}
    # A command that failed, or went over its memory or time limit, fails for good: running it again as it is
    # would not help (the tenant resubmits).
    return {"status": "error", "error": f"command {r.reason}: {message} (stderr: {r.stderr_path})", "retry": False,
            "result": result}


def sandbox_state_path(result_path: str | Path) -> Path:
    """Where a command job's sandbox records what to kill (its cgroups, its process group): see `_kill`."""
    return Path(str(result_path) + ".sandbox")


def collect_outputs(tenant: str, job_id: int, outputs: Path) -> str | None:
    """The regular files a command left in its outputs/ folder, as a content-addressed artifact (None if there
    are none). The command has ended, and links are never followed: this runs with the platform's rights, so a
    tenant's symlink to a file of ours must not be copied into its artifact. The tenant is part of the id: two
    tenants' identical outputs stay two artifacts."""
    import shutil
    import stat

    from ..artifacts import ArtifactStore, content_hash, file_hash

    files: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(outputs, followlinks=False):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in names:
            path = Path(root) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                files.append((path.relative_to(outputs).as_posix(), path))
    if not files:
        return None
    files.sort()
    artifact_id = content_hash({"kind": "job-outputs", "tenant": tenant,
                                "files": [[rel, file_hash(path)] for rel, path in files]})
    store = ArtifactStore()
    if not store.exists(artifact_id):
        with store.create(artifact_id, kind="job-outputs", producer="command",
                          params={"tenant": tenant, "job": job_id}) as (tmp, extra):
            for rel, path in files:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, tmp / rel, follow_symlinks=False)
            extra["metrics"] = {"files": len(files), "bytes": sum(path.stat().st_size for _, path in files)}
    return artifact_id


# --- the worker ----------------------------------------------------------------------------------------------------
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
        self.gang = gang.Members(self.id, self._start_member, _kill_process, self._signal_stop,
                                 lambda job: self.attempts_dir / f"{job.id}.{job.attempts}.json", self.log)
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
        for d in (self.attempts_dir, self.logs_dir):  # private to the platform, like the artifacts
            d.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            d.mkdir(exist_ok=True, mode=0o700)
        # Start the forkserver (it imports torch and the stages, seconds) before registering: no lease is given
        # to a worker that could not start its job yet, nor expires while it warms up.
        if self.ray:
            from .ray_executor import connect

            self.log(f"executor: Ray at {connect(self.capacity.cpu, self.capacity.gpu)}")
        else:
            warm = self.ctx.Process(target=_noop)
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
                _kill(a)
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
                _kill(a)
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
                _kill(a)
            elif a.stop_sent is not None and now - a.stop_sent > self.cfg.preempt_grace_s:
                a.forced = "stop grace"
                _kill(a)

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
            a.process = self.ctx.Process(target=_job_process, args=(spec,), name=f"mf-job-{job.id}")
        a.process.start()
        self.running[job.id] = a
        where = "as a Ray task" if self.ray else f"pid {a.process.pid}"
        self.log(f"job {job.id} ({job.name}): attempt {job.attempts} started, {where}")

    def _limit_stage(self, a: _Attempt, job: Job, spec: dict) -> None:
        """Give a local stage job a cgroup with its memory (for the whole job), processes and GPU devices, as a
        command job gets (compute/sandbox/stage.py); say in the log when only an rlimit holds its memory."""
        from .sandbox.stage import stage_limits

        a.limits = stage_limits(f"mf-job-{job.id}.{job.attempts}", memory_gb=job.memory_gb, gpu_ids=a.gpus)
        a.limits.record(sandbox_state_path(a.result_path))  # so `_kill` kills the whole cgroup, as for commands
        spec["limits"] = {**a.limits.spec(), "enforcement": a.limits.enforcement}
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
        p = self.ctx.Process(target=_job_process, args=(spec,), name=f"mf-job-{job.id}-rank{rank}")
        p.start()
        return p

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
            from .sandbox import kill_recorded

            kill_recorded(sandbox_state_path(a.result_path))  # whatever it left in its cgroup; then the cgroup
            a.limits.remove()
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


def _noop() -> None:
    pass


def _kill_process(process: multiprocessing.process.BaseProcess) -> None:
    """SIGKILL a job process and its process group (a gang member's)."""
    if process.pid is not None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)


def _kill(a: _Attempt) -> None:
    """Kill a job process and everything it started, or cancel its Ray task.

    A local job process leads its own process group (see `_job_process`): the whole group gets SIGKILL. A tenant's
    command is not in that group (the sandbox gives it a session of its own, and it may have left even that with
    setsid): the sandbox recorded its cgroups and process group before starting it, and `kill_recorded` kills
    them, even though the job process that ran it is gone by then. Under bubblewrap the command also dies with
    its parent. A Ray task is cancelled through Ray (its command dies with the Ray worker under bubblewrap)."""
    if isinstance(a.process, multiprocessing.process.BaseProcess):
        _kill_process(a.process)
    elif hasattr(a.process, "kill"):
        a.process.kill()
    if a.kind == "command" or a.limits is not None:
        from .sandbox import kill_recorded

        kill_recorded(sandbox_state_path(a.result_path))
