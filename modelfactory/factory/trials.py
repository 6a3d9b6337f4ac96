"""Recipe search inside an order: each trial is a student chain planned under its own prefix and run through
the same cached stage runner, so finished trials are cache hits when the search runs again."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from .. import tasks
from ..compress.search import SearchResult, Targets, Trial, choose, margin_reason, pareto_front, plot_front, search
from ..errors import MFError
from .planner import Node, Plan, evaluate_node, student_chain, teacher_plan, transfer_node
from .runner import NodeResult, Reporter, run_plan
from .spec import OrderSpec, PruneSpec, QuantizeSpec, RecipeStep, RecoverSpec

DISTILL_DIMS = ("layers", "hidden", "heads", "ffn", "vocab", "alpha", "temperature", "hidden_weight",
                "attention_weight", "epochs", "lr", "batch_size", "arch", "size", "init", "C", "transfer", "tokens")


def recipe_from(spec: OrderSpec, params: dict[str, Any]) -> list[RecipeStep]:
    """A sampled point of the search space -> a recipe, with the order's `student` section as defaults."""
    distill = spec.student.model_copy(update={k: params[k] for k in DISTILL_DIMS if k in params})
    steps = [RecipeStep(distill=distill)]
    if params.get("prune_ratio"):
        trained = tasks.get(spec.task).student_defaults(distill.model_dump()) | distill.model_dump(exclude_none=True)
        steps += [RecipeStep(prune=PruneSpec(ratio=params["prune_ratio"])),
                  RecipeStep(recover=RecoverSpec(epochs=max(1.0, trained["epochs"] / 2), lr=trained["lr"],
                                                 alpha=distill.alpha, temperature=distill.temperature,
                                                 hidden_weight=distill.hidden_weight))]
    mode = params.get("quantize", spec.quantize)
    if mode != "none":
        steps.append(RecipeStep(quantize=QuantizeSpec(mode=mode)))
    return steps


def search_space(spec: OrderSpec) -> dict[str, list[Any]]:
    s = spec.searched()
    assert s is not None
    space = s.space if s.space is not None else tasks.get(spec.task).default_search_space()
    if not space:
        raise MFError(f"the {spec.task} family has no default search space: give the order a recipe or a "
                      "search.space")
    return space


def wants_transfer_set(spec: OrderSpec) -> bool:
    """Whether a student in the search space distils over the transfer set."""
    family, space = tasks.get(spec.task), search_space(spec)
    archs = space.get("arch", [spec.student.arch])
    return any(space.get("transfer", [])) or any(
        family.student_defaults(family.student_params({"arch": a})).get("transfer") for a in archs)


def search_prefix(spec: OrderSpec, dataset_artifact: str) -> Plan:
    """What a search order computes before its first trial: the teacher half, and the transfer set if wanted.
    On the pool these are ordinary stage jobs (shared with the tenant's other orders on the same data and teacher),
    and the search job waits for them, so it never fine-tunes a teacher another job is already training."""
    the_plan = teacher_plan(spec, dataset_artifact)
    if wants_transfer_set(spec):
        the_plan.nodes.append(transfer_node(spec))
    return the_plan


def _with_transfer_set(spec: OrderSpec, teacher: dict[str, NodeResult], **run) -> dict[str, NodeResult]:
    """The transfer set, before the search's clock starts, when a student in the space distils over it: it is
    the teacher's work (labeling thousands of texts), shared by every trial, not one trial's cost."""
    if not wants_transfer_set(spec):
        return teacher
    return run_plan(Plan([transfer_node(spec)], {}, "transfer"), produced=teacher, **run)


def run_search(spec: OrderSpec, teacher: dict[str, NodeResult], *, order_id: int | None,
               reporter: Reporter | None, should_stop=lambda: False
               ) -> tuple[SearchResult, dict[int, tuple[Plan, dict[str, NodeResult]]]]:
    teacher = _with_transfer_set(spec, teacher, order_id=order_id, reporter=reporter, should_stop=should_stop)
    teacher_acc = chosen_by(teacher["evaluate_teacher"].artifact.metrics)
    runs: dict[int, tuple[Plan, dict[str, NodeResult]]] = {}

    def evaluate(number: int, params: dict[str, Any]) -> Trial:
        prefix = f"trial{number}/"
        chain = student_chain(spec, recipe_from(spec, params), prefix=prefix)
        results = run_plan(chain, order_id=order_id, reporter=reporter, produced=teacher, should_stop=should_stop)
        runs[number] = (chain, results)
        return _trial(number, params, results[f"{prefix}evaluate_{chain.deployed}"].artifact.metrics, teacher_acc,
                      results[chain.candidates[chain.deployed]].artifact.id,
                      [st.model_dump(mode="json", exclude_none=True) for st in recipe_from(spec, params)])

    s = spec.searched()
    targets = targets_of(spec, teacher)
    baseline = _baseline_trial(teacher, teacher_acc)
    result = search(search_space(spec), evaluate, max_trials=s.max_trials, max_minutes=s.max_minutes, seed=s.seed,
                    targets=targets, baseline=baseline)
    extra = _blend_members(spec, result.trials, evaluate)
    blends = blend_trials(spec, result.trials + extra, teacher, targets, runs, order_id=order_id, reporter=reporter,
                          should_stop=should_stop)
    if extra or blends:
        trials = result.trials + extra + blends
        front = pareto_front(trials)
        result = SearchResult(trials, front, choose(front, targets, baseline), result.stopped_by, baseline)
    return result, runs


