"""Budgeted multi-objective recipe search (Optuna): maximise accuracy ratio, minimise size and batch-1 latency.

The search knows nothing of stages or tasks: it samples a recipe, hands it to `evaluate` (which the factory
runs through its cached stage runner, so a re-run re-uses finished trials) and keeps the measured objectives.
It returns every trial, the Pareto front and the choice: the fastest, then smallest, front point that meets
every target with room to spare for the validation split's noise (else the baseline measured before the search,
when it meets them, else the fastest meeting them at all) — or none, with the best trade-offs spelled out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    accuracy_ratio: float
    size_mb: float
    latency_ms: float
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. node prefix, recipe
    accuracy: float | None = None

    def dominates(self, other: Trial) -> bool:
        better_eq = (self.accuracy_ratio >= other.accuracy_ratio and self.size_mb <= other.size_mb
                     and self.latency_ms <= other.latency_ms)
        strictly = (self.accuracy_ratio > other.accuracy_ratio or self.size_mb < other.size_mb
                    or self.latency_ms < other.latency_ms)
        return better_eq and strictly


@dataclass
class Targets:
    min_accuracy_ratio: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None  # absolute, e.g. a baseline's accuracy the model must match
    # One standard error of an accuracy measured on the validation split (in accuracy points, and as a ratio to
    # the teacher's): how far above the accuracy targets a choice must be to count as clearing them, not grazing.
    accuracy_margin: float = 0.0
    ratio_margin: float = 0.0

    def met_by(self, t: Trial, *, with_margin: bool = False) -> bool:
        acc_margin, ratio_margin = (self.accuracy_margin, self.ratio_margin) if with_margin else (0.0, 0.0)
        return ((self.min_accuracy is None or (t.accuracy is not None
                                               and t.accuracy >= self.min_accuracy + acc_margin))
                and (self.min_accuracy_ratio is None or t.accuracy_ratio >= self.min_accuracy_ratio + ratio_margin)
                and (self.max_latency_ms is None or t.latency_ms <= self.max_latency_ms)
                and (self.max_size_mb is None or t.size_mb <= self.max_size_mb))


@dataclass
class SearchResult:
    trials: list[Trial]
    front: list[Trial]
    chosen: Trial | None
    stopped_by: str  # "max_trials" | "max_minutes"
    baseline: Trial | None = None  # measured before the search; among `trials` too


def pareto_front(trials: list[Trial]) -> list[Trial]:
    return [t for t in trials if not any(o.dominates(t) for o in trials if o is not t)]


def choose(front: list[Trial], targets: Targets, baseline: Trial | None = None) -> Trial | None:
    """The cheapest (fastest, then smallest) point that meets every target with the accuracy margin to spare;
    if none has that margin, `baseline` when it meets every target, else the cheapest that meets them at all.

    Why the margin: the search compares a dozen candidates on one validation split, and the cheapest one over the
    accuracy bar is often the one whose validation figure the split's noise lifted over it (on 500 rows one
    standard error is ~2 points); it then misses the bar on fresh data about half the time. A candidate that
    clears the bar by a standard error is the safer pick at any price inside the size and latency targets.

    Why the baseline next (the practitioner's first try, e.g. TF-IDF + LR, measured before the search): it is one
    model fixed in advance, so its validation figure carries no winner's curse; a trial that beats it by less than
    the noise - or dominates it by less, which is why it need not be on the front - is no evidence against it."""
    feasible = [t for t in front if targets.met_by(t)]
    sure = [t for t in feasible if targets.met_by(t, with_margin=True)]
    if not sure and baseline is not None and targets.met_by(baseline):
        return baseline
    pool = sure or feasible
    return min(pool, key=lambda t: (t.latency_ms, t.size_mb, -t.accuracy_ratio)) if pool else None


def margin_reason(chosen: Trial, targets: Targets, baseline: Trial | None = None) -> str:
    """Why `chosen` (a `choose` result) was chosen, in a sentence of the report."""
    accuracy_set = targets.min_accuracy is not None or targets.min_accuracy_ratio is not None
    if not accuracy_set or not (targets.accuracy_margin or targets.ratio_margin):
        return "the fastest, then smallest, model meeting every target"
    if targets.met_by(chosen, with_margin=True):
        return ("the fastest, then smallest, model clearing the accuracy targets by one standard error of the "
                f"validation split ({targets.accuracy_margin * 100:.1f} points)")
    if chosen is baseline:
        return ("kept because it meets every target and no trial cleared the accuracy targets by one standard "
                f"error of the validation split ({targets.accuracy_margin * 100:.1f} points) to replace it")
    return ("the fastest, then smallest, model meeting every target: none cleared the accuracy targets by one "
            f"standard error of the validation split ({targets.accuracy_margin * 100:.1f} points)")


def search(space: dict[str, list[Any]], evaluate: Callable[[int, dict[str, Any]], Trial], *, max_trials: int,
           max_minutes: float, seed: int = 0, targets: Targets | None = None,
           baseline: Trial | None = None) -> SearchResult:
    """Run up to `max_trials` trials or until `max_minutes` have passed (a trial in flight finishes).

    The first trial takes each dimension's first choice, so list the baseline first; the next ones take each other
    choice of the first dimension with the rest at their first (for text: one trial per student family), so a small
    budget still measures every family before the sampler narrows in. `baseline` is a candidate measured before the
    search (e.g. the classical baseline): among the trials like any, and what `choose` falls back to first."""
    optuna.logging.set_verbosity(logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(max_trials, 8)))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    # Trial 0 is every dimension's first choice: the order's baseline recipe is always measured, whatever the
    # sampler's random first generation would have picked. Then the leading dimension's other choices.
    varied = [name for name, choices in space.items() if len(choices) > 1]
    first = {f"{name}_idx": 0 for name in varied}
    study.enqueue_trial(first)
    if varied:
        for i in range(1, len(space[varied[0]])):
            study.enqueue_trial({**first, f"{varied[0]}_idx": i})
    trials: list[Trial] = [baseline] if baseline is not None else []
    seen: dict[tuple, Trial] = {}
    deadline = time.monotonic() + max_minutes * 60
    stopped_by = "max_trials"
    for _ in range(max_trials):
        if time.monotonic() >= deadline:
            stopped_by = "max_minutes"
            break
        ot = study.ask()
        params = {name: choices[ot.suggest_int(f"{name}_idx", 0, len(choices) - 1)] if len(choices) > 1
                  else choices[0] for name, choices in space.items()}
        key = tuple(sorted((k, repr(v)) for k, v in params.items()))
        if key in seen:  # the sampler proposed a recipe already measured: tell it the same figures
            t = seen[key]
        else:
            t = evaluate(len(seen), params)
            seen[key] = t
            trials.append(t)
        study.tell(ot, [t.accuracy_ratio, t.size_mb, t.latency_ms])
    front = pareto_front(trials)
    return SearchResult(trials, front, choose(front, targets or Targets(), baseline), stopped_by, baseline)


def infeasible_message(result: SearchResult, targets: Targets) -> str:
    """What the best trade-offs were, in the terms of the targets that could not all be met."""
    ts = result.trials
    parts = []
    if targets.max_latency_ms is not None:
        fast = [t for t in ts if t.latency_ms <= targets.max_latency_ms]
        parts.append(f"best accuracy ratio at ≤{targets.max_latency_ms:g} ms was "
                     f"{max(t.accuracy_ratio for t in fast):.3f}" if fast else
                     f"no recipe ran in ≤{targets.max_latency_ms:g} ms "
                     f"(fastest {min(t.latency_ms for t in ts):.2f} ms)")
    if targets.max_size_mb is not None:
        small = [t for t in ts if t.size_mb <= targets.max_size_mb]
        parts.append(f"best accuracy ratio at ≤{targets.max_size_mb:g} MB was "
                     f"{max(t.accuracy_ratio for t in small):.3f}" if small else
                     f"no recipe fit in ≤{targets.max_size_mb:g} MB (smallest {min(t.size_mb for t in ts):.1f} MB)")
    if targets.min_accuracy is not None:
        good = [t for t in ts if t.accuracy is not None and t.accuracy >= targets.min_accuracy]
        parts.append(f"{len(good)} of {len(ts)} recipes reached the baseline's accuracy of {targets.min_accuracy:.4f}"
                     + ("" if good else f" (best {max((t.accuracy or 0.0) for t in ts):.4f})"))
    if targets.min_accuracy_ratio is not None:
        good = [t for t in ts if t.accuracy_ratio >= targets.min_accuracy_ratio]
        if good:
            best = min(good, key=lambda t: t.latency_ms)
            parts.append(f"at ≥{targets.min_accuracy_ratio:g} the fastest was {best.latency_ms:.2f} ms "
                         f"({best.size_mb:.1f} MB)")
        else:
            parts.append(f"no recipe reached an accuracy ratio of {targets.min_accuracy_ratio:g} "
                         f"(best {max(t.accuracy_ratio for t in ts):.3f})")
    return (f"no recipe met every target in {len(ts)} trials (accuracy as the search measures it, on the validation "
            "split): " + "; ".join(parts))


def front_table(result: SearchResult) -> str:
    rows = ["| trial | recipe | accuracy | accuracy ratio | test accuracy | size (MB) | p50 batch-1 (ms) | on front "
            "| chosen |", "|---|---|---|---|---|---|---|---|---|"]
    front = {id(t) for t in result.front}
    for t in sorted(result.trials, key=lambda t: (-t.accuracy_ratio, t.latency_ms)):
        recipe = ", ".join(f"{k}={v}" for k, v in t.params.items())
        acc = "–" if t.accuracy is None else f"{t.accuracy:.4f}"
        test = t.extra.get("test_accuracy")
        number = t.number if t.number >= 0 else "baseline"
        rows.append(f"| {number} | {recipe} | {acc} | {t.accuracy_ratio:.3f} | "
                    f"{'–' if test is None else f'{test:.4f}'} | {t.size_mb:.3f} | "
                    f"{t.latency_ms:.3f} | {'yes' if id(t) in front else ''} | "
                    f"{'**yes**' if t is result.chosen else ''} |")
    return "\n".join(rows)


def plot_front(result: SearchResult, path: Path, targets: Targets, title: str = "") -> Path:
    """Accuracy ratio vs latency; marker area ∝ file size; the front joined by a line; targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    xs = [t.latency_ms for t in result.trials]
    ys = [t.accuracy_ratio for t in result.trials]
    sizes = [max(20.0, 12.0 * t.size_mb) for t in result.trials]
    ax.scatter(xs, ys, s=sizes, alpha=0.35, color="tab:gray", label="trial (area ∝ MB)")
    front = sorted(result.front, key=lambda t: t.latency_ms)
    ax.plot([t.latency_ms for t in front], [t.accuracy_ratio for t in front], "-o", color="tab:blue",
            label="Pareto front")
    for t in result.trials:
        ax.annotate(f"{t.number}: {t.size_mb:.1f} MB", (t.latency_ms, t.accuracy_ratio), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    if result.chosen:
        ax.scatter([result.chosen.latency_ms], [result.chosen.accuracy_ratio], s=160, facecolors="none",
                   edgecolors="tab:red", linewidths=2, label="chosen")
    if targets.min_accuracy_ratio is not None:
        ax.axhline(targets.min_accuracy_ratio, ls="--", color="tab:green", lw=1, label="target accuracy ratio")
    if targets.max_latency_ms is not None:
        ax.axvline(targets.max_latency_ms, ls="--", color="tab:orange", lw=1, label="target latency")
    ax.set_xlabel("batch-1 p50 latency (ms, 1 thread)")
    ax.set_ylabel("accuracy ratio to fp32 teacher")
    ax.set_title(title or "recipe search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
