"""Data-parallel training: one `torch.distributed` process group per gang of workers.

Who sets it up: whoever starts the gang's processes (the pool's workers, or Ray) gives each one the torchrun
environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) plus MF_GANG=1; `joined()` turns that into a process
group (gloo on CPU, plus nccl for CUDA tensors where the process sees a GPU) for the duration of a stage, and
does nothing without it, so the single-process path is the one it always was. The training loop asks
`world()` whether it trains alone.

What the loop does with it (train/loop.py): every rank walks the same global batch order and takes its share of
each batch (rows rank, rank + world, ...), its loss weighted by that share; the gradients are summed over the
ranks (`sync_gradients`, DistributedDataParallel's all-reduce), so a step sees the same rows and takes the same
gradient as the single-process step. The stop flag is reduced (any rank asked to stop -> all stop at the same
step), rank 0 alone writes checkpoints, and everyone waits for it, so a preempted gang leaves one checkpoint that
the whole next gang resumes from (a gang of any size: the checkpoint holds no per-rank state).

Small JSON values travel between ranks as byte tensors (`broadcast_json`), never pickled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

GANG_ENV = "MF_GANG"
TIMEOUT_S = 600.0  # a member that never arrives (or stops answering) fails the gang's attempt; the pool retries it


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0: the one that writes checkpoints, evaluates and produces the stage's artifact."""
        return self.rank == 0


def world() -> World:
    """This process's place in the current process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def backend() -> str:
    """gloo for CPU tensors; where the process sees a GPU, nccl for CUDA tensors (and gloo for the CPU ones: the
    stop flag, broadcasts, and a model that trains on the CPU)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def joined() -> Iterator[World]:
    """Join the gang described by the environment (see the module doc) for the duration of the block; alone
    (World(0, 1)) when the environment names no gang or a gang of one."""
    size = int(os.environ.get("WORLD_SIZE", "1")) if os.environ.get(GANG_ENV) else 1
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        yield world()
        return
    # torch.optim's first optimizer imports torch._dynamo, and with it torch.distributed._tools, which takes
    # references to a live process group that destroy_process_group cannot drop: the group then outlives the block,
    # its gloo threads outlive the interpreter, and a member that finished its work dies of SIGABRT at exit (1 run
    # in ~10). Imported before the group exists, it holds none, and the group is torn down here, threads joined.
    import torch._dynamo  # noqa: F401
    be = backend()
    if "nccl" in be:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(be, init_method="env://", rank=int(os.environ["RANK"]), world_size=size,
                            timeout=dt.timedelta(seconds=TIMEOUT_S))
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def any_true(flag: bool) -> bool:
    """Whether `flag` is true on any rank (every rank calls this at the same point)."""
    if world().size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean(value: float, weight: float) -> float:
    """The `weight`-weighted mean of `value` over the ranks (e.g. a loss over each rank's share of a batch)."""
    if world().size == 1:
        return value
    t = torch.tensor([value * weight, weight], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def barrier() -> None:
    if world().size > 1:
        dist.barrier()


def broadcast_json(value: object) -> object:
    """Rank 0's JSON-able `value`, on every rank (other ranks pass anything, e.g. None)."""
    w = world()
    if w.size == 1:
        return value
    data = json.dumps(value).encode() if w.lead else b""
    n = torch.tensor([len(data)], dtype=torch.int64, device=_device())
    dist.broadcast(n, 0)
    buf = torch.zeros(int(n.item()), dtype=torch.uint8, device=_device())
    if w.lead:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def share(indices: list[int]) -> tuple[list[int], float]:
    """This rank's rows of a global batch, and the weight its loss carries in the gang's mean. A batch with fewer
    rows than ranks leaves some ranks a stand-in row whose loss counts 0 (each rank must still step)."""
    w = world()
    mine = indices[w.rank::w.size]
    if not mine:
        return indices[:1], 0.0
    return mine, len(mine) / len(indices)


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Every rank starts from rank 0's weights (the same seed gives the same ones; this makes sure of it)."""
    if world().size > 1:
        for p in params:
            dist.broadcast(p.data, 0)


def sync_gradients(params: list[torch.Tensor]) -> None:
    """Sum the gradients of `params` over the ranks, in one all-reduce of one flat buffer.

    What DistributedDataParallel does, without wrapping the model: a task's forward may call its model's own
    methods (not `model(...)`), which DDP's hooks would not see. Each rank's loss was already scaled by its share
    of the global batch (`share`), so the sum is the gradient of the global batch's mean loss."""
    if world().size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if p.grad is None else p.grad.copy_(
            flat[offset:offset + n].view_as(p))
        offset += n


def _device() -> torch.device:
    return torch.device("cpu")  # the small values this module exchanges itself go through gloo
