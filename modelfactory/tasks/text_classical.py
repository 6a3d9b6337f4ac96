"""The classical text classifier a practitioner tries first — TF-IDF over word 1-2 grams + logistic regression
(scikit-learn) — exported whole to ONNX by skl2onnx, tokenization included, with string input.

It is both the baseline every text order is measured against and a legitimate student: trained on the teacher's
labels over the augmented transfer set, it is a distilled model that costs tens of microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import ONNX_FILE, Predictor, onnx_session, read_meta, write_meta

# ONNX's StringNormalizer defaults to the en_US.UTF-8 locale, which minimal machines lack; C.UTF-8 is in glibc.
ONNX_LOCALE = "C.UTF-8"
# scikit-learn's default token pattern (?u)\b\w\w+\b in RE2, which onnxruntime's Tokenizer runs and which lacks
# \b: a maximal run of two or more word characters matches the same either way, and Python's Unicode \w is letters,
# numbers and the underscore. skl2onnx would otherwise swap in [a-zA-Z0-9_]+, which also keeps one-letter words and
# drops non-ASCII ones, so served predictions drifted from the fitted pipeline's.
ONNX_TOKEN_PATTERN = r"[\pL\pN_][\pL\pN_]+"
SIZES = {"xs": 5000, "s": 20000, "m": 50000, "l": None}  # max_features per size preset (None: every n-gram)


def fit_classical(texts: Sequence[str], labels: Sequence[str], *, C: float = 10.0,  # noqa: N803 (sklearn's name)
                  max_features: int | None = None, sample_weight: np.ndarray | None = None,
                  soft_targets: np.ndarray | None = None, classes: Sequence[str] | None = None):
    """TF-IDF (1-2 grams, sublinear tf) + LogisticRegression(C), scikit-learn defaults otherwise.

    With `soft_targets` (rows x `classes`, each row a distribution, e.g. a teacher's probabilities) the regression
    fits those distributions rather than one label per row — knowledge distillation for a linear model: each text
    counts once per class, weighed by that class's probability, which is the cross-entropy against the soft target
    that logistic regression minimises. A teacher's argmax alone throws away how sure it was, which is most of what
    a linear student can learn from it (bench/results/distill_classical.md). `labels` is then unused."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=max_features)
    lr = LogisticRegression(C=C, max_iter=2000)
    if soft_targets is None:
        pipe = Pipeline([("tfidf", tfidf), ("lr", lr)])
        pipe.fit(list(texts), list(labels), lr__sample_weight=sample_weight)
        return pipe

    probs = np.asarray(soft_targets, dtype=np.float64)
    if classes is None or probs.shape != (len(texts), len(classes)):
        raise ValueError(f"soft targets of shape {probs.shape} do not match {len(texts)} texts x the classes")
    x = tfidf.fit_transform(list(texts))
    rows, cols = np.nonzero(probs >= 1e-4)  # a class the teacher all but rules out teaches nothing: skip the row
    weight = probs[rows, cols] * (1.0 if sample_weight is None else np.asarray(sample_weight)[rows])
    lr.fit(x[rows], np.asarray(classes, dtype=object)[cols], sample_weight=weight)
    return Pipeline([("tfidf", tfidf), ("lr", lr)])


def export_classical(pipe, labels: list[str], out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """model.onnx taking `text` STRING [N, 1] and giving `label` and `probabilities` [N, C], in `labels` order."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType

    classes = [str(c) for c in pipe.classes_]
    if classes != list(labels):  # sklearn sorts classes; the family's label order is sorted too
        raise ValueError(f"classifier classes {classes} differ from the labels {labels}")
    pipe, tfidf = _with_ngram_tuples(pipe)
    model = to_onnx(pipe, initial_types=[("text", StringTensorType([None, 1]))],
                    options={id(pipe.steps[-1][1]): {"zipmap": False}, id(tfidf): {"tokenexp": ONNX_TOKEN_PATTERN}},
                    target_opset=17)
    for node in model.graph.node:
        if node.op_type == "StringNormalizer" and not any(a.name == "locale" for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("locale", ONNX_LOCALE))
    if tfidf.sublinear_tf:
        _fix_sublinear_tf(model.graph)
        onnx.checker.check_model(model)
    (out_dir / ONNX_FILE).write_bytes(model.SerializeToString())
    write_meta(out_dir, {"task": "text-classification", "labels": list(labels), "format": "onnx-classical",
                         **(extra or {})})


def _with_ngram_tuples(pipe):
    """A copy of `pipe` whose TF-IDF vocabulary names each n-gram by its words, as skl2onnx's Traceable
    vectorizers do. Given "running mate", skl2onnx guesses whether it is a bigram or one token holding a space, and
    guesses a token when a word of it is not itself in the vocabulary (max_features cut it): that bigram then never
    fires in the graph. Our token pattern never matches a space, so splitting on it is exact."""
    import copy

    from sklearn.pipeline import Pipeline

    (name, fitted), *rest = pipe.steps
    if fitted.token_pattern != r"(?u)\b\w\w+\b" or fitted.tokenizer is not None or fitted.analyzer != "word":
        raise ValueError("only scikit-learn's default word tokenization has an exact ONNX equivalent here")
    tfidf = copy.copy(fitted)  # shares the fitted arrays; only the vocabulary is replaced
    tfidf.vocabulary_ = {tuple(gram.split(" ")): index for gram, index in fitted.vocabulary_.items()}
    return Pipeline([(name, tfidf), *rest]), tfidf


def _fix_sublinear_tf(graph) -> None:
    """Make the graph's sublinear tf scikit-learn's, 1 + log(tf) on the counts that are present (0 elsewhere).

    skl2onnx (1.20) writes log(1 + tf) instead: a word seen once weighs log 2 rather than 1, so a repeated word
    counts for more after normalisation than in the fitted model (its weights shifted by up to ~6% on a review)."""
    from onnx import TensorProto, helper

    producers = {out: node for node in graph.node for out in node.output}
    logs = [node for node in graph.node if node.op_type == "Log" and node.input[0] in producers
            and producers[node.input[0]].op_type == "Add"
            and producers[producers[node.input[0]].input[0]].op_type == "TfIdfVectorizer"]
    if len(logs) != 1:
        raise ValueError("the exported graph no longer has skl2onnx's log(1 + tf); check its sublinear tf by hand")
    log, add = logs[0], producers[logs[0].input[0]]
    counts, ones, out = add.input[0], add.input[1], log.output[0]
    graph.initializer.append(helper.make_tensor("mf_zero", TensorProto.FLOAT, [], [0.0]))
    fixed = [helper.make_node("Log", [counts], ["mf_log_tf"]),
             helper.make_node("Add", ["mf_log_tf", ones], ["mf_sublinear_tf"]),
             helper.make_node("Greater", [counts, "mf_zero"], ["mf_present"]),
             helper.make_node("Where", ["mf_present", "mf_sublinear_tf", "mf_zero"], [out])]
    at = list(graph.node).index(add)
    graph.node.remove(add)
    graph.node.remove(log)
    for offset, node in enumerate(fixed):
        graph.node.insert(at + offset, node)


def text_feed(inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """The classical graph's feed: raw strings as `text` STRING [N, 1]."""
    return {"text": np.asarray([str(t) for t in inputs], dtype=object).reshape(-1, 1)}


class ClassicalPredictor(Predictor):
    """Raw strings in; the graph tokenizes, weighs and classifies."""

    def __init__(self, model_dir: Path, threads: int | None = None):
        self.model_dir = Path(model_dir)
        self.labels = read_meta(model_dir)["labels"]
        self.session = onnx_session(model_dir, threads)

    def encode(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        return text_feed(inputs)

    def run(self, feeds) -> np.ndarray:
        return np.asarray(self.session.run(["probabilities"], dict(feeds))[0], dtype=np.float32)

    @property
    def signature(self) -> dict[str, list[dict[str, Any]]]:
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.labels)]}]}
