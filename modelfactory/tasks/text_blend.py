"""A blended text student: a neural student (bag of n-grams, CNN, tiny encoder) and a distilled TF-IDF student
behind one ONNX graph that averages their class probabilities.

Why: distilled from the same teacher, the two kinds of student err on different rows — one reads word order
through the teacher's embeddings, the other weighs thousands of exact n-grams — so their average can beat the
better of them, at the cost of their sizes and latencies added, which for these students is still a tenth of the
INT8 teacher's. How often it does is data's to say (bench/results/compress_*.md: on rotten-tomatoes' test split
nearly every blend beat its better member, on its validation split only some did), so blends are candidates the
search measures and chooses by validation like any trial, not a default.
One graph, not two files: the registry, `mf serve`, tritonclient and the cost measurements see one model whose
size is the file's and whose latency is one session run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import ONNX_FILE, copy_model_files, read_meta, softmax, write_meta
from .text_classical import text_feed
from .text_classification import TextPredictor

NEURAL, CLASSICAL = "n_", "c_"  # name prefixes of each member's nodes, initializers and edges in the blend


def blend_onnx(neural_dir: Path, classical_dir: Path, out_dir: Path, weight: float = 0.5) -> None:
    """model.onnx computing `weight` x softmax(neural logits) + (1 - `weight`) x classical probabilities, fed by
    the neural member's `input_ids`/`attention_mask` and the classical member's raw `text`; the neural member's
    tokenizer and metadata are copied beside it (its predictor needs them)."""
    import onnx
    from onnx import compose, helper

    meta, cmeta = read_meta(neural_dir), read_meta(classical_dir)
    if meta["labels"] != cmeta["labels"]:
        raise ValueError(f"the members' labels differ: {meta['labels']} vs {cmeta['labels']}")
    members = {NEURAL: compose.add_prefix(onnx.load(str(neural_dir / ONNX_FILE)), NEURAL),
               CLASSICAL: compose.add_prefix(onnx.load(str(classical_dir / ONNX_FILE)), CLASSICAL)}
    n_logits = _output(members[NEURAL], NEURAL, "logits")
    c_probs = _output(members[CLASSICAL], CLASSICAL, "probabilities")
    # Each member's graph inputs, fed under their plain names (`input_ids`, `text`) by one Identity each.
    inputs = [_unprefixed(i, prefix) for prefix, m in members.items() for i in m.graph.input]
    feeds = [helper.make_node("Identity", [i.name.removeprefix(prefix)], [i.name])
             for prefix, m in members.items() for i in m.graph.input]
    weights = [helper.make_tensor("blend_w_neural", onnx.TensorProto.FLOAT, [], [weight]),
               helper.make_tensor("blend_w_classical", onnx.TensorProto.FLOAT, [], [1.0 - weight])]
    head = [helper.make_node("Softmax", [n_logits], ["blend_neural_probs"], axis=-1),
            helper.make_node("Mul", ["blend_neural_probs", "blend_w_neural"], ["blend_neural"]),
            helper.make_node("Mul", [c_probs, "blend_w_classical"], ["blend_classical"]),
            helper.make_node("Add", ["blend_neural", "blend_classical"], ["probabilities"])]
    graph = helper.make_graph(
        feeds + [n for m in members.values() for n in m.graph.node] + head, "blend", inputs,
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", len(meta["labels"])])],
        initializer=[t for m in members.values() for t in m.graph.initializer] + weights)
    opsets: dict[str, int] = {}
    for m in members.values():
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="modelfactory-blend")
    model.ir_version = max(m.ir_version for m in members.values())
    onnx.checker.check_model(model)
    (out_dir / ONNX_FILE).write_bytes(model.SerializeToString())
    copy_model_files(neural_dir, out_dir, keep_meta=False)  # the tokenizer; the metadata is written below
    write_meta(out_dir, {**meta, "format": "onnx-blend", "blend_weight": weight})


def _output(model, prefix: str, name: str) -> str:
    names = [o.name for o in model.graph.output]
    if prefix + name not in names:
        raise ValueError(f"a blend member must output '{name}'; this one outputs {names}")
    return prefix + name


def _unprefixed(value_info, prefix: str):
    out = type(value_info)()
    out.CopyFrom(value_info)
    out.name = value_info.name.removeprefix(prefix)
    return out


class BlendPredictor(TextPredictor):
    """The neural member's tokenizer makes its feeds; the raw strings are the classical member's."""

    def encode(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        return super().encode(inputs) | text_feed(inputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(["probabilities"], dict(feeds))[0], dtype=np.float32)

    def logits(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Log-probabilities: their softmax is the blend's probabilities again."""
        return np.log(np.clip(self.run(feeds), 1e-12, 1.0))


def blend_probabilities(neural_logits: np.ndarray, classical: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """What the blend graph computes, in numpy: the reference its tests compare against."""
    return weight * softmax(neural_logits) + (1.0 - weight) * classical
