"""Scheduler policies replayed on job traces: FIFO vs priority+backfilling vs weighted fair share (DRF) with
backfilling and preemption, through the same `Policy` objects the live scheduler runs.

By default it replays synthetic Helios-like traces (see `modelfactory/compute/traces.py` for the published Helios
figures they follow) at an offered load of 90% on 8 nodes x 8 GPUs x 64 CPUs, over several seeds, plus one trace
with a mix of priority classes; `--helios cluster_log.csv` and `--philly cluster_job_log` add real traces. It
writes bench/results/scheduler.{json,md} (+ scheduler_jct.png) and checks the issue's goal on every synthetic
seed: fair share + backfilling's average JCT at most half FIFO's, at an offered load of at least 90% and a measured
utilisation of at least 0.85, with no tenant below 80% of its share. A last row replays `fair` without its
starving-job rule (the policy before issue 19), for comparison.

    .venv/bin/python bench/scheduler.py [--seeds 0 1 2] [--jobs 2000] [--helios PATH] [--philly PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from modelfactory.compute import policies
from modelfactory.compute.simulate import SimResult, simulate
from modelfactory.compute.traces import (
    TraceJob,
    default_pool,
    describe_trace,
    read_helios,
    read_philly,
    synthetic_helios,
)

RESULTS = Path(__file__).parent / "results"
CLASS_MIX = {"urgent": 0.1, "standard": 0.6, "batch": 0.3}  # ours, to exercise class preemption


@dataclass(frozen=True)
class Run:
    """One row of a table: a policy and how the simulator feeds it."""

    label: str
    policy: str
    estimates: str = "exact"
    params: tuple[tuple[str, float], ...] = ()  # policy parameters besides min_runtime


# the last row is `fair` as it was before issue 19: no starving-job rule (a job is never starving)
WITHOUT_STARVING = "fair, no starving-job rule"
RUNS = [Run("fifo", "fifo"), Run("priority", "priority"), Run("fair", "fair"),
        Run("fair, no runtime estimates", "fair", "none"),
        Run(WITHOUT_STARVING, "fair", params=(("patience", math.inf),))]
UTILISATION_GOAL = 0.85  # measured, over the arrival window


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def replay(name: str, trace: list[TraceJob], args: argparse.Namespace, synthetic: bool) -> dict:
    pool = default_pool(nodes=args.nodes)
    results: dict[str, SimResult] = {}
    for run in RUNS:
        policy = policies.get(run.policy, min_runtime=args.min_runtime, **dict(run.params))
        results[run.label] = simulate(trace, policy, pool=pool, checkpoint_interval=args.checkpoint,
                                      estimates=run.estimates)
        r = results[run.label]
        print(f"  {name:<28} {run.label:<28} avg JCT {hours(r.avg_jct_s):>8} h  p99 {hours(r.p99_jct_s):>7} h  "
              f"util {r.utilisation:.2f}  Jain {r.jain:.3f}  min share {r.min_share_ratio:.2f}  "
              f"preempt {r.preemptions:>4}  ({r.wall_s:.1f} s)", flush=True)
    entry = {"trace": name, "synthetic": synthetic, "shape": describe_trace(trace, pool),
             "results": {label: r.summary() for label, r in results.items()}}
    if synthetic:
        entry["goal"] = goal(results)
    entry["_jcts"] = {label: sorted(j.jct for j in r.job_results) for label, r in results.items()}
    return entry


def goal(results: dict[str, SimResult]) -> dict:
    """The issue's goal: fair's average JCT <= FIFO's / 2 at an offered load >= 90% with a measured utilisation
    >= 0.85, no tenant below 80% of its share (checked on share_ratio, entitlement to the whole pool; alloc_ratio
    is shown alongside)."""
    fifo, fair = results["fifo"], results["fair"]
    speedup = fifo.avg_jct_s / fair.avg_jct_s if fair.avg_jct_s > 0 else math.inf
    checks = {"speedup": speedup, "speedup_ok": speedup >= 2.0,
              "offered_load": fair.offered_load, "load_ok": fair.offered_load >= 0.9 - 1e-9,
              "utilisation": fair.utilisation, "util_ok": fair.utilisation >= UTILISATION_GOAL,
              "min_share_ratio": fair.min_share_ratio, "share_ok": fair.min_share_ratio >= 0.8,
              "min_alloc_ratio": fair.min_alloc_ratio}
    checks["met"] = checks["speedup_ok"] and checks["load_ok"] and checks["util_ok"] and checks["share_ok"]
    return checks


def table(entry: dict) -> list[str]:
    lines = ["| policy | avg JCT (h) | p99 JCT (h) | avg queueing (h) | utilisation | util. (makespan) | Jain | "
             "min tenant share / entitled | (of allocated) | preemptions | GPU-h lost |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in entry["results"].items():
        lines.append(f"| {label} | {hours(r['avg_jct_s'])} | {hours(r['p99_jct_s'])} | {hours(r['avg_queue_s'])} | "
                     f"{r['utilisation']:.3f} | {r['utilisation_makespan']:.3f} | {r['jain']:.3f} | "
                     f"{r['min_share_ratio']:.2f} | {r['min_alloc_ratio']:.2f} | {r['preemptions']} | "
                     f"{r['lost_gpu_s'] / 3600:.1f} |")
    return lines


def tenant_table(entry: dict) -> list[str]:
    lines = ["| tenant | jobs | " + " | ".join(f"{label}: avg JCT (h) / share / entitled / ratio"
                                                for label in ("fifo", "priority", "fair"))
             + " | fair: unmet entitlement while a gang was queued |", "|---|---|---|---|---|---|"]
    by = {label: {t["name"]: t for t in entry["results"][label]["tenants"]} for label in ("fifo", "priority", "fair")}
    for name, t in by["fair"].items():
        cells = [f"{hours(by[label][name]['avg_jct_s'])} / {by[label][name]['share']:.3f} / "
                 f"{by[label][name]['entitled']:.3f} / {by[label][name]['share_ratio']:.2f}" for label in by]
        lines.append(f"| {name} | {t['jobs']} | " + " | ".join(cells) + f" | {t['gang_shortfall']:.0%} |")
    return lines


def shape_line(shape: dict) -> str:
    return (f"{shape['jobs']} jobs; {shape['one_gpu_share']:.0%} use 1 GPU, mean {shape['mean_gpus']:.2f} GPUs, "
            f"largest {shape['max_gpus']:g}; run time median {shape['median_duration_s']:.0f} s, mean "
            f"{shape['mean_duration_s']:.0f} s; offered load {shape['offered_load']:.2f} over "
            f"{shape['arrival_window_s'] / 86400:.1f} days; tenants' shares of submitted GPU time: "
            + ", ".join(f"{t} {w:.0%}" for t, w in shape["tenant_work_share"].items()))


def markdown(entries: list[dict], args: argparse.Namespace, stamp: str) -> str:
    md = ["# Scheduler benchmark: trace replay", "",
          f"Measured {stamp} by `bench/scheduler.py` on a simulated pool of {args.nodes} nodes x 8 GPUs x 64 CPUs; "
          f"jobs are preempted no sooner than {args.min_runtime:g} s after they start and lose the work since "
          f"their last checkpoint (every {args.checkpoint:g} s). Policies get each job's exact remaining run time as "
          "its expected duration, except in the row 'no runtime estimates'.", "",
          "Definitions (see `modelfactory/compute/simulate.py`): JCT = finish - submit; queueing = JCT - time "
          "running; utilisation = busy GPU-time / pool GPU-time over the arrival window (first to last "
          "submission; comparable to the offered load), and over the makespan; a tenant's share ratio = "
          "time-integrated dominant share it held / time-integrated entitlement (its weighted max-min fair share "
          "of the pool given every tenant's demand at each instant); Jain's index is over those ratios. "
          "'(of allocated)' is the same ratio with entitlements split from the GPUs actually allocated at each "
          "instant, which separates fairness from packing.", ""]
    synthetic = [e for e in entries if e.get("goal")]
    if synthetic:
        md += ["## Goal", "", "Fair share + backfilling beats FIFO's average JCT by >= 2x on the synthetic Helios-like "
               f"trace at an offered load of >= 90% and a measured utilisation of >= {UTILISATION_GOAL:.2f}, with no "
               "tenant below 80% of its share.", "",
               "| trace | FIFO / fair avg JCT | offered load | utilisation (fair) | min tenant share / entitled (fair) "
               f"| (of allocated) | met | min share, {WITHOUT_STARVING} |", "|---|---|---|---|---|---|---|---|"]
        for e in synthetic:
            g = e["goal"]
            before = e["results"].get(WITHOUT_STARVING, {}).get("min_share_ratio", math.nan)
            md.append(f"| {e['trace']} | {g['speedup']:.1f}x {'✓' if g['speedup_ok'] else '✗'} | "
                      f"{g['offered_load']:.2f} {'✓' if g['load_ok'] else '✗'} | {g['utilisation']:.3f} "
                      f"{'✓' if g['util_ok'] else '✗'} | {g['min_share_ratio']:.2f} "
                      f"{'✓' if g['share_ok'] else '✗'} | {g['min_alloc_ratio']:.2f} | "
                      f"{'yes' if g['met'] else 'no'} | {before:.2f} |")
        md += ["", verdict(synthetic), ""]
    for e in entries:
        md += [f"## {e['trace']}", "", shape_line(e["shape"]), ""] + table(e) + [""] + tenant_table(e) + [""]
    return "\n".join(md) + "\n"


def span(values: list[float], fmt: str = ".2f") -> str:
    """'a-b' for the smallest and largest of `values` (one figure when they agree)."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def verdict(synthetic: list[dict]) -> str:
    fast = all(e["goal"]["speedup_ok"] and e["goal"]["load_ok"] for e in synthetic)
    busy = all(e["goal"]["util_ok"] for e in synthetic)
    fair = all(e["goal"]["share_ok"] for e in synthetic)
    res = [e["results"] for e in synthetic]
    parts = []
    if fast:
        parts.append(f"FIFO / fair average JCT is {span([e['goal']['speedup'] for e in synthetic], '.1f')}x: "
                     "FIFO's head-of-line blocking keeps the pool only "
                     f"{span([r['fifo']['utilisation'] for r in res])} busy during the arrival window at 90% offered "
                     "load, so its queue grows for the whole trace.")
    parts.append(f"The measured utilisation under `fair` is {span([r['fair']['utilisation'] for r in res], '.3f')} "
                 f"(goal >= {UTILISATION_GOAL:.2f}; the backlog left at the last arrival drains after it), and the "
                 f"least-served tenant gets {span([r['fair']['min_share_ratio'] for r in res])} of its entitlement "
                 f"(FIFO {span([r['fifo']['min_share_ratio'] for r in res])}, priority "
                 f"{span([r['priority']['min_share_ratio'] for r in res])}).")
    if WITHOUT_STARVING in res[0]:
        old = [r[WITHOUT_STARVING] for r in res]
        rule = policies.Fair()
        lows = [min(r["tenants"], key=lambda t: t["share_ratio"]) for r in old]
        parts.append(f"Without the starving-job rule (row '{WITHOUT_STARVING}', the policy before it) the "
                     f"least-served tenant got {span([r['min_share_ratio'] for r in old])}, at a utilisation of "
                     f"{span([r['utilisation'] for r in old], '.3f')}, and "
                     f"{span([t['gang_shortfall'] for t in lows], '.0%')} of what it missed fell while it had a gang "
                     "job (16 or 32 GPUs, a quarter or half of the pool) queued: such a job waited for whole nodes "
                     "to drain behind heavy-tailed jobs of up to 3 days while its tenant's entitlement accrued. With "
                     f"the rule, a large job of a tenant below {rule.starve_below:.0%} of its entitlement that has "
                     f"waited {policies.duration(rule.patience)} goes first and preempts better-served tenants' jobs, "
                     "clearing whole nodes (their gangs once they have run "
                     f"{policies.duration(rule.quantum)} over their tenant's share). The price is preemption: "
                     f"{span([r['fair']['preemptions'] for r in res], 'd')} preemptions and "
                     f"{span([r['fair']['lost_gpu_s'] / 3600 for r in res], '.0f')} GPU-hours of work redone "
                     f"(without the rule {span([r['preemptions'] for r in old], 'd')} and "
                     f"{span([r['lost_gpu_s'] / 3600 for r in old], '.0f')}), "
                     f"{span([r['fair']['lost_gpu_s'] / r['fair']['work_gpu_s'] for r in res], '.1%')} of the work.")
    if fast and busy and fair:
        return "**Goal met on every synthetic trace.** " + " ".join(parts)
    missed = [name for ok, name in ((fast, "JCT"), (busy, "utilisation"), (fair, "fair share")) if not ok]
    return f"**Goal not met** ({', '.join(missed)}). " + " ".join(parts)


