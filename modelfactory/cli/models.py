"""`mf predict` and `mf models ls|show|promote`: the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markdown import Markdown
from rich.table import Table

from ..errors import MFError
from .backend import backend
from .common import ApiKeyOpt, JsonFlag, ServerOpt, app, console, group, output, print_json, when

if TYPE_CHECKING:
    from ..registry.schemas import ModelSummary

models_app = group("models", "The model registry.")


@app.command()
def predict(model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS")],
            texts: Annotated[list[str] | None, typer.Argument(help="Texts, or image files, to classify.")] = None,
            file: Annotated[Path | None, typer.Option(
                "--file", help="JSONL rows with a 'text' field, or plain lines (texts or image paths).")] = None,
            as_json: JsonFlag = False) -> None:
    """Classify inputs with a registered model's ONNX graph: texts, or image files for an image model (the
    preprocessing ships with the model, so inputs go in raw)."""
    from ..data.inputs import read_inputs
    from ..serve.predict import predict as run

    out = run(model, list(texts or []) + (read_inputs(file) if file is not None else []))
    if as_json:
        print_json([{"input": x, "label": lab, "probabilities": p} for x, lab, p in out.rows])
        return
    table = Table(title=out.model, show_lines=False)
    table.add_column("input", max_width=60)
    table.add_column("label", style="bold")
    for lab in out.labels:
        table.add_column(lab, justify="right")
    for x, lab, p in out.rows:
        table.add_row(x, lab, *(f"{p[k]:.3f}" for k in out.labels))
    console.print(table)


@models_app.command("ls")
def models_ls(as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List model versions with their deployed metrics."""
    output(backend(server, api_key).models(), as_json, _models_table)


def _models_table(rows: list[ModelSummary]) -> Table:
    table = Table("model", "aliases", "task", "accuracy", "size (MB)", "p50 (ms)", "created")
    for r in rows:
        m = r.metrics.get("student", {})  # the contract's shape: `student` = the deployed model
        table.add_row(f"{r.name}@{r.version}", ", ".join(r.aliases), r.task, f"{m.get('accuracy', 0):.4f}",
                      f"{m.get('size_bytes', 0) / 1e6:.1f}", f"{m.get('latency_ms_p50', 0):.2f}", when(r.created))
    return table


@models_app.command("show")
def models_show(ref: str, as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Show a model version: metrics of teacher and student side by side, lineage, model card."""
    from ..report import recipe_str

    b = backend(server, api_key)
    d = b.model(ref)
    if as_json:
        print_json(d)
        return
    console.print(Markdown(d.card))
    console.print("[bold]Lineage[/]")
    lin = d.lineage
    chain = [f"order {lin.get('order')} ({lin.get('order_name')})", f"dataset {lin.get('dataset')}",
             f"teacher {str(lin.get('teacher'))[:12]} ← {lin.get('teacher_base')}",
             f"recipe {recipe_str(lin.get('recipe') or [])}", f"student {str(lin.get('student'))[:12]}",
             f"deployed {str(lin.get('deployed'))[:12]}"]
    console.print("  " + "\n  → ".join(chain))
    console.print(b.onnx_where(d), soft_wrap=True)


@models_app.command("promote")
def models_promote(ref: str, alias: str, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Point ALIAS (e.g. prod) at NAME@VERSION."""
    name, _, ver = ref.partition("@")
    if not ver.isdigit():
        raise MFError(f"give an explicit version to promote, e.g. {name}@3")
    backend(server, api_key).promote(name, int(ver), alias)
    console.print(f"{name}@{ver} is now [bold]{alias}[/]")
