"""The order spec: what a customer asks for. Pydantic validates it; unknown keys and wrong types name the field."""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import safeyaml
from ..errors import MFError

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
# Bounds on what one order may ask for (its cost is still checked by quotas; these stop absurd values early).
MAX_EPOCHS = 1000
MAX_BATCH = 4096
MAX_STEPS = 10_000_000
MAX_EXCERPT = 80  # characters of a rejected value quoted back in an error message


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Strict):
    """Either a file (`path`, with column names by role; for images also a class-folder tree or an archive of
    one) or a registered dataset (`dataset: name[@version]`)."""

    path: str | None = None
    dataset: str | None = None
    text: str = "text"
    label: str = "label"
    image: str = Field("image", description="image tasks: the column of image file paths (tables only)")
    messages: str = Field("messages", description="chat tasks: the column of [{role, content}] conversations")
    prompt: str = Field("prompt", description="generative tasks without chat: the prompt column")
    completion: str = Field("completion", description="generative tasks without chat: the completion column")
    skip_bad_rows: bool = False
    truncate: bool = Field(False, description="generative tasks: cut rows longer than teacher.max_length instead "
                                              "of refusing the order")
    use_pseudo_labels: bool = Field(False, description="a dataset labeled by `mf label auto`: train on its teacher's "
                                                       "pseudo-labels too, not only on people's labels")
    min_confidence: float | None = Field(None, ge=0, le=1, description="with use_pseudo_labels: the teacher "
                                         "predictions to use (default: the pseudo-labels `mf label auto` accepted)")

    def columns(self) -> dict[str, str]:
        """role -> column, for every role a family may read."""
        return {"text": self.text, "label": self.label, "image": self.image, "messages": self.messages,
                "prompt": self.prompt, "completion": self.completion}

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if bool(self.path) == bool(self.dataset):
            raise ValueError("give exactly one of 'path' (a file) or 'dataset' (a registered dataset)")
        if (self.use_pseudo_labels or self.min_confidence is not None) and not self.dataset:
            raise ValueError("'use_pseudo_labels' and 'min_confidence' need 'dataset' (one labeled by `mf label auto`)")
        if self.min_confidence is not None and not self.use_pseudo_labels:
            raise ValueError("'min_confidence' chooses which pseudo-labels to use: set 'use_pseudo_labels: true' too")
        return self


class SplitSpec(Strict):
    val: float = Field(0.1, gt=0, lt=0.5)
    test: float = Field(0.1, gt=0, lt=0.5)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    max_rows: int | None = Field(None, gt=10, le=100_000_000,
                                 description="stratified sample of this many rows before splitting")
    train_rows: int | None = Field(None, gt=10, le=100_000_000,
                                   description="a stratified cut of the training part (val and test unchanged): "
                                               "how an order behaves with fewer labels")


class LoraSpec(Strict):
    """A LoRA adapter (peft): rank, scale, dropout, and which linear layers it wraps."""

    r: int = Field(8, ge=1, le=256)
    alpha: float = Field(16.0, gt=0, le=4096)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TeacherSpec(Strict):
    model: str = Field(description="a local Hugging Face model dir, a hub id, or a family's built-in architecture "
                                   "trained from scratch (e.g. 'scratch:resnet-s' for images)")
    epochs: float = Field(2.0, gt=0, le=MAX_EPOCHS)
    lr: float = Field(1e-4, gt=0, le=10)  # bench/results/teacher_sweep.md: ahead of 5e-5 and 2e-5 on both corpora
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)
    max_length: int = Field(128, gt=4, le=4096, description="text: tokens kept per input")
    image_size: int | None = Field(None, ge=4, le=1024, description="images: side they are resized to "
                                                                     "(default: the data's most common size)")
    augment: bool = Field(False, description="images: train on randomly shifted, rotated and scaled copies "
                                             "(worth it when the labeled rows are few)")
    checkpoint_every: int = Field(50, gt=0, le=MAX_STEPS, description="training steps between checkpoints")
    min_steps: int | None = Field(None, ge=0, le=MAX_STEPS, description="optimisation steps at least, whatever the "
                                  "data size (epochs are raised to reach them); default: the family's (text: 200)")
    retries: int | None = Field(None, ge=0, le=5, description="fresh attempts (other seed and learning rate) when "
                                "training collapses to no better than the majority class; default: the family's "
                                "(text: 2)")
    lora: LoraSpec | None = Field(None, description="generative tasks: the adapter trained on the frozen base")
    workers: int = Field(1, ge=1, le=64, description="on the pool: fine-tune data-parallel on this many workers "
                                                     "at once (a gang; torch.distributed), each with the order's "
                                                     "CPUs; the teacher it produces is the same cached artifact")


