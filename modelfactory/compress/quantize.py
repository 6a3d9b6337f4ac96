"""Making an exported ONNX graph cheaper to run on CPU, with onnxruntime's own tools.

- `optimize_onnx`: transformer graph fusions (attention, LayerNorm, GELU); same numbers, fewer kernels.
- `quantize_dynamic_int8`: weights INT8 ahead of time, activations quantized on the fly; needs no data.
- `quantize_static_int8`: weights and activations INT8 with ranges calibrated on real inputs (QDQ format); no
  per-call range computation, so it is usually the faster of the two, at the price of a calibration set.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# Inside a graph, only the projections and convolutions (MatMul/Gemm/Conv: where nearly all the compute is), the
# ReLUs after them (folded into the convolution's output range) and the embedding lookup (Gather: where most of a
# small encoder's bytes are) are quantized. Putting Q/DQ around LayerNorm, Softmax, Reshape/Transpose, a resize
# or the mask's Where buys no speed on CPU and costs accuracy.
STATIC_OP_TYPES = ["MatMul", "Gemm", "Gather", "Conv", "Relu"]


def _quiet_onnxruntime() -> None:
    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's quantizer logs through the root logger
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)  # ...and its transformer optimizer through its own


@contextmanager
def _scratch_cwd() -> Iterator[None]:
    """onnxruntime's shape inference drops temp files (sym_shape_infer_temp.onnx, <uuid>.data) into the current
    directory and may leave them behind; run it from a private temp dir so they never land in the user's tree."""
    import os
    import tempfile

    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="mf-ort-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


@contextmanager
def _preprocessed(src: Path, dst: Path) -> Iterator[Path]:
    """Shape inference + graph clean-up before quantizing (onnxruntime's recommended first step): tensors of
    unknown shape are left unquantized. Yields the graph to quantize; the temporary file is removed after."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dst.with_name("preprocessed.onnx")
    source = src  # last resort, the raw graph: fewer tensors get quantized, but the model stays correct
    # Full symbolic shape inference first; graphs it cannot solve (fused attention masks: "Min(128, sequence)" vs
    # "sequence") get merged symbolic dims, then plain ONNX shape inference. Static quantization needs the shapes.
    attempts = ({"skip_symbolic_shape": False}, {"skip_symbolic_shape": False, "auto_merge": True},
                {"skip_symbolic_shape": True})
    src, prepped = Path(src).resolve(), prepped.resolve()
    for options in attempts:
        try:
            with _scratch_cwd():
                quant_pre_process(str(src), str(prepped), **options)
            source = prepped
            break
        except Exception:
            continue
    try:
        yield source
    finally:
        prepped.unlink(missing_ok=True)


def optimize_onnx(src: Path, dst: Path, hints: dict[str, Any] | None) -> bool:
    """Fuse a transformer graph with onnxruntime's transformer optimizer; True when dst is the optimised graph.

    `hints` names the architecture ({"model_type": "bert", "num_heads": 12, "hidden_size": 384}); without it, or
    when the optimizer fails or yields a graph onnxruntime cannot load with the same inputs, dst is a plain copy
    of src and the result is False: optimisation is never worth a broken model. opt_level=1 (onnxruntime's basic,
    provider-independent rewrites, then the Python fusions) with use_gpu=False keeps the graph portable to any CPU;
    levels 2/99 bake in layouts and kernels of the machine that ran the optimizer.
    """
    src, dst = Path(src), Path(dst)
    if hints and _try_optimize(src, dst, hints):
        return True
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    return False


def _try_optimize(src: Path, dst: Path, hints: dict[str, Any]) -> bool:
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    _quiet_onnxruntime()
    model_type = str(hints.get("model_type", ""))
    if model_type not in MODEL_TYPES:  # the optimizer would hand the graph back untouched
        return False
    from onnxruntime.transformers.fusion_options import FusionOptions

    # The embedding lookup stays a Gather: both quantizers make it INT8 (static QDQ has no EmbedLayerNormalization,
    # and the embeddings are most of a small encoder's bytes); fusing it measured no faster at batch 1.
    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = False
    tmp = dst.with_name(dst.stem + ".optimized.onnx")
    try:
        model = optimize_model(str(src), model_type=model_type, num_heads=int(hints.get("num_heads", 0)),
                               hidden_size=int(hints.get("hidden_size", 0)), opt_level=1, use_gpu=False,
                               optimization_options=options)
        model.save_model_to_file(str(tmp))
        before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
        after = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        if [i.name for i in before.get_inputs()] != [i.name for i in after.get_inputs()]:
            return False
        feeds = _probe_feeds(before)
        if not all(np.allclose(a, b, atol=1e-3) for a, b in zip(before.run(None, feeds), after.run(None, feeds),
                                                                   strict=True)):
            return False  # a fusion that matched a pattern it does not compute (e.g. the wrong head count)
        tmp.replace(dst)
        return True
    except Exception:  # fusions are pattern matching on someone else's graph; any failure means "not optimised"
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _probe_feeds(session: Any) -> dict[str, np.ndarray]:
    """Two rows of 12 positions for a token-input graph: random ids (kept below 100, inside any vocabulary) and
    a mask that pads the second row, so a fused attention is checked on padding too."""
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        if "int" not in inp.type:
            feeds[inp.name] = rng.standard_normal((2, 12)).astype(np.float32)
        elif "mask" in inp.name:
            feeds[inp.name] = np.array([[1] * 12, [1] * 7 + [0] * 5], dtype=np.int64)
        else:
            feeds[inp.name] = rng.integers(1, 100, (2, 12), dtype=np.int64)
    return feeds


def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet_onnxruntime()
    with _preprocessed(src, dst) as source:
        quantize_dynamic(str(source), str(dst), weight_type=QuantType.QInt8, per_channel=False)


class _FeedsReader:
    """onnxruntime's CalibrationDataReader protocol (get_next until None) over ready-made feeds, one batch each."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_static_int8(src: Path, dst: Path, calibration_feeds: list[dict[str, np.ndarray]],
                         per_channel: bool = True) -> None:
    """INT8 weights and activations, activation ranges calibrated (MinMax) on `calibration_feeds`.

    Settings follow onnxruntime's advice for CPU inference (see `quantize_static`'s docstring):
    - QDQ format: the graph stays standard ONNX and the CPU provider fuses Q/DQ pairs into integer kernels.
    - activations QUInt8 (asymmetric: post-GELU/softmax ranges are lopsided), weights QInt8 (symmetric).
    - reduce_range=True (7-bit weights): x86 CPUs without VNNI saturate in U8S8 products, per-channel weights
      especially; the model may be served on another machine than the one that quantizes it, so play safe.
    - MatMulConstBOnly: only weight projections are quantized, not the attention score MatMuls between two
      activations (Q·K^T, P·V), whose ranges vary per input and lose the most accuracy in INT8.
    - per_channel: one scale per output column of each weight; more accurate, slightly slower.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration_feeds:
        raise ValueError("static quantization needs at least one calibration batch")
    _quiet_onnxruntime()
    with _preprocessed(src, dst) as source:
        quantize_static(
            str(source), str(dst), _FeedsReader(calibration_feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OP_TYPES, per_channel=per_channel, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False, "WeightSymmetric": True},
        )
