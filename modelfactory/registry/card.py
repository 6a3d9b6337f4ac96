"""A model card (Mitchell et al. 2019, in brief): what the model is for, how it was made, how well it does."""

from __future__ import annotations

from typing import Any

from ..report import metrics_table, recipe_str


def model_card(name: str, version: int, *, task: str, labels: list[str], metrics: dict[str, dict],
               lineage: dict[str, Any], targets: dict[str, Any], targets_met: dict[str, bool],
               deployed: str) -> str:
    adapter = lineage.get("pipeline") == "adapt"
    made = [
        f"- Order `{lineage.get('order')}` for tenant `{lineage.get('tenant')}`",
        f"- Data: dataset `{lineage.get('dataset')}` (artifact `{str(lineage.get('dataset_artifact'))[:12]}`), "
        f"split `{str(lineage.get('split'))[:12]}`",
    ]
    if adapter:
        made.append(f"- Base: `{lineage.get('teacher_base')}` (frozen, shared) + LoRA adapter trained → artifact "
                    f"`{str(lineage.get('teacher'))[:12]}`")
    else:
        made += [f"- Teacher: `{lineage.get('teacher_base')}` fine-tuned → artifact "
                 f"`{str(lineage.get('teacher'))[:12]}`",
                 f"- Recipe: {recipe_str(lineage.get('recipe') or [])}",
                 f"- Student: artifact `{str(lineage.get('student'))[:12]}` → ONNX "
                 f"`{str(lineage.get('deployed'))[:12]}`"]
    lines = [
        f"# {name} v{version}",
        "",
        f"**Task:** {task}" + (f" · **labels:** {', '.join(labels)}" if labels else ""),
        (f"**Deployed model:** a LoRA adapter on `{lineage.get('teacher_base')}` (served with `mf serve-llm`, "
         "many adapters on one copy of the base)" if adapter else
         f"**Deployed model:** `{deployed}` (ONNX, served with onnxruntime on CPU)"),
        "",
        "## How it was made",
        "",
        *made,
        "",
        "## Evaluation (held-out test split)",
        "",
        metrics_table(metrics),
        "",
        "## Targets",
        "",
    ]
    if not targets:
        lines.append("No targets were set.")
    for k, v in targets.items():
        lines.append(f"- {k} = {v}: {'met' if targets_met.get(k) else '**missed**'}")
    lines += ["", "## Intended use and limits", "",
              "Trained only on the order's data: expect it to do as well as the test split says on data like it, "
              + ("and worse on conversations unlike it. It inherits the base model's knowledge and its flaws."
                 if adapter else "and worse on text or images unlike it. Labels outside the list above are never "
                                 "predicted.")]
    return "\n".join(lines) + "\n"
