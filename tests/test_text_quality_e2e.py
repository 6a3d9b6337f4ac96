"""A text order as a user writes it (data, a real pretrained teacher, targets; no recipe) on a few hundred real rows:
the teacher must learn (beat the majority class) and the deployed model must beat it too, with the baselines
measured on the same test split and shown in the report and `mf models show --json`."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from .conftest import PLAIN_CHOICE, run_mf, sample_csv

pytestmark = pytest.mark.slow


def test_small_real_order_learns_and_reports_its_baselines(tmp_path, corpus_df, mf_home):
    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 120)  # 120 rows per class, 3 classes
    order = tmp_path / "order.yaml"
    order.write_text(yaml.safe_dump({
        "name": "small-reviews", "task": "text-classification", "data": {"path": str(data)},
        "teacher": {"model": "sentence-transformers/all-MiniLM-L6-v2", "max_length": 32, "batch_size": 16,
                    "lr": 1e-4, "min_steps": 80},
        "split": {"val": 0.2, "test": 0.25, "seed": 0, "max_rows": 300},  # 60 rows left out: transfer-set texts
        "search": {"max_trials": 4, "max_minutes": 30},  # the trial count, not the clock, ends it
    }))
    proc = run_mf("order", "run", str(order), "--json", timeout=1200)
    assert proc.returncode == 0, proc.stderr
    shown = run_mf("models", "show", "small-reviews", "--json")
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    metrics, baselines = shown["metrics"], shown["baselines"]
    majority = baselines["majority"]["accuracy"]
    assert abs(majority - 1 / 3) < 0.05  # balanced classes
    assert metrics["teacher"]["accuracy"] >= majority + 0.15, metrics["teacher"]
    assert metrics["student"]["accuracy"] >= majority + 0.15, metrics["student"]
    classical = baselines["classical"]
    assert classical["accuracy"] > majority and classical["size_bytes"] > 0
    for m in (metrics["teacher"], metrics["student"], classical):
        assert m["latency_e2e_ms_p50"] >= m["latency_ms_p50"] * 0.5 > 0  # raw text in: tokenization included

    report = (mf_home / "orders" / "1" / "report.md").read_text()
    assert "baseline: majority class" in report and "baseline: classical" in report
    assert "## Recipe search" in report
    assert PLAIN_CHOICE.search(report), report  # no targets: the plain rule, whatever the validation split's noise
    left_out = re.search(r"(\d+) rows the split left out", report)  # distilled on, never evaluated on
    assert left_out and 50 <= int(left_out[1]) <= 60, report
    archs = {t.split("arch=")[1].split(",")[0] for t in report.splitlines() if "arch=" in t}
    assert len(archs) >= 2  # the default search tried more than one student family
