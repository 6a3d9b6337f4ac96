"""Teacher recipe sweep: learning rate x minimum optimisation steps on the small cuts of the text corpora.

Issue 15 asks for the teacher recipe to be picked from evidence, not one run. This fine-tunes the teacher alone
(no students) exactly as the factory's `finetune_teacher` stage does (factory/teacher_fit.TeacherFit: epochs
raised to reach `min_steps`, warmup + linear decay, class weights, best-on-validation checkpoint) but with no
collapse retries, so each setting shows what it does on its own. The splits are the bench's (val 0.1, test 0.15,
seed 0, max_rows 5000; stratified cuts of the training part, seed 0), the backbone and length the demo's
(all-MiniLM-L6-v2, 64 tokens, batch 32). Per setting: validation and test accuracy / macro-F1, whether the run
collapsed (validation macro-F1 within 0.05 of always answering the majority class), steps, step of the best
checkpoint and wall time. `--max-minutes` stops the sweep between settings (the rest are listed as not run).
Writes bench/results/teacher_sweep.{json,md}.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python bench/teacher_sweep.py [--lrs 5e-5,2e-5,1e-4] [--steps 200,400]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
TEACHER = {"_pretrained": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 64, "batch_size": 32,
           "epochs": 1.0}
SPLIT = {"val": 0.1, "test": 0.15, "seed": 0, "max_rows": 5000}


def make_split(corpus: str, rows: int, folder: Path):
    """The bench's split of `corpus`, its training part cut to `rows`, as a split artifact TeacherFit reads."""
    import pandas as pd

    from modelfactory.artifacts import Artifact
    from modelfactory.data import builtin
    from modelfactory.data.split import stratified_cut, stratified_split

    df = pd.DataFrame(builtin.corpus(corpus).table().rows)
    parts = stratified_split(df, **SPLIT)
    parts["train"] = stratified_cut(parts["train"], rows, SPLIT["seed"])
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.to_parquet(folder / f"{name}.parquet", index=False)
    labels = sorted(df["label"].unique().tolist())
    return Artifact(id=f"{corpus}-{rows}", path=folder, manifest={"labels": labels}), parts["test"]


def fit_one(split, test, lr: float, min_steps: int, work: Path) -> dict[str, Any]:
    """One teacher fine-tune (no retries), scored on the validation and test rows."""
    from modelfactory import tasks
    from modelfactory.factory.stages import StageContext, _predict_torch
    from modelfactory.factory.teacher_fit import TeacherFit
    from modelfactory.tasks.metrics import classification_metrics

    ctx = StageContext(out=work / "out", work=work / "work")
    shutil.rmtree(ctx.out, ignore_errors=True)  # a resumed run rewrites its result
    ctx.out.mkdir(parents=True)
    params = {**TEACHER, "task": "text-classification", "lr": lr, "min_steps": min_steps, "retries": 0, "seed": 0}
    t0 = time.perf_counter()
    fit = TeacherFit(ctx, split, params).run()["metrics"]
    seconds = time.perf_counter() - t0
    task = tasks.get("text-classification")
    bundle = task.load(ctx.out)
    pred, _ = _predict_torch(task, bundle, test)
    labels = split.manifest["labels"]
    m = classification_metrics(test["label"].tolist(), [labels[i] for i in pred.tolist()], labels)
    return {"lr": lr, "min_steps": min_steps, "steps": fit["steps"], "best_step": fit["best_step"],
            "val_accuracy": fit["val_accuracy"], "val_macro_f1": fit["val_macro_f1"],
            "majority_val_macro_f1": fit["majority_val_macro_f1"], "collapsed": fit["collapsed"],
            "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"], "seconds": seconds}


def reference_rows(cuts: list[tuple[str, int]]) -> list[str]:
    """The same cuts' teachers as bench/compress.py's orders trained them (lr 1e-4, min_steps 200, retries on),
    read from its results: the recipe the sweep is compared with, measured on the same split parameters."""
    out = []
    for corpus, cut in cuts:
        f = RESULTS / f"compress_{corpus}.json"
        entry = json.loads(f.read_text())["cuts"].get(str(cut)) if f.exists() else None
        if not entry:
            continue
        fit, t = entry["teacher_fit"], entry["models"]["teacher"]
        first = fit["attempts"][0]
        out.append(f"| {corpus} (compress.py order, {entry['when'][:10]}) | {cut} | {first['lr']:g} | 200 | "
                   f"{fit['steps']} | {fit['best_step']} | {fit['val_accuracy']:.3f} | {fit['val_macro_f1']:.3f} | "
                   f"{t['accuracy']:.3f} | {t['macro_f1']:.3f} | {'**yes**' if fit['collapsed'] else 'no'} | – |")
    return out


