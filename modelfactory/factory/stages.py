"""The stages: each a function of (input artifacts, params) -> a new artifact folder, versioned so that a change
in what a stage computes invalidates its cache. They only glue the layers that do the work together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import tasks
from ..artifacts import Artifact
from ..compress.distill import DistillConfig, distill_loss, make_connectors, uniform_layer_map
from ..compress.evaluate import evaluate_model
from ..compress.export import export_and_verify
from ..compress.quantize import optimize_onnx, quantize_dynamic_int8, quantize_static_int8
from ..data.split import sample_rows, stratified_cut, stratified_split
from ..data.versions import load_rows, unlabeled_inputs
from ..errors import MFError
from ..tasks.base import ONNX_FILE, copy_model_files
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


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _predict_torch(task: tasks.TaskFamily, bundle: tasks.Bundle, df: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, true class) for every row, in eval mode (the caller restores train mode if it trains)."""
    encoded = task.encode(bundle, df)
    bundle.model.eval()
    with torch.no_grad():
        preds = [task.forward(bundle.model, task.collate(encoded, idx)).logits.argmax(-1)
                 for idx in _chunks(len(encoded), 64)]
    return (torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)), encoded.targets


def _evaluate_torch(task: tasks.TaskFamily, bundle: tasks.Bundle, df: pd.DataFrame) -> float:
    pred, true = _predict_torch(task, bundle, df)
    return float((pred == true).float().mean()) if len(true) else 0.0


@stage("split", version=1, kind="split")
def split_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    df = load_rows(inputs["dataset"].id)
    parts = stratified_split(df, val=params["val"], test=params["test"], seed=params["seed"],
                             max_rows=params.get("max_rows"))
    if params.get("train_rows") and len(parts["train"]) > params["train_rows"]:
        parts["train"] = stratified_cut(parts["train"], params["train_rows"], params["seed"])
    for name, part in parts.items():
        part.to_parquet(ctx.out / f"{name}.parquet", index=False)
    labels = sorted(df["label"].unique().tolist()) if "label" in df else []
    return {"metrics": {name: len(part) for name, part in parts.items()}, "labels": labels}


