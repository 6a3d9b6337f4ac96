"""One short, plain training loop (nanoGPT spirit): shuffle, step, checkpoint every N steps, resume.

The caller supplies the model, a loss function over a batch, and how to build a batch from indices; the loop
owns order, optimiser, schedule and checkpoints. Inside a gang's process group (train/distributed.py) the same
loop trains data-parallel: each rank takes its share of every batch, gradients are summed over the ranks, and
rank 0 writes the checkpoints. Checkpoints are written atomically (temp file + rename) so a
kill -9 at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import StopRequested  # raised here; callers may still import it from this module
from . import distributed

Batch = dict[str, torch.Tensor]


@dataclass
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0


@dataclass
class TrainResult:
    steps: int
    resumed_from_step: int
    final_loss: float


class Checkpoint:
    """model.safetensors + trainer.pt (optimiser/scheduler, loaded with weights_only=True) + state.json.

    `trainable_only`: store only the parameters being trained (a LoRA adapter's few MB, not the frozen base it
    sits on, which the next attempt rebuilds from the same pretrained checkpoint)."""

    def __init__(self, folder: Path, trainable_only: bool = False):
        self.folder = folder
        self.trainable_only = trainable_only

    def exists(self) -> bool:
        return (self.folder / "state.json").is_file()

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, step: int, loss: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.trainable_only:
            state = {k: v.detach().contiguous() for k, v in model.named_parameters() if v.requires_grad}
        else:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
        _atomic(self.folder / "model.safetensors", lambda p: save_file(_untie(state), str(p)))
        _atomic(self.folder / "trainer.pt", lambda p: torch.save({"opt": opt.state_dict(),
                                                                  "sched": sched.state_dict()}, p))
        # state.json last: it is what marks the checkpoint complete.
        _atomic(self.folder / "state.json", lambda p: p.write_text(json.dumps({"step": step, "loss": loss})))

    def load(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched) -> int:
        weights = load_file(str(self.folder / "model.safetensors"))
        model.load_state_dict(weights, strict=False)
        trainer = torch.load(self.folder / "trainer.pt", weights_only=True)
        opt.load_state_dict(trainer["opt"])
        sched.load_state_dict(trainer["sched"])
        return int(json.loads((self.folder / "state.json").read_text())["step"])


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings); store each once, as its own copy."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in state.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.setdefault(ptr, k)
    return out


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The same permutation for the same (seed, epoch): what makes resume land on the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def fit(
    model: torch.nn.Module,
    n_examples: int,
    make_batch: Callable[[Sequence[int]], Batch],
    loss_fn: Callable[[torch.nn.Module, Batch, Sequence[int]], torch.Tensor],
    cfg: TrainConfig,
    checkpoint: Checkpoint | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    steps_per_epoch = max(1, math.ceil(n_examples / cfg.batch_size))
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))

    step = 0
    if checkpoint is not None and checkpoint.exists():
        step = checkpoint.load(model, opt, sched)
    resumed_from = step
    loss_value = float("nan")
    gang = distributed.world()  # alone (rank 0 of 1) unless a gang's process group is up: see distributed.py
    distributed.broadcast_parameters(params)
    model.train()
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        order = epoch_order(n_examples, cfg.seed, epoch)
        idx = order[offset * cfg.batch_size:(offset + 1) * cfg.batch_size]
        if gang.size > 1:  # this rank's share of the global batch, its loss weighted by it
            idx, share = distributed.share(idx)
            loss = loss_fn(model, make_batch(idx), idx)
            opt.zero_grad(set_to_none=True)
            (loss * share).backward()
            distributed.sync_gradients(params)
        else:
            loss = loss_fn(model, make_batch(idx), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        loss_value = float(loss.detach()) if gang.size == 1 else distributed.mean(float(loss.detach()), share)
        if on_step:
            on_step(step, total, loss_value)
        stop = distributed.any_true(should_stop() if should_stop else False)  # the whole gang stops together
        if checkpoint is not None and (step % cfg.checkpoint_every == 0 or stop) and step < total:
            if gang.lead:
                checkpoint.save(model, opt, sched, step, loss_value)
            distributed.barrier()  # nobody moves on (or stops) before the checkpoint is complete
        if stop and step < total:
            raise StopRequested(f"stopped at step {step}/{total} after a checkpoint")
    model.eval()
    return TrainResult(steps=total, resumed_from_step=resumed_from, final_loss=loss_value)


def config_from(params: dict, **defaults) -> TrainConfig:
    """A TrainConfig from a stage's params, ignoring keys that are not training knobs."""
    known = set(asdict(TrainConfig()))
    merged = {**defaults, **{k: v for k, v in params.items() if k in known and v is not None}}
    return TrainConfig(**merged)
