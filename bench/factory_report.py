"""What `bench/factory.py` measured, and how each figure is defined (also written into the report).

- **CPU-seconds** are what the usage ledger bills: reserved CPUs x wall time of each job attempt (every stage job
  and search job asks for 1 CPU), all attempts counted (preempted and lost ones too).
- **By stage kind**: a stage job's ledger seconds go to its stage (`finetune_teacher`, `distill`, ...); a search
  order's one job is split by the stage runs it recorded (wall x 1 CPU), its remainder (process start, the search's
  own bookkeeping, registration) is `search job, outside stages`.
- **Teacher fine-tunes**: stage runs of `finetune_teacher` that computed (not cache hits), counted by cache key; a
  run resumed after a preemption continues the same fine-tune. Expected: the distinct (dataset, teacher, split)
  triples of the orders (the split is part of what a teacher is trained on).
- **An order's own student work**: the wall x 1 CPU of the stage runs of its student chain (distil / fit, prune,
  recover, export, quantize and evaluation of each student; for a search order every trial), i.e. excluding the
  shared teacher half (split, fine-tune, teacher export/quantize/evaluation, baselines, transfer set).
- **Overhead** = ledger CPU-seconds of everything / (teacher fine-tune CPU-seconds + the sum of every order's own
  student work). 1.0 would mean nothing ran but teachers and students: no shared evaluation, no repeated work, no
  job start-up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TEACHER_NODES = {"split", "teacher", "export_teacher", "optimize_teacher", "quantize_teacher", "evaluate_teacher",
                 "evaluate_teacher_int8", "evaluate_baseline_majority", "baseline_classical",
                 "evaluate_baseline_classical", "transfer"}
OUTSIDE = "search job, outside stages"


def ts(value: Any) -> float | None:
    """A naive-UTC datetime (or its ISO string) as a POSIX timestamp."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


class LoadSampler:
    """The machine's 1-minute load average and busy share of all CPUs (/proc/stat) while the run goes."""

    def __init__(self):
        self.loads: list[float] = []
        self.first = self._stat()

    @staticmethod
    def _stat() -> tuple[int, int] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def sample(self) -> None:
        self.loads.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        last = self._stat()
        busy = None
        if self.first and last and last[0] > self.first[0]:
            busy = 1 - (last[1] - self.first[1]) / (last[0] - self.first[0])
        loads = self.loads or [os.getloadavg()[0]]
        return {"load1_mean": round(sum(loads) / len(loads), 2), "load1_max": round(max(loads), 2),
                "cpus": os.cpu_count(), "machine_busy_share": None if busy is None else round(busy, 3)}


def read_tables(order_ids: list[int]) -> dict[str, list[dict]]:
    """The orders, their stage runs and the pool's jobs, from the database the run used (MF_* in os.environ)."""
    from sqlalchemy import select

    from modelfactory.compute.tables import Job, JobEvent, pool_read
    from modelfactory.store import Order, StageRun

    with pool_read() as s:
        runs = [{"order": r.order_id, "node": r.node, "stage": r.stage, "key": r.key, "state": r.state,
                 "resumed_from_step": r.resumed_from_step, "started": ts(r.started), "finished": ts(r.finished)}
                for r in s.scalars(select(StageRun).where(StageRun.order_id.in_(order_ids)).order_by(StageRun.id))]
        jobs = [{"id": j.id, "tenant": j.tenant, "order": j.order_id, "kind": j.kind, "name": j.name, "key": j.key,
                 "stage": (j.payload or {}).get("stage"), "priority": j.priority, "state": j.state,
                 "attempts": j.attempts, "submitted": ts(j.submitted), "started": ts(j.started),
                 "finished": ts(j.finished), "depends_on": list(j.depends_on or [])}
                for j in s.scalars(select(Job).order_by(Job.id))]
        orders = [{"order": o.id, "name": o.name, "tenant": o.tenant, "state": o.state, "error": o.error,
                   "created": ts(o.created), "finished": ts(o.finished)}
                  for o in s.scalars(select(Order).where(Order.id.in_(order_ids)))]
        placed = [e.reason for e in s.scalars(select(JobEvent).where(JobEvent.reason.like("%runs on Ray node%")))]
    return {"stage_runs": runs, "jobs": jobs, "orders": orders, "ray_placements": placed}


