"""Recipe search logic on synthetic objectives (fast), plus one tiny real search through the factory (slow)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import yaml

from modelfactory.compress.search import Targets, Trial, choose, infeasible_message, margin_reason, pareto_front, search

from .conftest import PLAIN_CHOICE, run_mf, sample_csv, tiny_order


def _t(n, acc, mb, ms):
    return Trial(n, {"n": n}, accuracy_ratio=acc, size_mb=mb, latency_ms=ms)


def test_pareto_front_is_exactly_the_non_dominated_points():
    trials = [_t(0, 0.99, 10, 5), _t(1, 0.95, 2, 1), _t(2, 0.94, 3, 2), _t(3, 0.99, 10, 6), _t(4, 0.90, 1, 3)]
    front = pareto_front(trials)
    assert {t.number for t in front} == {0, 1, 4}
    for a, b in itertools.permutations(front, 2):
        assert not a.dominates(b)
    for t in [t for t in trials if t not in front]:
        assert any(f.dominates(t) for f in front)


def test_choose_prefers_fastest_feasible_then_smallest():
    front = [_t(0, 0.99, 10, 5), _t(1, 0.97, 2, 1), _t(2, 0.97, 1, 1)]
    assert choose(front, Targets(min_accuracy_ratio=0.97)).number == 2
    assert choose(front, Targets(min_accuracy_ratio=0.98)).number == 0
    assert choose(front, Targets(min_accuracy_ratio=0.995)) is None


def _acc(n, acc, teacher_acc, mb, ms):
    return Trial(n, {"n": n}, accuracy_ratio=acc / teacher_acc, size_mb=mb, latency_ms=ms, accuracy=acc)


def test_choose_takes_the_cheapest_clearing_the_accuracy_bar_by_the_margin():
    # Teacher 0.80 on validation, bar 0.97 x 0.80 = 0.776; margin 2 points (0.025 as a ratio).
    targets = Targets(min_accuracy_ratio=0.97, max_size_mb=2.0, accuracy_margin=0.02, ratio_margin=0.025)
    grazing = _acc(0, 0.780, 0.80, 1.0, 0.1)  # cheapest over the bar, by 0.4 points
    clear = _acc(1, 0.800, 0.80, 1.5, 0.2)  # 2.4 points over
    clearer = _acc(2, 0.810, 0.80, 1.8, 0.3)
    too_big = _acc(3, 0.820, 0.80, 5.0, 0.05)
    assert choose([grazing, clear, clearer, too_big], targets).number == 1
    assert "clearing the accuracy targets by one standard error" in margin_reason(clear, targets)
    # Without the margin (a split of unknown size): the cheapest meeting the bar, as before.
    assert choose([grazing, clear, clearer], Targets(min_accuracy_ratio=0.97)).number == 0


def test_choose_falls_back_to_the_cheapest_meeting_the_targets_when_none_clears_by_the_margin():
    targets = Targets(min_accuracy_ratio=0.97, min_accuracy=0.70, max_latency_ms=0.5, accuracy_margin=0.03,
                      ratio_margin=0.0375)
    cheap = _acc(0, 0.780, 0.80, 1.0, 0.1)
    better = _acc(1, 0.790, 0.80, 1.5, 0.2)
    slow = _acc(2, 0.830, 0.80, 1.5, 0.9)  # clears by far, but misses the latency target
    under = _acc(3, 0.770, 0.80, 0.5, 0.05)  # misses the bar
    chosen = choose([cheap, better, slow, under], targets)
    assert chosen.number == 0
    assert "none cleared the accuracy targets" in margin_reason(chosen, targets)
    # The margin applies to the baseline's accuracy too: 0.79 clears 0.755 by 3.5 points, 0.78 only by 2.5.
    assert choose([cheap, better], Targets(min_accuracy=0.755, accuracy_margin=0.03)).number == 1
    assert choose([under], targets) is None
    assert margin_reason(cheap, Targets(max_size_mb=2, accuracy_margin=0.03)).startswith("the fastest")


def test_choose_keeps_a_baseline_meeting_the_targets_unless_a_trial_clears_them_by_the_margin():
    # Teacher 0.75 on validation; the baseline (TF-IDF + LR) 0.734 meets the 0.97 ratio and is its own bar.
    teacher, se = 0.75, 0.025
    targets = Targets(min_accuracy_ratio=0.97, min_accuracy=0.734, max_size_mb=2.0, accuracy_margin=se,
                      ratio_margin=se / teacher)
    baseline = _acc(-1, 0.734, teacher, 1.1, 0.18)
    grazing = _acc(0, 0.741, teacher, 0.2, 0.05)  # dominates the baseline by 0.7 points: noise
    assert choose([grazing], targets, baseline) is baseline  # off the front, and still chosen
    assert margin_reason(baseline, targets, baseline).startswith("kept because it meets every target")
    assert choose([grazing], targets) is grazing  # without a baseline: the cheapest meeting the targets
    clearing = _acc(1, 0.762, teacher, 1.5, 0.3)  # 2.8 points over the baseline: evidence
    assert choose([grazing, clearing], targets, baseline) is clearing
    # A baseline missing a target (here the teacher's ratio) is never the fallback.
    weak = _acc(-1, 0.70, teacher, 1.1, 0.18)
    assert choose([grazing], replace(targets, min_accuracy=0.70), weak) is grazing


def test_infeasible_message_names_the_best_trade_offs():
    trials = [_t(0, 0.99, 10, 11.2), _t(1, 0.93, 2, 4.0), _t(2, 0.90, 1, 3.0)]
    from modelfactory.compress.search import SearchResult

    result = SearchResult(trials, pareto_front(trials), None, "max_trials")
    msg = infeasible_message(result, Targets(min_accuracy_ratio=0.97, max_latency_ms=5))
    assert "best accuracy ratio at ≤5 ms was 0.930" in msg
    assert "at ≥0.97 the fastest was 11.20 ms" in msg


def test_search_respects_the_budget_and_measures_each_recipe_once():
    calls = []

    def evaluate(number, params):
        calls.append(params)
        layers, quant = params["layers"], params["quantize"]
        return Trial(number, params, accuracy_ratio=0.9 + 0.03 * layers, size_mb=5.0 * layers / (2 if quant else 1),
                     latency_ms=1.0 * layers)

    space = {"layers": [1, 2, 3], "quantize": [True, False]}
    result = search(space, evaluate, max_trials=10, max_minutes=5, seed=0, targets=Targets(min_accuracy_ratio=0.95))
    assert len(result.trials) <= 6 and len(calls) == len(result.trials)  # 6 distinct recipes at most
    assert len({tuple(sorted(c.items())) for c in calls}) == len(calls)
    assert result.chosen is not None and result.chosen.accuracy_ratio >= 0.95
    assert result.chosen in result.front
    short = search(space, evaluate, max_trials=2, max_minutes=5, seed=0)
    assert len(short.trials) <= 2 and short.stopped_by == "max_trials"


@pytest.mark.slow
def test_tiny_search_through_the_factory_and_infeasible_targets_exit_3(tmp_path, corpus_df, tiny_teacher, mf_home):
    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 60)
    spec = tiny_order("searched", data, tiny_teacher,
                      search={"max_trials": 3, "max_minutes": 10, "space": {"layers": [1, 2], "vocab": ["train"],
                                                                              "quantize": ["dynamic"]}})
    order = tmp_path / "order.yaml"
    order.write_text(yaml.safe_dump(spec))
    proc = run_mf("order", "run", str(order), "--json")
    assert proc.returncode == 0, proc.stderr
    report = (mf_home / "orders" / "1" / "report.md").read_text()
    assert "## Recipe search" in report and "| trial | recipe |" in report
    assert PLAIN_CHOICE.search(report), report  # no targets: the plain rule
    assert (mf_home / "orders" / "1" / "pareto.png").stat().st_size > 1000

    again = run_mf("order", "run", str(order))  # finished trials are cache hits
    assert again.returncode == 0 and "trial0/student" in again.stdout and "cache hit" in again.stdout
    assert "done in" not in again.stdout.split("trial0/student", 1)[1].splitlines()[0]

    spec["targets"] = {"max_latency_ms": 0.0001}
    order.write_text(yaml.safe_dump(spec))
    proc = run_mf("order", "run", str(order))
    assert proc.returncode == 3, proc.stderr
    assert "no recipe met every target" in proc.stderr and "no recipe ran in ≤0.0001 ms" in proc.stderr
    assert "Traceback" not in proc.stderr

    # Relative to the INT8 teacher this order measured: the search ranks by it (no recipe is chosen and then
    # found missing), and the bar it could not meet is quoted in milliseconds.
    spec["targets"] = {"min_speedup": 1e6}
    order.write_text(yaml.safe_dump(spec))
    proc = run_mf("order", "run", str(order))
    assert proc.returncode == 3, proc.stderr
    assert "no recipe met every target" in proc.stderr and "no recipe ran in ≤" in proc.stderr


def test_first_trial_is_the_baseline_recipe():
    seen = []

    def evaluate(number, params):
        seen.append(params)
        return Trial(number, params, accuracy_ratio=0.9, size_mb=1.0, latency_ms=1.0)

    search({"layers": [3, 1, 2], "quantize": ["static", "dynamic"], "vocab": ["train"]}, evaluate, max_trials=3,
           max_minutes=5, seed=1)
    assert seen[0] == {"layers": 3, "quantize": "static", "vocab": "train"}


def test_the_first_trials_cover_every_choice_of_the_leading_dimension():
    """A default budget of a few trials must measure every student family, not whichever the sampler drew."""
    seen = []

    def evaluate(number, params):
        seen.append(params)
        return Trial(number, params, accuracy_ratio=0.9, size_mb=1.0, latency_ms=1.0)

    space = {"arch": ["bag", "tiny", "classical", "cnn", "transformer"], "size": ["s", "m", "xs", "l"],
             "alpha": [0.7, 0.9, 0.5], "temperature": [2.0, 4.0]}
    search(space, evaluate, max_trials=5, max_minutes=5, seed=0)
    assert [p["arch"] for p in seen] == space["arch"]
    assert all(p["size"] == "s" and p["alpha"] == 0.7 and p["temperature"] == 2.0 for p in seen)


@pytest.mark.slow
def test_a_search_blends_a_neural_and_a_classical_trial_and_a_chosen_blend_ships(tmp_path, corpus_df, tiny_teacher,
                                                                                 mf_home, monkeypatch):
    """After the trials, the family's blends (text: one neural + one classical student) are measured like trials;
    one chosen is registered as one model with its members' recipes as lineage, and predicts through `mf predict`.
    (The choice is forced here: which point wins on a tiny random teacher is not what this test is about.)"""
    from modelfactory.factory import trials as trials_mod
    from modelfactory.factory.order import run_order
    from modelfactory.factory.spec import parse_spec
    from modelfactory.registry import registry
    from modelfactory.tasks import read_meta

    data = sample_csv(corpus_df, tmp_path / "reviews.csv", 60)
    spec = tiny_order("blended", data, tiny_teacher, transfer={"copies": 1},
                      search={"max_trials": 2, "max_minutes": 10, "space": {
                          "arch": ["bag", "classical"], "size": ["xs"], "tokens": ["word"], "init": ["random"],
                          "quantize": ["dynamic"]}})
    monkeypatch.setattr(trials_mod, "choose", lambda front, targets, baseline: next(t for t in front
                                                                                    if "blend" in t.params))
    monkeypatch.setattr(trials_mod, "pareto_front", lambda trials: trials)  # the blend may well be dominated
    result = run_order(parse_spec(spec))

    blends = [t for t in result.searched.trials if "blend" in t.params]
    assert [t.params["blend"] for t in blends] == ["trial 0 + trial 1"]  # bag (neural) + classical, once
    assert result.searched.chosen is blends[0]
    ref = registry.resolve(str(result.model))
    assert read_meta(ref.path)["format"] == "onnx-blend"
    assert ref.path == result.results["student"].artifact.path
    recipe = ref.lineage["recipe"]
    assert set(recipe[0]["blend"]) == {"neural", "classical"}
    assert recipe[0]["blend"]["neural"][0]["distill"]["arch"] == "bag"
    report = (mf_home / "orders" / "1" / "report.md").read_text()
    assert "blend=trial 0 + trial 1" in report
    assert "blend(neural: distill(" in ref.card and "; classical: distill(" in ref.card

    proc = run_mf("predict", "blended", "a dazzling, heartfelt film", "--json")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)[0]
    assert row["label"] in row["probabilities"] and abs(sum(row["probabilities"].values()) - 1) < 1e-4


def test_blends_are_tried_only_where_they_can_meet_the_size_and_latency_targets():
    from modelfactory.factory.trials import _may_meet

    small, big = _t(0, 0.9, 1.5, 0.10), _t(1, 0.9, 0.9, 0.12)
    assert _may_meet((small, big), Targets())
    assert _may_meet((small, big), Targets(max_size_mb=2.5, max_latency_ms=0.2))
    assert not _may_meet((small, big), Targets(max_size_mb=2.3))  # 2.4 MB: the blend's file holds both graphs
    assert not _may_meet((small, big), Targets(max_latency_ms=0.1))  # 0.22 ms > 1.5 x 0.1


def test_cheap_blend_members_are_added_only_when_the_space_allows_and_lacks_them(tmp_path):
    from modelfactory.factory.spec import parse_spec
    from modelfactory.factory.trials import _blend_members

    def spec_with(space):
        raw = tiny_order("b", tmp_path / "x.csv", tmp_path, search={"max_trials": 2, "space": space})
        return parse_spec(raw, "test")

    measured = []

    def evaluate(number, params):
        measured.append((number, params["arch"], params["size"]))
        return Trial(number, params, accuracy_ratio=0.9, size_mb=1.0, latency_ms=0.1)

    space = {"arch": ["bag", "classical"], "size": ["s", "xs"]}
    done = [Trial(0, {"arch": "bag", "size": "s"}, 0.9, 1.0, 0.1), Trial(1, {"arch": "classical", "size": "s"},
                                                                        0.9, 1.0, 0.1)]
    added = _blend_members(spec_with(space), done, evaluate)
    assert measured == [(2, "classical", "xs")] and [t.number for t in added] == [2]  # s was measured already
    measured.clear()
    assert _blend_members(spec_with({"arch": ["bag", "cnn"], "size": ["s", "xs"]}), done, evaluate) == []
    assert measured == []  # an order's own space without classical students gets none


def test_a_search_measures_trials_by_validation_accuracy_and_shows_test_beside():
    """The search chooses by the val split, so the test split stays a held-out check of its choice."""
    from modelfactory.compress.search import SearchResult, front_table
    from modelfactory.factory.trials import _trial, chosen_by

    m = {"accuracy": 0.90, "val_accuracy": 0.70, "size_bytes": 2e6, "latency_ms_p50": 0.1}
    t = _trial(3, {"arch": "cnn"}, m, teacher_acc=0.80, artifact="a" * 64, recipe=[{"distill": {}}])
    assert (t.accuracy, t.accuracy_ratio, t.extra["test_accuracy"]) == (0.70, pytest.approx(0.875), 0.90)
    assert chosen_by({"accuracy": 0.6}) == 0.6  # an evaluation from before val was scored
    table = front_table(SearchResult([t], [t], t, "max_trials"))
    assert "| test accuracy |" in table.splitlines()[0] and "| 0.7000 | 0.875 | 0.9000 |" in table
