"""Where a run writes: everything goes under MF_HOME (default ./.mf)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    max_table_mb: float = 2048.0  # MF_MAX_TABLE_MB: the most a table file may expand to when read (.gz/.bz2 too)

    @property
    def max_table_bytes(self) -> int:
        return int(self.max_table_mb * (1 << 20))

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
    return Settings(home=home, database_url=url, max_table_mb=_positive("MF_MAX_TABLE_MB", 2048.0))


def _positive(var: str, default: float) -> float:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        from .errors import MFError

        raise MFError(f"{var}={raw!r}: expected a positive number")
    return value