@dataclass
class Collected:
    specs: list[tuple[dict, str]]
    submitted: list[dict]
    states: dict[int, dict]
    usage: dict[str, dict]
    models: dict[int, dict]
    uploads: dict[str, dict]
    t0: float
    wall_s: float
    submit_s: float
    load: dict[str, Any]
    weights: dict[str, float]
    tables: dict[str, list[dict]] = field(default_factory=dict)


def asdict_sizes(sizes: str) -> dict[str, Any]:
    import factory_orders

    return asdict(factory_orders.SIZES[sizes])


def _wall(run: dict) -> float:
    return max(0.0, (run["finished"] or run["started"]) - run["started"]) if run["started"] else 0.0


def analyse(d: Collected) -> dict[str, Any]:
    runs = [r for r in d.tables["stage_runs"] if r["state"] != "cached"]
    jobs = {j["id"]: j for j in d.tables["jobs"]}
    lines = [{**line, "tenant": t} for t, inv in d.usage.items() for line in inv["lines"]]
    for line in lines:
        line["cpu_s"] = line["cpu_hours"] * 3600
    total = sum(line["cpu_s"] for line in lines)

    by_kind: dict[str, float] = {}
    for line in lines:
        job = jobs.get(line["job"], {})
        if job.get("kind") == "stage":
            by_kind[job["stage"]] = by_kind.get(job["stage"], 0.0) + line["cpu_s"]
        elif job.get("kind") == "order":  # a search order's job: split by the stage runs it recorded
            inside = [r for r in runs if r["order"] == job["order"]
                      and ts(line["started"]) - 1 <= r["started"] <= ts(line["ended"]) + 1]
            for r in inside:
                by_kind[r["stage"]] = by_kind.get(r["stage"], 0.0) + _wall(r)
            by_kind[OUTSIDE] = by_kind.get(OUTSIDE, 0.0) + line["cpu_s"] - sum(_wall(r) for r in inside)
        else:
            by_kind["other"] = by_kind.get("other", 0.0) + line["cpu_s"]

    teacher_runs = [r for r in runs if r["stage"] == "finetune_teacher"]
    teacher_keys = sorted({r["key"] for r in teacher_runs})
    expected = sorted({json.dumps([s["data"]["dataset"], s["teacher"], s["split"]], sort_keys=True)
                       for s, _ in d.specs})
    teacher_s = sum(_wall(r) for r in teacher_runs)
    student = {}
    for o in d.tables["orders"]:
        student[o["order"]] = sum(_wall(r) for r in runs if r["order"] == o["order"]
                                  and r["node"] not in TEACHER_NODES)
    denominator = teacher_s + sum(student.values())

    ends = [o["finished"] for o in d.tables["orders"] if o["finished"]]
    all_closed = all(o["state"] not in ("running",) for o in d.tables["orders"])
    makespan = (max(ends) - d.t0) if ends and all_closed else None
    per_order = [_order_row(d, o, student) for o in sorted(d.tables["orders"], key=lambda o: o["order"])]
    return {
        "makespan_s": None if makespan is None else round(makespan, 1),
        "wall_s": round(d.wall_s, 1), "submit_s": round(d.submit_s, 1), "load": d.load,
        "orders_total": len(per_order), "orders_closed": sum(o["state"] != "running" for o in per_order),
        "orders_done": sum(o["state"] == "done" for o in per_order),
        "orders_missed_targets": sum(o["state"] in ("missed_targets", "infeasible") for o in per_order),
        "orders_failed": sum(o["state"] in ("failed", "cancelled") for o in per_order),
        "cpu_s_total": round(total, 1),
        "cpu_s_by_stage_kind": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "cpu_s_by_outcome": _sum_by(lines, "outcome"),
        "teacher_finetunes": {"runs": len(teacher_runs), "distinct_keys": len(teacher_keys),
                              "resumed_runs": sum(bool(r["resumed_from_step"]) for r in teacher_runs),
                              "expected_pairs": len(expected), "cpu_s": round(teacher_s, 1),
                              "repeated": len(teacher_runs) - sum(bool(r["resumed_from_step"]) for r in teacher_runs)
                              - len(teacher_keys)},
        "student_cpu_s": round(sum(student.values()), 1),
        "overhead": round(total / denominator, 3) if denominator else None,
        "tenants": _tenants(d, lines), "ray_nodes": _ray_nodes(d.tables.get("ray_placements") or []),
        "orders": per_order, "uploads": d.uploads,
        "timeline": [{**r, "t0": round(r["started"] - d.t0, 1), "t1": round((r["finished"] or r["started"]) - d.t0, 1)}
                     for r in runs],
        "order_finish": {o["order"]: None if o["finished"] is None else round(o["finished"] - d.t0, 1)
                         for o in d.tables["orders"]},
    }


