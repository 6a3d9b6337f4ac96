"""The stages: each a function of (input artifacts, params) -> a new artifact folder, versioned so that a change
in what a stage computes invalidates its cache. They only glue the layers that do the work together."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import tasks
from ..artifacts import Artifact
from ..compress.distill import kd_objective
from ..compress.evaluate import evaluate_model
from ..compress.export import export_and_verify
from ..compress.quantize import quantize_dynamic_int8
from ..data.split import stratified_split
from ..data.versions import load_rows
from ..tasks.base import ONNX_FILE
from ..train.loop import Checkpoint, config_from, fit

SPLITS = ("train", "val", "test")


@dataclass
class StageContext:
    out: Path  # the artifact folder being written (renamed into place on success)
    work: Path  # survives a crash: checkpoints live here until the stage finishes
    progress: Callable[[int, int, str], None] = lambda done, total, info: None
    should_stop: Callable[[], bool] = lambda: False
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. resumed_from_step, reported by the runner


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    kind: str  # what the artifact is
    fn: Callable[[StageContext, dict[str, Artifact], dict[str, Any]], dict[str, Any]]


STAGES: dict[str, Stage] = {}


def stage(name: str, version: int, kind: str):
    def register(fn):
        STAGES[name] = Stage(name, version, kind, fn)
        return fn
    return register


def read_split(split: Artifact, part: str) -> pd.DataFrame:
    return pd.read_parquet(split.path / f"{part}.parquet")


def _evaluate_torch(task: tasks.TaskFamily, bundle: tasks.Bundle, df: pd.DataFrame) -> float:
    encoded = task.encode(bundle, df)
    bundle.model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(encoded), 64):
            idx = list(range(i, min(i + 64, len(encoded))))
            logits = task.forward(bundle.model, task.collate(encoded, idx)).logits
            correct += int((logits.argmax(-1) == encoded.targets[idx]).sum())
    return correct / max(1, len(encoded))


@stage("split", version=1, kind="split")
def split_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    df = load_rows(inputs["dataset"].id)
    parts = stratified_split(df, val=params["val"], test=params["test"], seed=params["seed"],
                             max_rows=params.get("max_rows"))
    for name, part in parts.items():
        part.to_parquet(ctx.out / f"{name}.parquet", index=False)
    labels = sorted(df["label"].unique().tolist())
    return {"metrics": {name: len(part) for name, part in parts.items()}, "labels": labels}


@stage("finetune_teacher", version=1, kind="model")
def finetune_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    task = tasks.get(params["task"])
    split = inputs["split"]
    labels = split.manifest["labels"]
    bundle = task.load_teacher(params["_pretrained"], labels, params)
    train = task.encode(bundle, read_split(split, "train"))
    cfg = config_from(params, checkpoint_every=params.get("_checkpoint_every", 50))

    def loss_fn(model, batch, idx):
        return task.loss(task.forward(model, batch), train.targets[idx])

    result = fit(bundle.model, len(train), lambda idx: task.collate(train, idx), loss_fn, cfg,
                 Checkpoint(ctx.work / "checkpoint"),
                 on_step=lambda s, t, loss: ctx.progress(s, t, f"loss {loss:.3f}"), should_stop=ctx.should_stop)
    ctx.notes["resumed_from_step"] = result.resumed_from_step
    val_acc = _evaluate_torch(task, bundle, read_split(split, "val"))
    task.save(bundle, ctx.out)
    return {"metrics": {"val_accuracy": val_acc, "steps": result.steps, "final_loss": result.final_loss},
            "task": task.name, "labels": labels}


@stage("distill", version=1, kind="model")
def distill_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    task = tasks.get(params["task"])
    split = inputs["split"]
    teacher = task.load(inputs["teacher"].path)
    student = task.build_student(teacher, params)
    train = task.encode(student, read_split(split, "train"))

    teacher.model.eval()
    with torch.no_grad():  # soft labels once, not every epoch
        teacher_logits = torch.cat([
            task.forward(teacher.model, task.collate(train, list(range(i, min(i + 64, len(train)))))).logits
            for i in range(0, len(train), 64)])
    del teacher

    def loss_fn(model, batch, idx):
        logits = task.forward(model, batch).logits
        return kd_objective(logits, teacher_logits[idx], train.targets[idx], alpha=params["alpha"],
                            temperature=params["temperature"])

    cfg = config_from(params, checkpoint_every=params.get("_checkpoint_every", 50))
    result = fit(student.model, len(train), lambda idx: task.collate(train, idx), loss_fn, cfg,
                 Checkpoint(ctx.work / "checkpoint"),
                 on_step=lambda s, t, loss: ctx.progress(s, t, f"loss {loss:.3f}"), should_stop=ctx.should_stop)
    ctx.notes["resumed_from_step"] = result.resumed_from_step
    val_acc = _evaluate_torch(task, student, read_split(split, "val"))
    task.save(student, ctx.out)
    n_params = sum(p.numel() for p in student.model.parameters())
    return {"metrics": {"val_accuracy": val_acc, "steps": result.steps, "parameters": n_params},
            "task": task.name, "labels": student.labels}


@stage("export_onnx", version=1, kind="onnx")
def export_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    task = tasks.get(params["task"])
    bundle = task.load(inputs["model"].path)
    sample = read_split(inputs["split"], "val").head(params.get("parity_rows", 32))
    parity = export_and_verify(task, bundle, ctx.out, sample)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    return {"metrics": {**parity, "parameters": n_params}, "task": task.name, "precision": "fp32"}


@stage("quantize", version=1, kind="onnx")
def quantize_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    src = inputs["onnx"]
    for f in src.path.iterdir():  # tokenizer, mf_model.json: everything but the graph and the manifest
        if f.name not in (ONNX_FILE, "manifest.json") and f.is_file():
            shutil.copy2(f, ctx.out / f.name)
    if params["mode"] != "dynamic":
        raise ValueError(f"unknown quantization mode '{params['mode']}'")
    quantize_dynamic_int8(src.path / ONNX_FILE, ctx.out / ONNX_FILE)
    return {"task": src.manifest.get("task"), "precision": "int8-dynamic",
            "metrics": {"parameters": src.metrics.get("parameters")}}


@stage("evaluate", version=1, kind="evaluation")
def evaluate_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    model = inputs["model"]
    metrics = evaluate_model(tasks.get(params["task"]), model.path, read_split(inputs["split"], "test"),
                             threads=params.get("threads", 1))
    metrics["parameters"] = model.metrics.get("parameters")
    return {"metrics": metrics, "model": model.id, "precision": model.manifest.get("precision")}
