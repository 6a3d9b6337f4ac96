"""The contracts task families implement, so the factory, the search, the pool and the server never
special-case a task (scikit-learn's one-estimator-contract idea).

`Family` is what every family is: a name, the data it reads, and which of the factory's pipelines runs it.
`TaskFamily` (pipeline "compress"): turns table rows into tensors, builds a teacher from a pretrained checkpoint,
builds a student from a teacher, exports an ONNX model dir, and loads that dir back as a `Predictor` that needs
only onnxruntime. `GenerativeFamily` (pipeline "adapt"): adapts a pretrained generative model to the data with a
small adapter (LoRA), and measures it against the base on held-out rows.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..data.ingest import RowCheck
from ..errors import MFError

META_FILE = "mf_model.json"
ONNX_FILE = "model.onnx"


@dataclass
class Bundle:
    """A trainable model and everything needed to feed it (tokenizer, image transform, labels)."""

    model: torch.nn.Module
    preprocessor: Any
    labels: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Encoded:
    """A split turned into model-ready examples; `collate` batches any subset of them."""

    examples: list[Any]
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class Outputs:
    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class Prunable:
    """What a family says may be pruned in a model, for compress.prune (Torch-Pruning's dependency graph) to act on.

    Every output channel of every layer may go except those of `ignored_layers` (e.g. a classifier: its outputs are
    the labels); `num_heads` maps q/k/v projections to their attention's head count, so heads go whole. `finish`
    runs after the pruning: it makes the model consistent again (head counts, config), records in the bundle what
    `load` needs to rebuild the smaller shape, and returns what the report should add."""

    model: torch.nn.Module
    example: dict[str, torch.Tensor]
    ignored_layers: list[torch.nn.Module] = field(default_factory=list)
    num_heads: dict[torch.nn.Module, int] = field(default_factory=dict)
    output_transform: Callable[[Any], torch.Tensor] | None = None
    finish: Callable[[], dict[str, Any]] = dict


class Predictor(ABC):
    """An exported model dir loaded for inference: raw inputs in, labels and probabilities out."""

    labels: list[str]
    session: Any  # onnxruntime.InferenceSession

    @abstractmethod
    def encode(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        """Raw inputs (texts, images) -> the ONNX graph's feeds."""

    def logits(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The graph's scores before softmax (what distillation learns from)."""
        return self.session.run(None, dict(feeds))[0]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return softmax(self.logits(feeds))

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 64) -> np.ndarray:
        parts = [self.run(self.encode(inputs[i:i + batch_size])) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, inputs: Sequence[Any]) -> list[tuple[str, dict[str, float]]]:
        probs = self.predict_proba(inputs)
        return [(self.labels[int(p.argmax())], {lab: float(v) for lab, v in zip(self.labels, p)}) for p in probs]

    @property
    @abstractmethod
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        """Public inputs/outputs in Open Inference Protocol terms (name, datatype, shape with -1)."""


def onnx_session(model_dir: Path, threads: int | None = None):
    """An onnxruntime CPU session on the dir's graph; `threads` pins intra-op threads (None: onnxruntime's
    default, all cores), so latency can be measured the way it will be served."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(Path(model_dir) / ONNX_FILE), opts, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def read_meta(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / META_FILE).read_text())


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    (Path(model_dir) / META_FILE).write_text(json.dumps(meta, indent=2))


def copy_model_files(src: Path, dst: Path, *, keep_meta: bool = True) -> None:
    """Everything in an ONNX model dir but the graph and the store's manifest (the tokenizer, and the metadata
    unless the caller writes its own): what a rewritten graph needs beside it to stay a loadable model."""
    skip = {ONNX_FILE, "manifest.json"} | (set() if keep_meta else {META_FILE})
    for f in Path(src).iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy2(f, Path(dst) / f.name)


class Family(ABC):
    """What every task family is. Families are discovered (tasks/__init__.py); `pipeline` names the factory's
    plan shape for it: "compress" (teacher -> students -> ONNX) or "adapt" (base + adapter)."""

    name: ClassVar[str]
    roles: ClassVar[tuple[str, ...]]  # columns a dataset must provide, by role
    pipeline: ClassVar[str] = "compress"

    def row_checks(self) -> dict[str, RowCheck]:
        """Extra per-role row checks beyond 'present and non-empty'."""
        return {}

    def data_roles(self, columns: Mapping[str, str], path: Path | None = None) -> dict[str, str]:
        """role -> column for a source: by default each of `roles`, under the column the order names for it
        (`columns`, the order's data spec). A family reading more than one layout may look at the file."""
        return {role: columns.get(role, role) for role in self.roles}


class TaskFamily(Family):
    """The discriminative contract (pipeline "compress")."""

    # --- models -------------------------------------------------------------------------------------
    @abstractmethod
    def load_teacher(self, pretrained: str, labels: list[str], params: Mapping[str, Any],
                     train: pd.DataFrame) -> Bundle:
        """A pretrained backbone with a fresh head for `labels`. `train` lets a family fit what depends on the
        data rather than on the checkpoint (an image size, normalisation statistics)."""

    @abstractmethod
    def build_student(self, teacher: Bundle, params: Mapping[str, Any], train: pd.DataFrame | None = None) -> Bundle:
        """A smaller model of the same family, initialised from the teacher where shapes allow; `train` lets a
        student fit what depends on the data (a vocabulary)."""

    def student_defaults(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Training settings (epochs, lr, batch_size) for a student that its recipe leaves unset."""
        return {"epochs": 3.0, "lr": 1e-4, "batch_size": 32}

    def student_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a student recipe this kind of student reads (so recipes differing elsewhere share a cache)."""
        return dict(params)

    def default_search_space(self) -> dict[str, list[Any]]:
        """What an order without a recipe searches over (first choices first: they are trial 0)."""
        return {}

    def direct_student(self, params: Mapping[str, Any]) -> bool:
        """True when the student `params` describe is fitted in one go (`fit_student`) into an ONNX model dir,
        rather than trained by gradient distillation and exported."""
        return False

    def baseline_student(self) -> dict[str, Any] | None:
        """Params of the classical model a practitioner would try first (fitted by `fit_student` on the rows'
        own labels), measured beside every order's teacher and students; None when the family has none."""
        return None

    # Students of different kinds err on different rows, so averaging one of each can beat both: after a search
    # the factory blends the best trials of each group (one member per group) and measures the blends like trials.
    blend_groups: tuple[str, ...] = ()

    def blend_group(self, params: Mapping[str, Any]) -> str | None:
        """Which of `blend_groups` the student a recipe describes belongs to (None: not a blend member)."""
        return None

    def blend_members(self) -> list[dict[str, Any]]:
        """Recipes worth having as blend members that train in seconds (e.g. compact classical students): measured
        after the search, like trials, when the search did not."""
        return []

    def blend(self, members: Mapping[str, Path], out_dir: Path) -> None:
        """One exported model dir averaging the probabilities of `members` (blend group -> exported model dir)."""
        raise MFError(f"{self.name} students cannot be blended")

    def fit_student(self, train: pd.DataFrame, params: Mapping[str, Any], out_dir: Path,
                    teacher_labels: list[str] | None = None,
                    soft_targets: np.ndarray | None = None) -> dict[str, Any]:
        """Fit a direct student on `train` (its `label` column: people's labels) or, distilling, on the teacher's
        class probabilities per row (`soft_targets`, rows x `teacher_labels`) and write its ONNX model dir;
        returns metrics (parameters, ...)."""
        raise MFError(f"{self.name} has no directly fitted students")

    def augment_rows(self, df: pd.DataFrame, copies: int, seed: int, params: Mapping[str, Any]) -> pd.DataFrame:
        """New unlabeled inputs made from `df`'s (a distillation transfer set); none for families without."""
        return df.iloc[0:0][[self.roles[0]]]

    def specialize(self, bundle: Bundle, train: pd.DataFrame, params: Mapping[str, Any]) -> Bundle:
        """Shrink a student's input layer to what the data uses (e.g. vocabulary pruning); default: unchanged."""
        return bundle

    def feature_widths(self, bundle: Bundle) -> list[int]:
        """Widths of the intermediate representations `forward(hidden_states=True)` returns after index 0 (the
        input embedding), one per layer or stage: what hidden-state distillation matches, through connectors.
        Empty when the model has none to offer."""
        return []

    def prunable(self, bundle: Bundle, example: Mapping[str, torch.Tensor]) -> Prunable:
        """What of the model structured pruning may remove (heads, channels), for compress.prune; its `finish`
        records in `bundle.extra` whatever `load` needs to rebuild the smaller shape."""
        raise MFError(f"structured pruning is not available for {self.name} models")

    def onnx_optimizer_hints(self, bundle: Bundle) -> dict[str, Any] | None:
        """How onnxruntime's graph optimizer should see this model (model_type, heads, width), or None."""
        return None

    @abstractmethod
    def save(self, bundle: Bundle, out_dir: Path) -> None:
        """A model dir that `load` (and from_pretrained-style tools) can read back."""

    @abstractmethod
    def load(self, model_dir: Path) -> Bundle: ...

    # --- data ---------------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, bundle: Bundle, df: pd.DataFrame) -> Encoded: ...

    @abstractmethod
    def collate(self, encoded: Encoded, indices: Sequence[int]) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def forward(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor], *, hidden_states: bool = False,
                attentions: bool = False) -> Outputs: ...

    def loss(self, outputs: Outputs, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy; `weight` per class (balanced training on imbalanced labels)."""
        return torch.nn.functional.cross_entropy(outputs.logits, targets, weight=weight)

    augments: ClassVar[bool] = False  # whether `augment` does anything (teacher.augment is refused if not)
    # Fewest optimiser steps a teacher fine-tune makes whatever the data size (pretrained encoders collapse on a
    # few hundred rows with a few dozen steps); 0: epochs as the order says.
    teacher_min_steps: ClassVar[int] = 0
    teacher_retries: ClassVar[int] = 0  # fresh attempts when a fine-tune collapses to the majority class

    def augment(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A training batch randomly perturbed in ways that keep its labels (teacher fine-tuning with
        `teacher.augment`); the batch as it is for families without augmentation."""
        return batch

    def raw_inputs(self, df: pd.DataFrame) -> list[Any]:
        """The split's raw inputs as a client would send them (texts, encoded image bytes)."""
        return df[self.roles[0]].tolist()

    def parse_input(self, value: str) -> Any:
        """A command-line argument as a raw input: text as it is; a family whose inputs are files reads them."""
        return value

    def cli_argument(self, raw: Any, folder: Path) -> str:
        """The inverse of `parse_input`, for "try it" hints: a shell-quoted text, or a file written to `folder`."""
        import shlex

        return shlex.quote(str(raw))

    # --- export and inference -------------------------------------------------------------------------
    @abstractmethod
    def export_onnx(self, bundle: Bundle, out_dir: Path, sample: pd.DataFrame) -> None:
        """Write model.onnx + preprocessing files + mf_model.json into out_dir."""

    @abstractmethod
    def load_predictor(self, model_dir: Path, threads: int | None = None) -> Predictor: ...


class GenerativeFamily(Family):
    """The generative contract (pipeline "adapt"): a pretrained base stays frozen and shared; an order trains a
    small adapter on it, and is judged by how much better the adapter predicts held-out rows than the base."""

    pipeline: ClassVar[str] = "adapt"

    @abstractmethod
    def adapt(self, base: str, train: pd.DataFrame, val: pd.DataFrame, params: Mapping[str, Any], out_dir: Path,
              work: Path, *, should_stop, progress) -> dict[str, Any]:
        """Train an adapter for `base` on `train` (checkpointing under `work`, resuming from it), save it to
        `out_dir`, and return its metrics (and `resumed_from_step`)."""

    @abstractmethod
    def evaluate(self, base: str, adapter_dir: Path | None, test: pd.DataFrame,
                 params: Mapping[str, Any]) -> dict[str, Any]:
        """Held-out metrics (e.g. loss and perplexity) of the base alone (`adapter_dir` None) or with an adapter."""
