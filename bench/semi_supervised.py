"""A few labeled rows and many unlabeled texts: the same cut distilled without and with the corpus's other texts
as the dataset's unlabeled rows (what `mf data add --unlabeled` adds), side by side.

Issue 15's small cuts (500 / 1,000 labeled rows) miss the bar because a student trained on augmented copies of a
few hundred texts sees few words: the teacher's knowledge has nothing to travel on. A customer with few labels
usually has plenty of unlabeled text. For each cut this runs two orders with the same teacher recipe, split and
student (the probability-distilled TF-IDF + LR, `arch: classical`, sizes s and m):

1. on the built-in corpus alone: transfer set = the cut's rows + augmented copies, labeled by the teacher;
2. on a version of the corpus whose labeled rows are the same and whose unlabeled rows are every text of the
   corpus outside the order's split (so no test or validation text is among them).

The labeled rows are identical, so the split, the test rows, the teacher recipe and (seeded) its fine-tune are
the same; the INT8 teacher and the baselines are measured in each order. Figures are each order's own
evaluation (batch-1 latency: one onnxruntime thread). Writes bench/results/semi_supervised.{json,md}.

    .venv/bin/python bench/semi_supervised.py [--corpora rotten-tomatoes convention-2012] [--cuts 500 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
from pathlib import Path

from compress import order_artifacts  # a sibling script: bench/ is not a package

RESULTS = Path(__file__).parent / "results"
TEACHER = {"model": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 64, "lr": 1e-4, "epochs": 2}


def order(name: str, dataset: str, cut: int, size: str) -> dict:
    return {"name": name, "tenant": "bench", "task": "text-classification", "data": {"dataset": dataset},
            "teacher": TEACHER, "split": {"val": 0.1, "test": 0.15, "seed": 0, "max_rows": 5000, "train_rows": cut},
            "student": {"arch": "classical", "size": size}}


def run(spec_doc: dict) -> dict:
    """Run one order; its evaluations by candidate, and its split artifact."""
    from modelfactory.factory.order import run_order
    from modelfactory.factory.spec import parse_spec

    art = order_artifacts(run_order(parse_spec(spec_doc, "bench order")).order_id)
    ev = {name: art[f"evaluate_{name}"].metrics for name in
          ("teacher", "teacher_int8", "baseline_majority", "baseline_classical", "student")}
    return {"eval": ev, "split": art["split"], "transfer": art["transfer"].metrics}


def pool_version(corpus, split, name: str, folder: Path):
    """The corpus's labeled rows again, with every text outside `split` as unlabeled rows."""
    import pandas as pd

    from modelfactory.data import versions
    from modelfactory.factory.stages import read_split

    table = pd.DataFrame(corpus.table().rows)  # rows by role: text, label
    used = set()
    for part in ("train", "val", "test"):
        used |= set(read_split(split, part)["text"])
    labeled, pool = folder / "labeled.csv", folder / "pool.csv"
    table[["text", "label"]].to_csv(labeled, index=False)
    table.loc[~table["text"].isin(used), ["text"]].drop_duplicates().to_csv(pool, index=False)
    return versions.add_file(name, labeled, {"text": "text", "label": "label"}, unlabeled=pool, tenant="bench")


def same_test(a, b) -> bool:
    from modelfactory.factory.stages import read_split

    return sorted(read_split(a, "test")["text"]) == sorted(read_split(b, "test")["text"])


def row(corpus: str, cut: int, size: str, kind: str, r: dict) -> dict:
    ev, s, t8 = r["eval"], r["eval"]["student"], r["eval"]["teacher_int8"]
    return {"corpus": corpus, "cut": cut, "size": size, "transfer": kind, "transfer_rows": r["transfer"].get("rows"),
            "unlabeled_rows": r["transfer"].get("unlabeled_rows", 0),
            "majority": ev["baseline_majority"]["accuracy"], "tfidf_lr": ev["baseline_classical"]["accuracy"],
            "teacher": ev["teacher"]["accuracy"], "teacher_int8": t8["accuracy"],
            "teacher_int8_mb": t8["size_bytes"] / 1e6, "teacher_int8_ms": t8["latency_ms_p50"],
            "student": s["accuracy"], "student_mb": s["size_bytes"] / 1e6, "student_ms": s["latency_ms_p50"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", default=["rotten-tomatoes", "convention-2012"])
    ap.add_argument("--cuts", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--sizes", nargs="+", default=["s", "m"])
    ap.add_argument("--home", default=os.environ.get("MF_HOME", ".mf"))
    args = ap.parse_args()
    os.environ["MF_HOME"] = args.home
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from modelfactory.data import builtin, versions

    rows: list[dict] = []
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    for name in args.corpora:
        corpus = builtin.corpus(name)
        plain = versions.add_table(corpus.name, corpus.table(), tenant="bench")
        for cut in args.cuts:
            for size in args.sizes:
                print(f"== {name}@{cut} classical {size}: labeled rows + augmented copies", flush=True)
                alone = run(order(f"semi-{name}-{cut}-{size}", str(plain), cut, size))
                rows.append(row(name, cut, size, "cut + augmented", alone))
                with tempfile.TemporaryDirectory() as tmp:
                    pool = pool_version(corpus, alone["split"], f"{name}-pool-{cut}", Path(tmp))
                print(f"== {name}@{cut} classical {size}: + {pool.stats.get('unlabeled', 0)} unlabeled texts",
                      flush=True)
                with_pool = run(order(f"semi-{name}-{cut}-{size}-pool", str(pool), cut, size))
                rows.append(row(name, cut, size, "cut + augmented + unlabeled", with_pool))
                rows[-1]["same_test_rows"] = same_test(alone["split"], with_pool["split"])
                write(rows, started)


def write(rows: list[dict], started: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    meta = {"started": started, "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2), "teacher": TEACHER}
    (RESULTS / "semi_supervised.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = ["# Few labels, many unlabeled texts: the classical student distilled without and with them", "",
          f"`bench/semi_supervised.py`, started {started}, {meta['cpus']} CPUs (1-minute load {meta['load_1min']} "
          "at the last write). Each row is one order's own evaluation on the cut's test rows (the same rows for both "
          "transfer sets); multiples are against the INT8 teacher measured in the same order.", "",
          "| corpus@cut | student | transfer set (rows; unlabeled) | majority | TF-IDF + LR | teacher / INT8 | "
          "student accuracy | of the teacher | vs TF-IDF + LR | MB (x smaller) | ms (x faster) | same test rows |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['corpus']}@{r['cut']} | classical {r['size']} | {r['transfer']} ({r['transfer_rows']}; "
                  f"{r['unlabeled_rows']}) | {r['majority']:.3f} | {r['tfidf_lr']:.3f} | {r['teacher']:.3f} / "
                  f"{r['teacher_int8']:.3f} | **{r['student']:.3f}** | {r['student'] / r['teacher']:.3f} | "
                  f"{100 * (r['student'] - r['tfidf_lr']):+.1f} pts | {r['student_mb']:.2f} "
                  f"({r['teacher_int8_mb'] / r['student_mb']:.1f}x) | {r['student_ms']:.3f} "
                  f"({r['teacher_int8_ms'] / r['student_ms']:.1f}x) | {r.get('same_test_rows', '–')} |")
    (RESULTS / "semi_supervised.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
