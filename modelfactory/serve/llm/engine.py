"""Continuous (iteration-level) batching of generation requests on ONE copy of a base model, each row with its own
LoRA adapter: a request joins the running batch at the next decode step and a short answer leaves without holding
the long ones back, so many concurrent requests, even for different adapters, cost little more than one.
docs/serve-llm.md describes one engine step; `kvcache.py` how the batch's KV cache is spliced.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .host import BASE, AdapterHost
from .kvcache import BatchCache, check, new_cache
from .text import IncrementalDetokenizer, find_stop, held_back

log = logging.getLogger("modelfactory.serve.llm")


class QueueFull(Exception):
    """More requests are waiting than the engine accepts (503)."""


class EngineClosed(Exception):
    """The engine stopped while the request waited or ran (503)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. temperature 0 is greedy; `stop` strings end the answer and are not part of it;
    `stop_token_ids` end it like EOS does (EOS itself is always one, unless `ignore_eos`)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    seed: int | None = None
    ignore_eos: bool = False


class Generation:
    """One request's handle on the event loop side: `async for text in gen.stream()` yields text pieces as they
    are generated; when it ends, `finish_reason` ("stop" or "length"), `completion_tokens`, `compute_seconds` (this
    request's share of the forwards it was in) and `first_token_at` (perf_counter) are set. `cancel()` drops it
    from the batch at the next step."""

    def __init__(self, prompt_ids: list[int], adapter: str, params: SamplingParams):
        self.prompt_ids = prompt_ids
        self.adapter = adapter
        self.params = params
        self.loop = asyncio.get_running_loop()
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.compute_seconds = 0.0
        self.cancelled = False
        self._queue: asyncio.Queue = asyncio.Queue()

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        self.cancelled = True

    async def stream(self) -> AsyncIterator[str]:
        """The text as it comes. Pieces that are already waiting when the consumer asks come as one (a slow
        consumer, e.g. a busy event loop, then writes fewer, larger chunks instead of falling behind)."""
        done: BaseException | bool = False
        while not done:
            pieces = []
            kind, value = await self._queue.get()
            while True:
                if kind == "text":
                    pieces.append(value)
                else:
                    done = value if kind == "error" else True
                    break
                if self._queue.empty():
                    break
                kind, value = self._queue.get_nowait()
            if pieces:
                yield "".join(pieces)
            if isinstance(done, BaseException):
                raise done

    async def text(self) -> str:
        return "".join([piece async for piece in self.stream()])


@dataclass
class _Seq:
    gen: Generation
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    stops: frozenset[int]
    pending: int = -1  # the last sampled token, fed to the next decode step
    position: int = 0  # tokens this row holds in the cache = its next position id
    text: str = ""  # every stable piece so far
    emitted: int = 0  # characters of `text` handed out (the rest may be the start of a stop string)
    done: bool = False
    events: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class StepStats:
    """One forward of the engine, for metrics: kind "prefill" or "decode", rows in it, wall seconds."""

    kind: str
    rows: int
    seconds: float


