"""Run an order end to end: ingest -> plan -> stages -> targets -> registry -> report."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import registry, tasks
from ..compress.search import SearchResult, infeasible_message
from ..config import settings
from ..data import versions
from ..data.versions import DatasetRef
from ..errors import MFError
from ..registry.card import model_card
from ..report import metrics_table, ratios
from ..store import Order, session, utcnow
from .planner import Plan, plan, teacher_plan
from .runner import NodeResult, Reporter, run_plan
from .spec import OrderSpec
from .trials import chosen_plan, recipe_from, run_search, search_report, targets_of


@dataclass
class OrderResult:
    order_id: int
    dataset: DatasetRef
    model: registry.ModelRef
    metrics: dict[str, dict]
    targets_met: dict[str, bool]
    deployed: bool
    report_path: Path
    results: dict[str, NodeResult] = field(default_factory=dict)
    candidates: dict[str, str] = field(default_factory=dict)  # report name -> node with its ONNX dir
    searched: SearchResult | None = None

    @property
    def missed(self) -> list[str]:
        return [k for k, ok in self.targets_met.items() if not ok]


def ingest(spec: OrderSpec, skip_bad_rows: bool = False) -> DatasetRef:
    if spec.data.dataset:
        return versions.training_view(versions.resolve(spec.data.dataset),
                                      use_pseudo_labels=spec.data.use_pseudo_labels,
                                      min_confidence=spec.data.min_confidence)
    task = tasks.get(spec.task)
    roles = task.data_roles(spec.data.columns(), Path(spec.data.path))
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(spec.data.path).name.split(".")[0].lower()).strip("-") or spec.name
    if versions.owner(name) not in (None, spec.tenant):  # another tenant's file had the same name
        name = f"{spec.tenant}.{name}"
    return versions.add_file(name, spec.data.path, roles, skip_bad_rows=skip_bad_rows or spec.data.skip_bad_rows,
                             checks=task.row_checks(), tenant=spec.tenant)


def label_sources_text(sources: dict[str, int]) -> str:
    total = sum(sources.values()) or 1
    return ", ".join(f"{k} {n} ({n / total:.0%})" for k, n in sources.items())


def check_targets(spec: OrderSpec, metrics: dict[str, dict], deployed: str,
                  baselines: dict[str, dict] | None = None) -> dict[str, bool]:
    t, m = spec.targets, metrics[deployed]
    met: dict[str, bool] = {}
    if t.beat_baseline and (baselines or {}).get("classical"):
        met["beat_baseline"] = m["accuracy"] >= baselines["classical"]["accuracy"]
    if t.min_accuracy_ratio is not None:
        met["min_accuracy_ratio"] = m["accuracy"] / metrics["teacher"]["accuracy"] >= t.min_accuracy_ratio
    if t.max_latency_ms is not None:
        met["max_latency_ms"] = m["latency_ms_p50"] <= t.max_latency_ms
    if t.max_size_mb is not None:
        met["max_size_mb"] = m["size_bytes"] / 1e6 <= t.max_size_mb
    q = ratios(metrics, deployed, teacher="teacher_int8")  # none without an INT8 teacher: a relative target misses
    if t.min_size_reduction is not None:
        met["min_size_reduction"] = bool(q) and q["size_reduction"] >= t.min_size_reduction
    if t.min_speedup is not None:
        met["min_speedup"] = bool(q) and q["latency_speedup"] >= t.min_speedup
    return met


def target_detail(spec: OrderSpec, metrics: dict[str, dict], deployed: str, key: str) -> str:
    """What a relative target asked and what the deployed model measured, e.g. ' (≥ 10x smaller than the
    INT8 teacher's 22.9 MB; 13.2x)': the bar in the units a reader checks it in."""
    q = ratios(metrics, deployed, teacher="teacher_int8")
    if not q:
        return ""
    int8 = metrics["teacher_int8"]
    if key == "min_size_reduction":
        return (f" (≥ {spec.targets.min_size_reduction:g}x smaller than the INT8 teacher's "
                f"{int8['size_bytes'] / 1e6:.1f} MB; {q['size_reduction']:.1f}x)")
    if key == "min_speedup":
        return (f" (≥ {spec.targets.min_speedup:g}x faster than the INT8 teacher's {int8['latency_ms_p50']:.2f} ms "
                f"at batch 1; {q['latency_speedup']:.1f}x)")
    return ""


def open_order(spec: OrderSpec) -> int:
    """The order's row, running from now on; its id names the order everywhere (jobs, lineage, report)."""
    with session() as s:
        order = Order(name=spec.name, tenant=spec.tenant, spec=spec.model_dump(mode="json"), state="running")
        s.add(order)
        s.flush()
        return order.id