@stage("finetune_teacher", version=2, kind="model")
def finetune_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the teacher so that it does not collapse on small data: enough steps whatever the size, classes
    weighed against imbalance, the best-on-validation weights kept (not the last), and a run whose validation
    macro-F1 is no better than the majority class retried with another seed and learning rate."""
    from .teacher_fit import TeacherFit

    return TeacherFit(ctx, inputs["split"], params).run()


@stage("distill", version=4, kind="model")
def distill_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """Train a student against the teacher: a new one built from the teacher (a shrunken copy, or a small model
    of another kind over a vocabulary from the data), or, given an `init` model (e.g. a pruned one), recover that
    model's accuracy. With a `transfer` input the student learns the teacher's logits over the transfer set
    (labeled rows, augmented and unlabeled ones) instead of over the labeled rows alone."""
    task = tasks.get(params["task"])
    split = inputs["split"]
    train_df = read_split(split, "train")
    teacher = task.load(inputs["teacher"].path)
    given_logits = None
    if "transfer" in inputs:
        train_df, given_logits = read_transfer(inputs["transfer"])
    if "init" in inputs:
        student = task.load(inputs["init"].path)
    else:
        own_rows = train_df[train_df.get("source", "train") != "augmented"] if "source" in train_df else train_df
        student = task.specialize(task.build_student(teacher, params, own_rows), own_rows, params)
    cfg = DistillConfig(alpha=params["alpha"], temperature=params["temperature"],
                        hidden_weight=params.get("hidden_weight", 0.0),
                        attention_weight=params.get("attention_weight", 0.0))
    s_train = task.encode(student, train_df)
    t_train = task.encode(teacher, train_df) if given_logits is None or cfg.needs_live_teacher else None
    teacher.model.eval()
    if given_logits is not None:
        t_logits = given_logits
    else:
        with torch.no_grad():  # soft labels once, not every epoch
            t_logits = torch.cat([task.forward(teacher.model, task.collate(t_train, chunk)).logits
                                  for chunk in _chunks(len(t_train), 64)])
    s_widths, t_widths = task.feature_widths(student), task.feature_widths(teacher)
    if cfg.hidden_weight and not (s_widths and t_widths):
        raise MFError(f"hidden_weight > 0, but {task.name} models expose no intermediate features to match")
    layer_map = uniform_layer_map(len(s_widths), len(t_widths)) if s_widths and t_widths else []
    connectors = make_connectors([(s_widths[i], t_widths[j]) for i, j in enumerate(layer_map)])
    trainable = torch.nn.ModuleDict({"student": student.model, "connectors": connectors})

    def loss_fn(model, batch, idx):
        s_out = task.forward(model["student"], batch, hidden_states=cfg.hidden_weight > 0,
                             attentions=cfg.attention_weight > 0)
        t_out = None
        if cfg.needs_live_teacher:
            with torch.no_grad():
                t_out = task.forward(teacher.model, task.collate(t_train, idx), hidden_states=cfg.hidden_weight > 0,
                                     attentions=cfg.attention_weight > 0)
        return distill_loss(cfg, s_out, t_logits[idx], s_train.targets[idx], t=t_out, layer_map=layer_map,
                            connectors=model["connectors"], mask=batch.get("attention_mask"))

    tcfg = config_from(params, checkpoint_every=params.get("_checkpoint_every", 50))
    result = fit(trainable, len(s_train), lambda idx: task.collate(s_train, idx), loss_fn, tcfg,
                 Checkpoint(ctx.work / "checkpoint"),
                 on_step=lambda s, t, loss: ctx.progress(s, t, f"loss {loss:.3f}"), should_stop=ctx.should_stop)
    ctx.notes["resumed_from_step"] = result.resumed_from_step
    val_acc = _evaluate_torch(task, student, read_split(split, "val"))
    task.save(student, ctx.out)
    n_params = sum(p.numel() for p in student.model.parameters())
    return {"metrics": {"val_accuracy": val_acc, "steps": result.steps, "parameters": n_params},
            "task": task.name, "labels": student.labels}


# The size augmentation aims for by default (Tang et al. used far more). On rotten-tomatoes (3,749 rows), three
# BiLSTM students over 38k rows instead of 14k: +1.1 to +2.1 points on test, -0.4 to -1.2 on validation; a small
# gain inside the splits' noise, bought with about 2.3x longer small-student trials (README).
TRANSFER_ROWS = 36_000


def read_transfer(transfer: Artifact) -> tuple[pd.DataFrame, torch.Tensor]:
    df = pd.read_parquet(transfer.path / "transfer.parquet")
    return df, torch.from_numpy(np.load(transfer.path / "logits.npy"))


def left_out_inputs(split: Artifact, role: str, limit: int) -> pd.DataFrame:
    """Up to `limit` inputs (column `role`) of the rows the split did not train on with their labels - those a
    `train_rows` cut dropped from the training part and those the `max_rows` sample left out - without their
    labels; none equal to a validation or test input, so nothing the order is measured on is distilled on. Why
    the cut's rows too: an order on 500 of a corpus' rows still has the others' texts, the situation distillation
    with unlabeled data is for."""
    params = split.manifest.get("params", {})
    dataset = split.manifest.get("inputs", {}).get("dataset")
    if not (params.get("max_rows") or params.get("train_rows")) or not dataset or limit <= 0:
        return pd.DataFrame({role: []})
    rows = load_rows(dataset)
    _, left = sample_rows(rows, params.get("max_rows"), params["seed"])
    if params.get("train_rows"):  # the split stage's training part before its cut (the same seed: the same rows)
        before_cut = stratified_split(rows, val=params["val"], test=params["test"], seed=params["seed"],
                                      max_rows=params.get("max_rows"))["train"]
        left = pd.concat([before_cut.loc[~before_cut[role].isin(set(read_split(split, "train")[role]))], left],
                         ignore_index=True)
    held_out = set(read_split(split, "val")[role]) | set(read_split(split, "test")[role])
    left = left.loc[~left[role].isin(held_out), [role]].drop_duplicates(role)
    return left.sample(n=min(limit, len(left)), random_state=params["seed"]).reset_index(drop=True)


# v5: the rows a train_rows cut dropped join (v4, never measured: the same, unshuffled)
@stage("transfer_set", version=5, kind="transfer")
def transfer_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """The training rows, the dataset's unlabeled rows, the rows the split left out (a `train_rows` cut, a
    `max_rows` sample), and augmented copies of the training rows, each with the fp32 teacher's logits: computed
    once per (teacher, split, augmentation), read by every student that distils over it. Real inputs come first
    and copies fill up to about TRANSFER_ROWS: an input the user has teaches a student more than a perturbed copy
    of a training row."""
    task = tasks.get(params["task"])
    split, teacher = inputs["split"], inputs["teacher"]
    train = read_split(split, "train")
    labels = split.manifest["labels"]
    role = task.roles[0]
    parts = [train.assign(source="train")]
    unlabeled = unlabeled_inputs(split.manifest.get("inputs", {}).get("dataset"), role)
    if len(unlabeled):
        parts.append(unlabeled.assign(source="unlabeled"))
    if params.get("left_out", True):
        left = left_out_inputs(split, role, TRANSFER_ROWS - len(train) - len(unlabeled))
        if len(left):
            parts.append(left.assign(source="left_out"))
    copies = params.get("copies")
    if copies is None:
        room = TRANSFER_ROWS - sum(len(p) for p in parts)
        copies = max(0, min(20, room // max(1, len(train))))
    if copies:
        parts.append(task.augment_rows(train, copies, params.get("seed", 0), params).assign(source="augmented"))
    df = pd.concat(parts, ignore_index=True)
    logits_np = _teacher_logits(ctx, task.load_predictor(teacher.path), df[role].tolist())
    teacher_label = [labels[i] for i in logits_np.argmax(1)]
    own = df["source"] == "train"
    df["label"] = df["label"].where(own, pd.Series(teacher_label)) if "label" in df else teacher_label
    df[[role, "label", "source"]].to_parquet(ctx.out / "transfer.parquet", index=False)
    np.save(ctx.out / "logits.npy", logits_np)
    counts = df["source"].value_counts().to_dict()
    agree = float((pd.Series(teacher_label)[own.values] == train["label"].values).mean()) if len(train) else 0.0
    return {"metrics": {"rows": len(df), "copies": copies, **{f"{k}_rows": int(v) for k, v in counts.items()},
                        "teacher_train_accuracy": agree}, "task": task.name, "labels": labels}


def _teacher_logits(ctx: StageContext, predictor: Any, raw: list[Any]) -> np.ndarray:
    """The teacher's logits for every input, in batches of similar length (texts sorted by size: augmented
    n-gram samples are short, and a batch is padded to its longest row - 1.65x faster on rotten-tomatoes, the
    same logits), returned in the inputs' order."""
    order = np.argsort([len(x) if isinstance(x, str) else 0 for x in raw], kind="stable")
    batches = []
    for i in range(0, len(raw), 64):
        batches.append(predictor.logits(predictor.encode([raw[j] for j in order[i:i + 64]])))
        ctx.progress(min(i + 64, len(raw)), len(raw), "teacher labels the transfer set")
    sorted_logits = np.concatenate(batches).astype(np.float32)
    out = np.empty_like(sorted_logits)
    out[order] = sorted_logits
    return out


