"""Where a run writes: everything goes under MF_HOME (default ./.mf)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def work(self) -> Path:
        """Scratch space for stages in progress (checkpoints live here until the stage finishes)."""
        return self.home / "work"

    @property
    def orders(self) -> Path:
        return self.home / "orders"


def settings() -> Settings:
    """Read the environment each time, so tests and subprocesses can point MF_HOME elsewhere."""
    home = Path(os.environ.get("MF_HOME", ".mf")).resolve()
    url = os.environ.get("MF_DATABASE_URL") or f"sqlite:///{home / 'mf.db'}"
    return Settings(home=home, database_url=url)