def run_order(spec: OrderSpec, *, reporter: Reporter | None = None, skip_bad_rows: bool = False,
              on_ingest=None) -> OrderResult:
    order_id = open_order(spec)
    try:
        dataset = ingest(spec, skip_bad_rows)
        if on_ingest:
            on_ingest(dataset)
    except BaseException as e:
        fail_order(order_id, e)
        raise
    return execute_order(spec, order_id, dataset, reporter=reporter)


def execute_order(spec: OrderSpec, order_id: int, dataset: DatasetRef, *, reporter: Reporter | None = None,
                  should_stop=lambda: False, retried: bool = False) -> OrderResult:
    """Run an opened order's stages (its fixed recipe, or the teacher then the recipe search) and register it.
    An error closes the order as failed, unless `retried` (a pool job, whose next attempt may still finish it:
    the pool closes the order when the job fails for good), except a search that met no target, which no retry
    changes; StopRequested (preemption on the pool) leaves it open, and the next attempt finds every finished
    stage in the cache and the interrupted one's checkpoint."""
    from ..train.loop import StopRequested

    try:
        searched = None
        if spec.searched() is None:
            the_plan = plan(spec, dataset.artifact_id)
            results = run_plan(the_plan, order_id=order_id, reporter=reporter, should_stop=should_stop)
        else:
            tplan = teacher_plan(spec, dataset.artifact_id)
            teacher = run_plan(tplan, order_id=order_id, reporter=reporter, should_stop=should_stop)
            searched, runs = run_search(spec, teacher, order_id=order_id, reporter=reporter,
                                        should_stop=should_stop)
            if searched.chosen is None:
                report = _write_report(spec, order_id, dataset, teacher, _metrics(tplan, teacher), {}, None,
                                       "teacher", False, searched, _baselines(tplan, teacher))
                raise MFError(f"{infeasible_message(searched, targets_of(spec, teacher))} (report: {report})",
                              exit_code=3)
            the_plan, results = chosen_plan(spec, tplan, runs, searched.chosen, teacher)
    except StopRequested:
        raise
    except BaseException as e:
        if not retried or getattr(e, "exit_code", 0) == 3:
            fail_order(order_id, e)
        raise
    return finish_order(spec, order_id, dataset, the_plan, results, searched)


def finish_order(spec: OrderSpec, order_id: int, dataset: DatasetRef, the_plan: Plan,
                 results: dict[str, NodeResult], searched: SearchResult | None = None) -> OrderResult:
    """Register an order's results and close it: after run_order ran its stages, or after the compute pool ran
    them as jobs. The Order row must exist."""
    try:
        result = _register(spec, order_id, dataset, the_plan, results, searched)
    except BaseException as e:
        fail_order(order_id, e)
        raise
    _close(order_id, result)
    return result


def fail_order(order_id: int, error: BaseException | str) -> None:
    """Close an order as failed (or infeasible, for exit code 3) with the first line of its error."""
    message = str(error)
    with session() as s:
        o = s.get(Order, order_id)
        o.state = "infeasible" if getattr(error, "exit_code", 0) == 3 else "failed"
        o.error = message.splitlines()[0] if message else type(error).__name__
        o.finished = utcnow()


def _close(order_id: int, result: OrderResult) -> None:
    with session() as s:
        o = s.get(Order, order_id)
        o.state = "done" if not result.missed else "missed_targets"
        o.report_path, o.finished = str(result.report_path), utcnow()


def _metrics(the_plan: Plan, results: dict[str, NodeResult]) -> dict[str, dict]:
    return {cand: results[f"evaluate_{cand}"].artifact.metrics for cand in the_plan.candidates}


def _baselines(the_plan: Plan, results: dict[str, NodeResult]) -> dict[str, dict]:
    return {name: results[node].artifact.metrics for name, node in the_plan.baselines.items() if node in results}


BASELINE_TITLES = {"majority": "baseline: majority class", "classical": "baseline: classical"}


