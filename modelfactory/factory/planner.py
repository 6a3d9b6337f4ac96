"""Order -> DAG of stages. Nodes name their inputs by node name; the runner turns names into artifact ids.

The teacher half (split, fine-tune, export, quantize) is shared by every student an order tries; the student half
is a chain built from the recipe (distill -> [prune -> recover] -> export -> optimize -> quantize), so a search
trial is just another chain under its own prefix, cached stage by stage like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import tasks
from ..errors import MFError
from ..tasks import pretrained
from .spec import LoraSpec, OrderSpec, RecipeStep


@dataclass
class Node:
    name: str
    stage: str
    params: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # role -> node name (or "@<artifact id>")


@dataclass
class Plan:
    nodes: list[Node]
    candidates: dict[str, str]  # model name in the report -> node that produced its ONNX dir
    deployed: str  # the candidate that ships
    baselines: dict[str, str] = field(default_factory=dict)  # baseline name -> node holding its evaluation

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def evaluate_node(name: str, producer: str, task: str, prefix: str = "") -> Node:
    return Node(f"{prefix}evaluate_{name}", "evaluate", {"task": task, "threads": 1},
                {"model": producer, "split": "split"})


def adapt_plan(spec: OrderSpec, dataset_artifact: str) -> Plan:
    """A generative order: the base's adapter ("teacher": the fine-tuned base, which a later distillation may
    teach from) trained on the split, and base and adapter measured on the same held-out rows."""
    task, t = spec.task, spec.teacher
    base = {"task": task, "_base": t.model, "base_id": pretrained.identity(t.model), "max_length": t.max_length}
    lora = (t.lora or LoraSpec()).model_dump()
    nodes = [
        Node("split", "split", spec.split.model_dump(), {"dataset": f"@{dataset_artifact}"}),
        Node("teacher", "adapt", {**base, "lora": lora, "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size,
                                  "truncate": spec.data.truncate, "seed": spec.split.seed,
                                  "_checkpoint_every": t.checkpoint_every}, {"split": "split"}),
        Node("evaluate_base", "evaluate_generative", {**base, "truncate": True}, {"split": "split"}),
        Node("evaluate_adapter", "evaluate_generative", {**base, "truncate": True},
             {"split": "split", "model": "teacher"}),
    ]
    return Plan(nodes, {"base": "evaluate_base", "adapter": "teacher"}, deployed="adapter")


def teacher_plan(spec: OrderSpec, dataset_artifact: str) -> Plan:
    task, t = spec.task, spec.teacher
    if t.augment and not tasks.get(task).augments:
        raise MFError(f"teacher.augment: the {task} family has no training augmentation; remove it")
    nodes = [
        Node("split", "split", spec.split.model_dump(), {"dataset": f"@{dataset_artifact}"}),
        Node("teacher", "finetune_teacher",
             {"task": task, "_pretrained": t.model, "pretrained_id": pretrained.identity(t.model),
              "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size, "max_length": t.max_length,
              "seed": spec.split.seed, "_checkpoint_every": t.checkpoint_every,
              "min_steps": tasks.get(task).teacher_min_steps if t.min_steps is None else t.min_steps,
              "retries": tasks.get(task).teacher_retries if t.retries is None else t.retries,
              **({"image_size": t.image_size} if t.image_size else {}),  # absent by default: cache keys unchanged
              **({"augment": True} if t.augment else {}),
              **({"_workers": t.workers} if t.workers > 1 else {})},  # how it runs, not what: not in the key
             {"split": "split"}),
        Node("export_teacher", "export_onnx", {"task": task}, {"model": "teacher", "split": "split"}),
    ]
    source = "export_teacher"
    if spec.optimize_onnx:
        nodes.append(Node("optimize_teacher", "optimize_onnx", {"task": task}, {"onnx": source, "model": "teacher"}))
        source = "optimize_teacher"
    # The baseline to beat: what a user gets for free by quantizing the teacher (dynamic INT8, no calibration).
    nodes.append(Node("quantize_teacher", "quantize", {"mode": "dynamic"}, {"onnx": source, "split": "split"}))
    candidates = {"teacher": "export_teacher", "teacher_int8": "quantize_teacher"}
    nodes += [evaluate_node(name, producer, task) for name, producer in candidates.items()]
    # What a practitioner would try first, on the same test split: the majority class, and the family's
    # classical model (text: TF-IDF + logistic regression) fitted on the rows' own labels.
    baselines = {"majority": "evaluate_baseline_majority"}
    nodes.append(Node("evaluate_baseline_majority", "evaluate_majority", {}, {"split": "split"}))
    classical = tasks.get(task).baseline_student()
    if classical is not None:
        nodes.append(Node("baseline_classical", "fit_student", {"task": task, **classical, "seed": spec.split.seed},
                          {"split": "split"}))
        nodes.append(evaluate_node("baseline_classical", "baseline_classical", task))
        baselines["classical"] = "evaluate_baseline_classical"
    return Plan(nodes, candidates, deployed="teacher", baselines=baselines)


def transfer_node(spec: OrderSpec) -> Node:
    """The distillation transfer set: training rows + augmented copies + the dataset's unlabeled rows, labeled
    by the fp32 teacher once; every student that distils over it shares this node (no prefix)."""
    return Node("transfer", "transfer_set", {"task": spec.task, **spec.transfer.model_dump()},
                {"teacher": "export_teacher", "split": "split"})


def labeling_plan(spec: OrderSpec, dataset_artifact: str) -> Plan:
    """A teacher to label a dataset with: the teacher half's split, fine-tune and export nodes, exactly as an
    order names them (so an order on the same seed rows with the same teacher shares their cache)."""
    nodes = [n for n in teacher_plan(spec, dataset_artifact).nodes if n.name in ("split", "teacher", "export_teacher")]
    return Plan(nodes, {"teacher": "export_teacher"}, deployed="teacher")


def student_chain(spec: OrderSpec, steps: list[RecipeStep], prefix: str = "") -> Plan:
    """Nodes for one student recipe; node names carry `prefix` (e.g. 'trial3/'), candidate names do not."""
    task, seed = spec.task, spec.split.seed
    family = tasks.get(task)
    model_steps = [s for s in steps if s.kind != "quantize"]
    nodes: list[Node] = []
    first = family.student_params(model_steps[0].distill.model_dump(mode="json"))
    # The family's settings for what the recipe leaves unset, baked into the node: they are part of its cache key.
    first = {**family.student_defaults(first), **{k: v for k, v in first.items() if v is not None}}
    uses_transfer = bool(first.get("transfer"))
    if uses_transfer:
        nodes.append(transfer_node(spec))
    data = {"split": "split"} | ({"transfer": "transfer"} if uses_transfer else {})
    if family.direct_student(first):  # fitted straight into an ONNX model dir: nothing to export or quantize
        first.pop("checkpoint_every", None)
        nodes.append(Node(f"{prefix}student", "fit_student", {"task": task, **first, "seed": seed}, data))
        nodes.append(evaluate_node("student", f"{prefix}student", task, prefix))
        return Plan(nodes, {"student": f"{prefix}student"}, deployed="student")
    prev = ""
    for i, step in enumerate(model_steps):
        name = f"{prefix}student" if i == len(model_steps) - 1 else f"{prefix}student.{i + 1}.{step.kind}"
        body = first if i == 0 else getattr(step, step.kind).model_dump(mode="json")
        ckpt = body.pop("checkpoint_every", None)
        if step.kind == "prune":
            nodes.append(Node(name, "prune", {"task": task, **body}, {"model": prev, "split": "split"}))
        else:
            inputs = data | {"teacher": "teacher"} | ({"init": prev} if step.kind == "recover" else {})
            nodes.append(Node(name, "distill", {"task": task, **body, "seed": seed, "_checkpoint_every": ckpt},
                              inputs))
        prev = name
    export = f"{prefix}export_student"
    nodes.append(Node(export, "export_onnx", {"task": task}, {"model": prev, "split": "split"}))
    candidates = {"student": export}
    quantize = next((s.quantize for s in steps if s.kind == "quantize"), None)
    if quantize is not None:
        source = export
        if spec.optimize_onnx:
            source = f"{prefix}optimize_student"
            nodes.append(Node(source, "optimize_onnx", {"task": task}, {"onnx": export, "model": prev}))
        nodes.append(Node(f"{prefix}quantize_student", "quantize", quantize.model_dump(mode="json"),
                          {"onnx": source, "split": "split"}))
        candidates["student_int8"] = f"{prefix}quantize_student"
    nodes += [evaluate_node(name, producer, task, prefix) for name, producer in candidates.items()]
    return Plan(nodes, candidates, deployed=list(candidates)[-1])


def plan(spec: OrderSpec, dataset_artifact: str) -> Plan:
    if tasks.get(spec.task).pipeline == "adapt":
        return adapt_plan(spec, dataset_artifact)
    teacher = teacher_plan(spec, dataset_artifact)
    student = student_chain(spec, spec.steps())
    return Plan(teacher.nodes + student.nodes, teacher.candidates | student.candidates, student.deployed,
                teacher.baselines)
