"""`mf demo` and `mf order run|submit|status`: orders end to end in this process, or queued on the pool."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..errors import MFError
from .backend import ORDER_CPU, ORDER_MEMORY_GB, backend
from .common import (
    STATE_STYLE,
    ApiKeyOpt,
    JsonFlag,
    RichReporter,
    ServerOpt,
    app,
    console,
    group,
    metrics_table,
    print_json,
    progress,
)

if TYPE_CHECKING:
    from ..factory.schemas import OrderDetail

order_app = group("order", "Orders: run an order spec end to end.")
DEMO_TASKS = ("text", "image", "chat")  # factory.demo.DEMOS, named here so `mf --help` loads no layer


def _run_order(spec, skip_bad_rows: bool, as_json: bool):
    from .. import tasks
    from ..factory.demo import example_argument
    from ..factory.order import run_order
    from ..report import ratios

    with progress(to_stderr=as_json) as bar:
        result = run_order(spec, reporter=RichReporter(bar), skip_bad_rows=skip_bad_rows,
                           on_ingest=lambda d: bar.console.print(
                               f"dataset [bold]{d}[/] · {d.n_rows} rows" +
                               (f" · [yellow]{d.skipped} bad rows skipped[/]" if d.skipped else "")))
    if as_json:
        print_json({"order": result.order_id, "model": str(result.model), "deployed": result.deployed,
                    "targets_met": result.targets_met, "metrics": result.metrics, "report": str(result.report_path)})
    else:
        baselines = result.model.metrics.get("baselines", {})
        shown = {**result.metrics, **{f"baseline: {k}": v for k, v in baselines.items()}}
        console.print(metrics_table(shown, f"{spec.name}: test split ({result.dataset})"))
        deployed = result.model.metrics.get("deployed", "student_int8")
        r = ratios(result.metrics, deployed)
        if r:
            console.print(f"deployed {deployed} keeps [bold]{r['accuracy_ratio']:.1%}[/] of the teacher's accuracy, "
                          f"[bold]{r['size_reduction']:.1f}x[/] smaller, [bold]{r['latency_speedup']:.1f}x[/] faster "
                          f"(batch 1, 1 thread)")
        q = ratios(result.metrics, deployed, teacher="teacher_int8")
        if q and deployed != "teacher_int8":
            console.print(f"against the teacher simply quantized (INT8): [bold]{q['size_reduction']:.1f}x[/] smaller, "
                          f"[bold]{q['latency_speedup']:.1f}x[/] faster")
        if "classical" in baselines and deployed in result.metrics:
            gap = result.metrics[deployed]["accuracy"] - baselines["classical"]["accuracy"]
            console.print(f"against the classical baseline on the same split: [bold]{100 * gap:+.1f}[/] "
                          "accuracy points")
        status = "[green]promoted to prod[/]" if result.deployed else "[yellow]registered, not promoted[/]"
        generative = tasks.get(spec.task).pipeline == "adapt"
        where = f"adapter: {result.model.path}" if generative else f"ONNX: {result.model.onnx_path}"
        # soft_wrap: paths and the command stay on one line, so they can be copied as they are
        console.print(f"registry: [bold]{result.model}[/] ({status}) · {where}", soft_wrap=True)
        console.print(f"report: {result.report_path}", soft_wrap=True)
        if generative:
            console.print(f"try it: mf serve-llm --base {spec.teacher.model} --adapters {result.model}, then any "
                          f"OpenAI client with model=\"{result.model.name}\"", soft_wrap=True)
        else:
            console.print(f"try it: mf predict {result.model} {example_argument(spec.task, result)}",
                          soft_wrap=True)
            console.print(f"serve it: mf serve --models {result.model.name}  ->  POST "
                          f"http://127.0.0.1:8000/v2/models/{result.model.name}/infer (Open Inference Protocol v2)",
                          soft_wrap=True)
    if result.missed:
        raise MFError("targets missed: " + ", ".join(result.missed) + f" (see {result.report_path})", exit_code=3)
    return result


@app.command()
def demo(task: Annotated[str, typer.Option(help=f"Which demo order: {' or '.join(DEMO_TASKS)}.")] = "text",
         rows: Annotated[int | None, typer.Option(help="Rows to sample from the corpus (default: the spec's).")] = None,
         as_json: JsonFlag = False) -> None:
    """Run a real order end to end on a corpus that ships offline, and print where the model is."""
    from ..factory.demo import demo_order

    d = demo_order(task, rows)
    if not as_json:
        console.print(f"[bold]corpus[/] {d.description}")
        if d.skipped:
            console.print(f"[yellow]{len(d.skipped)} bad rows skipped[/], e.g. {d.skipped[0]}")
    _run_order(d.spec, skip_bad_rows=False, as_json=as_json)


@order_app.command("run")
def order_run(spec_file: Annotated[Path, typer.Argument(help="order.yaml or .json")],
              skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows",
                                                          help="Skip bad rows instead of stopping.")] = False,
              truncate: Annotated[bool, typer.Option("--truncate", help="Generative tasks: cut rows longer than the "
                                                                        "context instead of stopping.")] = False,
              as_json: JsonFlag = False) -> None:
    """Run an order spec end to end in this process (finished stages are cache hits; a killed stage resumes)."""
    from ..factory.spec import load_spec

    spec = load_spec(spec_file)
    if truncate:
        spec.data.truncate = True
    _run_order(spec, skip_bad_rows, as_json)


@order_app.command("submit")
def order_submit(spec_file: Annotated[Path, typer.Argument(help="order.yaml or .json")],
                 tenant: Annotated[str | None, typer.Option(help="Tenant (default: the spec's).")] = None,
                 priority: Annotated[str, typer.Option(help="batch | standard | urgent")] = "standard",
                 cpu: Annotated[float, typer.Option(help="CPUs per stage job.")] = ORDER_CPU,
                 memory_gb: Annotated[float, typer.Option(help="Memory (GB) per stage job.")] = ORDER_MEMORY_GB,
                 skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows")] = False,
                 as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Queue an order on the compute pool: one stage job per stage that is not a cache hit (`mf server` runs
    them); it is registered like `mf order run` when its last job succeeds. With --server the spec file goes to
    the control plane as it is: the order belongs to the API key's tenant and reads an uploaded dataset
    (`data: {dataset: NAME}`, see `mf data add --server`), not a file path."""
    b = backend(server, api_key)
    d = b.submit_order(spec_file, tenant=tenant, priority=priority, cpu=cpu, memory_gb=memory_gb,
                       skip_bad_rows=skip_bad_rows)
    if as_json:
        print_json(d)
        return
    console.print(f"order [bold]{d.order}[/] queued · dataset {d.dataset} · {len(d.jobs)} jobs"
                  + (f" · {len(d.cached)} cache hits" if d.cached else "")
                  + (f" · {len(d.shared)} shared with earlier orders" if d.shared else ""))
    console.print(f"follow it: mf order status {d.order} --watch{b.hint}", soft_wrap=True)