def baseline_lines(metrics: dict[str, dict], baselines: dict[str, dict], deployed: str,
                   teacher: dict | None, spec_targets_set: bool = False) -> list[str]:
    """Plain sentences on whether the deep models earned their cost against what a practitioner tries first."""
    lines = []
    if teacher and teacher.get("collapsed"):
        lines.append(f"**The teacher did not learn**: after {len(teacher.get('attempts', []))} attempts its best "
                     f"validation macro-F1 was {teacher['val_macro_f1']:.3f}, no better than always answering the "
                     f"majority class ({teacher['majority_val_macro_f1']:.3f}). Students distilled from it inherit "
                     "that; the classical baseline does not.")
    major, classical = baselines.get("majority"), baselines.get("classical")
    t = metrics.get("teacher")
    if t and major:
        lines.append(f"The teacher's test accuracy is {t['accuracy']:.4f} against {major['accuracy']:.4f} for "
                     f"always answering '{major.get('predicts')}'.")
    if classical and t:
        verdict = "beats" if t["accuracy"] > classical["accuracy"] else "does **not** beat"
        lines.append(f"The teacher {verdict} the classical baseline ({t['accuracy']:.4f} vs "
                     f"{classical['accuracy']:.4f}).")
    d = metrics.get(deployed)
    if classical and d and deployed != "teacher":
        if d == classical:
            lines.append(f"The deployed `{deployed}` **is the classical baseline** ({d['accuracy']:.4f}): no "
                         "distilled student met the targets as cheaply, so the simple model ships.")
        elif d["accuracy"] >= classical["accuracy"]:
            lines.append(f"The deployed `{deployed}` is at least as accurate as the classical baseline "
                         f"({d['accuracy']:.4f} vs {classical['accuracy']:.4f}).")
        else:
            why = ("it was chosen as meeting the targets (the recipe search section says why this one)"
                   if spec_targets_set else
                   "no targets were set, so the fastest model of the Pareto front was chosen")
            lines.append(f"The deployed `{deployed}` is **less accurate than the classical baseline** "
                         f"({d['accuracy']:.4f} vs {classical['accuracy']:.4f}): {why}; "
                         "`targets: {beat_baseline: true}` makes matching the baseline a target.")
    return lines


def _register(spec: OrderSpec, order_id: int, dataset: DatasetRef, the_plan: Plan,
              results: dict[str, NodeResult], searched: SearchResult | None) -> OrderResult:
    metrics = _metrics(the_plan, results)
    baselines = _baselines(the_plan, results)
    deployed = the_plan.deployed
    targets_met = check_targets(spec, metrics, deployed, baselines)
    deploy = spec.deploy and all(targets_met.values())
    split = results["split"].artifact
    lineage: dict[str, Any] = {
        "order": order_id, "order_name": spec.name, "tenant": spec.tenant,
        "dataset": str(dataset), "dataset_artifact": dataset.artifact_id, "split": split.id,
        "teacher_base": spec.teacher.model, "teacher": results["teacher"].artifact.id,
        "pipeline": tasks.get(spec.task).pipeline,
    }
    if dataset.label_sources:
        lineage["label_sources"] = dataset.label_sources
    if "student" in results:  # the compress pipeline: the recipe that made the student (a blend: its members')
        chosen = searched.chosen if searched else None
        if chosen and "recipe" in chosen.extra:
            recipe = chosen.extra["recipe"]
        else:
            steps = recipe_from(spec, chosen.params) if chosen else spec.steps()
            recipe = [step.model_dump(mode="json", exclude_none=True) for step in steps]
        lineage |= {"recipe": recipe, "student": results["student"].artifact.id}
    elif the_plan.candidates.get("student") == "baseline_classical":  # the search found nothing better
        lineage["recipe"] = [{"baseline": tasks.get(spec.task).baseline_student()}]
    lineage["deployed"] = results[the_plan.candidates[deployed]].artifact.id
    labels = split.manifest.get("labels", [])

    def card(name: str, version: int) -> str:
        return model_card(name, version, task=spec.task, labels=labels, metrics=metrics, lineage=lineage,
                          targets=spec.targets.model_dump(exclude_none=True), targets_met=targets_met,
                          deployed=deployed)

    ref = registry.register(name=spec.name, tenant=spec.tenant, task=spec.task,
                            artifact_id=results[the_plan.candidates[deployed]].artifact.id,
                            metrics={**metrics, "deployed": deployed, "ratios": ratios(metrics, deployed),
                                     **({"baselines": baselines} if baselines else {})},
                            lineage=lineage, card_fn=card, order_id=order_id,
                            aliases=("prod",) if deploy else ())
    report_path = _write_report(spec, order_id, dataset, results, metrics, targets_met, ref, deployed, deploy,
                                searched, baselines)
    return OrderResult(order_id, dataset, ref, metrics, targets_met, deploy, report_path, results,
                       the_plan.candidates, searched)