def _ray_nodes(reasons: list[str]) -> dict[str, int]:
    """Job attempts per Ray node (`MF_EXECUTOR=ray`: each attempt notes its node in the job's history)."""
    import re

    out: dict[str, int] = {}
    for reason in reasons:
        if m := re.search(r"runs on Ray node ([0-9a-f]+)", reason):
            out[m[1][:12]] = out.get(m[1][:12], 0) + 1
    return out


def _sum_by(lines: list[dict], key: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in lines:
        out[line[key]] = round(out.get(line[key], 0.0) + line["cpu_s"], 1)
    return out


def _tenants(d: Collected, lines: list[dict]) -> dict[str, dict]:
    """Ledger CPU-hours per tenant against its weight; and the share while both still had unfinished jobs."""
    total_w = sum(d.weights.values())
    last = {t: max((j["finished"] or time.time()) for j in d.tables["jobs"] if j["tenant"] == t)
            for t in d.weights if any(j["tenant"] == t for j in d.tables["jobs"])}
    both_until = min(last.values()) if len(last) == len(d.weights) else d.t0
    contended = _cpu_inside(d, lines, [(d.t0, both_until)])
    all_s = sum(line["cpu_s"] for line in lines) or 1.0
    cont_all = sum(contended.values()) or 1.0
    queued_windows = _both_waiting(d, lines)
    queued = _cpu_inside(d, lines, queued_windows)
    queued_all = sum(queued.values())
    return {t: {"weight": w, "weight_share": round(w / total_w, 3),
                "cpu_hours": round(d.usage[t]["cpu_hours"], 4),
                "share": round(sum(x["cpu_s"] for x in lines if x["tenant"] == t) / all_s, 3),
                "share_while_both_busy": round(contended[t] / cont_all, 3),
                "both_busy_s": round(both_until - d.t0, 1),
                "share_while_both_waiting": round(queued[t] / queued_all, 3) if queued_all else None,
                "both_waiting_s": round(sum(hi - lo for lo, hi in queued_windows), 1),
                "orders": sum(s["tenant"] == t for s, _ in d.specs)}
            for t, w in d.weights.items()}


def _cpu_inside(d: Collected, lines: list[dict], windows: list[tuple[float, float]]) -> dict[str, float]:
    """CPU-seconds per tenant that its attempts spent inside `windows` (each attempt's CPU spread evenly over its
    wall time)."""
    out = {t: 0.0 for t in d.weights}
    for line in lines:
        a, b = ts(line["started"]), ts(line["ended"])
        if b > a:
            inside = sum(max(0.0, min(b, hi) - max(a, lo)) for lo, hi in windows)
            out[line["tenant"]] += line["cpu_s"] * inside / (b - a)
    return out


def _both_waiting(d: Collected, lines: list[dict]) -> list[tuple[float, float]]:
    """The times when every tenant had a runnable job waiting for a slot — the only moments a fair-share policy
    decides anything. A job waits from when it could run (submitted, and every job it depends on finished) to its
    first attempt's start, and again from each attempt's end to the next one's start (requeued). "Unfinished"
    alone counts a tenant whose jobs all wait on a running teacher as contending, which says nothing of the
    policy."""
    jobs = {j["id"]: j for j in d.tables["jobs"]}
    attempts: dict[int, list[tuple[float, float]]] = {}
    for line in lines:
        attempts.setdefault(line["job"], []).append((ts(line["started"]), ts(line["ended"])))
    waiting: dict[str, list[tuple[float, float]]] = {t: [] for t in d.weights}
    for j in jobs.values():
        if j["tenant"] not in waiting or j["submitted"] is None:
            continue
        deps = [jobs[k]["finished"] for k in j.get("depends_on") or [] if k in jobs]
        ready = max([j["submitted"], *[f for f in deps if f is not None]])
        for start, end in sorted(attempts.get(j["id"], [])):
            if start > ready:
                waiting[j["tenant"]].append((ready, start))
            ready = end
    windows = [(d.t0, float("inf"))]
    for spans in waiting.values():  # intersect: every tenant waiting at once
        merged = _union(spans)
        windows = [(max(a, c), min(b, e)) for a, b in windows for c, e in merged if min(b, e) > max(a, c)]
    return windows


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _order_row(d: Collected, o: dict, student: dict[int, float]) -> dict[str, Any]:
    spec, priority = next((s, p) for s, p in d.specs if s["name"] == o["name"])
    row = {"order": o["order"], "name": o["name"], "tenant": o["tenant"], "priority": priority,
           "kind": "search" if "search" in spec else "recipe" if "recipe" in spec else "student",
           "state": o["state"], "error": o["error"], "targets": spec.get("targets", {}),
           "finished_s": None if o["finished"] is None else round(o["finished"] - d.t0, 1),
           "student_cpu_s": round(student.get(o["order"], 0.0), 1)}
    model = d.models.get(o["order"])
    if model:
        m = model.get("metrics") or {}
        teacher, deployed = m.get("teacher") or {}, m.get("student") or {}
        row["model"] = f"{model.get('name')}@{model.get('version')}"
        row["accuracy"] = deployed.get("accuracy")
        row["teacher_accuracy"] = teacher.get("accuracy")
        row["accuracy_ratio"] = (round(deployed["accuracy"] / teacher["accuracy"], 3)
                                 if deployed.get("accuracy") and teacher.get("accuracy") else None)
        row["size_mb"] = round(deployed["size_bytes"] / 1e6, 3) if deployed.get("size_bytes") else None
        row["latency_ms"] = deployed.get("latency_ms_p50")
        classical = ((model.get("baselines") or m.get("baselines") or {}).get("classical") or {}).get("accuracy")
        row["classical_accuracy"] = classical
        row["targets_met"] = _met(row, classical)
    return row


def _met(row: dict, classical: float | None) -> dict[str, bool | None]:
    t, out = row["targets"], {}
    if "min_accuracy_ratio" in t:
        out["min_accuracy_ratio"] = None if row["accuracy_ratio"] is None else row["accuracy_ratio"] >= \
            t["min_accuracy_ratio"]
    if "max_size_mb" in t:
        out["max_size_mb"] = None if row["size_mb"] is None else row["size_mb"] <= t["max_size_mb"]
    if "max_latency_ms" in t:
        out["max_latency_ms"] = None if row["latency_ms"] is None else row["latency_ms"] <= t["max_latency_ms"]
    if t.get("beat_baseline"):
        out["beat_baseline"] = None if classical is None or row["accuracy"] is None else row["accuracy"] >= classical
    return out


# --- writing -------------------------------------------------------------------------------------------------------
def write(result: dict[str, Any], folder: Path, name: str) -> None:
    (folder / f"{name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(result, folder / f"{name}_timeline.png")
    (folder / f"{name}.md").write_text(markdown(result, name))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orders = result["orders"]
    row = {o["order"]: i for i, o in enumerate(orders)}
    kinds = sorted({r["stage"] for r in result["timeline"]})
    cmap = plt.get_cmap("tab20")
    colour = {k: cmap(i % 20) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(12, 0.38 * len(orders) + 1.8))
    for r in result["timeline"]:
        if r["order"] in row:
            ax.barh(row[r["order"]], max((r["t1"] - r["t0"]) / 60, 0.05), left=r["t0"] / 60, height=0.7,
                    color=colour[r["stage"]], edgecolor="black", linewidth=0.2)
    for o in orders:
        if o["finished_s"] is not None:
            ax.plot(o["finished_s"] / 60, row[o["order"]], marker="|", color="black", markersize=12)
    ax.set_yticks(range(len(orders)))
    ax.set_yticklabels([f"{o['order']} {o['name']} ({o['tenant']}{', urgent' if o['priority'] == 'urgent' else ''})"
                        for o in orders], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("minutes since the orders were submitted (| = order closed)")
    ax.set_title(f"{len(orders)} orders on one mf server, {result['setup']['workers']} workers x 1 CPU "
                 f"({result['setup']['database']}, {result['setup']['executor']}): stage runs by kind")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colour[k]) for k in kinds], labels=kinds, fontsize=7,
              loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, float) else str(v)


