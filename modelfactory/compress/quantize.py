"""INT8 quantization with onnxruntime: dynamic (weights INT8 ahead of time, activations quantized on the fly)."""

from __future__ import annotations

import logging
from pathlib import Path


def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime's quantizer logs through the root logger
    prepped = dst.with_name("preprocessed.onnx")
    try:
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=False)
        source = prepped
    except Exception:  # pre-processing is an optimisation; quantizing the raw graph is still correct
        source = src
    quantize_dynamic(str(source), str(dst), weight_type=QuantType.QInt8, per_channel=False)
    prepped.unlink(missing_ok=True)
