"""Gang jobs: a job with `slots` > 1 runs as one data-parallel `torch.distributed` job over its placement.

The scheduler reserves a gang's slots all at once (`Job.placement`, a worker id per slot: the same worker may hold
several). Rank r runs on placement[r]. The pool handles the rendezvous: the lead worker (placement[0], the one
that holds the lease) picks the master address and a free port when it starts rank 0 and publishes them, with
the world size, in a rendezvous file beside the attempt's result (MF_HOME/pool/attempts/, shared by every node as
the artifacts are); each worker in the placement finds the running gang in the database, reads that file, and
starts its ranks. Every rank gets the torchrun environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE,
LOCAL_RANK) plus MF_GANG=1, which is all the training side needs (train/distributed.py): the pool never knows what
a gang computes.

Only the lead records the attempt (rank 0's result is the job's). A member that dies makes rank 0's next
collective fail, so the attempt fails and the job is requeued: the next attempt is a whole new gang, which resumes
from the last checkpoint rank 0 wrote. A preemption or a draining worker reaches every rank; the ranks agree on
the step to stop at, rank 0 checkpoints, and the gang is requeued as one job. On Ray (compute/ray_executor.py)
the lead starts every rank itself, in a Ray placement group, and the other workers start nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import settings

GANG_ENV = "MF_GANG"
_KEYS = ("MF_GANG", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def member_ranks(placement: list[str], worker_id: str) -> list[int]:
    """The ranks other than 0 that `worker_id` runs for a gang placed on `placement`."""
    return [r for r, wid in enumerate(placement) if r > 0 and wid == worker_id]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS picks it); rank 0 binds it moments later."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def master_addr() -> str:
    """The address the gang's other ranks reach rank 0 at: MF_GANG_ADDR (this host's address on the network the
    workers share), else the loopback, enough when every worker of a gang is on this machine."""
    return settings().gang_addr or "127.0.0.1"


def rendezvous_path(result_path: str | Path) -> Path:
    return Path(str(result_path) + ".gang")


def publish(result_path: str | Path, world_size: int) -> dict[str, Any]:
    """Pick rank 0's address and port, write them where the gang's members look, and return rank 0's gang."""
    addr = master_addr()
    gang = {"master_addr": addr, "master_port": free_port(addr if addr != "0.0.0.0" else "127.0.0.1"),
            "world_size": world_size}
    path = rendezvous_path(result_path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(gang))
    os.replace(tmp, path)
    return {**gang, "rank": 0}


def read(lead_result_path: str | Path) -> dict[str, Any] | None:
    """The gang's rendezvous, once the lead has published it (None before)."""
    try:
        return json.loads(rendezvous_path(lead_result_path).read_text())
    except (OSError, ValueError):
        return None


def environment_vars(gang: dict[str, Any]) -> dict[str, str]:
    """The torchrun environment of one rank."""
    return {GANG_ENV: "1", "MASTER_ADDR": str(gang["master_addr"]), "MASTER_PORT": str(gang["master_port"]),
            "RANK": str(gang["rank"]), "WORLD_SIZE": str(gang["world_size"]),
            "LOCAL_RANK": str(gang.get("local_rank", 0))}


@contextlib.contextmanager
def environment(gang: dict[str, Any] | None) -> Iterator[None]:
    """Run the block with one rank's environment (nothing changes for a job that is not a gang); the previous
    values come back afterwards (a Ray worker process runs many tasks)."""
    if not gang:
        yield
        return
    saved = {k: os.environ.get(k) for k in _KEYS}
    os.environ.update(environment_vars(gang))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class Member:
    """One rank > 0 this worker runs for a gang led elsewhere (or by itself)."""

    job_id: int
    attempt: int
    rank: int
    process: Any  # what `start` returned: has exitcode
    ended: bool = False
    stop_sent: bool = False


@dataclass
class Members:
    """A worker's gang members: started when their gang's rendezvous is published, stopped with their gang,
    killed once their gang's attempt is over; never recorded (the lead records the attempt)."""

    worker_id: str
    start: Callable[[Any, int, dict[str, Any]], Any]  # (job row, rank, rendezvous) -> a started process
    kill: Callable[[Any], None]
    ask_stop: Callable[[Any], None]
    lead_result_path: Callable[[Any], Path]  # job row -> the lead's result path (the rendezvous beside it)
    log: Callable[[str], None]
    release: Callable[[Any], None] = lambda process: None  # a member's process ended for good: free what it held
    members: dict[tuple[int, int, int], Member] = field(default_factory=dict)

    def tick(self, gangs: list[Any], accept_new: bool) -> None:
        """`gangs`: the running jobs with slots > 1 (rows with id, attempts, placement, preempt_requested)."""
        live = set()
        for job in gangs:
            for rank in member_ranks(list(job.placement or []), self.worker_id):
                key = (job.id, job.attempts, rank)
                live.add(key)
                m = self.members.get(key)
                if m is None:
                    rendezvous = read(self.lead_result_path(job)) if accept_new else None
                    if rendezvous is not None:  # else: the lead has not started rank 0 yet, look next tick
                        proc = self.start(job, rank, {**rendezvous, "rank": rank})
                        self.members[key] = Member(job.id, job.attempts, rank, proc)
                        self.log(f"job {job.id}: attempt {job.attempts} rank {rank}/{rendezvous['world_size']} "
                                 f"started, pid {getattr(proc, 'pid', None)} (gang led by {job.placement[0]})")
                elif job.preempt_requested and not m.stop_sent:
                    self.stop(m)
        for key, m in list(self.members.items()):
            done = m.process.exitcode is not None
            if done and not m.ended:
                m.ended = True
                self.log(f"job {m.job_id}: attempt {m.attempt} rank {m.rank} ended (exit code {m.process.exitcode})")
            if key not in live:  # the gang's attempt is over (or taken back): nothing of it may keep running
                if not done:
                    self.kill(m.process)
                    continue
                self.release(m.process)
                del self.members[key]

    def stop(self, m: Member) -> None:
        m.stop_sent = True
        self.ask_stop(m.process)

    def stop_all(self) -> None:
        for m in self.members.values():
            if not m.stop_sent and m.process.exitcode is None:
                self.stop(m)

    def running(self) -> bool:
        return any(m.process.exitcode is None for m in self.members.values())

    def kill_all(self) -> None:
        for m in self.members.values():
            if m.process.exitcode is None:
                self.kill(m.process)
