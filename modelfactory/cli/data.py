"""`mf data add|ls|show`: dataset versions."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .backend import backend
from .common import ApiKeyOpt, JsonFlag, ServerOpt, console, group, output, print_json, when

if TYPE_CHECKING:
    from ..data.schemas import DatasetVersionOut

data_app = group("data", "Datasets: add, list, show.")


@data_app.command("add")
def data_add(name: str, path: Path,
             text: Annotated[str, typer.Option(help="Text column.")] = "text",
             label: Annotated[str, typer.Option(help="Label column.")] = "label",
             image: Annotated[str | None, typer.Option(
                 "--image", help="Image-path column (paths relative to the table's folder): an image dataset.")] = None,
             skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows")] = False,
             unlabeled: Annotated[Path | None, typer.Option(
                 "--unlabeled", help="Unlabeled rows to add beside PATH's labeled seed rows: a table with the "
                                     "text (or --image) column, or a folder/archive of images.")] = None,
             as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Add a CSV/JSONL/Parquet file, or a folder/.zip/.tar.gz of class folders of images, as a new immutable
    version of dataset NAME (with --server: uploaded to the control plane, owned by the key's tenant)."""
    d = backend(server, api_key).add_dataset(name, path, text=text, label=label, image=image,
                                             skip_bad_rows=skip_bad_rows, unlabeled=unlabeled)
    if as_json:
        print_json(d)
        return
    console.print(f"[bold]{d.name}@{d.version}[/] · {d.rows} rows · id {d.artifact[:12]}"
                  + (f" · {d.stats['unlabeled']} unlabeled" if d.stats.get("unlabeled") else "")
                  + (f" · {d.skipped} bad rows skipped" if d.skipped else ""))


@data_app.command("ls")
def data_ls(as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List dataset versions."""
    output(backend(server, api_key).dataset_versions(), as_json, _versions_table)


def _versions_table(rows: list[DatasetVersionOut]) -> Table:
    table = Table("dataset", "rows", "labels", "id", "created")
    for r in rows:
        table.add_row(f"{r.name}@{r.version}", str(r.rows), ", ".join(r.stats.get("labels", {})), r.artifact[:12],
                      when(r.created))
    return table


@data_app.command("show")
def data_show(ref: str, as_json: JsonFlag = False,
              lineage: Annotated[bool, typer.Option(
                  "--lineage", help="The chain of versions it was made from, with each one's label sources.")
              ] = False) -> None:
    """Show a dataset version: size, label counts, source (with --lineage: where its labels came from)."""
    from ..data.schemas import shown

    d = shown(ref, lineage=lineage)
    if as_json:
        print_json(d)
        return
    console.print(f"[bold]{d.name}@{d.version}[/] · {d.rows} rows · id {d.artifact}")
    for lab, n in d.stats.get("labels", {}).items():
        console.print(f"  {lab:<20} {n}")
    if d.stats.get("unlabeled"):
        console.print(f"  {'(unlabeled)':<20} {d.stats['unlabeled']}")
    if d.lineage:
        table = Table("version", "made by", "from", "label sources", "details", title="lineage (newest first)")
        for v in d.lineage:
            info = v["details"]
            what = (f"teacher {info.get('teacher')} · threshold {info.get('threshold', 0):.3f}"
                    if v["operation"] == "auto_label" else
                    f"{info.get('rows')} reviewed labels from {info.get('source')}" if v["operation"] == "import"
                    else str(info.get("source", "")))
            table.add_row(v["dataset"], v["operation"], v["parent"] or "-",
                          ", ".join(f"{k} {n}" for k, n in v["label_sources"].items()), what)
        console.print(table)