class StudentSpec(Strict):
    arch: str | None = Field(None, max_length=32, description="student kind the task family builds (text: "
                      "transformer, tiny, bag, cnn, lstm, classical)")
    size: Literal["xs", "s", "m", "l"] | None = Field(None, description="size preset of small archs")
    init: Literal["teacher", "teacher_outputs", "random"] | None = Field(
        None, description="small archs: embeddings from the teacher's input embeddings, from its outputs for each "
                          "token (model2vec; with tokens: teacher), or random")
    tokens: Literal["word", "teacher"] | None = Field(None, description="small archs: a word vocabulary from "
                                                                        "the data, or the teacher's word pieces")
    C: float | None = Field(None, gt=0, le=1e6, description="classical students: inverse regularisation")
    transfer: bool | None = Field(None, description="distil over the teacher-labeled, augmented transfer set "
                                                    "(default: the family's choice for the arch)")
    layers: int = Field(2, ge=1, le=64)
    hidden: int | None = Field(None, ge=8, le=8192)
    heads: int | None = Field(None, ge=1, le=128)
    ffn: int | None = Field(None, ge=8, le=32768)
    layer_map: Literal["bottom", "uniform"] | list[int] = "bottom"
    freeze_embeddings: bool = True
    vocab: Literal["full", "train"] = Field("full", description="'train' keeps only the tokens the data uses")
    hidden_weight: float = Field(0.0, ge=0, le=1000, description="weight of the hidden-state MSE loss (TinyBERT)")
    attention_weight: float = Field(0.0, ge=0, le=1000,
                                    description="weight of the attention-distribution KL loss (MiniLM)")
    epochs: float | None = Field(None, gt=0, le=MAX_EPOCHS, description="default: the family's, per arch")
    lr: float | None = Field(None, gt=0, le=10)
    batch_size: int | None = Field(None, gt=0, le=MAX_BATCH)
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the soft-label KD loss vs the true labels")
    temperature: float = Field(2.0, gt=0, le=100)
    checkpoint_every: int = Field(50, gt=0, le=MAX_STEPS, description="training steps between checkpoints")


class RecoverSpec(Strict):
    """A distillation step that continues from the previous model (after pruning) instead of building one."""

    epochs: float = Field(1.0, gt=0, le=MAX_EPOCHS)
    lr: float = Field(1e-4, gt=0, le=10)
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)
    alpha: float = Field(0.7, ge=0, le=1)
    temperature: float = Field(2.0, gt=0, le=100)
    hidden_weight: float = Field(0.0, ge=0, le=1000)
    attention_weight: float = Field(0.0, ge=0, le=1000)
    checkpoint_every: int = Field(50, gt=0, le=MAX_STEPS)


class PruneSpec(Strict):
    ratio: float = Field(gt=0, lt=1, description="share of attention heads and FFN channels to remove")


class TransferSpec(Strict):
    """The distillation transfer set: the training rows, the dataset's unlabeled rows, the rows the split's
    `max_rows` sample left out and augmented copies of the training rows, all labeled by the teacher once (one
    cached artifact every student trial reuses)."""

    copies: int | None = Field(None, ge=0, le=50, description="augmented copies per training row (default: "
                                                               "enough for about 36,000 rows with the real "
                                                               "inputs, at most 20)")
    left_out: bool = Field(True, description="the inputs of the rows the split left out (a `split.train_rows` "
                                             "cut, a `split.max_rows` sample) join, unlabeled (real inputs "
                                             "before augmented copies, up to about 36,000 rows)")
    p_mask: float = Field(0.1, ge=0, le=1)
    p_replace: float = Field(0.1, ge=0, le=1)
    p_ngram: float = Field(0.25, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class QuantizeSpec(Strict):
    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = True
    calibration_rows: int = Field(128, gt=0, le=100_000)


class RecipeStep(Strict):
    """One compression step; exactly one of its fields is set."""

    distill: StudentSpec | None = None
    recover: RecoverSpec | None = None
    prune: PruneSpec | None = None
    quantize: QuantizeSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RecipeStep:
        if sum(x is not None for x in (self.distill, self.recover, self.prune, self.quantize)) != 1:
            raise ValueError("a recipe step is exactly one of: distill, recover, prune, quantize")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("distill", "recover", "prune", "quantize") if getattr(self, k) is not None)


MAX_CHOICES = 32


