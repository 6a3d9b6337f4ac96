"""Readable reports: the side-by-side metrics table used by the order report, the model card and the CLI."""

from __future__ import annotations

COLUMNS = [("accuracy", "accuracy", "{:.4f}"), ("macro_f1", "macro-F1", "{:.4f}"),
           ("size_bytes", "size (MB)", None), ("parameters", "params (M)", None),
           ("latency_ms_p50", "p50 batch-1 (ms)", None), ("latency_e2e_ms_p50", "p50 raw text/image in (ms)", None),
           ("throughput", "batch-32 (rows/s)", "{:.0f}"),
           ("eval_loss", "held-out loss", "{:.4f}"), ("perplexity", "perplexity", "{:.2f}")]


def _significant(value: float) -> str:
    """Three significant figures at most, so a 26k-parameter CNN and a 90 MB encoder both read well."""
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "size_bytes":
        return _significant(value / 1e6)
    if key == "parameters":
        return _significant(value / 1e6)
    if key in ("latency_ms_p50", "latency_e2e_ms_p50"):
        return _significant(value)
    fmt = next(f for k, _, f in COLUMNS if k == key)
    return fmt.format(value)


def columns_of(metrics: dict[str, dict]) -> list[tuple[str, str, str | None]]:
    """The columns some model has a value for (a classifier's accuracy and latency, a language model's loss)."""
    return [c for c in COLUMNS if any(m.get(c[0]) is not None for m in metrics.values())]


def metrics_rows(metrics: dict[str, dict]) -> list[list[str]]:
    cols = columns_of(metrics)
    return [[name, *(cell(k, m.get(k)) for k, _, _ in cols)] for name, m in metrics.items()]


def metrics_table(metrics: dict[str, dict]) -> str:
    header = ["model", *(title for _, title, _ in columns_of(metrics))]
    rows = metrics_rows(metrics)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def ratios(metrics: dict[str, dict], student: str = "student_int8", teacher: str = "teacher") -> dict[str, float]:
    s, t = metrics.get(student), metrics.get(teacher)
    if not s or not t or "accuracy" not in s or "accuracy" not in t:
        return {}
    return {"accuracy_ratio": s["accuracy"] / t["accuracy"] if t["accuracy"] else 0.0,
            "size_reduction": t["size_bytes"] / s["size_bytes"],
            "latency_speedup": t["latency_ms_p50"] / s["latency_ms_p50"]}


def recipe_str(steps: list[dict]) -> str:
    """[{"distill": {"layers": 2}}, {"quantize": {"mode": "static"}}] -> 'distill(layers=2) → quantize(mode=static)'."""
    out = []
    for step in steps:
        for kind, params in step.items():
            if kind == "blend":  # {group: the member's recipe}
                out.append("blend(" + "; ".join(f"{g}: {recipe_str(r)}" for g, r in params.items()) + ")")
                continue
            shown = ", ".join(f"{k}={v}" for k, v in (params or {}).items() if v is not None)
            out.append(f"{kind}({shown})")
    return " → ".join(out)
