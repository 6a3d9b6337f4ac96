"""Labeling logic: pseudo-labels above a threshold, the review queue's order, Label Studio round trips, human
labels over a teacher's, lineage, and imports that are refused whole (fast: no model is trained here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelfactory.data import labels, labelstudio, versions
from modelfactory.errors import MFError
from modelfactory.factory.spec import parse_spec

from .conftest import run_mf

ROLES = {"text": "text", "label": "label"}
CLASSES = ["neg", "pos"]

# A review recorded from a real Label Studio (1.23.2) by tests/test_label_studio_real.py, on the dataset `pool` makes
# below with the predictions of test_label_studio_round_trip: the labeling config it accepted, and its JSON and
# JSON-MIN exports after a reviewer labeled row 9 'neg' then 'pos' (a second annotation), row 6 'pos', and skipped 7.
LS_RECORDED = Path(__file__).parent / "data" / "label_studio"


@pytest.fixture
def pool(tmp_path):
    """Dataset 'reviews': 4 labeled seed rows + 6 unlabeled rows, as `mf data add --unlabeled` makes it."""
    seed = tmp_path / "seed.csv"
    seed.write_text("text,label\ngreat film,pos\nloved it,pos\nawful,neg\nboring mess,neg\n")
    unl = tmp_path / "pool.csv"
    unl.write_text("text\n" + "\n".join(f"review number {i}" for i in range(6)) + "\n")
    return versions.add_file("reviews", seed, ROLES, unlabeled=unl)


def _probs(*p_pos: float) -> np.ndarray:
    return np.array([[1 - p, p] for p in p_pos])


def _vals(series) -> list:
    """Values with missing ones as None (pandas reads missing strings back as NaN)."""
    return [None if pd.isna(x) else x for x in series]


def _auto(ref, probs, threshold=0.9, model="teacher@1"):
    df = versions.load_rows(ref.artifact_id)
    new = labels.apply_predictions(df, probs, CLASSES, model, threshold)
    return versions.derive(ref, new, "auto_label", {"teacher": model, "threshold": threshold})


def test_a_new_pool_beside_the_same_labeled_rows_is_a_new_training_view(pool, tmp_path):
    """The transfer set reads a version's unlabeled pool through the order's training view; a view keyed by its
    labeled rows alone was shared with the version before the pool was added (and the order re-used that
    version's cached transfer set: the pool was silently ignored)."""
    seed = tmp_path / "seed.csv"
    plain = versions.training_view(versions.add_file("plain", seed, ROLES))
    view = versions.training_view(pool)
    assert view.artifact_id != plain.artifact_id
    assert len(versions.unlabeled_inputs(view.artifact_id, "text")) == 6
    assert len(versions.unlabeled_inputs(plain.artifact_id, "text")) == 0
    other = tmp_path / "other.csv"
    other.write_text("text\nanother pool row\n")
    assert versions.training_view(versions.add_file("reviews", seed, ROLES, unlabeled=other)).artifact_id not in (
        view.artifact_id, plain.artifact_id)


def test_add_with_unlabeled_rows(pool):
    assert pool.n_rows == 10
    assert pool.stats["labels"] == {"neg": 2, "pos": 2} and pool.stats["unlabeled"] == 6
    assert pool.stats["label_sources"] == {"human": 4, "unlabeled": 6}
    df = versions.load_rows(pool.artifact_id)
    assert df["mf_id"].tolist() == list(range(10))
    assert df["label"].isna().sum() == 6


def test_threshold_makes_pseudo_labels_and_queues_the_rest(pool):
    v2 = _auto(pool, _probs(0.99, 0.02, 0.6, 0.89, 0.9, 0.45), threshold=0.9)
    df = versions.load_rows(v2.artifact_id)
    unl = df[df["mf_id"] >= 4]
    assert _vals(unl["label_source"]) == ["teacher", "teacher", None, None, "teacher", None]
    assert _vals(unl["label"]) == ["pos", "neg", None, None, "pos", None]
    # every predicted row keeps its prediction, confidence and the model, accepted or not
    assert unl["pred_label"].tolist() == ["pos", "neg", "pos", "pos", "pos", "neg"]
    assert unl["label_model"].eq("teacher@1").all()
    assert np.allclose(unl["label_confidence"], [0.99, 0.98, 0.6, 0.89, 0.9, 0.55])
    assert v2.stats["label_sources"] == {"human": 4, "teacher": 3, "unlabeled": 3}
    with pytest.raises(MFError, match="between 0 and 1"):
        labels.apply_predictions(df, _probs(*[0.5] * 6), CLASSES, "t", 1.5)


def test_queue_order_least_confidence_vs_margin():
    probs = np.array([[0.50, 0.49, 0.01],   # conf .50, margin .01
                      [0.40, 0.30, 0.30],   # conf .40, margin .10
                      [0.60, 0.20, 0.20],   # conf .60, margin .40
                      [0.45, 0.44, 0.11]])  # conf .45, margin .01
    df = pd.DataFrame({"text": list("abcd"), "label": [None] * 4})
    rows = labels.apply_predictions(df, probs, ["x", "y", "z"], "t@1", threshold=0.99)
    lc = labels.review_queue(rows, "least-confidence")["mf_id"].tolist()
    margin = labels.review_queue(rows, "margin")["mf_id"].tolist()
    assert lc == [1, 3, 0, 2]  # lowest top probability first
    assert margin == [0, 3, 1, 2]  # smallest lead first; ties by id
    with pytest.raises(MFError, match="unknown queue strategy"):
        labels.review_queue(rows, "entropy")


def test_choose_threshold_on_held_out_rows():
    conf = [0.99, 0.98, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6]
    correct = [1, 1, 1, 1, 1, 0, 1, 0]
    assert labels.choose_threshold(conf, correct, 1.0, min_rows=1) == 0.9
    assert labels.choose_threshold(conf, correct, 0.85, min_rows=1) == 0.7
    assert labels.choose_threshold(conf, correct, 1.0, min_rows=6) == 1.0  # too few rows to trust: nothing
    assert labels.choose_threshold([0.9, 0.9, 0.8], [1, 0, 1], 1.0, min_rows=1) == 1.0  # ties stay together


def test_label_studio_round_trip(pool, tmp_path):
    v2 = _auto(pool, _probs(0.99, 0.02, 0.6, 0.7, 0.95, 0.45), threshold=0.9)
    out, config, n = labelstudio.export_file(str(v2), tmp_path / "review.json")
    tasks = json.loads(out.read_text())
    assert n == len(tasks) == 3
    assert [t["data"]["mf_id"] for t in tasks] == [9, 6, 7]  # most uncertain first
    pred = tasks[0]["predictions"][0]
    assert pred["model_version"] == "teacher@1" and pred["score"] == pytest.approx(0.55)
    assert pred["result"][0]["value"] == {"choices": ["neg"]}
    assert pred["result"][0]["from_name"] == "label" and pred["result"][0]["to_name"] == "text"

    # What the real Label Studio was given and accepted is what we write today: the same config, the same task
    # data, and our predictions as it stored them (each annotation of the export carries its task's prediction).
    assert config.read_text() == (LS_RECORDED / "config.xml").read_text()
    back = LS_RECORDED / "export-json.json"
    recorded = {t["data"]["mf_id"]: t for t in json.loads(back.read_text())}
    assert {m: t["data"] for m, t in recorded.items()} == {t["data"]["mf_id"]: t["data"] for t in tasks}
    for t in tasks:
        for ann in recorded[t["data"]["mf_id"]]["annotations"]:
            stored, ours = ann["prediction"], t["predictions"][0]
            assert (stored["model_version"], stored["score"]) == (ours["model_version"], pytest.approx(ours["score"]))
            assert stored["result"] == ours["result"]

    v3, changed = labelstudio.import_file(str(v2), back)
    assert (v3.version, changed) == (3, 2)
    df = versions.load_rows(v3.artifact_id).set_index("mf_id")
    assert df.loc[9, ["label", "label_source"]].tolist() == ["pos", "import"]
    assert df.loc[6, ["label", "label_source"]].tolist() == ["pos", "import"]
    assert pd.isna(df.loc[7, "label"])  # skipped in Label Studio: still in the queue
    assert v3.stats["label_sources"] == {"human": 4, "teacher": 3, "import": 2, "unlabeled": 1}

    # JSON-MIN lists one object per annotation, newest first: the newest wins (row 9: 'pos', not 'neg').
    v_min, changed = labelstudio.import_file(str(v2), LS_RECORDED / "export-json-min.json")
    assert (v_min.version, changed) == (3, 2)  # the same rows as from the JSON export: the same version

    # Plain CSV and JSONL corrections work the same way; a hand-written JSON-MIN object too.
    csv_file = tmp_path / "fix.csv"
    with csv_file.open("w", newline="") as f:
        csv.writer(f).writerows([["mf_id", "label"], [7, "neg"]])
    v4, _ = labelstudio.import_file(str(v3), csv_file)
    assert versions.load_rows(v4.artifact_id).set_index("mf_id").loc[7, "label_source"] == "import"
    jl = tmp_path / "fix.jsonl"
    jl.write_text(json.dumps({"mf_id": 5, "label": "neg"}) + "\n")
    v5, _ = labelstudio.import_file(str(v4), jl)
    mini = tmp_path / "min.json"
    mini.write_text(json.dumps([{"id": 1, "text": "x", "mf_id": 8, "label": "pos", "annotator": 1}]))
    v6, _ = labelstudio.import_file(str(v5), mini)
    assert versions.load_rows(v6.artifact_id).set_index("mf_id").loc[8, ["label", "label_source"]].tolist() == [
        "pos", "import"]


def test_human_and_imported_labels_win_over_teachers(pool, tmp_path):
    # A confident teacher that disagrees with every seed label changes none of them.
    v2 = _auto(pool, _probs(0.99, 0.99, 0.99, 0.99, 0.99, 0.99))
    fix = tmp_path / "fix.jsonl"
    fix.write_text(json.dumps({"mf_id": 4, "label": "neg"}) + "\n")
    v3, _ = labelstudio.import_file(str(v2), fix)
    df3 = versions.load_rows(v3.artifact_id)
    # A later teacher predicts only rows without a reviewed label (5 left), and cannot touch row 4 or the seed.
    assert len(labels.to_predict(df3)) == 5
    v4 = _auto(v3, _probs(0.01, 0.01, 0.01, 0.01, 0.01), model="teacher@2")
    df = versions.load_rows(v4.artifact_id).set_index("mf_id")
    assert df.loc[[0, 1, 2, 3], "label"].tolist() == ["pos", "pos", "neg", "neg"]
    assert (df.loc[[0, 1, 2, 3], "label_source"] == "human").all()
    assert df.loc[4, ["label", "label_source"]].tolist() == ["neg", "import"]
    assert (df.loc[5:, "label_source"] == "teacher").all() and (df.loc[5:, "label_model"] == "teacher@2").all()
    # and a reviewed label is what the order trains on, pseudo-labels only when asked
    view, sources = labels.training_view(df.reset_index())
    assert sources == {"human": 4, "import": 1} and set(view.columns) == {"text", "label"}
    view, sources = labels.training_view(df.reset_index(), use_pseudo_labels=True)
    assert sources == {"human": 4, "teacher": 5, "import": 1}


def test_training_view_min_confidence(pool):
    v2 = _auto(pool, _probs(0.99, 0.02, 0.6, 0.8, 0.95, 0.45), threshold=0.97)
    df = versions.load_rows(v2.artifact_id)
    assert labels.training_view(df, use_pseudo_labels=True)[1] == {"human": 4, "teacher": 2}
    view, sources = labels.training_view(df, use_pseudo_labels=True, min_confidence=0.79)
    assert sources == {"human": 4, "teacher": 4}
    assert sorted(view["label"].tolist()) == ["neg", "neg", "neg", "pos", "pos", "pos", "pos", "pos"]
    ref = versions.training_view(v2, use_pseudo_labels=True, min_confidence=0.79)
    assert ref.n_rows == 8 and ref.label_sources == {"human": 4, "teacher": 4} and str(ref) == str(v2)
    assert ref.artifact_id != v2.artifact_id and "label_source" not in versions.load_rows(ref.artifact_id)


def test_lineage_records_the_parent_chain(pool, tmp_path):
    v2 = _auto(pool, _probs(0.99, 0.02, 0.6, 0.7, 0.95, 0.45))
    fix = tmp_path / "fix.csv"
    fix.write_text("mf_id,label\n6,pos\n")
    v3, _ = labelstudio.import_file(str(v2), fix)
    chain = versions.lineage(str(v3))
    assert [c["dataset"] for c in chain] == ["reviews@3", "reviews@2", "reviews@1"]
    assert [c["operation"] for c in chain] == ["import", "auto_label", "ingest"]
    assert [c["parent"] for c in chain] == ["reviews@2", "reviews@1", None]
    assert chain[1]["details"]["teacher"] == "teacher@1" and chain[1]["details"]["threshold"] == 0.9
    assert chain[0]["label_sources"] == {"human": 4, "teacher": 3, "import": 1, "unlabeled": 2}
    assert chain[2]["details"]["unlabeled_source"].endswith("pool.csv")
    # a plain labeled dataset is one version of human labels
    plain = tmp_path / "plain.csv"
    plain.write_text("text,label\na,x\nb,y\n")
    versions.add_file("plain", plain, ROLES)
    assert versions.lineage("plain") == [{**versions.lineage("plain")[0], "operation": "ingest", "parent": None,
                                          "label_sources": {"human": 2}}]


@pytest.mark.parametrize("content,suffix,expected", [
    ('[{"id": 1, "data": {"mf_id": 999}, "annotations": [{"result": [{"from_name": "label", "to_name": "text", '
     '"type": "choices", "value": {"choices": ["pos"]}}]}]}]', ".json", r"task #1 \(id 1\): unknown row id 999"),
    ('[{"id": 2, "data": {"mf_id": 5}, "annotations": [{"result": [{"from_name": "label", "to_name": "text", '
     '"type": "choices", "value": {"choices": ["meh"]}}]}]}]', ".json", r"task #1 \(id 2\): label 'meh' is not one"),
    ('[{"id": 3, "data": {"mf_id": 5}, "annotations": [', ".json", r"review\.json:1: invalid JSON"),
    ('[{"id": 4, "data": {"text": "no id"}, "annotations": []}]', ".json", r"task #1 \(id 4\): no integer data\.mf_id"),
    ("mf_id,label\n5,pos\n77,neg\n6,huh\n", ".csv", r"review\.csv:3: unknown row id 77 .*\nreview\.csv:4: label 'huh'"),
    ('{"mf_id": 5, "label": "pos"}\nnot json\n', ".jsonl", r"review\.jsonl:2: invalid JSON"),
    ("id,label\n5,pos\n", ".csv", r"review\.csv:1: no column mf_id"),
])
def test_bad_imports_name_rows_and_make_no_version(pool, tmp_path, content, suffix, expected):
    bad = tmp_path / f"review{suffix}"
    bad.write_text(content)
    before = [(v.name, v.version) for v in versions.list_versions()]
    with pytest.raises(MFError, match=expected) as e:
        labelstudio.import_file("reviews", bad)
    assert "no version was made" in str(e.value).splitlines()[0]
    assert [(v.name, v.version) for v in versions.list_versions()] == before


def test_cli_bad_import_is_one_clear_line(pool, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("mf_id,label\n123,pos\n")
    proc = run_mf("label", "import", "reviews", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "1 bad row(s)" in proc.stderr and "bad.csv:2: unknown row id 123" in proc.stderr
    proc = run_mf("data", "show", "reviews", "--lineage", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["lineage"][0]["dataset"] == "reviews@1"


def test_order_spec_pseudo_label_fields():
    base = {"name": "x", "task": "text-classification", "teacher": {"model": "m"}}
    spec = parse_spec({**base, "data": {"dataset": "reviews", "use_pseudo_labels": True, "min_confidence": 0.9}})
    assert spec.data.use_pseudo_labels and spec.data.min_confidence == 0.9
    with pytest.raises(MFError, match="need 'dataset'"):
        parse_spec({**base, "data": {"path": "a.csv", "use_pseudo_labels": True}})
    with pytest.raises(MFError, match="set 'use_pseudo_labels: true' too"):
        parse_spec({**base, "data": {"dataset": "reviews", "min_confidence": 0.9}})
    with pytest.raises(MFError, match="min_confidence"):
        parse_spec({**base, "data": {"dataset": "reviews", "use_pseudo_labels": True, "min_confidence": 2}})
