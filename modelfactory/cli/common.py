"""What every command module shares: the root Typer app, the consoles, the `--json` / `--server` / `--api-key`
options, JSON printing, and the Rich progress view of stages."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="modelfactory: one order in, one small fast served model out.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)

console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
# A remote control plane: per command (not global: Typer's sub-apps make a global option awkward to place).
ServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="MF_SERVER", show_envvar=True, metavar="URL", rich_help_panel="Remote control plane",
    help="Work through the control plane at URL (`mf server`, e.g. http://host:8080) instead of this machine's "
         "database.")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="MF_API_KEY", show_envvar=True, metavar="KEY", rich_help_panel="Remote control plane",
    help="API key for --server: a tenant's key (it binds what you do to that tenant) or an admin's.")]
STATE_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "dim",
               "cached": "blue"}


def group(name: str, help: str) -> typer.Typer:
    """A command group (`mf data ...`) on the root app."""
    sub = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


def print_json(obj: Any) -> None:
    """One JSON document on stdout: typed models (pydantic or dataclasses) as their JSON shape, times in ISO 8601,
    so the same object prints the same text whichever backend produced it."""
    from pydantic_core import to_jsonable_python

    sys.stdout.write(json.dumps(to_jsonable_python(obj, by_alias=True, fallback=str), indent=2) + "\n")


def output(obj: Any, as_json: bool, view: Callable[[Any], Any]) -> None:
    """With --json, the object's JSON document; else what `view` makes of it (a Rich table), printed."""
    if as_json:
        print_json(obj)
    else:
        console.print(view(obj))


def when(value: dt.datetime | str | None) -> str:
    """A time to the second."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.isoformat(timespec="seconds") if value else ""


def hours(v: float | None) -> str:
    """A limit: unlimited when None."""
    return "∞" if v is None else f"{v:g}"


class RichReporter:
    """Shows each stage as a line with a spinner or bar; cache hits and resumes say so."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def stage_started(self, node, key):
        self.tasks[node.name] = self.progress.add_task(f"{node.name:<18} [dim]{key[:10]}[/]", total=None)

    def stage_progress(self, node, done, total, info):
        self.progress.update(self.tasks[node.name], completed=done, total=total,
                             description=f"{node.name:<18} [dim]{info}[/]")

    def stage_finished(self, node, artifact, cached, seconds, resumed_from_step):
        how = ("[cyan]cache hit[/]" if cached else
               f"[green]done[/] in {seconds:.1f}s" + (f" [yellow](resumed from step {resumed_from_step})[/]"
                                                       if resumed_from_step else ""))
        self.progress.update(self.tasks[node.name], completed=1, total=1,
                             description=f"{node.name:<18} {how} [dim]{artifact.id[:10]}[/]")


def progress(to_stderr: bool = False) -> Progress:
    """Stage progress; on stderr when stdout carries --json output, so that stays one parseable document."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err if to_stderr else console, transient=False)


def metrics_table(metrics: dict[str, dict], title: str) -> Table:
    from ..report import columns_of, metrics_rows

    table = Table(title=title)
    table.add_column("model")
    for _, name, _ in columns_of(metrics):
        table.add_column(name, justify="right")
    for row in metrics_rows(metrics):
        table.add_row(*row)
    return table
