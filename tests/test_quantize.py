"""Graph optimisation and static INT8 quantization on a tiny exported BERT classifier."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from modelfactory import tasks
from modelfactory.compress.quantize import optimize_onnx, quantize_static_int8
from modelfactory.tasks.base import ONNX_FILE

HINTS = {"model_type": "bert", "num_heads": 2, "hidden_size": 64}


def _texts(numbers: range) -> tuple[list[str], list[str]]:
    texts = [f"sample text number {i} {'good' if i % 2 else 'bad'}" for i in numbers]
    return texts, ["pos" if i % 2 else "neg" for i in numbers]


@pytest.fixture(scope="module")
def exported(tiny_teacher, tmp_path_factory) -> Path:
    """The tiny teacher, briefly trained to tell 'good' from 'bad', exported to ONNX.

    A randomly initialised BERT gives nearly the same logits for every input (margins ~1e-3), so comparing
    fp32 with INT8 on it would test nothing; a few steps give input-dependent margins of about +-1.
    """
    import torch

    task = tasks.get("text-classification")
    bundle = task.load_teacher(str(tiny_teacher), ["neg", "pos"], {"max_length": 32})
    texts, labels = _texts(range(40))
    df = pd.DataFrame({"text": texts, "label": labels})
    enc = task.encode(bundle, df)
    batch = task.collate(enc, list(range(len(enc))))
    torch.manual_seed(0)
    opt = torch.optim.AdamW(bundle.model.parameters(), lr=3e-3)
    bundle.model.train()
    for _ in range(8):
        loss = task.loss(task.forward(bundle.model, batch), enc.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("tiny-onnx")
    task.export_onnx(bundle, out, df)
    return out


@pytest.fixture(scope="module")
def predictor(exported):
    return tasks.get("text-classification").load_predictor(exported)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _inputs(path: Path) -> list[tuple[str, int]]:
    return [(i.name, i.type.tensor_type.elem_type) for i in onnx.load(str(path)).graph.input]


def test_optimize_onnx_fuses_and_keeps_outputs(exported, predictor, tmp_path):
    src = exported / ONNX_FILE
    texts = _texts(range(100, 110))[0] + ["bad", "a much longer sample text that pads every other row of the batch"]
    feeds = predictor.encode(texts)
    assert (feeds["attention_mask"] == 0).any()  # padded rows: the fused attention must honour the mask
    assert optimize_onnx(src, tmp_path / "opt.onnx", HINTS) is True
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["SkipLayerNormalization"] > 0 and ops["Attention"] > 0  # it did fuse, not just copy
    assert _inputs(tmp_path / "opt.onnx") == _inputs(src)
    np.testing.assert_allclose(_run(tmp_path / "opt.onnx", feeds), _run(src, feeds), atol=1e-4)

    for hints in (None, {"model_type": "no-such-architecture"}):
        assert optimize_onnx(src, tmp_path / "copy.onnx", hints) is False
        assert (tmp_path / "copy.onnx").read_bytes() == src.read_bytes()


def test_optimize_onnx_refuses_a_fusion_that_changes_the_numbers(exported, tmp_path, monkeypatch):
    """A fusion is pattern matching on someone else's graph; one that computes something else (here: a stand-in
    optimizer that shifts the classifier's bias) is caught by running both graphs, and the copy is kept."""
    import onnxruntime.transformers.optimizer as ort_optimizer
    from onnx import numpy_helper

    class Shifted:
        def __init__(self, path: str):
            self.model = onnx.load(path)

        def save_model_to_file(self, path: str) -> None:
            bias = next(t for t in self.model.graph.initializer if t.name.endswith("classifier.bias"))
            bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, bias.name))
            onnx.save(self.model, path)

    monkeypatch.setattr(ort_optimizer, "optimize_model", lambda path, **_: Shifted(path))
    src = exported / ONNX_FILE
    assert optimize_onnx(src, tmp_path / "opt.onnx", HINTS) is False
    assert (tmp_path / "opt.onnx").read_bytes() == src.read_bytes()


def _assert_close_predictions(fp32: np.ndarray, int8: np.ndarray) -> None:
    """Same decisions on the rows where fp32 is not a coin toss, margins that move together and keep their size
    (a badly calibrated graph, e.g. ranges from one all-[PAD] batch, keeps signs but shrinks margins ~3x)."""
    m32, m8 = fp32[:, 1] - fp32[:, 0], int8[:, 1] - int8[:, 0]
    confident = np.abs(m32) > 0.1
    assert confident.sum() >= 20, f"the fp32 model has too little signal to compare against: {m32}"
    assert ((m32 > 0) == (m8 > 0))[confident].mean() >= 0.8
    assert np.corrcoef(m32, m8)[0, 1] > 0.9
    assert np.abs(m8 - m32).mean() < 0.2 * np.abs(m32).mean()  # observed: ~2%


@pytest.mark.parametrize("optimized_first", [False, True], ids=["fp32", "optimized"])
def test_quantize_static_int8(exported, predictor, tmp_path, optimized_first):
    src = exported / ONNX_FILE
    if optimized_first:  # the fused graph (contrib ops, odd symbolic shapes) must quantize too
        assert optimize_onnx(src, tmp_path / "opt.onnx", HINTS)
        src = tmp_path / "opt.onnx"
    calibration = [predictor.encode([t]) for t in _texts(range(40))[0]]  # one row per batch: lengths vary
    dst = tmp_path / "int8.onnx"
    quantize_static_int8(src, dst, calibration)

    ops = Counter(n.op_type for n in onnx.load(str(dst)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert _inputs(dst) == _inputs(exported / ONNX_FILE)
    assert dst.stat().st_size < 0.5 * (exported / ONNX_FILE).stat().st_size  # INT8 weights: about a quarter
    assert not (tmp_path / "preprocessed.onnx").exists()

    texts, _ = _texts(range(100, 140))  # held out from calibration
    feeds = predictor.encode(texts)
    _assert_close_predictions(_run(exported / ONNX_FILE, feeds), _run(dst, feeds))


def test_quantize_static_int8_needs_calibration(exported, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantize_static_int8(exported / ONNX_FILE, tmp_path / "int8.onnx", [])
