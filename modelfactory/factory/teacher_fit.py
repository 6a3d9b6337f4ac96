"""Teacher fine-tuning that holds up on a few hundred rows, where fine-tuning a pretrained encoder fails in known
ways (Mosbach et al. 2021): too few steps, a run collapsed to one class, the wrong epoch's weights kept. What is
done against each, how attempts resume after preemption, and what a data-parallel gang's ranks do, is in
docs/training.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import tasks
from ..artifacts import Artifact
from ..tasks.metrics import classification_metrics
from ..train import distributed
from ..train.loop import Checkpoint, config_from, fit

LR_FACTORS = (1.0, 0.3, 3.0)  # attempt k trains at lr * LR_FACTORS[k % 3] with seed + k
COLLAPSE_MARGIN = 0.05  # macro-F1 within this of the majority class's is no learning at all
EVALS_PER_RUN = 5


def majority_macro_f1(train_labels: list[str], val_labels: list[str], labels: list[str]) -> float:
    """Validation macro-F1 of always answering the training set's most frequent class."""
    top = Counter(train_labels).most_common(1)[0][0]
    return classification_metrics(val_labels, [top] * len(val_labels), labels)["macro_f1"]


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """n / (C * count_c): 1 for balanced data; rare classes weigh more, so one class cannot win by frequency."""
    counts = torch.bincount(targets, minlength=n_classes).float().clamp(min=1.0)
    return counts.sum() / (n_classes * counts)


def epochs_for(epochs: float, n_rows: int, batch_size: int, min_steps: int) -> float:
    steps_per_epoch = max(1, math.ceil(n_rows / batch_size))
    return max(float(epochs), min_steps / steps_per_epoch)


def is_collapsed(val_macro_f1: float, majority_f1: float) -> bool:
    return val_macro_f1 <= majority_f1 + COLLAPSE_MARGIN