SWEEP_PATIENCE = (300.0, 600.0, 1200.0)  # s: Fair.patience values tried by --sweep
SWEEP_QUANTUM = (1800.0, 3600.0, 7200.0)  # s: Fair.quantum values tried by --sweep


def sweep(args: argparse.Namespace) -> dict:
    """`fair` over a grid of (patience, quantum), on the goal's seeds and on held-out seeds, plus the policy
    without its starving-job rule: whether the goal holds for the rule rather than for its two numbers."""
    pool = default_pool(nodes=args.nodes)
    traces = {s: synthetic_helios(args.jobs, args.tenants, s, args.load, pool) for s in args.sweep_seeds}
    fifo = {s: simulate(t, policies.get("fifo"), pool=pool, checkpoint_interval=args.checkpoint).avg_jct_s
            for s, t in traces.items()}
    rows = []
    grid = [(p, q) for p in args.sweep_patience for q in args.sweep_quantum]
    for patience, quantum in [(math.inf, math.inf)] + grid:
        per_seed = {}
        for s, trace in traces.items():
            policy = policies.get("fair", min_runtime=args.min_runtime, patience=patience, quantum=quantum)
            r = simulate(trace, policy, pool=pool, checkpoint_interval=args.checkpoint)
            per_seed[s] = {"min_share_ratio": r.min_share_ratio, "utilisation": r.utilisation,
                           "speedup": fifo[s] / r.avg_jct_s, "preemptions": r.preemptions,
                           "lost_gpu_h": r.lost_gpu_s / 3600}
        rows.append({"patience_s": None if math.isinf(patience) else patience,
                     "quantum_s": None if math.isinf(quantum) else quantum, "per_seed": per_seed})
        print(f"  sweep patience {patience:g} s, quantum {quantum:g} s: min share "
              + " ".join(f"{v['min_share_ratio']:.2f}" for v in per_seed.values()), flush=True)
    return {"seeds": list(traces), "goal_seeds": list(args.seeds), "rows": rows}


