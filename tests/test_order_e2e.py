"""End to end on tiny real data: every stage runs, ONNX agrees with PyTorch, the registry and CLI show the model,
a second order reuses the teacher, a re-run is all cache hits, and a killed run resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from sqlalchemy import select

from modelfactory import registry, tasks
from modelfactory.factory.order import run_order
from modelfactory.factory.spec import parse_spec
from modelfactory.factory.stages import read_split
from modelfactory.store import StageRun, session

from .conftest import REPO, run_mf, sample_csv, tiny_order

pytestmark = pytest.mark.slow


@pytest.fixture
def reviews_csv(tmp_path, corpus_df):
    return sample_csv(corpus_df, tmp_path / "reviews.csv", 100)


def test_tiny_order_through_every_stage(reviews_csv, tiny_teacher, tmp_path):
    result = run_order(parse_spec(tiny_order("reviews", reviews_csv, tiny_teacher)))
    assert [n for n, r in result.results.items() if r.cached] == []
    assert set(result.metrics) == {"teacher", "teacher_int8", "student", "student_int8"}
    for m in result.metrics.values():
        assert 0 <= m["accuracy"] <= 1 and m["size_bytes"] > 0 and m["latency_ms_p50"] > 0 and m["throughput"] > 0
    assert result.metrics["student"]["parameters"] < result.metrics["teacher"]["parameters"]

    # The exported ONNX student predicts what the PyTorch student predicts.
    task = tasks.get("text-classification")
    student = task.load(result.results["student"].artifact.path)
    test = read_split(result.results["split"].artifact, "test")
    enc = task.encode(student, test)
    with torch.no_grad():
        torch_pred = task.forward(student.model, task.collate(enc, list(range(len(enc))))).logits.argmax(-1).numpy()
    fp32 = task.load_predictor(result.results["export_student"].artifact.path)
    onnx_pred = fp32.predict_proba(test["text"].tolist()).argmax(1)
    assert (onnx_pred == torch_pred).all()
    int8 = task.load_predictor(result.results["quantize_student"].artifact.path)
    assert (int8.predict_proba(test["text"].tolist()).argmax(1) == torch_pred).mean() >= 0.9

    # Registered, promoted (no targets set), with lineage and a card.
    ref = registry.resolve("reviews")
    assert (ref.version, ref.aliases) == (1, ["latest", "prod"])
    assert ref.lineage["teacher"] == result.results["teacher"].artifact.id
    assert ref.lineage["dataset"] == "reviews@1" and ref.lineage["recipe"][0]["distill"]["layers"] == 1
    assert "# reviews v1" in ref.card and "## Evaluation" in ref.card
    assert result.report_path.read_text().count("| ran |") == len(result.results)

    # The CLI: predict (arguments and --file), models show --json (the ARCHITECTURE.md contract), models ls.
    proc = run_mf("predict", "reviews@1", "a dazzling, heartfelt film", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out[0]["label"] in fp32.labels
    assert abs(sum(out[0]["probabilities"].values()) - 1) < 1e-4
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"text": t}) for t in test["text"][:3]) + "\n")
    proc = run_mf("predict", "reviews", "--file", str(rows), "--json")
    assert proc.returncode == 0, proc.stderr
    expected = [fp32.labels[i] for i in int8.predict_proba(test["text"][:3].tolist()).argmax(1)]
    assert [r["label"] for r in json.loads(proc.stdout)] == expected
    shown = json.loads(run_mf("models", "show", "reviews", "--json").stdout)
    assert {"name", "version", "onnx_path", "metrics"} <= set(shown)
    assert set(shown["metrics"]) >= {"teacher", "teacher_int8", "student"}
    for m in shown["metrics"].values():
        assert {"accuracy", "macro_f1", "size_bytes", "latency_ms_p50", "throughput"} <= set(m)
    assert shown["metrics"]["student"] == result.metrics["student_int8"]
    listed = json.loads(run_mf("models", "ls", "--json").stdout)
    assert [(m["name"], m["version"]) for m in listed] == [("reviews", 1)]
    human = run_mf("models", "show", "reviews")
    assert human.returncode == 0 and "Lineage" in human.stdout and "dataset reviews@1" in human.stdout


def test_second_order_reuses_the_teacher_and_rerun_is_all_cache_hits(reviews_csv, tiny_teacher):
    first = run_order(parse_spec(tiny_order("reviews-a", reviews_csv, tiny_teacher)))
    second = run_order(parse_spec(tiny_order("reviews-b", reviews_csv, tiny_teacher,
                                             student={"layers": 1, "epochs": 2})))
    assert second.results["teacher"].cached and second.results["split"].cached
    assert second.results["teacher"].artifact.id == first.results["teacher"].artifact.id
    assert not second.results["student"].cached
    with session() as s:
        teacher_runs = s.scalars(select(StageRun).where(StageRun.node == "teacher")).all()
        assert sorted(r.state for r in teacher_runs) == ["cached", "done"]  # fine-tuned once

    again = run_order(parse_spec(tiny_order("reviews-a", reviews_csv, tiny_teacher)))
    assert all(r.cached for r in again.results.values())
    assert again.model.version == first.model.version  # same artifact, same registry version


def test_killed_run_resumes_from_its_checkpoint(reviews_csv, tiny_teacher, tmp_path, mf_home):
    spec = tiny_order("resumable", reviews_csv, tiny_teacher,
                      teacher={"epochs": 12, "batch_size": 4, "checkpoint_every": 5})
    order = tmp_path / "order.yaml"
    order.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "modelfactory.cli", "order", "run", str(order)],
                            cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state = None
    while time.time() < deadline and proc.poll() is None:
        found = list((mf_home / "work").glob("*/checkpoint/state.json")) if (mf_home / "work").exists() else []
        if found:
            state = json.loads(found[0].read_text())
            break
        time.sleep(0.05)
    assert state is not None, "no checkpoint appeared before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (mf_home / "artifacts").exists() or not any(
        json.loads(p.read_text()).get("producer", "").startswith("finetune_teacher")
        for p in (mf_home / "artifacts").glob("*/manifest.json"))

    rerun = run_mf("order", "run", str(order))
    assert rerun.returncode == 0, rerun.stderr
    assert "cache hit" in rerun.stdout  # the split finished before the kill
    assert "resumed from step" in rerun.stdout
    with session() as s:
        teacher = s.scalars(select(StageRun).where(StageRun.node == "teacher", StageRun.state == "done")).one()
        assert teacher.resumed_from_step >= state["step"] >= 5
    assert not list((mf_home / "work").glob("*/checkpoint"))  # cleaned up after success
    assert np.isfinite(registry.resolve("resumable").metrics["student_int8"]["accuracy"])


def test_recipe_chain_distill_prune_recover_static_int8(reviews_csv, tiny_teacher):
    recipe = [{"distill": {"layers": 2, "epochs": 1, "lr": 1e-3, "vocab": "train", "hidden_weight": 1.0,
                           "attention_weight": 1.0}},
              {"prune": {"ratio": 0.5}},
              {"recover": {"epochs": 1, "lr": 1e-3}},
              {"quantize": {"mode": "static", "calibration_rows": 32}}]
    result = run_order(parse_spec(tiny_order("chain", reviews_csv, tiny_teacher, recipe=recipe)))
    r = result.results
    assert {"student.1.distill", "student.2.prune", "student", "optimize_student", "quantize_student"} <= set(r)
    distilled, pruned = r["student.1.distill"].artifact.metrics, r["student.2.prune"].artifact.metrics
    assert pruned["heads_after"] == pruned["heads_before"] // 2 and pruned["ffn_after"] < pruned["ffn_before"]
    assert pruned["parameters"] < distilled["parameters"]
    # the recovered model keeps the pruned shape through save -> load -> export
    assert r["student"].artifact.metrics["parameters"] == pruned["parameters"]
    assert r["quantize_student"].artifact.manifest["precision"] == "int8-static"
    import onnx

    ops = {n.op_type for n in onnx.load(str(r["quantize_student"].artifact.path / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.metrics["student_int8"]["size_bytes"] < result.metrics["student"]["size_bytes"]
    # vocabulary pruning: without it the student would be about as large as this tiny teacher
    assert result.metrics["student"]["size_bytes"] < result.metrics["teacher"]["size_bytes"] / 4
    lineage = registry.resolve("chain").lineage["recipe"]
    assert [next(iter(step)) for step in lineage] == ["distill", "prune", "recover", "quantize"]