BLEND_TOP = 3  # trials per blend group that are blended, one member per group (text: up to 3 x 3 blends)


def _blend_members(spec: OrderSpec, trials: list[Trial], evaluate) -> list[Trial]:
    """The family's cheap blend members that the search space allows but the search did not measure, measured
    now as trials (numbered on). A space without them (an order's own) gets none."""
    space = search_space(spec)
    first = {name: choices[0] for name, choices in space.items()}
    number = max((t.number for t in trials), default=-1) + 1
    out: list[Trial] = []
    for member in tasks.get(spec.task).blend_members():
        if not all(v in space.get(k, []) for k, v in member.items()) or any(
                t.number >= 0 and all(t.params.get(k) == v for k, v in member.items()) for t in trials + out):
            continue
        out.append(evaluate(number, {**first, **member}))
        number += 1
    return out


def blend_trials(spec: OrderSpec, trials: list[Trial], teacher: dict[str, NodeResult], targets: Targets,
                 runs: dict[int, tuple[Plan, dict[str, NodeResult]]], **run) -> list[Trial]:
    """After the search, the family's blends (e.g. a neural + a classical text student averaged) of its best
    trials, measured on the same split like trials: a blend costs seconds (no training), and where the members
    err on different rows it beats both. Each is a stage under its own prefix, cached like any other."""
    family = tasks.get(spec.task)
    if not family.blend_groups:
        return []
    teacher_acc = chosen_by(teacher["evaluate_teacher"].artifact.metrics)
    groups: dict[str, list[Trial]] = {g: [] for g in family.blend_groups}
    for t in trials:
        group = family.blend_group({"arch": spec.student.arch, **t.params}) if t.number >= 0 else None
        if group in groups:
            groups[group].append(t)
    # Per group its own Pareto front (a compact member can make a blend that meets a size target, an accurate one
    # the accuracy target), the most accurate few of it.
    best = [sorted(pareto_front(ts), key=lambda t: -(t.accuracy or 0.0))[:BLEND_TOP] for ts in groups.values()]
    out: list[Trial] = []
    number = max((t.number for t in trials), default=-1) + 1
    for members in itertools.product(*best):
        if not _may_meet(members, targets):
            continue
        prefix = f"blend{number}/"
        node = Node(f"{prefix}student", "blend", {"task": spec.task},
                    {g: f"@{t.extra['artifact']}" for g, t in zip(groups, members)})
        chain = Plan([node, evaluate_node("student", node.name, spec.task, prefix)], {"student": node.name},
                     "student")
        results = run_plan(chain, produced=teacher, **run)
        runs[number] = (chain, results)
        out.append(_trial(number, {"blend": " + ".join(f"trial {t.number}" for t in members)},
                          results[f"{prefix}evaluate_student"].artifact.metrics, teacher_acc,
                          results[node.name].artifact.id,
                          [{"blend": {g: t.extra["recipe"] for g, t in zip(groups, members)}}]))
        number += 1
    return out


def _may_meet(members: tuple[Trial, ...], targets: Targets) -> bool:
    """Whether a blend of `members` can meet the order's size and latency targets: its file holds theirs and
    its graph runs theirs, so sizes and batch-1 latencies add up (latency with a margin: it is measured)."""
    return ((targets.max_size_mb is None or sum(t.size_mb for t in members) <= targets.max_size_mb)
            and (targets.max_latency_ms is None or sum(t.latency_ms for t in members) <= 1.5 * targets.max_latency_ms))


def chosen_by(metrics: dict[str, Any]) -> float:
    """The accuracy a search chooses by: on the validation split, so that the test split stays a held-out check
    of the choice (a model picked for its test accuracy among a dozen would report a lucky figure). An
    evaluation from before it measured validation falls back to test."""
    return metrics.get("val_accuracy", metrics["accuracy"])


def _trial(number: int, params: dict[str, Any], m: dict[str, Any], teacher_acc: float, artifact: str,
           recipe: list[dict] | None) -> Trial:
    """A measured candidate: objectives by validation accuracy (ratio to the teacher's there), test beside."""
    acc = chosen_by(m)
    extra = {"accuracy": acc, "test_accuracy": m["accuracy"], "artifact": artifact}
    return Trial(number, params, accuracy_ratio=acc / teacher_acc, size_mb=m["size_bytes"] / 1e6,
                 latency_ms=m["latency_ms_p50"], accuracy=acc, extra=extra | ({"recipe": recipe} if recipe else {}))


BASELINE_TRIAL = -1