class TeacherFit:
    def __init__(self, ctx, split: Artifact, params: dict[str, Any]):
        self.ctx, self.params = ctx, params
        self.task = tasks.get(params["task"])
        self.labels: list[str] = split.manifest["labels"]
        self.train_df = pd.read_parquet(split.path / "train.parquet")
        self.val_df = pd.read_parquet(split.path / "val.parquet")
        self.majority_f1 = majority_macro_f1(self.train_df["label"].tolist(), self.val_df["label"].tolist(),
                                             self.labels)
        self.log_path = Path(ctx.work) / "attempts.json"

    def run(self) -> dict[str, Any] | None:
        """The stage's result; in a data-parallel gang, only rank 0's (the others return None: they trained
        beside it, rank 0 evaluates and writes)."""
        gang = distributed.world()
        attempts: list[dict[str, Any]] = json.loads(self.log_path.read_text()) if self.log_path.exists() else []
        attempts = distributed.broadcast_json(attempts)  # every rank resumes at rank 0's attempt
        n_attempts = 1 + int(self.params.get("retries", 0))
        for k in range(len(attempts), n_attempts):
            if attempts and not attempts[-1]["collapsed"]:
                break
            attempts.append(distributed.broadcast_json(self._attempt(k)))  # rank 0 decides (collapsed or not)
            if gang.lead:
                _atomic_write(self.log_path, json.dumps(attempts))
        if not gang.lead:
            return None
        best = max(attempts, key=lambda a: a["val_macro_f1"])
        bundle = self.task.load(Path(best["dir"]))
        self.task.save(bundle, self.ctx.out)
        self.ctx.notes["resumed_from_step"] = best.get("resumed_from_step") or None
        collapsed = all(a["collapsed"] for a in attempts)
        return {"metrics": {"val_accuracy": best["val_accuracy"], "val_macro_f1": best["val_macro_f1"],
                            "majority_val_macro_f1": self.majority_f1, "collapsed": collapsed,
                            "steps": best["steps"], "best_step": best["best_step"], "final_loss": best["final_loss"],
                            "attempts": [{k: v for k, v in a.items() if k != "dir"} for a in attempts]},
                "task": self.task.name, "labels": self.labels}

    def _attempt(self, k: int) -> dict[str, Any]:
        params, task = self.params, self.task
        lr = float(params["lr"]) * LR_FACTORS[k % len(LR_FACTORS)]
        seed = int(params.get("seed", 0)) + k
        # The first attempt checkpoints where every stage does (work/<key>/checkpoint); retries beside it.
        folder = Path(self.ctx.work) / (f"attempt{k}" if k else "")
        torch.manual_seed(seed)
        bundle = task.load_teacher(params["_pretrained"], self.labels, params, self.train_df)
        train = task.encode(bundle, self.train_df)
        weight = class_weights(train.targets, len(self.labels))
        bs = int(params.get("batch_size") or 32)
        epochs = epochs_for(params.get("epochs") or 1.0, len(train), bs, int(params.get("min_steps") or 0))
        cfg = config_from({**params, "lr": lr, "seed": seed, "epochs": epochs},
                          checkpoint_every=params.get("_checkpoint_every", 50))
        total = max(1, int(round(cfg.epochs * max(1, math.ceil(len(train) / bs)))))
        every = max(1, total // EVALS_PER_RUN)
        best_path = folder / "best.json"
        best = json.loads(best_path.read_text()) if best_path.exists() else {"val_macro_f1": -1.0}

        def loss_fn(model, batch, idx):
            return task.loss(task.forward(model, batch), train.targets[idx], weight=weight)

        def make_batch(idx):
            batch = task.collate(train, idx)
            if not params.get("augment"):
                return batch
            # Seeded by the batch's rows: the same batch gets the same perturbations after a resume.
            return task.augment(batch, torch.Generator().manual_seed(hash((cfg.seed, *idx)) & 0x7FFFFFFF))

        lead = distributed.world().lead

        def on_step(step: int, steps: int, loss: float) -> None:
            self.ctx.progress(step, steps, f"attempt {k + 1} loss {loss:.3f}")
            if (step % every and step != steps) or not lead:  # in a gang, rank 0 evaluates
                return
            scores = self._validate(bundle)
            bundle.model.train()
            if scores["val_macro_f1"] > best["val_macro_f1"]:
                best.update(scores, best_step=step)
                _save_dir(task, bundle, folder / "best")
                _atomic_write(best_path, json.dumps(best))

        result = fit(bundle.model, len(train), make_batch, loss_fn, cfg, Checkpoint(folder / "checkpoint"),
                     on_step=on_step, should_stop=self.ctx.should_stop)
        if not lead:
            return {}  # rank 0's account of the attempt is broadcast to every rank
        if best["val_macro_f1"] < 0:  # resumed after the last evaluation point: evaluate the final weights
            on_step(result.steps, result.steps, result.final_loss)
        shutil.rmtree(folder / "checkpoint", ignore_errors=True)
        return {"attempt": k + 1, "lr": lr, "seed": seed, "epochs": round(epochs, 3), "steps": result.steps,
                "best_step": best["best_step"], "val_accuracy": best["val_accuracy"],
                "val_macro_f1": best["val_macro_f1"], "final_loss": result.final_loss,
                "collapsed": is_collapsed(best["val_macro_f1"], self.majority_f1),
                "resumed_from_step": result.resumed_from_step, "dir": str(folder / "best")}

    def _validate(self, bundle) -> dict[str, float]:
        from .stages import _predict_torch

        pred, _ = _predict_torch(self.task, bundle, self.val_df)
        m = classification_metrics(self.val_df["label"].tolist(), [self.labels[i] for i in pred.tolist()],
                                   self.labels)
        return {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}


def _save_dir(task, bundle, dst: Path) -> None:
    """Save a model dir atomically: a kill mid-save leaves the previous best intact."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    task.save(bundle, tmp)
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
