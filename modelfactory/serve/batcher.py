"""Per-model dynamic batching with Triton's knobs: a bounded FIFO queue per model, batches formed from its head
by the model's own thread while the event loop keeps answering HTTP. What each knob does is in docs/serving.md.
A batch that fails with ValueError (one request's bad row) is re-run request by request, so only the requests
at fault get the error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_queue_delay_microseconds: int = 2000
    preferred_batch_size: tuple[int, ...] = ()
    max_queue_size: int = 256
    enabled: bool = True
    eager_idle: bool = True

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 (got {self.max_batch_size})")
        if self.max_queue_delay_microseconds < 0:
            raise ValueError(f"max_queue_delay_microseconds must be >= 0 (got {self.max_queue_delay_microseconds})")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1 (got {self.max_queue_size})")
        bad = [p for p in self.preferred_batch_size if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred batch sizes {bad} are not within 1..max_batch_size ({self.max_batch_size})")

    def with_(self, **changes) -> BatchConfig:
        from dataclasses import replace

        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class QueueFull(Exception):
    """The model's queue is at max_queue_size."""


class TooLarge(ValueError):
    """A request with more rows than max_batch_size."""


class Closed(Exception):
    """The model was unloaded while the request waited."""


@dataclass
class _Pending:
    rows: list[Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    rows: int
    requests: int
    seconds: float  # wall time of the model call


class Batcher:
    """`await submit(rows)` -> (the model's output for those rows, first axis = rows; this request's share of the
    batch's model time, rows / batch rows, for metering).

    `fn(rows)` runs a whole batch and returns an array with one entry per row. The queue is drained by this
    batcher's own thread, which forms the next batch as soon as the last one returns, without waiting for the
    event loop (which meanwhile parses and answers HTTP); results go back to each caller's loop.
    `on_batch(stats)` and `on_depth(requests)` are called on that thread (Prometheus metrics are thread-safe).
    """

    def __init__(self, name: str, fn: Callable[[list[Any]], np.ndarray], config: BatchConfig,
                 on_batch: Callable[[BatchStats], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        self.name = name
        self.fn = fn
        self.config = config
        self.on_batch = on_batch
        self.on_depth = on_depth
        self._queue: deque[_Pending] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._running = 0  # requests in the batch being run
        self._last_requests = 0  # requests in the last batch
        self._thread = threading.Thread(target=self._serve, name=f"mf-batch-{name}", daemon=True)
        self._thread.start()

    # --- public -----------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._running > 0

    async def submit(self, rows: Sequence[Any]) -> tuple[np.ndarray, float]:
        n = len(rows)
        if n > self.config.max_batch_size:
            raise TooLarge(f"request has {n} rows, more than max_batch_size {self.config.max_batch_size}; "
                           f"split it")
        loop = asyncio.get_running_loop()
        item = _Pending(list(rows), loop.create_future(), loop)
        with self._cv:
            if self._closed:
                raise Closed(f"model {self.name} is unloading")
            if len(self._queue) >= self.config.max_queue_size:
                raise QueueFull(f"model {self.name}: queue full ({self.config.max_queue_size} requests waiting); "
                                f"retry later")
            self._queue.append(item)
            depth = len(self._queue)
            self._cv.notify()
        if self.on_depth:
            self.on_depth(depth)
        return await item.future

    async def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)

    # --- the batcher's thread ---------------------------------------------------------------------------
    def _fitting(self) -> tuple[int, int, bool]:
        """(requests, rows) of the longest queue prefix within max_batch_size, and whether it can still grow."""
        cap = self.config.max_batch_size
        count, rows = 0, 0
        for p in self._queue:
            if count and (not self.config.enabled or rows + len(p.rows) > cap):
                return count, rows, False
            count, rows = count + 1, rows + len(p.rows)
        return count, rows, self.config.enabled and rows < cap

    def _ready(self) -> tuple[int, float | None]:
        """How many requests to dispatch now (0: wait), and until when to wait otherwise."""
        count, rows, can_grow = self._fitting()
        if not can_grow or rows in self.config.preferred_batch_size or self._closed:
            return count, None
        deadline = self._queue[0].enqueued + self.config.max_queue_delay_microseconds / 1e6
        if time.perf_counter() >= deadline:
            return count, None
        if self.config.eager_idle and count == 1 and self._last_requests <= 1:
            return count, None
        return 0, deadline

    def _next_batch(self) -> list[_Pending] | None:
        with self._cv:
            while True:
                if not self._queue:
                    if self._closed:
                        return None
                    self._cv.wait()
                    continue
                count, deadline = self._ready()
                if count:
                    batch = [self._queue.popleft() for _ in range(count)]
                    self._running, self._last_requests = len(batch), len(batch)
                    depth = len(self._queue)
                    break
                self._cv.wait(max(0.0, deadline - time.perf_counter()))
        if self.on_depth:
            self.on_depth(depth)
        return batch

    def _serve(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                self._run(batch)
            except BaseException as e:  # never lose the thread: whoever waited gets the error
                for p in batch:
                    _deliver(p, error=e)
            finally:
                self._running = 0

    def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a caller that went away is not run
        if not live:
            return
        rows = [r for p in live for r in p.rows]
        start = time.perf_counter()
        try:
            out = self.fn(rows)
        except ValueError as e:
            if len(live) == 1:
                _deliver(live[0], error=e)
            else:  # someone's row is bad: run each request alone, so only the culprits fail
                for p in live:
                    self._run([p])
            return
        except Exception as e:  # a real failure: every caller of the batch gets it
            for p in live:
                _deliver(p, error=e)
            return
        seconds = time.perf_counter() - start
        if self.on_batch:
            self.on_batch(BatchStats(len(rows), len(live), seconds))
        at = 0
        for p in live:
            part = out[at:at + len(p.rows)]
            at += len(p.rows)
            _deliver(p, result=(part, seconds * len(p.rows) / len(rows)))


def _deliver(p: _Pending, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if p.future.done():  # the caller went away (its request was cancelled)
            return
        if error is not None:
            p.future.set_exception(error)
        else:
            p.future.set_result(result)

    try:
        p.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's loop is closed
        pass