# v3: the classical export computes scikit-learn's pipeline exactly (aab6067); a v2 graph may differ by a few rows
@stage("fit_student", version=3, kind="onnx")
def fit_student_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """A student the family fits in one go (text: TF-IDF + logistic regression) straight into an ONNX model dir:
    on the rows' own labels (a baseline), or on the teacher's probabilities over the transfer set (distilled)."""
    task = tasks.get(params["task"])
    split = inputs["split"]
    labels = split.manifest["labels"]
    soft = None
    if "transfer" in inputs:  # distilled: the teacher's probabilities, not only its argmax (text_classical.py)
        train, logits = read_transfer(inputs["transfer"])
        soft = torch.softmax(logits.float(), dim=-1).numpy()
    else:
        train = read_split(split, "train")
    metrics = task.fit_student(train, params, ctx.out, teacher_labels=labels, soft_targets=soft)
    metrics["size_bytes"] = (ctx.out / ONNX_FILE).stat().st_size
    return {"metrics": metrics, "task": task.name, "labels": labels, "precision": "fp32"}


@stage("evaluate_majority", version=1, kind="evaluation")
def majority_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """The floor every classifier must clear: always answer the training set's most frequent class."""
    from ..tasks.metrics import classification_metrics

    split = inputs["split"]
    train, test = read_split(split, "train"), read_split(split, "test")
    top = train["label"].value_counts().idxmax()
    metrics = classification_metrics(test["label"].tolist(), [top] * len(test), split.manifest["labels"])
    return {"metrics": {**metrics, "predicts": top, "size_bytes": 0, "parameters": 0}}


@stage("export_onnx", version=2, kind="onnx")
def export_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    task = tasks.get(params["task"])
    bundle = task.load(inputs["model"].path)
    sample = read_split(inputs["split"], "val").head(params.get("parity_rows", 32))
    parity = export_and_verify(task, bundle, ctx.out, sample)
    n_params = sum(p.numel() for p in bundle.model.parameters())
    return {"metrics": {**parity, "parameters": n_params}, "task": task.name, "precision": "fp32"}


