"""Generation benchmark: `mf serve-llm` (one base, 4 LoRA adapters, continuous batching across requests and
adapters, OpenAI API over HTTP with streaming) against plain transformers `generate()` serving the same requests
one at a time in-process, each adapter merged into its own copy of the base (`merge_and_unload`), 127.0.0.1 only.

For 1, 4 and 16 concurrent requests (spread round-robin over the 4 adapters; each level is `--bursts` bursts of
that many requests arriving together, the next burst when the last one is done): aggregate tokens/s (completion
tokens of all requests / wall time of the level) and p50 time to first token (arrival to first streamed token; for
the one-at-a-time baseline a request's wait for those ahead of it counts, as it would in a sequential server).
Every request generates exactly `--max-tokens` tokens (greedy, EOS suppressed: `ignore_eos` on the server,
`min_new_tokens` in generate), and the server's answers are checked token for token against the baseline's.
Goal: >= 3x the baseline's aggregate tokens/s at 16 concurrent. Memory: the server process's RSS (one base + the
adapters) next to the baseline process holding 4 merged copies, and the weights each needs.

The model: by default a random Llama built on the fly (tasks/lm_base.py's "small": hidden 256, 4 layers, with a
4,096-token byte-level BPE trained on the demo corpus in seconds): small enough for 2 CPU cores, big enough that
compute matters. `--base DIR` (or a hub id that resolves offline, e.g. HuggingFaceTB/SmolLM2-135M-Instruct)
benchmarks a real model instead. The
server runs as `mf serve-llm` in its own process; this process is the load generator (asyncio + httpx, streaming),
so client and server share the machine's cores, as in bench/serve.py. Server and baseline compute with the same
number of torch threads (`--threads`, default 1): on a 2-core machine that leaves a core for HTTP and the client,
and it keeps the comparison fair when something else runs on the machine (a 2-thread torch op waits for its
slower thread, so a busy neighbour core slows 2-thread runs several-fold, unevenly).

    python bench/generate.py [--base DIR] [--levels 1,4,16] [--bursts 2] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ADAPTERS = ["tone-a", "tone-b", "tone-c", "tone-d"]


# --- the model and its adapters ------------------------------------------------------------------------------
def corpus_texts(n: int) -> list[str]:
    from modelfactory.data import builtin
    from modelfactory.data.ingest import read_table

    c = builtin.corpus("rotten-tomatoes")
    return [r["text"] for r in read_table(c.path(), c.roles).rows[:n]]


def build_base(out: Path, size: str, vocab: int) -> Path:
    """A random Llama (tasks/lm_base.py's sizes) with a byte-level BPE tokenizer trained on the demo corpus and
    the default (ChatML) chat template: the same kind of base the causal-lm tests fine-tune."""
    from modelfactory.tasks.lm_base import build_base as build

    build(corpus_texts(3000), out, size=size, vocab_size=vocab, context=1024)
    return out


def build_adapters(base: str, root: Path) -> list[Path]:
    """Four LoRAs (r=16 on the attention projections) with different random weights, saved as the fine-tuning
    stage saves them (peft files + mf_model.json)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelfactory.tasks.pretrained import resolve

    out = []
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(1000 + i)
        model = AutoModelForCausalLM.from_pretrained(resolve(base), dtype=torch.float32)
        gpt2 = model.config.model_type == "gpt2"
        targets = ["c_attn", "c_proj"] if gpt2 else ["q_proj", "k_proj", "v_proj", "o_proj"]
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets, fan_in_fan_out=gpt2,
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        d = root / name
        peft.save_pretrained(d)
        (d / "mf_model.json").write_text(json.dumps({"task": "causal-lm", "kind": "lora-adapter",
                                                     "base_model": base, "max_length": 512}))
        out.append(d)
    return out


def register_adapters(paths: list[Path]) -> None:
    from modelfactory import registry
    from modelfactory.artifacts import ArtifactStore, content_hash

    store = ArtifactStore()
    for name, path in zip(ADAPTERS, paths):
        artifact_id = content_hash({"bench-generate-adapter": str(path)})
        if not store.exists(artifact_id):
            with store.create(artifact_id, kind="model", producer="bench") as (tmp, _):
                shutil.copytree(path, tmp, dirs_exist_ok=True)
        registry.register(name=name, tenant="bench", task="causal-lm", artifact_id=artifact_id, metrics={},
                          lineage={}, card_fn=lambda n, v: "")


# --- the server under load -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def start_server(base: str, port: int, max_batch: int, threads: int) -> subprocess.Popen:
    import httpx

    log = open(RESULTS / ".generate-server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "serve-llm", "--base", base, "--base-name",
                             "base", "--port", str(port), "--max-batch", str(max_batch), "--max-adapters", "4",
                             "--adapters", ",".join(ADAPTERS), "--meter-interval", "3600"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mf serve-llm exited: see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("mf serve-llm did not start in 180 s")


async def stream_one(client, model: str, prompt: str, max_tokens: int) -> dict:
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c["text"] and first is None:
                    first = time.perf_counter()
                text.append(c["text"])
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "tokens": tokens, "seconds": end - start, "text": "".join(text)}


async def server_level(url: str, jobs: list[list[tuple[str, str]]], max_tokens: int) -> tuple[list[dict], float]:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=64)) as client:
        await stream_one(client, ADAPTERS[0], "warm up", 4)
        out = []
        start = time.perf_counter()
        for burst in jobs:
            out += await asyncio.gather(*[stream_one(client, m, p, max_tokens) for m, p in burst])
        return out, time.perf_counter() - start


