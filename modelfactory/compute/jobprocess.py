"""The job process: what runs inside the process a worker starts for each attempt (or inside a Ray task).

Why a process per job: a job can then be signalled (preemption: SIGUSR1 -> `should_stop` -> its kind's handler
checkpoints and raises StopRequested), killed (cancel, time limit) and measured without taking the worker down,
and a crashing job takes nothing else with it. What a job computes is its kind's business (compute/kinds.py).
Job processes are forked from a `multiprocessing` forkserver that has already imported torch and the kinds'
modules (`preload`), so a job starts in milliseconds rather than the seconds an import takes, and the fork
happens in a single-threaded process (the worker has a heartbeat thread).

Why they cannot outlive the worker: `kill -9` of a worker must not leave a job running that the pool believes
lost (it would be running twice once requeued). Each job process asks for SIGKILL when its parent dies
(PR_SET_PDEATHSIG; its parent is the forkserver, which exits once the worker is gone and no job holds its
"alive" pipe, which is why the job closes its copy) and, belt and braces, watches the worker's pid itself.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from pathlib import Path

from ..errors import MFError, StopRequested
from ..store import utcnow
from . import gang, kinds
from .pool import die_with_parent
from .registration import pid_alive

# Imported once by the forkserver, so job processes start with them loaded. Besides the kinds' modules, what
# their jobs import lazily on first use (ONNX export, onnxruntime, the optimizer, the demo teacher's BERT): each
# would otherwise cost every job process a second or more. A module that fails to import is skipped.
LAZY_IMPORTS = ["torch.onnx", "torch._dynamo", "onnx", "onnxruntime", "onnxruntime.quantization",
                "onnxruntime.transformers.optimizer", "transformers.models.bert.modeling_bert"]


def preload() -> list[str]:
    # forkserver_guard first: the forkserver dies with the worker even while it imports the rest
    return [f"{__package__}.forkserver_guard", *kinds.modules(), *LAZY_IMPORTS]
EXIT_STOPPED = 75  # the job process stopped on request, after a checkpoint


def job_process(spec: dict) -> None:
    """Runs in a process forked by the forkserver; reports through the JSON file spec['result_path']."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)  # so the forkserver can exit when the worker dies (see the module doc)
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
    """Where a command job's sandbox records what to kill (its cgroups, its process group): see worker.kill_attempt."""
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


def noop() -> None:
    """The forkserver's first job: starting it makes the forkserver import its preload list."""