def write(when: str, runs: list[dict], skipped: list[dict], max_minutes: float) -> None:
    """Results so far (rewritten after every run: a sweep killed at its deadline keeps what it measured)."""
    out = {"benchmark": "teacher_sweep", "when": when, "cores": os.cpu_count(), "teacher": TEACHER, "split": SPLIT,
           "runs": runs, "not_run": skipped}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "teacher_sweep.json").write_text(json.dumps(out, indent=2))
    md = [f"<!-- measured {when}, {os.cpu_count()} CPU cores -->", "# Teacher recipe sweep (text, small cuts)", "",
          "all-MiniLM-L6-v2 fine-tuned by the factory's teacher stage (64 tokens, batch 32, warmup + linear decay, "
          "class weights, best-on-validation checkpoint), one attempt per setting (no collapse retries), seed 0. "
          "Collapsed: validation macro-F1 within 0.05 of the majority class's.", "",
          "| corpus | train rows | lr | min steps | steps | best step | val acc | val macro-F1 | test acc | "
          "test macro-F1 | collapsed | minutes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['corpus']} | {r['cut']} | {r['lr']:g} | {r['min_steps']} | {r['steps']} | {r['best_step']} | "
           f"{r['val_accuracy']:.3f} | {r['val_macro_f1']:.3f} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} "
           f"| {'**yes**' if r['collapsed'] else 'no'} | {r['seconds'] / 60:.1f} |" for r in runs]
    md += reference_rows(sorted({(r["corpus"], r["cut"]) for r in runs}))
    if skipped:
        md += ["", f"Not run (past --max-minutes {max_minutes:g}): "
               + "; ".join(f"{s['corpus']}@{s['cut']} lr {s['lr']:g} min_steps {s['min_steps']}" for s in skipped)]
    (RESULTS / "teacher_sweep.md").write_text("\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", default="rotten-tomatoes,convention-2012")
    ap.add_argument("--cuts", default="500,1000")
    ap.add_argument("--lrs", default="5e-5,2e-5,1e-4")
    ap.add_argument("--steps", default="200,400")
    ap.add_argument("--max-minutes", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 trains faster on a busy machine)")
    ap.add_argument("--work", default=None, help="keep each run's checkpoints here: a restarted sweep resumes")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    lrs = [float(x) for x in args.lrs.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    # Settings first, corpora and cuts inner: a sweep stopped by --max-minutes has each setting on every cut.
    grid = [(c, int(r), s, lr) for s in steps for lr in lrs for r in args.cuts.split(",")
            for c in args.corpora.split(",")]
    start, runs, skipped, splits = time.perf_counter(), [], [], {}
    with tempfile.TemporaryDirectory(prefix="teacher-sweep-") as tmp:
        work = Path(args.work or tmp)
        for corpus, rows, min_steps, lr in grid:
            if (time.perf_counter() - start) / 60 > args.max_minutes:
                skipped.append({"corpus": corpus, "cut": rows, "lr": lr, "min_steps": min_steps})
                continue
            if (corpus, rows) not in splits:
                splits[corpus, rows] = make_split(corpus, rows, Path(tmp) / f"{corpus}-{rows}")
            run_dir = work / f"{corpus}-{rows}-lr{lr:g}-steps{min_steps}"
            split, test = splits[corpus, rows]
            run = {"corpus": corpus, "cut": rows, **fit_one(split, test, lr, min_steps, run_dir)}
            runs.append(run)
            print(json.dumps(run), flush=True)
            write(when, runs, skipped, args.max_minutes)
    write(when, runs, skipped, args.max_minutes)
    print((RESULTS / "teacher_sweep.md").read_text())


if __name__ == "__main__":
    main()
