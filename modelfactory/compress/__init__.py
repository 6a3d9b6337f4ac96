"""Compression, task-agnostic: distillation losses, ONNX export with a parity check, INT8 quantization,
and measurement of what a model costs to run."""