class Engine:
    """`submit(prompt_ids, adapter, params)` (on an event loop) -> a `Generation`; the engine's thread does the rest.

    `lock` is held for every forward: take it to change the adapters (AdapterHost.load / delete) between steps.
    `on_step(stats)` is called on the engine thread after every forward.
    """

    def __init__(self, host: AdapterHost, tokenizer: Any, *, max_batch: int = 16, max_waiting: int = 1024,
                 prefill_tokens: int = 4096, eos_token_ids: Iterable[int] = (),
                 context_length: int | None = None, on_step: Callable[[StepStats], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
        self.host = host
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.prefill_tokens = prefill_tokens  # prompt tokens admitted per step (at least one request): bounds the
        # pause a burst of long prompts puts on the running sequences, and the prefill's memory
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        config = host.config
        self.context_length = context_length or int(getattr(config, "max_position_embeddings", None)
                                                     or getattr(config, "n_positions", None) or 1 << 30)
        self.on_step = on_step
        self.lock = threading.RLock()
        self._cv = threading.Condition()
        self._waiting: deque[Generation] = deque()
        self._closed = False
        # the running batch: its rows and their KV cache
        self._rows: list[_Seq] = []
        self._batch = BatchCache()
        self._thread = threading.Thread(target=self._serve, name="mf-llm-engine", daemon=True)
        self._started = False

    # --- public -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the model works this way (one tiny forward), then start the engine thread."""
        with self.lock, torch.inference_mode():
            cache = new_cache(self.host.config)
            dev = self.host.device
            self.host.forward([BASE], input_ids=torch.tensor([[0, 0]], device=dev),
                              attention_mask=torch.ones(1, 2, dtype=torch.long, device=dev),
                              position_ids=torch.tensor([[0, 1]], device=dev), cache=cache, use_cache=True)
            check(cache)
        self._thread.start()
        self._started = True

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, prompt_ids: list[int], adapter: str, params: SamplingParams) -> Generation:
        gen = Generation(list(prompt_ids), adapter, params)
        with self._cv:
            if self._closed:
                raise EngineClosed("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{self.max_waiting} requests are waiting already; retry later")
            self._waiting.append(gen)
            self._cv.notify()
        return gen

    def close(self) -> None:
        """Stop the thread: requests still waiting or running end with EngineClosed."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._started:
            self._thread.join(60)

    # --- the engine thread ------------------------------------------------------------------------------
    def _serve(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                while not self._waiting and not self._rows and not self._closed:
                    self._cv.wait()
                if self._closed:
                    break
                room = self.max_batch - len(self._rows)
                new: list[Generation] = []
                tokens = 0
                while self._waiting and len(new) < room:
                    g = self._waiting[0]
                    if new and tokens + len(g.prompt_ids) > self.prefill_tokens:
                        break
                    self._waiting.popleft()
                    if not g.cancelled:
                        new.append(g)
                        tokens += len(g.prompt_ids)
            with self.lock, torch.inference_mode():
                if new:
                    try:
                        self._prefill(new)
                    except Exception as e:  # only the new requests fail: the running batch is untouched
                        log.exception("prefill failed")
                        _post([(g, ("error", e)) for g in new if g.finish_reason is None])
                if self._rows:
                    try:
                        self._decode()
                    except Exception as e:  # never lose the thread: the requests in flight get the error
                        log.exception("decode step failed")
                        _post([(s.gen, ("error", e)) for s in self._rows if s.gen.finish_reason is None])
                        self._rows = []
                        self._batch.clear()
        closed = EngineClosed("the server is shutting down")
        with self._cv:
            left = list(self._waiting)
            self._waiting.clear()
        _post([(g, ("error", closed)) for g in left] + [(s.gen, ("error", closed)) for s in self._rows])

    def _prefill(self, gens: list[Generation]) -> None:
        """One forward over the new prompts (left-padded to the longest), then their first tokens; the rows join
        the running batch."""
        lengths = [len(g.prompt_ids) for g in gens]
        width = max(lengths)
        ids = torch.zeros(len(gens), width, dtype=torch.long)
        mask = torch.zeros(len(gens), width, dtype=torch.long)
        for i, g in enumerate(gens):
            ids[i, width - lengths[i]:] = torch.tensor(g.prompt_ids, dtype=torch.long)
            mask[i, width - lengths[i]:] = 1
        ids, mask = ids.to(self.host.device), mask.to(self.host.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        cache = new_cache(self.host.config)
        start = time.perf_counter()
        out = self.host.forward([g.adapter for g in gens], input_ids=ids, attention_mask=mask,
                                position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :].float().cpu()  # sampling runs on the CPU (seeded CPU generators)
        seconds = time.perf_counter() - start
        total = sum(lengths)
        rows = []
        for g, n in zip(gens, lengths):
            g.compute_seconds += seconds * n / total
            params = g.params
            generator = None
            if params.temperature > 0:
                generator = torch.Generator().manual_seed(params.seed if params.seed is not None
                                                          else random.getrandbits(63))
            stops = params.stop_token_ids | (frozenset() if params.ignore_eos else self.eos_token_ids)
            rows.append(_Seq(g, IncrementalDetokenizer(self.tokenizer, g.prompt_ids), generator, stops,
                             position=n))
        if self.on_step:
            self.on_step(StepStats("prefill", len(gens), seconds))
        tokens = self._sample(rows, logits)  # before joining: a sampling error fails these requests, not the batch
        self._batch.join(cache, mask)
        self._rows.extend(rows)
        self._advance(rows, tokens)

    def _decode(self) -> None:
        rows = self._rows
        mask = self._batch.grow()
        dev = mask.device
        ids = torch.tensor([[s.pending] for s in rows], dtype=torch.long, device=dev)
        positions = torch.tensor([[s.position] for s in rows], dtype=torch.long, device=dev)
        start = time.perf_counter()
        out = self.host.forward([s.gen.adapter for s in rows], input_ids=ids, attention_mask=mask,
                                position_ids=positions, cache=self._batch.cache, use_cache=True)
        logits = out.logits[:, -1, :].float().cpu()
        seconds = time.perf_counter() - start
        self._batch.commit(mask)
        for s in rows:
            s.position += 1
            s.gen.compute_seconds += seconds / len(rows)
        if self.on_step:
            self.on_step(StepStats("decode", len(rows), seconds))
        self._advance(rows, self._sample(rows, logits))

    def _advance(self, rows: list[_Seq], tokens: list[int]) -> None:
        """Turn each row's sampled token into text, end the rows that are done, and hand out the events."""
        now = time.perf_counter()
        for s, token in zip(rows, tokens):
            if s.gen.cancelled:
                s.done = True
                continue
            g = s.gen
            if g.first_token_at is None:
                g.first_token_at = now
            g.completion_tokens += 1
            s.pending = token
            if token in s.stops:
                self._finish(s, "stop")
                continue
            s.text += s.detok.step(token)
            if self._emit(s):
                continue
            if g.completion_tokens >= g.params.max_tokens or s.position >= self.context_length:
                self._finish(s, "length")  # (the last token cannot be fed back beyond the model's positions)
        events = [(s.gen, event) for s in rows for event in s.events]
        for s in rows:
            s.events.clear()
        _post(events)
        if any(s.done for s in rows):
            keep = [i for i, s in enumerate(self._rows) if not s.done]
            self._batch.keep(keep)
            self._rows = [self._rows[i] for i in keep]

    def _sample(self, rows: list[_Seq], logits: torch.Tensor) -> list[int]:
        banned = [i for i, s in enumerate(rows) if s.gen.params.ignore_eos]
        if banned and self.eos_token_ids:
            logits[torch.tensor(banned)[:, None], torch.tensor(sorted(self.eos_token_ids))[None, :]] = float("-inf")
        tokens = logits.argmax(dim=-1).tolist()
        for i, s in enumerate(rows):
            p = s.gen.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                cumulative = sorted_probs.cumsum(0)
                drop = (cumulative - sorted_probs) >= p.top_p  # keep the smallest set reaching top_p ...
                drop[0] = False  # ... and always the likeliest token (a top_p below float32's range keeps it alone)
                sorted_probs[drop] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = int(torch.multinomial(probs, 1, generator=s.generator).item())
        return tokens

    def _emit(self, s: _Seq) -> bool:
        """Hand out the text that is now certain; True when a stop string ended the row."""
        stops = s.gen.params.stop
        cut = find_stop(s.text, s.emitted, stops)
        if cut is not None:
            s.text = s.text[:cut]
            self._close(s, "stop")
            return True
        end = len(s.text) - held_back(s.text, stops)
        if end > s.emitted:
            s.events.append(("text", s.text[s.emitted:end]))
            s.emitted = end
        return False

    def _finish(self, s: _Seq, reason: str) -> None:
        """End a row (EOS, a stop token or max_tokens): what the detokenizer still held is text too, unless a
        stop string turns up in it."""
        s.text += s.detok.flush()
        cut = find_stop(s.text, s.emitted, s.gen.params.stop)
        if cut is not None:
            s.text, reason = s.text[:cut], "stop"
        self._close(s, reason)

    def _close(self, s: _Seq, reason: str) -> None:
        if len(s.text) > s.emitted:
            s.events.append(("text", s.text[s.emitted:]))
            s.emitted = len(s.text)
        s.done = True
        s.gen.finish_reason = reason
        s.events.append(("done", None))


def _post(items: list[tuple[Generation, tuple[str, Any]]]) -> None:
    """Hand events to their generations' event loops: one thread-safe call per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Generation, tuple[str, Any]]]] = {}
    for item in items:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, batch in by_loop.items():
        def deliver(batch=batch) -> None:
            for gen, event in batch:
                gen._queue.put_nowait(event)

        try:
            loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass
