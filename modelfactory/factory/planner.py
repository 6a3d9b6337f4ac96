"""Order -> DAG of stages. Nodes name their inputs by node name; the runner turns names into artifact ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..tasks import pretrained
from .spec import OrderSpec

# The models an order evaluates, side by side in its report: name -> node producing its ONNX dir.
CANDIDATES = {"teacher": "export_teacher", "teacher_int8": "quantize_teacher",
              "student": "export_student", "student_int8": "quantize_student"}


@dataclass
class Node:
    name: str
    stage: str
    params: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)  # role -> node name (or "@<artifact id>")


@dataclass
class Plan:
    nodes: list[Node]
    deployed: str  # the candidate that ships

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def plan(spec: OrderSpec, dataset_artifact: str) -> Plan:
    task = spec.task
    t, s = spec.teacher, spec.student
    nodes = [
        Node("split", "split", spec.split.model_dump(), {"dataset": f"@{dataset_artifact}"}),
        Node("teacher", "finetune_teacher",
             {"task": task, "_pretrained": t.model, "pretrained_id": pretrained.identity(t.model),
              "epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size, "max_length": t.max_length,
              "seed": spec.split.seed, "_checkpoint_every": t.checkpoint_every},
             {"split": "split"}),
        Node("student", "distill", {"task": task, **s.model_dump(exclude={"checkpoint_every"}), "seed": spec.split.seed,
                                    "_checkpoint_every": s.checkpoint_every},
             {"split": "split", "teacher": "teacher"}),
        Node("export_teacher", "export_onnx", {"task": task}, {"model": "teacher", "split": "split"}),
        Node("export_student", "export_onnx", {"task": task}, {"model": "student", "split": "split"}),
    ]
    quantized = spec.quantize != "none"
    if quantized:
        nodes += [Node("quantize_teacher", "quantize", {"mode": spec.quantize}, {"onnx": "export_teacher"}),
                  Node("quantize_student", "quantize", {"mode": spec.quantize}, {"onnx": "export_student"})]
    for cand, producer in CANDIDATES.items():
        if producer.startswith("quantize") and not quantized:
            continue
        nodes.append(Node(f"evaluate_{cand}", "evaluate", {"task": task, "threads": 1},
                          {"model": producer, "split": "split"}))
    return Plan(nodes, deployed="student_int8" if quantized else "student")
