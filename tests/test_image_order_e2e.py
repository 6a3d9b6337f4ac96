"""End to end on real digits images through the CLI: a class-folder dataset (with a corrupt file) is added, an
image order runs distill -> prune -> recover -> static INT8, the fp32 ONNX export predicts what the PyTorch
student predicts, and `mf predict` / `mf models show` work on the registered model; `mf demo --task image`
prints its table and a `try it` command that really runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from modelfactory import registry, tasks
from modelfactory.artifacts import ArtifactStore

from .conftest import run_mf

pytestmark = pytest.mark.slow

PER_LABEL = 30


@pytest.fixture
def digits_folder(tmp_path, digits_df) -> Path:
    """300 real digits as PNG files in class folders 0..9, plus one corrupt file."""
    root = tmp_path / "digits"
    for label, group in digits_df.groupby("label"):
        folder = root / str(label)
        folder.mkdir(parents=True)
        for i, data in enumerate(group["image"].head(PER_LABEL)):
            (folder / f"{i:03d}.png").write_bytes(data)
    (root / "3" / "broken.png").write_bytes(np.random.default_rng(0).bytes(200))
    return root


def order_spec(name: str, dataset: str) -> dict:
    return {
        "name": name,
        "task": "image-classification",
        "data": {"dataset": dataset},
        # Batches of 16: on ~200 training rows, 32 leaves too few steps for the network to leave chance level.
        "teacher": {"model": "scratch:resnet-xs", "epochs": 2, "lr": 3e-3, "batch_size": 16},
        "recipe": [
            {"distill": {"layers": 2, "hidden": 8, "epochs": 3, "lr": 5e-3, "batch_size": 16}},
            {"prune": {"ratio": 0.3}},
            {"recover": {"epochs": 1, "lr": 2e-3, "batch_size": 16}},
            {"quantize": {"mode": "static", "calibration_rows": 64}},
        ],
        "split": {"val": 0.15, "test": 0.2, "seed": 0},
    }


def _artifact(artifact_id: str):
    return ArtifactStore().get(artifact_id)


def test_image_order_through_the_cli(digits_folder, tmp_path):
    added = run_mf("data", "add", "digits-tiny", str(digits_folder), "--skip-bad-rows", "--json")
    assert added.returncode == 0, added.stderr
    info = json.loads(added.stdout)
    assert (info["name"], info["version"], info["rows"], info["skipped"]) == ("digits-tiny", 1, 10 * PER_LABEL, 1)

    order = tmp_path / "order.yaml"
    order.write_text(yaml.safe_dump(order_spec("digits-tiny", "digits-tiny")))
    proc = run_mf("order", "run", str(order), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # progress goes to stderr: stdout is the JSON document alone
    assert set(out) == {"order", "model", "deployed", "targets_met", "metrics", "report"}
    assert out["model"] == "digits-tiny@1" and out["deployed"] is True and out["targets_met"] == {}
    assert set(out["metrics"]) == {"teacher", "teacher_int8", "student", "student_int8"}
    for m in out["metrics"].values():
        assert 0 <= m["accuracy"] <= 1 and m["size_bytes"] > 0 and m["latency_ms_p50"] > 0 and m["throughput"] > 0
    assert out["metrics"]["student"]["parameters"] < out["metrics"]["teacher"]["parameters"]
    assert out["metrics"]["teacher"]["accuracy"] > 0.5  # 2 epochs on ~200 digits: far above chance (0.1)
    assert Path(out["report"]).is_file()

    # Walk the deployed model's artifacts back: quantize <- optimize <- export <- student (recover) <- prune.
    ref = registry.resolve("digits-tiny")
    assert ref.task == "image-classification" and ref.aliases == ["latest", "prod"]
    int8_art = _artifact(ref.artifact_id)
    assert int8_art.manifest["precision"] == "int8-static"
    export_art = _artifact(_artifact(int8_art.manifest["inputs"]["onnx"]).manifest["inputs"]["onnx"])
    assert export_art.manifest["producer"].startswith("export_onnx") and export_art.manifest["precision"] == "fp32"
    student_id = ref.lineage["student"]
    assert export_art.manifest["inputs"]["model"] == student_id
    student_art = _artifact(student_id)
    pruned_art = _artifact(student_art.manifest["inputs"]["init"])
    distilled_art = _artifact(pruned_art.manifest["inputs"]["model"])
    assert pruned_art.metrics["parameters"] < distilled_art.metrics["parameters"]
    assert student_art.metrics["parameters"] == pruned_art.metrics["parameters"]  # recover keeps the pruned shape

    # The fp32 ONNX export predicts exactly what the PyTorch student predicts on the test split.
    task = tasks.get("image-classification")
    student = task.load(student_art.path)
    test = pd.read_parquet(_artifact(ref.lineage["split"]).path / "test.parquet")
    assert len(test) >= 50
    enc = task.encode(student, test)
    student.model.eval()
    with torch.no_grad():
        torch_pred = task.forward(student.model, task.collate(enc, list(range(len(enc))))).logits.argmax(-1).numpy()
    assert len(set(torch_pred.tolist())) >= 3  # a trained student, not one constant answer
    fp32 = task.load_predictor(export_art.path)
    assert (fp32.predict_proba(test["image"].tolist()).argmax(1) == torch_pred).all()
    int8 = task.load_predictor(ref.path)
    int8_pred = int8.predict_proba(test["image"].tolist()).argmax(1)
    assert (int8_pred == torch_pred).mean() >= 0.8

    # mf predict on a real image file, and mf models show.
    image = tmp_path / "seven.png"
    image.write_bytes(test["image"].iloc[0])
    proc = run_mf("predict", "digits-tiny", str(image), "--json")
    assert proc.returncode == 0, proc.stderr
    (pred,) = json.loads(proc.stdout)
    assert pred["input"] == str(image) and pred["label"] in [str(d) for d in range(10)]
    assert pred["label"] == int8.labels[int8_pred[0]]
    assert abs(sum(pred["probabilities"].values()) - 1) < 1e-4

    shown = run_mf("models", "show", "digits-tiny", "--json")
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    assert shown["task"] == "image-classification" and shown["version"] == 1
    assert Path(shown["onnx_path"]).is_file()
    assert set(shown["metrics"]) >= {"teacher", "teacher_int8", "student", "student_fp32"}
    assert shown["metrics"]["student"] == out["metrics"]["student_int8"]
    lineage = shown["lineage"]
    assert lineage["dataset"] == "digits-tiny@1" and lineage["teacher_base"] == "scratch:resnet-xs"
    assert lineage["student"] == student_id and lineage["deployed"] == ref.artifact_id
    assert [next(iter(step)) for step in lineage["recipe"]] == ["distill", "prune", "recover", "quantize"]


@pytest.fixture
def tiny_image_model(digits_df, tmp_path, mf_home) -> str:
    """A registered image model, built in-process (one quick order) for the CLI error tests."""
    from modelfactory.data import versions
    from modelfactory.data.ingest import Table
    from modelfactory.factory.order import run_order
    from modelfactory.factory.spec import parse_spec

    rows = [r for _, g in digits_df.groupby("label") for r in g.head(12).to_dict("records")]
    versions.add_table("digits-mini", Table(rows=rows, source="test"), source="test")
    spec = order_spec("digits-mini", "digits-mini")
    spec["teacher"]["epochs"] = 1
    spec["recipe"] = [{"distill": {"layers": 1, "hidden": 8, "epochs": 1}}]
    spec["optimize_onnx"] = False
    run_order(parse_spec(spec))
    return "digits-mini"


def test_predict_on_a_missing_or_non_image_file_is_a_one_line_error(tiny_image_model, tmp_path):
    missing = run_mf("predict", tiny_image_model, str(tmp_path / "nope.png"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.png'}: no such image file"]

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    bad = run_mf("predict", tiny_image_model, str(notes))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert lines[0].startswith("error: ") and "notes.txt" in lines[0] and "not an image" in lines[0], lines


def test_image_demo(mf_home):
    """`mf demo --task image` exactly as the README runs it (all 5,000 digits; about 2-3 minutes on 2 cores) meets
    its own target (student >= 97% of the teacher's accuracy; measured 98.8%): exit 0, never 3. A sample small enough
    to be quick can miss the target, and a test that accepted exit 3 could not tell a broken demo from a small one."""
    proc = run_mf("demo", "--task", "image", timeout=1800)  # the limit only guards against a hang
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "targets missed" not in proc.stderr
    text = proc.stdout
    assert "handwritten-digits: test split (mnist-5k@1)" in text
    table_rows = {line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")}
    assert {"teacher", "teacher_int8", "student", "student_int8"} <= table_rows
    match = re.search(r"try it: mf predict\s+(\S+)\s+(\S+)", text)  # Rich may wrap a long path onto its own line
    assert match, text
    model, image = match.groups()
    assert model == "handwritten-digits@1" and Path(image).is_file()
    proc = run_mf("predict", model, image, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["label"] in [str(d) for d in range(10)]