def sweep_table(result: dict) -> list[str]:
    goal = [s for s in result["seeds"] if s in result["goal_seeds"]]
    held = [s for s in result["seeds"] if s not in result["goal_seeds"]]
    default = policies.Fair()
    lines = ["## Patience and quantum", "",
             f"`fair` with each (patience, quantum) on the goal's seeds ({', '.join(map(str, goal))}) and on held-out "
             f"seeds ({', '.join(map(str, held)) or 'none'}), same trace shape; the first row is `fair` without "
             f"the starving-job rule. Defaults: patience {default.patience:g} s, quantum {default.quantum:g} s.", "",
             "| patience (s) | quantum (s) | min share / entitled, goal seeds | min share / entitled, held-out seeds "
             "| utilisation, all seeds | FIFO / fair avg JCT, all seeds | preemptions | GPU-h lost |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        runs = row["per_seed"]

        def low(seeds: list, runs: dict = runs) -> str:
            return f"{min(runs[s]['min_share_ratio'] for s in seeds):.2f}" if seeds else "-"

        every = list(runs.values())
        name = ("no starving-job rule", "") if row["patience_s"] is None else (f"{row['patience_s']:g}",
                                                                               f"{row['quantum_s']:g}")
        util, speed = span([v["utilisation"] for v in every], ".3f"), span([v["speedup"] for v in every], ".1f")
        pre, lost = span([v["preemptions"] for v in every], "d"), span([v["lost_gpu_h"] for v in every], ".0f")
        lines.append(f"| {name[0]} | {name[1]} | {low(goal)} | {low(held)} | {util} | {speed}x | {pre} | {lost} |")
    return lines


def plot(entries: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    entry = entries[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, jcts in entry["_jcts"].items():
        ys = [(i + 1) / len(jcts) for i in range(len(jcts))]
        ax.plot([max(j, 1.0) / 3600 for j in jcts], ys, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (h, log)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"JCT CDF, {entry['trace']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--load", type=float, default=0.9, help="offered load of the synthetic traces")
    ap.add_argument("--nodes", type=int, default=8, help="8-GPU nodes in the pool")
    ap.add_argument("--min-runtime", type=float, default=600.0, help="s a job runs before it may be preempted")
    ap.add_argument("--checkpoint", type=float, default=300.0, help="s between a job's checkpoints")
    ap.add_argument("--helios", type=Path, help="a Helios cluster_log.csv to replay as well")
    ap.add_argument("--philly", type=Path, help="a Philly cluster_job_log (JSON) to replay as well")
    ap.add_argument("--max-jobs", type=int, default=5000, help="first N jobs of a real trace")
    ap.add_argument("--no-classes", action="store_true", help="skip the trace with mixed priority classes")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write scheduler.{json,md,_jct.png}")
    ap.add_argument("--sweep", action="store_true",
                    help="replay fair over a grid of (patience, quantum) instead: scheduler_sweep.{json,md}")
    ap.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6],
                    help="seeds of the sweep (those not in --seeds are held out)")
    ap.add_argument("--sweep-patience", type=float, nargs="+", default=list(SWEEP_PATIENCE))
    ap.add_argument("--sweep-quantum", type=float, nargs="+", default=list(SWEEP_QUANTUM))
    args = ap.parse_args()

    began = time.perf_counter()
    if args.sweep:
        args.out.mkdir(parents=True, exist_ok=True)
        swept = sweep(args)
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        (args.out / "scheduler_sweep.json").write_text(json.dumps({"measured": stamp, **swept}, indent=2) + "\n")
        (args.out / "scheduler_sweep.md").write_text(
            f"# Scheduler benchmark: `fair`'s starving-job rule, parameter sensitivity\n\nMeasured {stamp} by "
            f"`bench/scheduler.py --sweep` ({args.jobs} jobs, {args.nodes} nodes x 8 GPUs, offered load "
            f"{args.load:g}); see scheduler.md for the definitions.\n\n" + "\n".join(sweep_table(swept)) + "\n")
        print(f"wrote {args.out / 'scheduler_sweep.md'} in {time.perf_counter() - began:.0f} s")
        return
    pool = default_pool(nodes=args.nodes)
    entries = []
    for seed in args.seeds:
        trace = synthetic_helios(args.jobs, args.tenants, seed, args.load, pool)
        entries.append(replay(f"helios-like, seed {seed}", trace, args, synthetic=True))
    if not args.no_classes:
        trace = synthetic_helios(args.jobs, args.tenants, args.seeds[0], args.load, pool, priority_mix=CLASS_MIX)
        entries.append(replay(f"helios-like with classes, seed {args.seeds[0]}", trace, args, synthetic=False))
    if args.helios:
        entries.append(replay(f"Helios {args.helios.name}", read_helios(args.helios, limit=args.max_jobs), args,
                              synthetic=False))
    if args.philly:
        entries.append(replay(f"Philly {args.philly.name}", read_philly(args.philly, limit=args.max_jobs), args,
                              synthetic=False))

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    plotted = plot(entries, out / "scheduler_jct.png")
    for e in entries:
        e.pop("_jcts")
    doc = {"benchmark": "scheduler", "measured": stamp, "pool": {"nodes": args.nodes, "gpus_per_node": 8,
                                                                  "cpus_per_node": 64},
           "min_runtime_s": args.min_runtime, "checkpoint_interval_s": args.checkpoint, "traces": entries}
    (out / "scheduler.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    md = markdown(entries, args, stamp)
    if plotted:
        md += f"\n![JCT CDF]({'scheduler_jct.png'})\n"
    (out / "scheduler.md").write_text(md)
    print(f"wrote {out / 'scheduler.md'} and scheduler.json in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
