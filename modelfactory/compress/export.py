"""ONNX export through the task family, then a parity check: the exported graph must agree with PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import MFError
from ..tasks import Bundle, TaskFamily


def export_and_verify(task: TaskFamily, bundle: Bundle, out_dir: Path, sample: pd.DataFrame,
                      atol: float = 1e-3) -> dict:
    """Export to `out_dir` and compare ONNX fp32 probabilities with PyTorch's on `sample` rows."""
    task.export_onnx(bundle, out_dir, sample)
    predictor = task.load_predictor(out_dir)
    inputs = task.raw_inputs(sample)
    onnx_probs = predictor.predict_proba(inputs, batch_size=16)
    encoded = task.encode(bundle, sample)
    bundle.model.eval()
    with torch.no_grad():
        parts = []
        for i in range(0, len(encoded), 16):
            batch = task.collate(encoded, list(range(i, min(i + 16, len(encoded)))))
            parts.append(torch.softmax(task.forward(bundle.model, batch).logits, dim=-1).numpy())
    torch_probs = np.concatenate(parts)
    diff = float(np.abs(onnx_probs - torch_probs).max())
    agree = float((onnx_probs.argmax(1) == torch_probs.argmax(1)).mean())
    if diff > atol:
        raise MFError(f"ONNX export does not match PyTorch: max |Δprob| = {diff:.2e} > {atol:.0e}", exit_code=1)
    return {"parity_max_abs_diff": diff, "parity_argmax_agreement": agree, "parity_rows": len(sample)}