TRANSFER_SOURCES = {"train": "training rows", "unlabeled": "the dataset's unlabeled rows",
                    "left_out": "rows the split left out (`split.train_rows` cut, `split.max_rows` sample; their "
                                "labels unread)",
                    "augmented": "augmented copies"}


def transfer_text(m: dict[str, Any]) -> str:
    """What the students learned the teacher from, row counts by source: real inputs teach more than copies."""
    parts = [f"{m[f'{k}_rows']:,} {what}" for k, what in TRANSFER_SOURCES.items() if m.get(f"{k}_rows")]
    return (f"Students distil over a transfer set of {m.get('rows', 0):,} rows labeled by the teacher: "
            f"{', '.join(parts)}" + (f" ({m['copies']} per training row)" if m.get("augmented_rows") else "") + ".")


def _write_report(spec: OrderSpec, order_id: int, dataset: DatasetRef, results: dict[str, NodeResult],
                  metrics: dict[str, dict], targets_met: dict[str, bool], ref: registry.ModelRef | None,
                  deployed: str, deploy: bool, searched: SearchResult | None = None,
                  baselines: dict[str, dict] | None = None) -> Path:
    folder = settings().orders / str(order_id)
    folder.mkdir(parents=True, exist_ok=True)
    r = ratios(metrics, deployed)
    lines = [f"# Order {order_id}: {spec.name}", "",
             f"Task `{spec.task}` on dataset `{dataset}` ({dataset.n_rows} rows) for tenant `{spec.tenant}`.", "",
             *([f"Training labels by source: {label_sources_text(dataset.label_sources)}"
                + (" (teacher pseudo-labels" + (f" with confidence ≥ {spec.data.min_confidence:g}"
                                                if spec.data.min_confidence is not None else "") + ")"
                   if spec.data.use_pseudo_labels else "") + ".", ""]
               if dataset.label_sources else []),
             *([transfer_text(results["transfer"].artifact.metrics), ""] if "transfer" in results else []),
             "## Stages", "", "| stage | artifact | |", "|---|---|---|"]
    for name, res in results.items():
        how = "cache hit" if res.cached else (f"resumed from step {res.resumed_from_step}"
                                              if res.resumed_from_step else "ran")
        lines.append(f"| {name} | `{res.artifact.id[:12]}` | {how} |")
    baselines = baselines or {}
    shown = {**metrics, **{BASELINE_TITLES.get(k, k): v for k, v in baselines.items()}}
    lines += ["", "## Test-split evaluation", "", metrics_table(shown), ""]
    teacher_fit = results["teacher"].artifact.metrics if "teacher" in results else None
    lines += [*baseline_lines(metrics, baselines, deployed, teacher_fit,
                              bool(spec.targets.model_dump(exclude_defaults=True))), ""]
    if r:
        q = ratios(metrics, deployed, teacher="teacher_int8") if deployed != "teacher_int8" else {}
        lines.append(f"Deployed `{deployed}` keeps **{r['accuracy_ratio']:.1%}** of the teacher's accuracy at "
                     f"**{r['size_reduction']:.1f}x** smaller and **{r['latency_speedup']:.1f}x** faster (batch 1)"
                     + (f"; against the teacher simply quantized to INT8, **{q['size_reduction']:.1f}x** smaller "
                        f"and **{q['latency_speedup']:.1f}x** faster." if q else "."))
    base, adapter = metrics.get("base", {}), metrics.get(deployed, {})
    if deployed != "base" and "perplexity" in base and "perplexity" in adapter:
        lines.append(f"The adapter takes held-out perplexity from **{base['perplexity']:.2f}** (the base alone) to "
                     f"**{adapter['perplexity']:.2f}** on the same {adapter.get('eval_tokens', 0)} answer tokens; it "
                     f"is {results['teacher'].artifact.metrics.get('size_bytes', 0) / 1e6:.2f} MB beside the "
                     f"shared base.")
    if searched is not None:
        lines += [""] + search_report(searched, spec, folder, results)
    lines += ["", "## Targets", ""]
    lines += [f"- {k}{target_detail(spec, metrics, deployed, k)}: {'met' if ok else '**missed**'}"
              for k, ok in targets_met.items()] or ["- none set"]
    if ref is None:
        lines += ["", "**No recipe met every target: nothing was registered.** "
                      + infeasible_message(searched, targets_of(spec, results)) if searched else ""]
    else:
        lines += ["", f"Registered as **{ref}**" + (" and promoted to `prod`." if deploy else " (not promoted).")]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
