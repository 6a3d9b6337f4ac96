"""Batch-1 latency of BERT-style encoders exported two ways, side by side: from PyTorch's sdpa attention (the
default, which onnxruntime's optimizer cannot fuse) and from the eager attention's ops (fused into one Attention
kernel), each through the factory's own optimize + dynamic-INT8 path (compress/quantize.py).

Shapes: the demo teacher (MiniLM-L6: 6 layers, 384 wide) and the `tiny` student sizes; weights are random (latency
does not depend on them). One onnxruntime thread, one row of 24 tokens, p50 over 300 calls after 30 warm-up calls,
three repeats. Writes bench/results/attention_fusion.{json,md}.

    .venv/bin/python bench/attention_fusion.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SHAPES = {  # name -> BertConfig fields
    "MiniLM-L6 (teacher)": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
                               vocab_size=30522, max_position_embeddings=512),
    "tiny m (2 x 128, ffn 512)": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2,
                                      intermediate_size=512, vocab_size=13944, max_position_embeddings=64),
    "tiny xs (1 x 128, ffn 512)": dict(num_hidden_layers=1, hidden_size=128, num_attention_heads=2,
                                       intermediate_size=512, vocab_size=13944, max_position_embeddings=64),
}
TOKENS = 24


def export(cfg_fields: dict, attn: str, path: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from modelfactory.tasks.text_classification import LogitsOnly

    cfg = BertConfig(num_labels=3, **cfg_fields)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    ids = torch.randint(5, 1000, (2, 16))
    torch.onnx.export(LogitsOnly(model), (ids, torch.ones_like(ids)), str(path), input_names=["input_ids",
                      "attention_mask"], output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                    "logits": {0: "b"}})


def p50_ms(path: Path, calls: int = 300) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, 1000, (1, TOKENS)), "attention_mask": np.ones((1, TOKENS), np.int64)}
    for _ in range(30):
        session.run(None, feed)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    import warnings

    import onnx

    from modelfactory.compress.quantize import optimize_onnx, quantize_dynamic_int8

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mf-fusion-") as tmp:
        for name, fields in SHAPES.items():
            for attn in ("sdpa", "eager"):
                src, opt, q = (Path(tmp) / f"{attn}.onnx", Path(tmp) / f"{attn}.opt.onnx", Path(tmp) / f"{attn}.q.onnx")
                export(fields, attn, src)
                fused = optimize_onnx(src, opt, {"model_type": "bert", "num_heads": fields["num_attention_heads"],
                                                 "hidden_size": fields["hidden_size"]})
                quantize_dynamic_int8(opt, q)
                ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
                fp32 = [p50_ms(opt) for _ in range(3)]
                int8 = [p50_ms(q) for _ in range(3)]
                rows.append({"model": name, "export": attn, "optimized": fused, "attention_fused": "Attention" in ops,
                             "nodes": len(ops), "fp32_ms": [round(x, 3) for x in fp32],
                             "int8_ms": [round(x, 3) for x in int8], "int8_mb": round(q.stat().st_size / 1e6, 2)})
                print(json.dumps(rows[-1]), flush=True)
    meta = {"tokens": TOKENS, "threads": 1, "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_fusion.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# Attention fusion: sdpa vs eager export, batch-1 latency", "",
          f"Measured {meta['when']} by `bench/attention_fusion.py` on {meta['cpus']} CPUs (1-minute load "
          f"{meta['load_1min']} at the end); one onnxruntime thread, one row of {TOKENS} tokens, p50 of 300 calls, "
          "three repeats (min / median / max). Both exports go through `optimize_onnx` and dynamic INT8.", "",
          "| model | export | attention fused | graph nodes | fp32 p50 ms | INT8 p50 ms | INT8 MB |",
          "|---|---|---|---:|---|---|---:|"]
    for r in rows:
        f, i = sorted(r["fp32_ms"]), sorted(r["int8_ms"])
        md.append(f"| {r['model']} | {r['export']} | {'yes' if r['attention_fused'] else 'no'} | {r['nodes']} | "
                  f"{f[1]:.3f} ({f[0]:.3f}-{f[2]:.3f}) | {i[1]:.3f} ({i[0]:.3f}-{i[2]:.3f}) | {r['int8_mb']} |")
    (RESULTS / "attention_fusion.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
