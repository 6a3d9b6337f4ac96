"""One rank of a tiny data-parallel fit, run as its own process by tests/test_ddp.py:
`python -m tests.ddp_support OUT` with the torchrun environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and
MF_GANG=1 for a gang; DDP_KILL_AT_STEP=n makes rank 1 SIGKILL itself after step n (a member dying mid-run),
DDP_STOP_AT_STEP=n asks rank 1 alone to stop after step n (exit 75 once the gang has checkpointed). Each rank that
finishes writes threads_RANK.json: the threads it still runs once it has left the gang."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from modelfactory.train import distributed
from modelfactory.train.loop import Checkpoint, StopRequested, TrainConfig, fit

N, FEATURES, CLASSES = 96, 8, 3


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def main(out: Path) -> None:
    x, y = data()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES))
    kill_at = int(os.environ.get("DDP_KILL_AT_STEP", "0"))
    stop_at = int(os.environ.get("DDP_STOP_AT_STEP", "0"))
    done = [0]
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-2, checkpoint_every=4, seed=0, warmup_ratio=0.1)

    def loss_fn(m, batch, idx):
        return torch.nn.functional.cross_entropy(m(batch["x"]), batch["y"])

    def on_step(step: int, total: int, loss: float) -> None:
        done[0] = step
        if kill_at and step == kill_at and distributed.world().rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    with distributed.joined() as gang:
        try:
            r = fit(model, N, lambda idx: {"x": x[idx], "y": y[idx]}, loss_fn, cfg, Checkpoint(out / "checkpoint"),
                    on_step=on_step,  # only rank 1 is asked to stop (a preempted member): the gang stops
                    should_stop=lambda: bool(stop_at) and gang.rank == 1 and done[0] >= stop_at)
        except StopRequested:
            sys.exit(75)
        if gang.lead:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
            (out / "result.json").write_text(json.dumps({"steps": r.steps, "resumed_from_step": r.resumed_from_step,
                                                         "final_loss": r.final_loss, "world": gang.size}))
    # Threads still running once the gang is left: gloo's must be gone (joined while the interpreter is alive).
    (out / f"threads_{gang.rank}.json").write_text(json.dumps(thread_names()))


def thread_names() -> list[str]:
    return sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
