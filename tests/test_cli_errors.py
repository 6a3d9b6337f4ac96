"""Bad input: a one-line error naming the problem, exit code 2, no traceback, nothing half-written left behind."""

from __future__ import annotations

import sys

import pytest
import yaml

from modelfactory.cli import main

from .conftest import run_mf, tiny_order


def mf(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mf", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _order(tmp_path, data_text: str | None, teacher_dir, **overrides) -> str:
    data = tmp_path / "data.csv"
    if data_text is not None:
        data.write_text(data_text)
    spec = tiny_order("bad", data, teacher_dir, **overrides)
    path = tmp_path / "order.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _assert_clean_failure(code, err, match, mf_home):
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error: ") and match in err, err
    leftovers = [p.name for p in (mf_home / "artifacts").glob(".tmp-*")] if (mf_home / "artifacts").exists() else []
    assert leftovers == []


ROWS = "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(20))


@pytest.mark.parametrize("data_text,overrides,match", [
    (None, {}, "data.csv: no such file"),
    ("", {}, "data.csv: file is empty"),
    ("body,category\nhello,x\n", {}, "no column 'text' (text), 'label' (label)"),
    ("text,label\n" + "".join(f"t{i},same\n" for i in range(20)), {}, "only one class ('same')"),
    (ROWS + "lonely,c\n", {}, "label 'c' (1 row) would never be seen in training"),
    (ROWS, {"targets": {"max_latency_ms": "fast"}}, "field 'targets.max_latency_ms'"),
    (ROWS, {"teacher": {"modell": "x"}}, "unknown field 'teacher.modell'"),
    (ROWS + ",a\n", {}, "data.csv:22: empty text"),
])
def test_bad_orders(tmp_path, capsys, monkeypatch, mf_home, tiny_teacher, data_text, overrides, match):
    code, _, err = mf(capsys, monkeypatch, "order", "run", _order(tmp_path, data_text, tiny_teacher, **overrides))
    _assert_clean_failure(code, err, match, mf_home)


def test_missing_order_file(capsys, monkeypatch, mf_home):
    code, _, err = mf(capsys, monkeypatch, "order", "run", "nope.yaml")
    _assert_clean_failure(code, err, "nope.yaml: no such order file", mf_home)


def test_unknown_model(capsys, monkeypatch, mf_home):
    code, _, err = mf(capsys, monkeypatch, "predict", "ghost", "hello")
    _assert_clean_failure(code, err, "no model 'ghost'", mf_home)


def test_hub_id_that_cannot_be_reached_is_a_clear_error(tmp_path, mf_home):
    """The real entry point, in its own process, offline: a hub id fails at the teacher stage with one line."""
    data = tmp_path / "data.csv"
    data.write_text(ROWS)
    spec = tiny_order("hub", data, tmp_path)
    spec["teacher"] = {"model": "google-bert/bert-base-uncased", "epochs": 1}
    (tmp_path / "order.yaml").write_text(yaml.safe_dump(spec))
    proc = run_mf("order", "run", str(tmp_path / "order.yaml"), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "cannot load teacher model 'google-bert/bert-base-uncased'" in proc.stderr
    assert not list((mf_home / "artifacts").glob(".tmp-*"))
