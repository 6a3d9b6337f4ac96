import pytest

from modelfactory.errors import MFError
from modelfactory.factory.spec import load_spec, parse_spec

BASE = {"name": "tickets", "task": "text-classification", "data": {"path": "x.csv"},
        "teacher": {"model": "some/model"}}


def test_valid_spec_fills_defaults():
    spec = parse_spec(BASE)
    assert spec.tenant == "default" and spec.student.layers == 2 and spec.deploy is True
    assert spec.targets.min_accuracy_ratio is None


def test_unknown_key_names_the_field():
    with pytest.raises(MFError, match=r"unknown field 'teacher\.modle'"):
        parse_spec({**BASE, "teacher": {"model": "m", "modle": "typo"}})


def test_unknown_top_level_key():
    with pytest.raises(MFError, match=r"unknown field 'deploi'"):
        parse_spec({**BASE, "deploi": True})


def test_targets_must_be_numbers():
    with pytest.raises(MFError, match=r"field 'targets\.max_latency_ms'.*number"):
        parse_spec({**BASE, "targets": {"max_latency_ms": "fast"}})


def test_a_size_preset_is_checked_with_the_spec_not_when_the_student_is_built():
    with pytest.raises(MFError, match=r"student\.size"):
        parse_spec({**BASE, "student": {"arch": "tiny", "size": "xxl"}})


def test_missing_field_is_named():
    with pytest.raises(MFError, match=r"missing field 'teacher'"):
        parse_spec({k: v for k, v in BASE.items() if k != "teacher"})


def test_unknown_task_lists_known_ones():
    with pytest.raises(MFError, match=r"unknown task 'summarize'.*text-classification"):
        parse_spec({**BASE, "task": "summarize"})


def test_data_needs_exactly_one_source():
    with pytest.raises(MFError, match=r"exactly one of 'path'"):
        parse_spec({**BASE, "data": {"path": "a.csv", "dataset": "d"}})


def test_bad_name():
    with pytest.raises(MFError, match=r"field 'name'"):
        parse_spec({**BASE, "name": "Bad Name!"})


def test_yaml_file_paths_are_relative_to_the_spec(tmp_path):
    (tmp_path / "data.csv").write_text("text,label\na,b\n")
    f = tmp_path / "order.yaml"
    f.write_text("name: t\ntask: text-classification\ndata: {path: data.csv}\nteacher: {model: m}\n")
    assert load_spec(f).data.path == str(tmp_path / "data.csv")


def test_broken_yaml_is_one_line(tmp_path):
    f = tmp_path / "order.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(MFError, match="not valid YAML"):
        load_spec(f)


def test_spec_that_is_not_a_mapping(tmp_path):
    f = tmp_path / "order.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(MFError, match="mapping"):
        load_spec(f)
