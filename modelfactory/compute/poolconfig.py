"""The pool's configuration: `config.settings()` (`MF_POOL_POLICY`, `MF_LEASE_TIMEOUT_S`, `MF_HEARTBEAT_S`,
`MF_SCHEDULE_INTERVAL_S`, `MF_WORKER_POLL_S`, `MF_PREEMPT_GRACE_S`, `MF_PREEMPT_MIN_RUNTIME_S`,
`MF_MAX_LOST_ATTEMPTS`, the prices and `MF_EXECUTOR`: the README's Settings table), with command-line flags
overriding it (`with_`). A module of its own so that jobs, the scheduler and the workers need not import the
server loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import settings


@dataclass(frozen=True)
class PoolConfig:
    policy: str = "fifo"
    lease_timeout_s: float = 30.0
    heartbeat_s: float = 5.0
    schedule_interval_s: float = 1.0
    worker_poll_s: float = 0.5
    preempt_grace_s: float = 60.0
    min_runtime_s: float = 60.0
    price_cpu_hour: float = 0.05
    price_gpu_hour: float = 2.0
    currency: str = "USD"
    executor: str = "local"
    stage_time_limit_s: float = 86400.0  # a stage/order job without its own time limit is killed at this (failed)
    max_lost_attempts: int = 10  # lost attempts (worker gone) a job may have; they do not count toward max_attempts

    def with_(self, **changes) -> PoolConfig:
        """A copy with the given fields changed; None values are ignored (unset command-line flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def pool_config() -> PoolConfig:
    s = settings()
    return PoolConfig(policy=s.pool_policy, lease_timeout_s=s.lease_timeout_s, heartbeat_s=s.heartbeat_s,
                      schedule_interval_s=s.schedule_interval_s, worker_poll_s=s.worker_poll_s,
                      preempt_grace_s=s.preempt_grace_s, min_runtime_s=s.min_runtime_s,
                      price_cpu_hour=s.price_cpu_hour, price_gpu_hour=s.price_gpu_hour, currency=s.currency,
                      executor=s.executor, stage_time_limit_s=s.stage_time_limit_s,
                      max_lost_attempts=s.max_lost_attempts)