def markdown(r: dict[str, Any], name: str) -> str:
    s, load, tf = r["setup"], r["load"], r["teacher_finetunes"]
    mk = r["makespan_s"]
    out = [f"# Factory at volume: {r['orders_total']} orders on one `mf server` ({s['database']}, {s['executor']})",
           *(["", r["note"]] if r.get("note") else []),
           "", f"`bench/factory.py{' --quick' if s['quick'] else ''}` · {s['workers']} `mf worker` x 1 CPU · policy "
           f"`{s['policy']}` · {s['cpus']} CPUs · empty MF_HOME · sizes {s['sizes']}", "",
           "| figure | value |", "|---|---|",
           f"| makespan (submit of the first order -> last order closed) | "
           f"{'not reached' if mk is None else f'{mk:.0f} s ({mk / 60:.1f} min)'}"
           f"{f' but {failed} orders failed: goal not met' if (failed := r['orders_failed']) else ''} "
           "(goal: all done in < 60 min) |",
           f"| orders done / missed targets (registered, not promoted; or infeasible) / failed / closed of all | "
           f"{r['orders_done']} / "
           f"{r['orders_missed_targets']} / {r['orders_failed']} / {r['orders_closed']} of {r['orders_total']} |",
           f"| machine load (1-min average) during the run: mean / max | {load['load1_mean']} / {load['load1_max']} "
           f"on {load['cpus']} CPUs; all CPUs busy {_fmt(load['machine_busy_share'], '.0%')} of the time |",
           f"| ledger CPU-seconds, all attempts | {r['cpu_s_total']:.0f} (by outcome: {r['cpu_s_by_outcome']}) |",
           f"| teacher fine-tunes run / distinct (dataset, teacher, split) | {tf['runs']} runs over "
           f"{tf['distinct_keys']} keys ({tf['resumed_runs']} resumed) / {tf['expected_pairs']} expected; "
           f"repeated: {tf['repeated']} |",
           f"| teacher fine-tune CPU-s + orders' own student CPU-s | {tf['cpu_s']:.0f} + {r['student_cpu_s']:.0f} |",
           f"| **overhead** = ledger CPU-s / (teacher fine-tunes + students) | **{_fmt(r['overhead'])}** "
           "(goal <= 1.5) |",
           *([f"| job attempts per Ray node | {r['ray_nodes']} |"] if r.get("ray_nodes") else []), ""]
    busy = load["machine_busy_share"]
    if load["load1_mean"] > s["workers"] + 0.5 or (busy is not None and busy > 0.97):
        out += [f"The machine was shared during this run (mean load {load['load1_mean']} against the "
                f"{s['workers']} one-CPU workers' own): the makespan is inflated by concurrent work. CPU-seconds "
                "are billed per attempt's wall time, so they are inflated as well where another process took the "
                "cores; their split by stage kind stays meaningful.", ""]
    out += ["## CPU-seconds by stage kind (ledger)", "", "| stage kind | CPU-s | share |", "|---|---:|---:|"]
    out += [f"| {k} | {v:.0f} | {v / r['cpu_s_total']:.1%} |" for k, v in r["cpu_s_by_stage_kind"].items()]
    out += ["", "## Tenants (usage ledger)", "",
            "| tenant | weight (share) | orders | CPU-hours | share of all | share while both had unfinished jobs "
            "| share while both had a runnable job waiting |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for t, v in r["tenants"].items():
        waiting = ("–" if v.get("share_while_both_waiting") is None else
                   f"{v['share_while_both_waiting']:.1%} ({v['both_waiting_s'] / 60:.1f} min in all)")
        out.append(f"| {t} | {v['weight']:g} ({v['weight_share']:.0%}) | {v['orders']} | {v['cpu_hours']:.3f} | "
                   f"{v['share']:.1%} | {v['share_while_both_busy']:.1%} (first {v['both_busy_s'] / 60:.1f} min) "
                   f"| {waiting} |")
    out += ["", "The last column is the one a fair-share policy answers for: only while every tenant has a "
            "runnable job waiting does the scheduler choose between them (a job waits from when its dependencies "
            "have finished to its attempt's start). With two one-slot workers the split can only be 2:0, 1:1 or "
            "0:2 at any moment, so a 2:1 weight shows as a time average."]
    out += ["", "## Orders against their targets", "",
            "| order | tenant | kind | state | finished (min) | model | accuracy (teacher) | ratio | MB | ms | "
            "targets | met | own student CPU-s |", "|---|---|---|---|---:|---|---|---:|---:|---:|---|---|---:|"]
    for o in r["orders"]:
        met = o.get("targets_met") or {}
        met_s = ", ".join(f"{k} {'yes' if v else 'no' if v is not None else '?'}" for k, v in met.items())
        targets = ", ".join(f"{k} {v}" for k, v in o["targets"].items())
        acc = "" if o.get("accuracy") is None else f"{o['accuracy']:.3f} ({_fmt(o.get('teacher_accuracy'))})"
        fin = "" if o["finished_s"] is None else f"{o['finished_s'] / 60:.1f}"
        state = o["state"] + (" (urgent)" if o["priority"] == "urgent" else "")
        if o["error"] and o["state"] != "done":
            state += f": {o['error'][:120]}"
        out.append(f"| {o['order']} {o['name']} | {o['tenant']} | {o['kind']} | {state} | {fin} | "
                   f"{o.get('model', '')} | {acc} | {_fmt(o.get('accuracy_ratio'))} | {_fmt(o.get('size_mb'))} | "
                   f"{_fmt(o.get('latency_ms'))} | {targets} | {met_s} | {o['student_cpu_s']:.0f} |")
    import factory_orders

    out += ["", f"![timeline]({name}_timeline.png)", "", "Each bar is one stage run; a stage shared by several "
            "orders (a teacher, a transfer set) is drawn on the order whose submission queued it, and the others "
            "wait for it.", "", "## Definitions", "",
            __doc__.split("\n\n", 1)[1].strip(), "", "## How the orders were sized", "",
            " ".join(factory_orders.__doc__.split("\n\n", 1)[1].split()), "", SIZING, ""]
    return "\n".join(out)


SIZING = """The full run's sizes, estimated beforehand (not measured on a quiet machine): two one-CPU workers for an
hour is 7,200 CPU-seconds. A MiniLM fine-tune step (batch 32, 64 tokens) costs about 1.6 CPU-seconds (the demo's 235
steps took 3m04s on two quiet cores), so each text teacher gets 150 steps on a 3,000-row sample (~4-5 CPU-minutes
with its evaluations); its transfer set is 3 x 2,250 texts labeled
once (~1 min); the image teacher (ResNet-S from scratch, 6 epochs over 2,250 digits) ~2 min; each fixed student
chain (distil or fit, export, quantize, evaluations) ~1-3 min; each search 4 trials within 4 minutes. That is
roughly 60-70 CPU-minutes for all 20 orders: about 35 minutes of makespan on a quiet machine, half the hour, to
leave room for job start-up, evaluation and scheduling gaps."""
