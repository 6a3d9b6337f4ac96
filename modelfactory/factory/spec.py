"""The order spec: what a customer asks for. Pydantic validates it; unknown keys and wrong types name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import MFError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    """Either a file (`path`, with column names by role) or a registered dataset (`dataset: name[@version]`)."""

    path: str | None = None
    dataset: str | None = None
    text: str = "text"
    label: str = "label"
    image: str | None = None
    skip_bad_rows: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if bool(self.path) == bool(self.dataset):
            raise ValueError("give exactly one of 'path' (a file) or 'dataset' (a registered dataset)")
        return self


class SplitSpec(Strict):
    val: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 0
    max_rows: int | None = Field(None, gt=10, description="stratified sample of this many rows before splitting")


class TeacherSpec(Strict):
    model: str
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(128, gt=4, le=4096)
    checkpoint_every: int = Field(50, gt=0, description="training steps between checkpoints")


class StudentSpec(Strict):
    layers: int = Field(2, ge=1)
    hidden: int | None = Field(None, ge=8)
    heads: int | None = Field(None, ge=1)
    ffn: int | None = Field(None, ge=8)
    layer_map: Literal["bottom", "uniform"] | list[int] = "bottom"
    freeze_embeddings: bool = True
    epochs: float = Field(3.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft-label KD loss vs the true labels")
    temperature: float = Field(2.0, gt=0)
    checkpoint_every: int = Field(50, gt=0, description="training steps between checkpoints")


class Targets(Strict):
    min_accuracy_ratio: float | None = Field(None, gt=0, le=1.5)
    max_latency_ms: float | None = Field(None, gt=0)
    max_size_mb: float | None = Field(None, gt=0)


class OrderSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    tenant: str = Field("default", pattern=NAME_PATTERN)
    task: str
    data: DataSpec
    teacher: TeacherSpec
    student: StudentSpec = StudentSpec()
    split: SplitSpec = SplitSpec()
    targets: Targets = Targets()
    quantize: Literal["dynamic", "none"] = "dynamic"
    deploy: bool = True

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from .. import tasks

        if v not in tasks.names():
            raise ValueError(f"unknown task '{v}'; known tasks: {', '.join(tasks.names())}")
        return v


def format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}'")
        elif e["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"field '{loc}': {msg} (got {e.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def parse_spec(obj: Any, source: str = "order") -> OrderSpec:
    if not isinstance(obj, dict):
        raise MFError(f"{source}: an order spec is a mapping of fields (name, task, data, teacher, ...)")
    try:
        return OrderSpec.model_validate(obj)
    except ValidationError as e:
        raise MFError(format_validation_error(e, source)) from None


def load_spec(path: str | Path) -> OrderSpec:
    p = Path(path)
    if not p.is_file():
        raise MFError(f"{p}: no such order file")
    try:
        obj = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise MFError(f"{p}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    spec = parse_spec(obj, str(p))
    if spec.data.path and not Path(spec.data.path).is_absolute():  # data paths are relative to the spec file
        rel = (p.parent / spec.data.path)
        if rel.exists():
            spec.data.path = str(rel)
    return spec
