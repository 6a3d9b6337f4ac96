"""One `Settings` for every `MF_*` environment variable; nothing else in modelfactory reads them.

`settings()` reads the environment on each call (cached per distinct set of `MF_*` values), so tests and child
processes can point MF_HOME elsewhere or change a knob. A value that does not parse is one clear error naming the
variable. Everything a run writes goes under MF_HOME (default ./.mf). The README's "Settings" table lists them all
(tests/test_settings.py keeps the two in step).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import MFError

TRUE = ("1", "true", "yes", "on")


def _var(env: str, default: Any, doc: str, *, positive: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc, "positive": positive})


@dataclass(frozen=True)
class Settings:
    home: Path = _var("MF_HOME", Path(".mf"), "where everything a run writes goes: artifacts, database, logs, work")
    database_url: str = _var("MF_DATABASE_URL", "", "the database (default `sqlite:///$MF_HOME/mf.db`; PostgreSQL: "
                                                    "`postgresql://...`)")
    max_table_mb: float = _var("MF_MAX_TABLE_MB", 2048.0, "the most a table file may expand to when read "
                                                          "(.gz/.bz2 too)", positive=True)
    # the control plane and the servers
    admin_key: str = _var("MF_ADMIN_KEY", "", "an extra admin API key (besides `mf server --init` keys)")
    serve_auth: bool = _var("MF_SERVE_AUTH", False, "`mf serve` / `mf serve-llm` require API keys (as `--auth`)")
    auth_max_failures: int = _var("MF_AUTH_MAX_FAILURES", 20, "failed key checks per client per minute before "
                                                              "429", positive=True)
    max_keys_per_tenant: int = _var("MF_MAX_KEYS_PER_TENANT", 20, "unrevoked API keys a tenant may hold",
                                    positive=True)
    upload_max_mb: float = _var("MF_UPLOAD_MAX_MB", 512.0, "largest dataset upload the control plane accepts "
                                                           "(MB)", positive=True)
    model_dirs: str = _var("MF_MODEL_DIRS", "", "`os.pathsep`-separated local dirs an API order may name as its "
                                                "teacher")
    # the compute pool (compute/pool.py; `mf server` flags override them)
    pool_policy: str = _var("MF_POOL_POLICY", "fifo", "scheduling policy: `fifo`, `priority` or `fair`")
    lease_timeout_s: float = _var("MF_LEASE_TIMEOUT_S", 30.0, "a worker silent this long is lost; its jobs are "
                                                              "requeued")
    heartbeat_s: float = _var("MF_HEARTBEAT_S", 5.0, "how often a worker heartbeats (and renews its leases)")
    schedule_interval_s: float = _var("MF_SCHEDULE_INTERVAL_S", 1.0, "how often the server runs the scheduler")
    worker_poll_s: float = _var("MF_WORKER_POLL_S", 0.5, "how often a worker looks for leases, preemptions and "
                                                         "cancellations")
    preempt_grace_s: float = _var("MF_PREEMPT_GRACE_S", 60.0, "how long a preempted job may take to checkpoint "
                                                              "before it is killed")
    min_runtime_s: float = _var("MF_PREEMPT_MIN_RUNTIME_S", 60.0, "a job runs at least this long before a policy "
                                                                  "may preempt it")
    price_cpu_hour: float = _var("MF_PRICE_CPU_HOUR", 0.05, "price of one CPU-hour, in the invoice's currency")
    price_gpu_hour: float = _var("MF_PRICE_GPU_HOUR", 2.0, "price of one GPU-hour")
    currency: str = _var("MF_CURRENCY", "USD", "shown on invoices")
    executor: str = _var("MF_EXECUTOR", "local", "where jobs run: `local` processes, or `ray` tasks (at "
                                                 "`RAY_ADDRESS`, else a local Ray)")
    gang_addr: str = _var("MF_GANG_ADDR", "", "this worker's address that other workers reach it at, for the "
                                              "data-parallel gangs it leads (default: 127.0.0.1, one machine)")
    job_kinds: str = _var("MF_JOB_KINDS", "modelfactory.factory.jobkinds", "comma-separated modules that register "
                                                                           "job kinds with the pool")
    # tenants' command jobs (compute/sandbox/) and stage jobs' limits
    allow_unisolated: bool = _var("MF_ALLOW_UNISOLATED", False, "run tenants' commands unisolated where isolation "
                                                                "is impossible (as `--allow-unisolated`)")
    sandbox_bwrap: str = _var("MF_SANDBOX_BWRAP", "", "bubblewrap to use (a path), or `off`; default: `bwrap` on "
                                                      "PATH")
    sandbox_ro_paths: str = _var("MF_SANDBOX_RO_PATHS", "", "`:`-separated extra paths a command may read")
    job_pids_max: float = _var("MF_JOB_PIDS_MAX", 1024.0, "processes a command job may have at once",
                               positive=True)
    job_disk_gb: float = _var("MF_JOB_DISK_GB", 20.0, "disk a command job may fill (GB)", positive=True)
    max_lost_attempts: int = _var("MF_MAX_LOST_ATTEMPTS", 10, "attempts of one job whose worker was lost (killed, "
                                                             "silent past its lease) before the job fails; they do "
                                                             "not count against its max_attempts", positive=True)
    stage_time_limit_s: float = _var("MF_STAGE_TIME_LIMIT_S", 86400.0, "wall-clock limit of a stage or order job "
                                                                       "that sets none (s): killed, failed, not "
                                                                       "retried", positive=True)

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


VARIABLES = {f.metadata["env"]: f for f in fields(Settings)}


def settings() -> Settings:
    """The settings the environment gives now."""
    return _settings(tuple(sorted((k, v) for k, v in os.environ.items() if k in VARIABLES)), os.getcwd())


@lru_cache(maxsize=64)
def _settings(env: tuple[tuple[str, str], ...], cwd: str) -> Settings:
    raw = dict(env)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        text = raw.get(f.metadata["env"], "").strip()
        if text:
            values[f.name] = _parse(f.metadata["env"], text, f.default, f.metadata["positive"])
    home = Path(values.get("home", ".mf")).resolve()
    values["home"] = home
    values["database_url"] = values.get("database_url") or f"sqlite:///{home / 'mf.db'}"
    return Settings(**values)


def _parse(env: str, text: str, default: Any, positive: bool) -> Any:
    if isinstance(default, bool):
        return text.lower() in TRUE
    if isinstance(default, Path):
        return Path(text)
    if isinstance(default, int | float):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (positive and value <= 0):
            raise MFError(f"{env}={text!r}: expected a {'positive ' if positive else ''}number")
        return max(1, int(value)) if isinstance(default, int) else value
    return text
