"""The orders `bench/factory.py` submits: 20 over three corpora that ship offline (two text, one image), two tenants.

Sizes are chosen so the whole set fits in an hour of a quiet 2-core machine (two one-CPU workers): each corpus is
cut to a stratified sample (`split.max_rows`), its teacher trains a bounded number of steps, the text transfer set is
a few augmented copies per row (not the default ~15,000 rows), students train a few epochs, and each search order
has a small trial and minute budget. `--quick` cuts everything further (three orders) to check the script end to
end in a few minutes. Each corpus belongs to one tenant (datasets are per tenant), and every order on a corpus names
the same teacher, split and transfer set, so one teacher fine-tune per corpus is all the teacher work there is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

TEXT_TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Corpus:
    corpus: str  # the built-in corpus (modelfactory.data.builtin)
    dataset: str  # the name its tenant uploads it as
    tenant: str
    task: str


CORPORA = [Corpus("rotten-tomatoes", "reviews", "acme", "text-classification"),
           Corpus("convention-2012", "speeches", "globex", "text-classification"),
           Corpus("mnist-5k", "digits", "acme", "image-classification")]
TENANTS = {"acme": 2.0, "globex": 1.0}  # name -> fair-share weight
URGENT_TENANT = "globex"


@dataclass(frozen=True)
class Sizes:
    text_rows: int
    text_min_steps: int
    transfer_copies: int
    image_rows: int
    image_teacher_epochs: float
    student_epochs: float
    image_student_epochs: float
    search_trials: int
    search_minutes: float


FULL = Sizes(text_rows=3000, text_min_steps=150, transfer_copies=2, image_rows=3000, image_teacher_epochs=6,
             student_epochs=4, image_student_epochs=8, search_trials=4, search_minutes=4)
SMALL = Sizes(text_rows=1000, text_min_steps=40, transfer_copies=1, image_rows=1500, image_teacher_epochs=4,
              student_epochs=2, image_student_epochs=4, search_trials=3, search_minutes=1.5)
QUICK = Sizes(text_rows=600, text_min_steps=30, transfer_copies=1, image_rows=600, image_teacher_epochs=1,
              student_epochs=1, image_student_epochs=2, search_trials=2, search_minutes=1.5)


def _text_base(c: Corpus, z: Sizes) -> dict[str, Any]:
    return {"tenant": c.tenant, "task": c.task, "data": {"dataset": c.dataset},
            "teacher": {"model": TEXT_TEACHER, "epochs": 2, "max_length": 64, "lr": 1.0e-4,
                        "min_steps": z.text_min_steps, "checkpoint_every": 25},
            "split": {"val": 0.1, "test": 0.15, "seed": 0, "max_rows": z.text_rows},
            "transfer": {"copies": z.transfer_copies}, "deploy": True}


def _image_base(c: Corpus, z: Sizes) -> dict[str, Any]:
    return {"tenant": c.tenant, "task": c.task, "data": {"dataset": c.dataset},
            "teacher": {"model": "scratch:resnet-s", "epochs": z.image_teacher_epochs, "lr": 3.0e-3,
                        "batch_size": 64, "checkpoint_every": 25},
            "split": {"val": 0.1, "test": 0.15, "seed": 0, "max_rows": z.image_rows}, "deploy": True}


def _text_orders(c: Corpus, z: Sizes, short: str) -> list[dict[str, Any]]:
    e = z.student_epochs
    variants = [
        {"name": f"{short}-search",
         "search": {"max_trials": z.search_trials, "max_minutes": z.search_minutes,
                    "space": {"arch": ["bag", "cnn", "classical"], "size": ["xs", "s"],
                              "quantize": ["dynamic", "none"], "epochs": [e]}},
         "targets": {"min_accuracy_ratio": 0.9, "max_size_mb": 3}},
        {"name": f"{short}-bag-s", "student": {"arch": "bag", "size": "s", "epochs": e}, "quantize": "dynamic",
         "targets": {"min_accuracy_ratio": 0.9, "max_size_mb": 3}},
        {"name": f"{short}-bag-xs", "student": {"arch": "bag", "size": "xs", "epochs": e},
         "targets": {"max_latency_ms": 0.5}},
        {"name": f"{short}-cnn-xs", "student": {"arch": "cnn", "size": "xs", "epochs": e}, "quantize": "dynamic",
         "targets": {"min_accuracy_ratio": 0.9}},
        {"name": f"{short}-classical", "student": {"arch": "classical", "size": "s"},
         "targets": {"beat_baseline": True}},
        {"name": f"{short}-bag-word", "recipe": [
            {"distill": {"arch": "bag", "size": "m", "tokens": "word", "epochs": e, "alpha": 0.9}},
            {"quantize": {"mode": "dynamic"}}],
         "targets": {"min_accuracy_ratio": 0.85, "max_size_mb": 5}},
        {"name": f"{short}-cnn-s", "student": {"arch": "cnn", "size": "s", "epochs": e, "temperature": 4.0},
         "targets": {"min_accuracy_ratio": 0.95, "max_latency_ms": 1}},
    ]
    return [_text_base(c, z) | v for v in variants]


def _image_orders(c: Corpus, z: Sizes, short: str) -> list[dict[str, Any]]:
    e = z.image_student_epochs
    cnn = {"lr": 5.0e-3, "batch_size": 64, "epochs": e}
    variants = [
        {"name": f"{short}-search",
         "search": {"max_trials": z.search_trials - 1, "max_minutes": z.search_minutes,
                    "space": {"layers": [2, 3], "hidden": [8, 16], "epochs": [e], "lr": [5.0e-3],
                              "quantize": ["static", "dynamic"]}},
         "targets": {"min_accuracy_ratio": 0.95, "max_size_mb": 0.5}},
        {"name": f"{short}-cnn-3x16", "student": {"layers": 3, "hidden": 16, "alpha": 0.9, **cnn},
         "quantize": "static", "targets": {"min_accuracy_ratio": 0.95}},
        {"name": f"{short}-cnn-2x8", "student": {"layers": 2, "hidden": 8, **cnn},
         "targets": {"max_size_mb": 0.1}},
        {"name": f"{short}-cnn-3x8", "student": {"layers": 3, "hidden": 8, **cnn}, "quantize": "dynamic",
         "targets": {"max_latency_ms": 1}},
        {"name": f"{short}-pruned", "recipe": [
            {"distill": {"layers": 3, "hidden": 24, **cnn}}, {"prune": {"ratio": 0.4}},
            {"recover": {"epochs": max(1.0, e / 4), "lr": 1.0e-3, "batch_size": 64}},
            {"quantize": {"mode": "static"}}],
         "targets": {"min_accuracy_ratio": 0.9}},
        {"name": f"{short}-cnn-2x16", "student": {"layers": 2, "hidden": 16, "alpha": 0.7, **cnn},
         "targets": {"min_accuracy_ratio": 0.9, "max_size_mb": 0.2}},
    ]
    return [_image_base(c, z) | v for v in variants]


SIZES = {"full": FULL, "small": SMALL, "quick": QUICK}


def orders(quick: bool, sizes: str | None = None) -> list[tuple[dict[str, Any], str]]:
    """(spec, priority) for each order, in submission order; one `urgent` order (of URGENT_TENANT). `sizes`
    (default: quick for the 3-order check, else full) picks the cuts: `small` is all 20 orders on smaller cuts, for
    a machine too busy to run the full sizes in an hour."""
    z = SIZES[sizes or ("quick" if quick else "full")]
    reviews, speeches, digits = CORPORA
    if quick:  # one search and one fixed recipe on the same corpus (they share a teacher), one image order
        out = [_text_orders(reviews, z, "rt")[i] for i in (1, 0)] + [_image_orders(digits, z, "mn")[2]]
        out[0]["tenant"] = reviews.tenant
        return [(copy.deepcopy(o), "standard") for o in out]
    out = _text_orders(reviews, z, "rt") + _text_orders(speeches, z, "cv") + _image_orders(digits, z, "mn")
    result = []
    for spec in out:
        urgent = spec["name"] == "cv-bag-xs"
        result.append((copy.deepcopy(spec), "urgent" if urgent else "standard"))
    return result


def corpora(quick: bool) -> list[Corpus]:
    """The corpora the orders use."""
    used = {spec["data"]["dataset"] for spec, _ in orders(quick, "quick")}
    return [c for c in CORPORA if c.dataset in used]
