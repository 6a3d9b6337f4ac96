"""End to end on tiny real data: a mostly unlabeled dataset, a teacher fine-tuned on its seed rows as factory
stages, pseudo-labels and a review queue as a new version, then an order that trains on seed + pseudo-labels and
says so in its report and lineage."""

from __future__ import annotations

import json

import pytest

from modelfactory import registry
from modelfactory.factory.order import run_order
from modelfactory.factory.spec import parse_spec

from .conftest import run_mf, sample_csv, tiny_order

pytestmark = pytest.mark.slow


def test_auto_label_then_order_on_pseudo_labels(tmp_path, corpus_df, tiny_teacher):
    seed = sample_csv(corpus_df, tmp_path / "seed.csv", 20, seed=1)
    pool = sample_csv(corpus_df, tmp_path / "all.csv", 30, seed=2)
    import pandas as pd

    pd.read_csv(pool)[["text"]].to_csv(tmp_path / "pool.csv", index=False)
    proc = run_mf("data", "add", "reviews", str(seed), "--unlabeled", str(tmp_path / "pool.csv"), "--json")
    assert proc.returncode == 0, proc.stderr
    added = json.loads(proc.stdout)
    assert added["stats"]["label_sources"] == {"human": 60, "unlabeled": 90}

    proc = run_mf("label", "auto", "reviews", "--teacher", str(tiny_teacher), "--epochs", "1", "--lr", "1e-3",
                  "--threshold", "0.34", "--strategy", "margin", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["dataset"] == "reviews@2" and out["parent"] == "reviews@1" and out["predicted"] == 90
    assert out["pseudo_labeled"] + out["queued"] == 90  # a tiny random teacher: which side is not the point
    assert out["teacher"].startswith(f"{tiny_teacher}@")
    margins = [q["margin"] for q in out["queue_head"]]
    assert margins == sorted(margins)  # most uncertain (smallest margin) first

    # The same teacher again is a cache hit (the factory's stages), then self-trained for a second round; a chosen
    # threshold says what it was chosen on.
    proc = run_mf("label", "auto", "reviews@1", "--teacher", str(tiny_teacher), "--epochs", "1", "--lr", "1e-3",
                  "--rounds", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    chosen = json.loads(proc.stdout)
    assert "held-out seed rows" in chosen["threshold_from"] and chosen["calibration"]["rows"] > 0
    assert [r["round"] for r in chosen["rounds"]] == [1, 2]
    assert chosen["rounds"][0]["teacher"] == out["teacher"] != chosen["rounds"][1]["teacher"]

    proc = run_mf("label", "export", "reviews@2", "--out", str(tmp_path / "review.json"), "--rows", "all",
                  "--limit", "5")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "review.json").read_text())) == 5

    spec = tiny_order("reviews-student", seed, tiny_teacher)
    spec["data"] = {"dataset": "reviews@2", "use_pseudo_labels": True, "min_confidence": 0.0}
    result = run_order(parse_spec(spec))
    sources = result.dataset.label_sources
    assert sources == {"human": 60, "teacher": 90}  # min_confidence 0: every teacher prediction
    assert "Training labels by source: human 60" in result.report_path.read_text()
    assert registry.resolve("reviews-student").lineage["label_sources"] == sources

    proc = run_mf("data", "show", "reviews@2", "--lineage")
    assert proc.returncode == 0, proc.stderr
    assert "auto_label" in proc.stdout and "reviews@1" in proc.stdout and "teacher" in proc.stdout