# --- the baseline: generate() one request at a time, adapters merged ----------------------------------------
class Baseline:
    """Each adapter merged into its own fp32 copy of the base (`merge_and_unload`), in this process."""

    def __init__(self, base: str, adapter_paths: list[Path], max_tokens: int):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from modelfactory.tasks.lm_common import chat_tokenizer
        from modelfactory.tasks.pretrained import resolve

        self.tok = chat_tokenizer(base)
        self.max_tokens = max_tokens
        before = rss_mb(os.getpid())
        self.merged = {}
        for name, path in zip(ADAPTERS, adapter_paths):
            model = AutoModelForCausalLM.from_pretrained(resolve(base), dtype=torch.float32)
            self.merged[name] = PeftModel.from_pretrained(model, path).merge_and_unload().eval()
        self.memory = {"rss_mb": rss_mb(os.getpid()), "rss_models_mb": rss_mb(os.getpid()) - before,
                       "weights_mb": sum(p.numel() * p.element_size() for m in self.merged.values()
                                         for p in m.parameters()) / 2**20}
        self.run(ADAPTERS[0], "warm up")

    def run(self, name: str, prompt: str) -> dict:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class FirstToken(BaseStreamer):
            """Notes when generate() hands out its first new token (its first put() is the prompt)."""

            def __init__(self) -> None:
                self.puts, self.at = 0, None

            def put(self, value) -> None:
                self.puts += 1
                if self.puts == 2:
                    self.at = time.perf_counter()

            def end(self) -> None:
                pass

        ids = self.tok(prompt, return_tensors="pt")
        streamer = FirstToken()
        with torch.inference_mode():
            out = self.merged[name].generate(**ids, max_new_tokens=self.max_tokens, min_new_tokens=self.max_tokens,
                                             do_sample=False, streamer=streamer, pad_token_id=self.tok.pad_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        return {"first": streamer.at, "end": time.perf_counter(), "tokens": len(new),
                "text": self.tok.decode(new, skip_special_tokens=True)}

    def level(self, jobs: list[list[tuple[str, str]]]) -> tuple[list[dict], float]:
        out = []
        start = time.perf_counter()
        for burst in jobs:
            arrived = time.perf_counter()  # the whole burst arrives at once and is served in order
            for name, prompt in burst:
                r = self.run(name, prompt)
                out.append({"ttft": r["first"] - arrived, "tokens": r["tokens"], "seconds": r["end"] - arrived,
                            "text": r["text"]})
        return out, time.perf_counter() - start


# --- the run ---------------------------------------------------------------------------------------------------
def summarise(out: list[dict], wall: float) -> dict:
    tokens = sum(r["tokens"] for r in out)
    return {"requests": len(out), "tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(statistics.median(r["ttft"] for r in out) * 1000, 1),
            "ttft_max_ms": round(max(r["ttft"] for r in out) * 1000, 1),
            "latency_p50_ms": round(statistics.median(r["seconds"] for r in out) * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="a model dir or hub id (default: a random Llama built here)")
    ap.add_argument("--size", default="small", help="size of the random base: tasks/lm_base.py SIZES "
                                                      "(small: hidden 256, 4 layers)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--bursts", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the server and of the baseline (the same for both)")
    ap.add_argument("--out", default="generate", help="results file stem under bench/results/")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    began = time.time()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mf-bench-generate-"))
    os.environ["MF_HOME"] = str(work / "mfhome")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.pop("MF_DATABASE_URL", None)
    try:
        import torch

        torch.set_num_threads(args.threads)
        base = args.base or str(build_base(work / "base", args.size, args.vocab))
        from modelfactory.tasks.pretrained import resolve

        config = json.loads((Path(resolve(base)) / "config.json").read_text())
        adapter_paths = build_adapters(base, work / "adapters")
        register_adapters(adapter_paths)
        texts = [t for t in corpus_texts(400) if len(t) > 120]
        prompts = iter(t[:160] for t in texts)
        jobs_by_level = {c: [[(ADAPTERS[i % len(ADAPTERS)], next(prompts)) for i in range(c)]
                             for _ in range(args.bursts)] for c in levels}
        print(f"model {config.get('model_type')} hidden {config.get('hidden_size', config.get('n_embd'))}, "
              f"{config.get('num_hidden_layers', config.get('n_layer'))} layers; {len(ADAPTERS)} adapters; "
              f"{os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}", flush=True)

        port = free_port()
        proc = start_server(base, port, max_batch=max(levels), threads=args.threads)
        try:
            baseline = Baseline(base, adapter_paths, args.max_tokens)
            memory = baseline.memory
            served, base_results = {}, {}
            for c, jobs in jobs_by_level.items():  # the two take turns, so both see the machine as it is then
                served[c] = asyncio.run(server_level(f"http://127.0.0.1:{port}", jobs, args.max_tokens))
                print(f"server   {c:>3} concurrent: {summarise(*served[c])}", flush=True)
                base_results[c] = baseline.level(jobs)
                print(f"baseline {c:>3} concurrent: {summarise(*base_results[c])}", flush=True)
            server_rss = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)

        base_weights = memory["weights_mb"] / len(ADAPTERS)  # one fp32 copy, as the server holds it
        adapter_weights = sum((p / "adapter_model.safetensors").stat().st_size for p in adapter_paths) / 2**20
        rows = []
        for c in levels:
            s, b = summarise(*served[c]), summarise(*base_results[c])
            same = sum(x["text"] == y["text"] for x, y in zip(served[c][0], base_results[c][0]))
            rows.append({"concurrent": c, "server": s, "baseline": b, "speedup": round(s["tokens_per_s"] /
                                                                                       b["tokens_per_s"], 2),
                         "identical_answers": f"{same}/{len(served[c][0])}"})
        top = rows[-1]
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
            "model": {"base": args.base or f"random Llama '{args.size}' (hidden {config['hidden_size']}, "
                                           f"{config['num_hidden_layers']} layers, vocab {config['vocab_size']})",
                      "model_type": config.get("model_type"),
                      "parameters_mb_fp32": round(memory["weights_mb"] / len(ADAPTERS), 1),
                      "adapters": len(ADAPTERS), "lora": "r=16 on q/k/v/o (GPT-2: c_attn/c_proj)"},
            "settings": {"levels": levels, "bursts": args.bursts, "max_tokens": args.max_tokens,
                         "decoding": "greedy, EOS suppressed", "server": "mf serve-llm --max-batch "
                         f"{max(levels)} --max-adapters 4, /v1/completions streaming over HTTP on 127.0.0.1"},
            "levels": rows,
            "goal": {"speedup_at": top["concurrent"], "target": 3.0, "measured": top["speedup"],
                     "met": top["speedup"] >= 3.0},
            "memory": {"server_rss_mb": round(server_rss, 1), "baseline_rss_mb_4_merged": round(memory["rss_mb"], 1),
                       "baseline_rss_mb_models_only": round(memory["rss_models_mb"], 1),
                       "weights_mb_server": round(base_weights + adapter_weights, 1),
                       "weights_mb_4_merged": round(memory["weights_mb"], 1)},
            "run_seconds": round(time.time() - began, 1),
        }
        (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(markdown(result))
        print(markdown(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict) -> str:
    m, mem, g = r["machine"], r["memory"], r["goal"]
    lines = ["# Generation benchmark: mf serve-llm vs transformers generate()", "",
             f"Model: {r['model']['base']} ({r['model']['model_type']}, {r['model']['parameters_mb_fp32']} MB of "
             f"fp32 weights), {r['model']['adapters']} LoRA adapters ({r['model']['lora']}). Machine: {m['cpus']} "
             f"CPUs ({m['platform']}), torch {m['torch']}, {m['torch_threads']} torch thread(s) each for server and "
             f"baseline; the load generator shares the machine with the server (127.0.0.1). Each request: "
             f"{r['settings']['max_tokens']} tokens, "
             f"{r['settings']['decoding']}; each level is {r['settings']['bursts']} bursts of that many requests "
             f"arriving together, spread round-robin over the adapters. Run time {r['run_seconds']} s.", "",
             "- **server**: " + r["settings"]["server"] + "; one base, adapters chosen per row in one batch "
             "(continuous batching).",
             "- **baseline**: plain `generate()` in-process, one request at a time, each adapter merged into its own "
             "copy of the base (`merge_and_unload`); a request's time to first token includes its wait for the "
             "requests ahead of it.", "",
             "| concurrent | server tok/s | baseline tok/s | speedup | server TTFT p50 (ms) | baseline TTFT p50 "
             "(ms) | server latency p50 (ms) | baseline latency p50 (ms) | same answers |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["levels"]:
        s, b = row["server"], row["baseline"]
        lines.append(f"| {row['concurrent']} | {s['tokens_per_s']} | {b['tokens_per_s']} | **{row['speedup']}x** | "
                     f"{s['ttft_p50_ms']} | {b['ttft_p50_ms']} | {s['latency_p50_ms']} | {b['latency_p50_ms']} | "
                     f"{row['identical_answers']} |")
    lines += ["", f"Goal: >= {g['target']}x the baseline's aggregate tokens/s at {g['speedup_at']} concurrent: "
                  f"measured **{g['measured']}x** -> **{'met' if g['met'] else 'missed'}**.", "",
              "| memory | server (one base + 4 adapters) | baseline (4 merged copies) |", "|---|---:|---:|",
              f"| process RSS (MB) | {mem['server_rss_mb']} | {mem['baseline_rss_mb_4_merged']} |",
              f"| weights (MB) | {mem['weights_mb_server']} | {mem['weights_mb_4_merged']} |", "",
              f"The baseline process's RSS grew by {mem['baseline_rss_mb_models_only']} MB for its 4 merged copies. "
              "Process RSS includes the Python/torch runtime (a few hundred MB) in both columns; the weights row "
              "is what grows with the number of adapters.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