def _order_view(st: OrderDetail):
    from rich.console import Group

    head = (f"order [bold]{st.order}[/] {st.name} · tenant {st.tenant} · [bold]{st.state}[/]"
            + (f" · {st.error}" if st.error else "")
            + (f" · report {st.report}" if st.report else ""))
    table = Table("node", "stage", "job", "state", "try", "worker", "note")
    for n in st.nodes:
        style = STATE_STYLE.get(n["state"], "")
        note = n.get("last_error") or n.get("error") or n.get("waiting") or ""
        if n.get("resumed_from_step"):
            note = f"resumed from step {n['resumed_from_step']}"
        if n.get("preempt_requested"):
            note = "preempting"
        table.add_row(n["node"], n["stage"], str(n.get("job") or ""), f"[{style}]{n['state']}[/]",
                      str(n.get("attempts") or ""), n.get("worker") or "", str(note)[:60])
    return Group(head, table)


@order_app.command("status")
def order_status(order_id: int,
                 watch: Annotated[bool, typer.Option("--watch", help="Refresh until the order ends.")] = False,
                 as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """An order's stages: on the pool, each stage's job (state, attempt, worker, resume step) or cache hit."""
    import time

    from rich.live import Live

    b = backend(server, api_key)
    st = b.order(order_id)
    if as_json:
        print_json(st)
        return
    if not watch:
        console.print(_order_view(st))
        return
    with Live(_order_view(st), console=console, refresh_per_second=2) as live:
        while st.state == "running":
            time.sleep(1)
            st = b.order(order_id)
            live.update(_order_view(st))
