"""Targets relative to the dynamic-INT8 teacher ("10x smaller, 10x faster than the teacher simply quantized"):
turned into the search's megabytes and milliseconds from the INT8 teacher this order measured, and checked on the
deployed model against the same measurement."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfactory.artifacts import Artifact
from modelfactory.errors import MFError
from modelfactory.factory.order import check_targets, target_detail
from modelfactory.factory.runner import NodeResult
from modelfactory.factory.spec import parse_spec
from modelfactory.factory.trials import targets_of

BASE = {"name": "tickets", "task": "text-classification", "data": {"path": "x.csv"},
        "teacher": {"model": "some/model"}}
INT8 = {"accuracy": 0.80, "size_bytes": 23_000_000, "latency_ms_p50": 3.0}


def _evaluated(metrics: dict) -> NodeResult:
    return NodeResult(Artifact("a" * 64, Path("."), {"metrics": metrics}), cached=True)


def test_relative_targets_become_the_int8_teachers_size_and_latency_over_the_factor():
    spec = parse_spec({**BASE, "targets": {"min_size_reduction": 10, "min_speedup": 20}})
    t = targets_of(spec, {"evaluate_teacher_int8": _evaluated(INT8)})
    assert t.max_size_mb == pytest.approx(2.3) and t.max_latency_ms == pytest.approx(0.15)


def test_the_tighter_of_an_absolute_and_a_relative_target_wins():
    spec = parse_spec({**BASE, "targets": {"min_size_reduction": 10, "max_size_mb": 1.0,
                                           "min_speedup": 10, "max_latency_ms": 5.0}})
    t = targets_of(spec, {"evaluate_teacher_int8": _evaluated(INT8)})
    assert t.max_size_mb == pytest.approx(1.0) and t.max_latency_ms == pytest.approx(0.3)


def test_the_deployed_model_is_checked_against_the_int8_teacher_it_was_measured_beside():
    spec = parse_spec({**BASE, "targets": {"min_size_reduction": 10, "min_speedup": 10}})
    teacher = {"accuracy": 0.82, "size_bytes": 91_000_000, "latency_ms_p50": 7.0}
    small_slow = {"accuracy": 0.80, "size_bytes": 2_000_000, "latency_ms_p50": 0.5}  # 11.5x smaller, 6x faster
    met = check_targets(spec, {"teacher": teacher, "teacher_int8": INT8, "student": small_slow}, "student")
    assert met == {"min_size_reduction": True, "min_speedup": False}
    edge = {**small_slow, "size_bytes": 2_300_001, "latency_ms_p50": 0.3}  # just over 23/10 MB; exactly 10x faster
    met = check_targets(spec, {"teacher": teacher, "teacher_int8": INT8, "student": edge}, "student")
    assert met == {"min_size_reduction": False, "min_speedup": True}
    detail = target_detail(spec, {"teacher_int8": INT8, "student": small_slow}, "student", "min_speedup")
    assert "3.00 ms" in detail and "6.0x" in detail


def test_without_an_int8_teacher_a_relative_target_is_missed_not_passed():
    spec = parse_spec({**BASE, "targets": {"min_speedup": 10}})
    m = {"accuracy": 0.8, "size_bytes": 1, "latency_ms_p50": 0.001}
    assert check_targets(spec, {"teacher": m, "student": m}, "student") == {"min_speedup": False}


def test_relative_targets_are_refused_where_no_int8_teacher_is_made():
    with pytest.raises(MFError, match=r"targets\.min_speedup.*INT8 teacher"):
        parse_spec({**BASE, "task": "causal-lm", "targets": {"min_speedup": 10}})
    with pytest.raises(MFError, match=r"targets\.min_size_reduction"):
        parse_spec({**BASE, "targets": {"min_size_reduction": 0.5}})


def test_the_choice_margin_is_one_standard_error_of_the_teachers_validation_accuracy():
    spec = parse_spec({**BASE, "targets": {"min_accuracy_ratio": 0.97}})
    results = {"split": _evaluated({"train": 4000, "val": 500, "test": 750}),
               "evaluate_teacher": _evaluated({"accuracy": 0.82, "val_accuracy": 0.80})}
    t = targets_of(spec, results)
    assert t.accuracy_margin == pytest.approx((0.8 * 0.2 / 500) ** 0.5)  # 1.79 points
    assert t.ratio_margin == pytest.approx(t.accuracy_margin / 0.80)
    bigger = targets_of(spec, {**results, "split": _evaluated({"train": 40000, "val": 5000, "test": 750})})
    assert bigger.accuracy_margin == pytest.approx(t.accuracy_margin / 10 ** 0.5)
    assert targets_of(spec, {"evaluate_teacher": results["evaluate_teacher"]}).accuracy_margin == 0.0
