"""The demo orders (`mf demo`): a corpus that ships offline, added as a dataset of the `demo` tenant, and the
example order spec that runs on it; and a real input from an order's test split for the "try it" hint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources

from .. import safeyaml
from ..data import builtin, versions
from ..data.ingest import RowError
from ..errors import MFError
from .order import OrderResult
from .spec import OrderSpec, parse_spec

# A built-in corpus and the order spec that runs on it, per kind of task.
DEMOS = {"text": ("rotten-tomatoes", "rotten_tomatoes.yaml"), "image": ("mnist-5k", "mnist.yaml"),
         "chat": ("critic-chat", "critic_chat.yaml")}


@dataclass
class Demo:
    spec: OrderSpec
    description: str  # the corpus, for people
    skipped: list[RowError]  # its rows that failed validation (none, for the corpora that ship)


def demo_order(task: str, rows: int | None = None) -> Demo:
    """Add the demo's corpus as a dataset version and return the order spec that reads it (at most `rows` rows
    when given). Hub ids resolve offline: the demo downloads nothing."""
    if task not in DEMOS:
        raise MFError(f"unknown demo '{task}'; choose one of: {', '.join(DEMOS)}")
    corpus_name, spec_file = DEMOS[task]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    corpus = builtin.corpus(corpus_name)
    table = corpus.table()
    ds = versions.add_table(corpus.name, table, tenant="demo", source=f"{corpus.package}:{corpus.relpath}")
    raw = safeyaml.load(resources.files("modelfactory.examples").joinpath(spec_file).read_text())
    raw["data"] = {**raw.get("data", {}), "dataset": str(ds)}
    if rows:
        raw.setdefault("split", {})["max_rows"] = rows
    return Demo(parse_spec(raw, "demo order"), corpus.description, list(table.errors))


def example_argument(task_name: str, result: OrderResult) -> str:
    """A real input from the order's test split, as `mf predict` takes it (a file written beside the report for
    families whose inputs are files)."""
    import pandas as pd

    from .. import tasks

    task = tasks.get(task_name)
    test = pd.read_parquet(result.results["split"].artifact.path / "test.parquet").head(1)
    return task.cli_argument(task.raw_inputs(test)[0], result.report_path.parent)
