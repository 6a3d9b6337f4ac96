"""`mf label auto|export|import`: a teacher's pseudo-labels, the review queue, Label Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import MFError
from .common import JsonFlag, RichReporter, console, group, print_json, progress

label_app = group("label", "Labeling: a teacher's pseudo-labels, the review queue, Label Studio.")


@label_app.command("auto")
def label_auto(dataset: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
               teacher: Annotated[str, typer.Option(
                   help="A registered model (NAME[@VERSION]), or a base to fine-tune on the seed rows first: a "
                        "local model dir, a hub id, or an architecture such as scratch:resnet-s.")],
               task: Annotated[str | None, typer.Option(help="Task family (default: from the dataset's columns).")
                               ] = None,
               threshold: Annotated[float | None, typer.Option(
                   help="Confidence at or above which a prediction becomes a pseudo-label (default: chosen on "
                        "held-out seed rows to reach --target-accuracy).")] = None,
               target_accuracy: Annotated[float, typer.Option(help="Accuracy the chosen threshold aims at.")
                                          ] = 0.97,
               strategy: Annotated[str, typer.Option(help="Review queue order: least-confidence or margin.")
                                   ] = "least-confidence",
               epochs: Annotated[float | None, typer.Option(help="Teacher fine-tuning epochs.")] = None,
               lr: Annotated[float | None, typer.Option(help="Teacher learning rate.")] = None,
               rounds: Annotated[int, typer.Option(help="Self-training rounds: each retrains the teacher on the seed "
                                                        "+ the last round's pseudo-labels.")] = 1,
               round_epochs: Annotated[float | None, typer.Option(
                   help="Teacher epochs from round 2 on (default: --epochs).")] = None,
               augment: Annotated[bool, typer.Option(
                   "--augment", help="Images: train the teacher on randomly shifted/rotated/scaled copies.")
                                  ] = False,
               show: Annotated[int, typer.Option(help="Queue rows to print.")] = 5,
               as_json: JsonFlag = False) -> None:
    """Label a dataset's unlabeled rows with a teacher: confident ones become pseudo-labels, the rest go to the
    review queue, most uncertain first. Makes a new dataset version."""
    from ..factory.autolabel import auto_label

    params = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("augment", augment or None)) if v is not None}
    with progress(to_stderr=as_json) as bar:
        r = auto_label(dataset, teacher, task=task, threshold=threshold, target_accuracy=target_accuracy,
                       strategy=strategy, teacher_params=params, rounds=rounds,
                       round_params={"epochs": round_epochs} if round_epochs is not None else None,
                       reporter=RichReporter(bar))
    if as_json:
        print_json(r.as_dict(show))
        return
    queue = r.queue_head(show)
    has_text = any("text" in q for q in queue)
    share = r.pseudo_labeled / max(1, r.predicted)
    console.print(f"[bold]{r.dataset}[/] (from {r.parent}) · teacher {r.teacher}", soft_wrap=True)
    console.print(f"threshold {r.threshold:.3f} ({r.threshold_from})", soft_wrap=True)
    console.print(f"{r.predicted} rows predicted · [green]{r.pseudo_labeled} pseudo-labeled ({share:.1%})[/] · "
                  f"[yellow]{r.queued} in the review queue[/] ({strategy})")
    if queue:
        table = Table("mf_id", "prediction", "confidence", "margin", *(["text"] if has_text else []),
                      title="most uncertain first")
        for q in queue:
            table.add_row(str(q["mf_id"]), str(q["pred_label"]), f"{q['confidence']:.3f}", f"{q['margin']:.3f}",
                          *([q["text"][:70]] if has_text else []))
        console.print(table)
    console.print(f"review them: mf label export {r.dataset} --format label-studio --out review.json",
                  soft_wrap=True)


@label_app.command("export")
def label_export(dataset: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
                 out: Annotated[Path, typer.Option(help="The JSON file to write (its labeling config beside it, "
                                                        ".xml).")] = Path("review.json"),
                 fmt: Annotated[str, typer.Option("--format", help="label-studio")] = "label-studio",
                 rows: Annotated[str, typer.Option(help="queue (unlabeled rows, most uncertain first) or all.")
                                 ] = "queue",
                 strategy: Annotated[str, typer.Option(help="Queue order: least-confidence or margin.")
                                     ] = "least-confidence",
                 limit: Annotated[int | None, typer.Option(help="At most this many tasks.")] = None) -> None:
    """Write Label Studio's JSON import format, the teacher's predictions pre-filled, and its labeling config."""
    from ..data import labelstudio

    if fmt != "label-studio":
        raise MFError(f"unknown export format '{fmt}' (use label-studio)")
    path, config, n = labelstudio.export_file(dataset, out, rows=rows, strategy=strategy, limit=limit)
    console.print(f"{n} tasks -> {path} · labeling config -> {config}", soft_wrap=True)


@label_app.command("import")
def label_import(dataset: Annotated[str, typer.Argument(help="NAME or NAME@VERSION")],
                 path: Annotated[Path, typer.Argument(help="A Label Studio JSON export, or a CSV/JSONL of "
                                                           "mf_id,label.")],
                 as_json: JsonFlag = False) -> None:
    """Bring reviewed labels back as a new dataset version (they win over any teacher's)."""
    from ..data import labelstudio

    ref, n = labelstudio.import_file(dataset, path)
    if as_json:
        print_json({"dataset": str(ref), "rows": n, "stats": ref.stats})
        return
    console.print(f"[bold]{ref}[/] · {n} reviewed labels imported · label sources: "
                  + ", ".join(f"{k} {v}" for k, v in ref.stats.get("label_sources", {}).items()))
