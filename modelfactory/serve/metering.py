"""Inference metering into the usage ledger: counters in memory per (tenant, model, version), written as one
`InferenceUsage` row each per window (every `interval_s`, and at shutdown), so serving never waits on the database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from ..store import utcnow

log = logging.getLogger("modelfactory.serve")


@dataclass
class _Window:
    requests: int = 0
    rows: int = 0
    cpu_seconds: float = 0.0


class Meter:
    def __init__(self, server: str | None = None, interval_s: float = 60.0):
        self.server = server or f"{socket.gethostname()}/{os.getpid()}"
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str, int], _Window] = {}
        self._since = utcnow()

    def record(self, tenant: str, model: str, version: int, rows: int, cpu_seconds: float) -> None:
        with self._lock:
            w = self._open.setdefault((tenant, model, version), _Window())
            w.requests += 1
            w.rows += rows
            w.cpu_seconds += cpu_seconds

    def pending(self) -> dict[tuple[str, str, int], _Window]:
        with self._lock:
            return dict(self._open)

    def flush(self) -> int:
        """Write the window's rows (one transaction); returns how many. On a database error the counts are kept
        for the next flush, never lost."""
        from ..accounts.ledger import record_inference
        from ..accounts.tables import accounts_tx

        with self._lock:
            windows, self._open = self._open, {}
            started, self._since = self._since, utcnow()
        if not windows:
            return 0
        ended = utcnow()
        try:
            with accounts_tx() as s:
                for (tenant, model, version), w in windows.items():
                    record_inference(s, tenant=tenant, model=model, version=version, server=self.server,
                                     started=started, ended=ended, requests=w.requests, rows=w.rows,
                                     cpu_seconds=w.cpu_seconds)
        except Exception:
            log.exception("metering: could not write %d usage rows; keeping them for the next flush", len(windows))
            with self._lock:
                for key, w in windows.items():
                    cur = self._open.setdefault(key, _Window())
                    cur.requests += w.requests
                    cur.rows += w.rows
                    cur.cpu_seconds += w.cpu_seconds
                self._since = min(self._since, started)
            return 0
        return len(windows)