def _baseline_trial(teacher: dict[str, NodeResult], teacher_acc: float) -> Trial | None:
    """The classical baseline as a candidate like any trial: when the deep path cannot beat it, it ships (the
    report says so), rather than a worse model or none; when it meets the targets, only a trial that clears them
    by the validation split's noise replaces it (`choose`)."""
    node = teacher.get("evaluate_baseline_classical")
    if node is None:
        return None
    return _trial(BASELINE_TRIAL, {"baseline": "classical, on the rows' own labels"}, node.artifact.metrics,
                  teacher_acc, teacher["baseline_classical"].artifact.id, None)


def baseline_accuracy(results: dict[str, NodeResult]) -> float | None:
    node = results.get("evaluate_baseline_classical")
    return chosen_by(node.artifact.metrics) if node is not None else None


def targets_of(spec: OrderSpec, results: dict[str, NodeResult] | None = None) -> Targets:
    """The order's targets in the search's absolute terms: the baseline's accuracy, and the relative size and
    latency targets turned into megabytes and milliseconds of the INT8 teacher measured in this order."""
    t = spec.targets
    size_mb, latency_ms = t.max_size_mb, t.max_latency_ms
    int8 = (results or {}).get("evaluate_teacher_int8")
    if int8 is not None:
        m = int8.artifact.metrics
        if t.min_size_reduction is not None:
            size_mb = _tighter(size_mb, m["size_bytes"] / 1e6 / t.min_size_reduction)
        if t.min_speedup is not None:
            latency_ms = _tighter(latency_ms, m["latency_ms_p50"] / t.min_speedup)
    accuracy_margin, ratio_margin = _validation_noise(results or {})
    return Targets(min_accuracy_ratio=t.min_accuracy_ratio, max_latency_ms=latency_ms, max_size_mb=size_mb,
                   min_accuracy=baseline_accuracy(results or {}) if t.beat_baseline else None,
                   accuracy_margin=accuracy_margin, ratio_margin=ratio_margin)


def _validation_noise(results: dict[str, NodeResult]) -> tuple[float, float]:
    """One standard error of an accuracy near the teacher's measured on the validation split, sqrt(p(1-p)/n), in
    points and as a ratio to the teacher's accuracy: the margin `choose` wants a cheap pick to clear the targets
    by. (0, 0) when the split or the teacher's validation accuracy is unknown."""
    split, teacher = results.get("split"), results.get("evaluate_teacher")
    if split is None or teacher is None or "val_accuracy" not in teacher.artifact.metrics:
        return 0.0, 0.0
    n, p = split.artifact.metrics.get("val", 0), teacher.artifact.metrics["val_accuracy"]
    if not n or not 0.0 < p < 1.0:
        return 0.0, 0.0
    se = math.sqrt(p * (1.0 - p) / n)
    return se, se / p


def _tighter(limit: float | None, other: float) -> float:
    return other if limit is None else min(limit, other)


def chosen_plan(spec: OrderSpec, teacher_plan: Plan, runs: dict[int, tuple[Plan, dict[str, NodeResult]]],
                trial: Trial, teacher: dict[str, NodeResult]) -> tuple[Plan, dict[str, NodeResult]]:
    """The order's plan as if the chosen recipe had been its only one: names without the trial prefix."""
    if trial.number == BASELINE_TRIAL:  # the classical baseline ships as the student
        merged = Plan(teacher_plan.nodes, teacher_plan.candidates | {"student": "baseline_classical"}, "student",
                      teacher_plan.baselines)
        return merged, {**teacher, "evaluate_student": teacher["evaluate_baseline_classical"]}
    chain, results = runs[trial.number]
    prefix = chain.candidates[chain.deployed].rpartition("/")[0] + "/"  # "trial3/", "blend7/"
    renamed = {name.removeprefix(prefix): res for name, res in results.items() if name.startswith(prefix)}
    candidates = {k: v.removeprefix(prefix) for k, v in chain.candidates.items()}
    merged = Plan(teacher_plan.nodes + chain.nodes, teacher_plan.candidates | candidates, chain.deployed,
                  teacher_plan.baselines)
    shared = {name: res for name, res in results.items() if "/" not in name}  # e.g. the transfer set
    return merged, {**teacher, **shared, **renamed}


def search_report(result: SearchResult, spec: OrderSpec, folder: Path,
                  results: dict[str, NodeResult] | None = None) -> list[str]:
    from ..compress.search import front_table

    targets = targets_of(spec, results)
    png = plot_front(result, folder / "pareto.png", targets, title=f"{spec.name}: recipe search")
    lines = ["## Recipe search", "",
             f"{len(result.trials)} trials (stopped by {result.stopped_by}); objectives: accuracy on the validation "
             "split and its ratio to the fp32 teacher's there (what the search chooses by, so the test split stays a "
             "held-out check of the choice; test accuracy beside), ONNX file size, batch-1 p50 latency (1 thread).",
             "",
             front_table(result), ""]
    if result.chosen is not None:
        number = "the baseline" if result.chosen.number == BASELINE_TRIAL else f"trial {result.chosen.number}"
        lines += [f"Chosen: {number}, {margin_reason(result.chosen, targets, result.baseline)}.", ""]
    return lines + [f"![Pareto front]({png.name})", ""]
