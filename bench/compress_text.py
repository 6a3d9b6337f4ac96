"""Teacher vs student, fp32 vs INT8, measured side by side in one run on the demo data.

Runs (or re-uses from the stage cache) the demo order, then measures all four ONNX models on the same test
rows in this process: accuracy, macro-F1, file size, batch-1 p50/p95 latency with one intra-op thread and with
onnxruntime's default threads, and batch-32 throughput. Writes bench/results/compress_text.{json,md}.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/compress_text.py [--home .mf]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from importlib import resources
from pathlib import Path

import yaml

RESULTS = Path(__file__).parent / "results"
BARS = {"accuracy_ratio": 0.95, "size_reduction": 4.0, "latency_speedup": 4.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=os.environ.get("MF_HOME", ".mf"), help="MF_HOME to run/re-use the order in")
    args = ap.parse_args()
    os.environ["MF_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from modelfactory import tasks
    from modelfactory.compress.evaluate import evaluate_model
    from modelfactory.data import builtin, versions
    from modelfactory.factory.order import run_order
    from modelfactory.factory.spec import parse_spec
    from modelfactory.factory.stages import read_split
    from modelfactory.report import metrics_table

    corpus = builtin.corpus("rotten-tomatoes")
    ds = versions.add_table(corpus.name, corpus.table(), tenant="demo")
    raw = yaml.safe_load(resources.files("modelfactory.examples").joinpath("rotten_tomatoes.yaml").read_text())
    raw["data"] = {"dataset": str(ds)}
    spec = parse_spec(raw, "demo order")
    print(f"running / re-using the demo order on {ds} ...", flush=True)
    result = run_order(spec)
    task = tasks.get(spec.task)
    test = read_split(result.results["split"].artifact, "test")

    rows: dict[str, dict] = {}
    for name, node in result.candidates.items():
        path = result.results[node].artifact.path
        one = evaluate_model(task, path, test, threads=1, latency_rows=300, throughput_seconds=2.0)
        default = evaluate_model(task, path, test, threads=None, latency_rows=300, throughput_seconds=2.0)
        rows[name] = {**one, "parameters": result.results[node].artifact.metrics.get("parameters"),
                      "latency_ms_p50_default_threads": default["latency_ms_p50"],
                      "latency_ms_p95_default_threads": default["latency_ms_p95"],
                      "throughput_default_threads": default["throughput"]}
        rows[name].pop("confusion", None)
        print(f"  {name:<13} acc {one['accuracy']:.4f}  {one['size_bytes'] / 1e6:6.1f} MB  "
              f"p50 {one['latency_ms_p50']:.2f} ms (1 thread) / {default['latency_ms_p50']:.2f} ms (default)",
              flush=True)

    t, s = rows["teacher"], rows[result.model.metrics.get("deployed", "student_int8")]  # what the order shipped
    achieved = {"accuracy_ratio": s["accuracy"] / t["accuracy"], "size_reduction": t["size_bytes"] / s["size_bytes"],
                "latency_speedup": t["latency_ms_p50"] / s["latency_ms_p50"],
                "latency_speedup_default_threads": t["latency_ms_p50_default_threads"]
                / s["latency_ms_p50_default_threads"]}
    passed = {k: achieved[k] >= bar for k, bar in BARS.items()}
    out = {"benchmark": "compress_text", "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "dataset": str(ds), "test_rows": len(test), "order": spec.model_dump(mode="json"),
           "models": rows, "achieved": achieved, "bars": BARS, "passed": passed}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compress_text.json").write_text(json.dumps(out, indent=2))
    md = [f"# Text compression benchmark ({out['when']})", "",
          f"Demo order on `{ds}`, {len(test)} test rows, {os.cpu_count()} CPU cores; latency = batch 1 model time "
          "(tokenization excluded), one intra-op thread unless noted.", "", metrics_table(rows), "",
          "| model | p50 1 thread (ms) | p95 1 thread (ms) | p50 default threads (ms) | batch-32 default (rows/s) |",
          "|---|---|---|---|---|"]
    md += [f"| {n} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | {r['latency_ms_p50_default_threads']:.2f}"
           f" | {r['throughput_default_threads']:.0f} |" for n, r in rows.items()]
    md += ["", "| bar (INT8 student vs fp32 teacher) | needed | measured | |", "|---|---|---|---|"]
    md += [f"| {k} | ≥ {BARS[k]} | {achieved[k]:.3f} | {'pass' if passed[k] else 'FAIL'} |" for k in BARS]
    (RESULTS / "compress_text.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
