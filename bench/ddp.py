"""Data-parallel teacher fine-tuning: 1 process vs a gang of 2 (torch.distributed, gloo), on a real text cut.

The same fine-tune (MiniLM-L6 + a fresh head, the teacher loss, the training loop of train/loop.py) runs once as one
process and once as two processes that split every global batch; each process gets one intra-op thread, so the
comparison is per process at equal resources. Reports rows/s per process and in total, wall time, final loss and
test accuracy. Writes bench/results/ddp.{json,md}.

    timeout 900 nice -n 10 .venv/bin/python bench/ddp.py [--rows 150 --test-rows 100 --epochs 1]

Per-process throughput only means something on cores the gang has to itself: the table records the machine's
1-minute load average before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
CORPUS = "rotten-tomatoes"


def rank_main(folder: Path, cfg: dict) -> None:
    """One rank (run as its own process, in the environment of `launch`)."""
    import pandas as pd
    import torch

    from modelfactory import tasks
    from modelfactory.factory.stages import _predict_torch
    from modelfactory.train import distributed
    from modelfactory.train.loop import TrainConfig, fit

    torch.set_num_threads(1)
    train, test = pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "test.parquet")
    labels = sorted(train["label"].unique().tolist())
    task = tasks.get("text-classification")
    with distributed.joined() as gang:
        torch.manual_seed(0)
        bundle = task.load_teacher(TEACHER, labels, {"max_length": cfg["max_length"], "seed": 0}, train)
        enc = task.encode(bundle, train)
        tc = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"], seed=0,
                         checkpoint_every=10**9)
        rows = 0

        def make_batch(idx):
            nonlocal rows
            rows += len(idx)
            return task.collate(enc, idx)

        def loss_fn(model, batch, idx):
            return task.loss(task.forward(model, batch), enc.targets[idx])

        t0 = time.perf_counter()
        result = fit(bundle.model, len(enc), make_batch, loss_fn, tc)
        seconds = time.perf_counter() - t0
        out = {"rank": gang.rank, "world": gang.size, "rows": rows, "seconds": seconds, "steps": result.steps,
               "final_loss": result.final_loss}
        if gang.lead:
            pred, _ = _predict_torch(task, bundle, test)
            out["test_accuracy"] = float((pd.Series([labels[i] for i in pred.tolist()]) ==
                                          test["label"].reset_index(drop=True)).mean())
    (folder / f"rank{out['rank']}.of{out['world']}.json").write_text(json.dumps(out))


def launch(folder: Path, world: int, cfg: dict) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, "--rank-of", str(folder), "--config", json.dumps(cfg)],
                              env={**os.environ, "MF_GANG": "1", "RANK": str(r), "WORLD_SIZE": str(world),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"})
             for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank failed: exit codes {codes}")
    return [json.loads((folder / f"rank{r}.of{world}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=150, help="training rows per class")
    ap.add_argument("--test-rows", type=int, default=100, help="test rows per class")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64],
                    help="global batch sizes; each runs 1 process then 2 (a larger batch amortises the all-reduce)")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--rank-of", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rank_of:
        rank_main(Path(args.rank_of), json.loads(args.config))
        return

    import pandas as pd
    import torch

    from modelfactory.data import builtin
    from modelfactory.data.ingest import read_table

    c = builtin.corpus(CORPUS)
    df = pd.DataFrame(read_table(c.path(), c.roles).rows)
    per = args.rows + args.test_rows
    parts = [g.sample(n=min(per, len(g)), random_state=0) for _, g in df.groupby("label")]
    train = pd.concat([p.iloc[:args.rows] for p in parts]).sample(frac=1, random_state=0)
    test = pd.concat([p.iloc[args.rows:] for p in parts])
    rows = []
    with tempfile.TemporaryDirectory(prefix="mf-ddp-bench-") as tmp:
        folder = Path(tmp)
        train.to_parquet(folder / "train.parquet")
        test.to_parquet(folder / "test.parquet")
        for batch in args.batch_sizes:
            cfg = {"epochs": args.epochs, "batch_size": batch, "lr": args.lr, "max_length": args.max_length}
            for world in (1, 2):
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                ranks = launch(folder, world, cfg)
                wall = time.perf_counter() - t0
                per_proc = [r["rows"] / r["seconds"] for r in ranks]
                lead = ranks[0]
                fit_s = max(r["seconds"] for r in ranks)
                rows.append({"batch_size": batch, "processes": world, "steps": lead["steps"],
                             "fit_seconds": round(fit_s, 1), "wall_seconds": round(wall, 1),
                             "rows_per_s_per_process": round(sum(per_proc) / world, 1),
                             "rows_per_s_total": round(sum(r["rows"] for r in ranks) / fit_s, 1),
                             "final_loss": round(lead["final_loss"], 4),
                             "test_accuracy": round(lead["test_accuracy"], 4), "load_average_before": round(load, 1)})
                print(json.dumps(rows[-1]), flush=True)
    meta = {"teacher": TEACHER, "corpus": CORPUS, "train_rows": len(train), "test_rows": len(test),
            "classes": int(train["label"].nunique()), "epochs": args.epochs, "batch_sizes": args.batch_sizes,
            "lr": args.lr, "max_length": args.max_length,
            "backend": "gloo", "threads_per_process": 1, "torch": torch.__version__, "cpus": os.cpu_count(),
            "machine": platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ddp.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Data-parallel teacher fine-tune: 1 process vs 2 (gloo)", "",
             f"{TEACHER} + a fresh head on {CORPUS} ({meta['classes']} classes): {len(train)} training rows, "
             f"{len(test)} test rows; "
             f"{args.epochs:g} epochs, lr {args.lr:g}, max_length {args.max_length}; one intra-op thread per "
             f"process on a {os.cpu_count()}-CPU machine (its 1-minute load average before each run is in the "
             "table: per-process figures mean something only on cores the gang has to itself). Each global batch is "
             "split over the processes, so the all-reduce of the whole model's gradients is paid once per step "
             "whatever the batch: a larger batch amortises it.", "",
             "| global batch | processes | steps | fit s | wall s (incl. start-up) | rows/s per process | rows/s total "
             "| final loss | test accuracy | load average before |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['processes']} | {r['steps']} | {r['fit_seconds']} | {r['wall_seconds']} | "
              f"{r['rows_per_s_per_process']} | {r['rows_per_s_total']} | {r['final_loss']} | {r['test_accuracy']} | "
              f"{r['load_average_before']} |"
              for r in rows]
    (RESULTS / "ddp.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "ddp.md").read_text())


if __name__ == "__main__":
    main()