def _check_choice(dim: str, value: Any) -> None:
    """ValueError unless `value` is valid for search dimension `dim` (the field it sets in a trial's recipe)."""
    if dim == "prune_ratio":
        if value in (0, 0.0, None):
            return
        model, field = PruneSpec, "ratio"
    elif dim == "quantize":
        if value not in ("dynamic", "static", "none"):
            raise ValueError(f"search dimension 'quantize': {excerpt(value)} is not one of dynamic, static, none")
        return
    elif dim in StudentSpec.model_fields:
        model, field = StudentSpec, dim
    else:  # a dimension a family interprets itself (its own checks apply)
        return
    try:
        model.model_validate({field: value})
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"search dimension '{dim}': {excerpt(value)}: {msg}") from None


class SearchSpec(Strict):
    """Budgeted multi-objective recipe search: each trial samples one choice per entry of `space`."""

    max_trials: int = Field(8, ge=1, le=500)
    max_minutes: float = Field(30.0, gt=0, le=7 * 24 * 60)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    space: dict[str, list[Any]] | None = Field(None, description="default: the task family's own space")

    @field_validator("space")
    @classmethod
    def _known_dims(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if v is None:
            return v
        known = {"layers", "hidden", "heads", "ffn", "vocab", "prune_ratio", "alpha", "temperature",
                 "hidden_weight", "attention_weight", "quantize", "epochs", "lr", "arch", "size", "init", "C",
                 "transfer", "batch_size", "tokens"}
        unknown = sorted(set(v) - known)
        if unknown:
            raise ValueError(f"unknown search dimension(s) {excerpt(unknown)}; known: {sorted(known)}")
        if any(not isinstance(c, list) or not c for c in v.values()):
            raise ValueError("each search dimension is a non-empty list of choices")
        if any(len(c) > MAX_CHOICES for c in v.values()):
            raise ValueError(f"a search dimension has at most {MAX_CHOICES} choices")
        for dim, choices in v.items():  # a trial's values obey the same bounds as the fields they set
            for c in choices:
                _check_choice(dim, c)
        return v


class Targets(Strict):
    min_accuracy_ratio: float | None = Field(None, gt=0, le=1.5)
    beat_baseline: bool = Field(False, description="the deployed model must be at least as accurate as the "
                                                   "classical baseline (text: TF-IDF + logistic regression)")
    max_latency_ms: float | None = Field(None, gt=0, le=1e7)
    max_size_mb: float | None = Field(None, gt=0, le=1e7)
    # Relative to what any user gets with one call (the teacher quantized to dynamic INT8, measured in the same
    # order), so an order can ask for "10x cheaper" without knowing the teacher's size or this machine's speed.
    min_size_reduction: float | None = Field(None, ge=1, le=1e6, description="the deployed ONNX file at least this "
                                             "many times smaller than the dynamic-INT8 teacher's")
    min_speedup: float | None = Field(None, ge=1, le=1e6, description="batch-1 p50 latency at least this many "
                                      "times lower than the dynamic-INT8 teacher's")


class OrderSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    tenant: str = Field("default", pattern=NAME_PATTERN)
    task: str
    data: DataSpec
    teacher: TeacherSpec
    student: StudentSpec = StudentSpec()
    split: SplitSpec = SplitSpec()
    targets: Targets = Targets()
    quantize: Literal["dynamic", "static", "none"] = "dynamic"
    recipe: list[RecipeStep] | None = Field(None, description="compression chain; default: distill -> quantize")
    optimize_onnx: bool = Field(True, description="onnxruntime graph optimisation before quantization")
    search: SearchSpec | None = Field(None, description="default, for an order without recipe, student or "
                                                         "quantize: a search over the family's space")
    transfer: TransferSpec = TransferSpec()
    deploy: bool = True

    # Sized so `make demo` stays under 15 minutes on 2 cores: its first four trials (bag, classical, lstm, cnn) fill
    # it, and a trial in flight at the deadline finishes, so the budget is what the search may start, not end.
    DEFAULT_SEARCH: ClassVar[dict[str, Any]] = {"max_trials": 10, "max_minutes": 4.0}

    def searched(self) -> SearchSpec | None:
        """The recipe search this order runs: its own, or the default budget when it names no recipe at all."""
        from .. import tasks

        if self.search is not None or tasks.get(self.task).pipeline != "compress":
            return self.search
        if self.recipe is None and not ({"student", "quantize"} & self.model_fields_set):
            return SearchSpec(**self.DEFAULT_SEARCH)
        return None

    @model_validator(mode="after")
    def _recipe_shape(self) -> OrderSpec:
        if self.recipe is None:
            return self
        kinds = [step.kind for step in self.recipe]
        if not kinds or kinds[0] != "distill":
            raise ValueError("recipe: the first step must be 'distill' (it builds the student)")
        if "distill" in kinds[1:]:
            raise ValueError("recipe: only the first step builds a student; use 'recover' to distil further")
        if "quantize" in kinds[:-1] or kinds.count("quantize") > 1:
            raise ValueError("recipe: 'quantize' can only be the last step")
        return self

    def steps(self) -> list[RecipeStep]:
        """The recipe, or the shorthand `student` + `quantize` as one."""
        if self.recipe is not None:
            return self.recipe
        steps = [RecipeStep(distill=self.student)]
        if self.quantize != "none":
            steps.append(RecipeStep(quantize=QuantizeSpec(mode=self.quantize)))
        return steps

    @model_validator(mode="after")
    def _relative_targets(self) -> OrderSpec:
        from .. import tasks

        relative = [k for k in ("min_size_reduction", "min_speedup") if getattr(self.targets, k) is not None]
        if relative and tasks.get(self.task).pipeline != "compress":
            raise ValueError(f"targets.{relative[0]}: relative to the dynamic-INT8 teacher, which a "
                             f"'{self.task}' order does not make; use max_size_mb / max_latency_ms")
        return self

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from .. import tasks

        if v not in tasks.names():
            raise ValueError(f"unknown task {excerpt(v)}; known tasks: {', '.join(tasks.names())}")
        return v


def excerpt(value: Any, limit: int = MAX_EXCERPT) -> str:
    """repr(value) cut to `limit` characters: an error quotes what it rejects, never all of it."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    short.maxlist = short.maxdict = short.maxtuple = short.maxset = 6
    text = short.repr(value)  # never walks all of a huge (or alias-shared) structure
    return text if len(text) <= limit else f"{text[:limit]}..."


class SpecInvalid(MFError):
    """An order spec that fails validation; `fields` = [{"loc", "msg"}], one per problem (HTTP 422)."""

    status = 422

    def __init__(self, message: str, fields: list[dict[str, str]]):
        super().__init__(message)
        self.fields = fields


def spec_errors(err: ValidationError) -> list[dict[str, str]]:
    """Each problem of a spec as {"loc": "targets.max_size_mb", "msg": ...}, quoting only an excerpt of what it
    rejects."""
    out = []
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "missing field"
        else:
            msg = f"{e['msg'].removeprefix('Value error, ')} (got {excerpt(e.get('input'))})"
        out.append({"loc": ".".join(str(x) for x in e["loc"]), "msg": msg})
    return out


def format_spec_errors(fields: list[dict[str, str]], source: str) -> str:
    """The one message a bad spec gets, from `mf order run|submit` and from `POST /api/v1/orders` alike."""
    parts = []
    for f in fields:
        loc = f["loc"] or "(top level)"
        parts.append(f"{f['msg']} '{loc}'" if f["msg"] in ("unknown field", "missing field")
                     else f"field '{loc}': {f['msg']}")
    return f"{source}: " + "; ".join(parts)


def parse_spec(obj: Any, source: str = "order") -> OrderSpec:
    if not isinstance(obj, dict):
        raise MFError(f"{source}: an order spec is a mapping of fields (name, task, data, teacher, ...)")
    try:
        return OrderSpec.model_validate(obj)
    except ValidationError as e:
        fields = spec_errors(e)
        raise SpecInvalid(format_spec_errors(fields, source), fields) from None


def parse_spec_bytes(raw: bytes, source: str, fmt: Literal["yaml", "json"] = "yaml") -> OrderSpec:
    """A spec from a file's or a request body's bytes (YAML, which reads JSON too, or strict JSON): bounded in
    size, depth and aliases before anything is built; every problem is an MFError that starts with `source`."""
    if len(raw) > safeyaml.MAX_BYTES:
        raise MFError(f"{source}: an order spec is at most {safeyaml.MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MFError(f"{source}: not a text file (expected UTF-8 YAML or JSON)") from None
    try:
        obj = json.loads(text) if fmt == "json" else safeyaml.load(text)
    except RecursionError:
        raise MFError(f"{source}: the order spec is nested too deeply") from None
    except (ValueError, yaml.YAMLError) as e:
        raise MFError(f"{source}: not valid {fmt.upper()} ({str(e).splitlines()[0]})") from None
    return parse_spec(obj, source)


def load_spec(path: str | Path) -> OrderSpec:
    p = Path(path)
    if not p.is_file():
        raise MFError(f"{p}: no such order file")
    if p.stat().st_size > safeyaml.MAX_BYTES:
        raise MFError(f"{p}: an order spec is at most {safeyaml.MAX_BYTES} bytes")
    spec = parse_spec_bytes(p.read_bytes(), str(p))
    if spec.data.path and not Path(spec.data.path).is_absolute():  # data paths are relative to the spec file
        rel = (p.parent / spec.data.path)
        if rel.exists():
            spec.data.path = str(rel)
    return spec