@stage("optimize_onnx", version=2, kind="onnx")
def optimize_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    task = tasks.get(params["task"])
    src = inputs["onnx"]
    copy_model_files(src.path, ctx.out)
    hints = task.onnx_optimizer_hints(task.load(inputs["model"].path))
    optimized = optimize_onnx(src.path / ONNX_FILE, ctx.out / ONNX_FILE, hints)
    return {"task": src.manifest.get("task"), "precision": "fp32",
            "metrics": {"parameters": src.metrics.get("parameters"), "optimized": optimized}}


@stage("quantize", version=2, kind="onnx")
def quantize_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    src = inputs["onnx"]
    copy_model_files(src.path, ctx.out)
    if params["mode"] == "dynamic":
        quantize_dynamic_int8(src.path / ONNX_FILE, ctx.out / ONNX_FILE)
    elif params["mode"] == "static":
        task = tasks.get(src.manifest["task"])
        predictor = task.load_predictor(src.path)
        train = read_split(inputs["split"], "train")
        rows = task.raw_inputs(train.sample(n=min(len(train), params.get("calibration_rows", 128)), random_state=0))
        quantize_static_int8(src.path / ONNX_FILE, ctx.out / ONNX_FILE, [predictor.encode([x]) for x in rows],
                             per_channel=params.get("per_channel", True))
    else:
        raise ValueError(f"unknown quantization mode '{params['mode']}'")
    return {"task": src.manifest.get("task"), "precision": f"int8-{params['mode']}",
            "metrics": {"parameters": src.metrics.get("parameters")}}


@stage("blend", version=1, kind="onnx")
def blend_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """Exported students of different kinds (input role: blend group) averaged in one model dir."""
    task = tasks.get(params["task"])
    task.blend({group: art.path for group, art in inputs.items()}, ctx.out)
    counts = [art.metrics.get("parameters") for art in inputs.values()]
    return {"task": task.name, "precision": " + ".join(str(a.manifest.get("precision")) for a in inputs.values()),
            "metrics": {"parameters": sum(counts) if None not in counts else None}}


@stage("prune", version=1, kind="model")
def prune_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """Structured pruning: heads, FFN or conv channels really removed (a smaller dense model, not a mask)."""
    task = tasks.get(params["task"])
    bundle = task.load(inputs["model"].path)
    sample = read_split(inputs["split"], "train").head(4)
    example = task.collate(task.encode(bundle, sample), list(range(len(sample))))
    from ..compress.prune import prune  # Torch-Pruning: imported when a recipe prunes

    report = prune(task.prunable(bundle, example), params["ratio"])
    task.save(bundle, ctx.out)
    return {"metrics": {**report, "parameters": sum(p.numel() for p in bundle.model.parameters())},
            "task": task.name, "labels": bundle.labels}


@stage("evaluate", version=2, kind="evaluation")
def evaluate_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """Test metrics and cost, plus validation accuracy (v2): a search chooses by the latter."""
    model = inputs["model"]
    metrics = evaluate_model(tasks.get(params["task"]), model.path, read_split(inputs["split"], "test"),
                             threads=params.get("threads", 1), val=read_split(inputs["split"], "val"))
    metrics["parameters"] = model.metrics.get("parameters")
    return {"metrics": metrics, "model": model.id, "precision": model.manifest.get("precision")}


# --- the "adapt" pipeline (generative families) ---------------------------------------------------------------
@stage("adapt", version=1, kind="adapter")
def adapt_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]) -> dict[str, Any]:
    """Train the family's adapter (e.g. LoRA) on the frozen base; checkpoints under the stage's work dir."""
    task = tasks.get(params["task"])
    split = inputs["split"]
    metrics = task.adapt(params["_base"], read_split(split, "train"), read_split(split, "val"), params, ctx.out,
                         ctx.work, should_stop=ctx.should_stop, progress=ctx.progress)
    ctx.notes["resumed_from_step"] = metrics.pop("resumed_from_step", None)
    return {"metrics": metrics, "task": task.name}


@stage("evaluate_generative", version=1, kind="evaluation")
def evaluate_generative_stage(ctx: StageContext, inputs: dict[str, Artifact], params: dict[str, Any]
                              ) -> dict[str, Any]:
    """Held-out metrics of the base alone, or of the base with the adapter given as input `model`."""
    model = inputs.get("model")
    metrics = tasks.get(params["task"]).evaluate(params["_base"], model.path if model else None,
                                                 read_split(inputs["split"], "test"), params)
    if model is not None:
        metrics.setdefault("size_bytes", model.metrics.get("size_bytes"))
    return {"metrics": metrics, "model": model.id if model else None}
