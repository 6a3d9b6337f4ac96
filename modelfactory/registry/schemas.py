"""Model versions as the world sees them: one typed shape for `mf models ls|show --json` (on this machine or
through `--server`) and for `/api/v1/models`, so the output never depends on where it was asked."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from .registry import ModelRef, contract_metrics, list_models


class ModelSummary(BaseModel):
    """A model version with its deployed metrics (the contract's shape: `student` = the deployed model)."""

    name: str
    version: int
    tenant: str
    task: str
    aliases: list[str]
    onnx_path: str = Field(description="the version's ONNX file in the store that holds it")
    artifact: str = Field(description="the deployed artifact's content hash")
    metrics: dict[str, Any] = Field(description="teacher, teacher_int8, and student = the deployed model")
    deployed: str | None = Field(description="which of the order's candidates was deployed")
    ratios: dict[str, Any] | None = Field(description="the deployed student against the teacher")
    baselines: dict[str, Any] | None = Field(None, description="classification: the majority class and the "
                                                               "classical model, on the same test split")
    created: dt.datetime


class VersionOut(BaseModel):
    version: int
    aliases: list[str]
    created: dt.datetime


class ModelDetail(ModelSummary):
    """A version with its lineage, model card and the model's other versions."""

    lineage: dict[str, Any]
    card: str
    onnx_bytes: int | None = Field(description="size of the ONNX file; null when the store has none")
    versions: list[VersionOut]


def _fields(r: ModelRef) -> dict[str, Any]:
    return {"name": r.name, "version": r.version, "tenant": r.tenant, "task": r.task, "aliases": r.aliases,
            "onnx_path": str(r.onnx_path), "artifact": r.artifact_id, "metrics": contract_metrics(r.metrics),
            "deployed": r.metrics.get("deployed"), "ratios": r.metrics.get("ratios"),
            "baselines": r.metrics.get("baselines"),  # what a practitioner tries first, on the same test split
            "created": r.created}


def model_summary(r: ModelRef) -> ModelSummary:
    return ModelSummary(**_fields(r))


def model_detail(r: ModelRef) -> ModelDetail:
    onnx = r.onnx_path
    return ModelDetail(**_fields(r), lineage=r.lineage, card=r.card,
                       onnx_bytes=onnx.stat().st_size if onnx.is_file() else None,
                       versions=[VersionOut(version=v.version, aliases=v.aliases, created=v.created)
                                 for v in list_models(r.name)])
