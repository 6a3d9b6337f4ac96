"""The OpenAI-compatible generation server: one base causal LM, many LoRA adapters from the registry, continuous
batching across requests and adapters (engine.py), per-tenant access, usage metering and Prometheus metrics.

`mf serve-llm --base DIR_OR_HUB_ID` runs it; `create_app(LLMSettings(base=...))` gives the ASGI app. The routes
are in openai_api.py, plus `GET /health` and `GET /metrics`.

Metering: every request is one ledger request whose rows are its tokens (prompt + completion) and whose
CPU-seconds are its share of the engine forwards it took part in (a forward's wall time split over its rows, by
prompt length in a prefill) times the threads torch computes with. Requests are billed to the caller's tenant
(an adapter under its `name@version`, the base under the base's name, version 0); calls without auth or with an
admin key are metered under `(anonymous)` / `(admin)`, never a tenant (serve/auth.py). Rows are written in
windows (serve/metering.py), never on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ... import __version__
from ...errors import MFError
from ...registry import ModelRef
from ...tasks.lm_common import CHAT_END, chat_tokenizer
from ...tasks.pretrained import load_error, resolve
from ..auth import Forbidden, RateLimited, Unauthorized, billed_to, caller_tenant, require_admin
from ..metering import Meter
from .adapters import AdapterLoadError, AdapterPool, IncompatibleModel, UnknownModel
from .engine import Engine, EngineClosed, Generation, QueueFull, SamplingParams, StepStats
from .host import BASE, AdapterHost
from .metrics import LLMMetrics
from .openai_api import APIError, router

log = logging.getLogger("modelfactory.serve.llm")

@dataclass
class LLMSettings:
    base: str  # a local Hugging Face model dir or a hub id (tasks.pretrained.resolve)
    base_name: str | None = None  # the `model` that means the bare base (default: the dir's name, or the hub id)
    adapters: list[str] = field(default_factory=list)  # loaded at startup: name, name@3, name@alias
    max_adapters: int = 8
    max_batch: int = 16
    max_waiting: int = 1024
    auth: bool = False
    alias_ttl_s: float = 1.0
    meter_interval_s: float = 60.0
    max_body_bytes: int = 16 << 20
    server_id: str | None = None  # names this process in the usage ledger


@dataclass
class Target:
    """What a request's `model` names: the base (ref None) or an adapter version."""

    label: str  # the base name, or `name@version`
    ref: ModelRef | None = None


@dataclass
class Job:
    target: Target
    gen: Generation
    adapter: str  # its name in the engine (BASE for the base)
    tenant: str  # billed
    arrived: float
    finished: bool = False


class LLMServer:
    """Everything one server holds: the base model and tokenizer, the engine, the adapter pool, auth, metrics."""

    def __init__(self, settings: LLMSettings):
        from transformers import AutoModelForCausalLM

        self.settings = settings
        self.base_name = settings.base_name or _default_name(settings.base)
        try:
            self.tokenizer = chat_tokenizer(settings.base)
            model = AutoModelForCausalLM.from_pretrained(resolve(settings.base), dtype=torch.float32)
        except MFError:
            raise
        except (OSError, ValueError) as e:
            raise load_error(settings.base, e) from None
        model.eval()
        self.config = model.config
        self.context_length = int(getattr(model.config, "max_position_embeddings", None)
                                  or getattr(model.config, "n_positions", None) or self.tokenizer.model_max_length)
        self.metrics = LLMMetrics()
        self.meter = Meter(settings.server_id, settings.meter_interval_s)
        self.auth = settings.auth
        self.fingerprint = f"mf-{__version__}"
        self.engine = Engine(AdapterHost(model), self.tokenizer, max_batch=settings.max_batch,
                             max_waiting=settings.max_waiting, eos_token_ids=self._eos_ids(model),
                             context_length=self.context_length, on_step=self._on_step)
        self.pool = AdapterPool(self.engine, settings.base, max_adapters=settings.max_adapters,
                                alias_ttl_s=settings.alias_ttl_s, on_change=self._on_adapters)
        template = self.tokenizer.chat_template or ""
        self.chat_stops = (CHAT_END,) if CHAT_END in template else ()
        end = self.tokenizer.convert_tokens_to_ids(CHAT_END) if CHAT_END in self.tokenizer.get_vocab() else None
        self.chat_stop_ids = frozenset({end}) if end is not None and CHAT_END in template else frozenset()
        self.threads = torch.get_num_threads()
        self.started = time.time()

    def _eos_ids(self, model: Any) -> set[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids |= set(gen_eos) if isinstance(gen_eos, list) else ({gen_eos} if gen_eos is not None else set())
        return ids

    # --- callbacks from the engine thread and the pool --------------------------------------------------
    def _on_step(self, stats: StepStats) -> None:
        self.metrics.batch_size.labels(stats.kind).observe(stats.rows)
        self.metrics.step_seconds.labels(stats.kind).inc(stats.seconds)
        self.metrics.active.set(self.engine.active)
        self.metrics.waiting.set(self.engine.waiting)

    def _on_adapters(self, loaded: int, what: str) -> None:
        self.metrics.adapters_loaded.set(loaded)
        (self.metrics.adapter_loads if what == "load" else self.metrics.adapter_evictions).inc()

    # --- requests ---------------------------------------------------------------------------------------
    async def caller(self, request: Request) -> str | None:
        return await caller_tenant(self.auth, request.headers.get("authorization"),
                                   request.client.host if request.client else None)

    async def target(self, model: str, tenant: str | None) -> Target:
        if model == self.base_name:
            return Target(self.base_name)
        ref = await self.pool.resolve(model, tenant)
        return Target(str(ref), ref)

    def model_card(self, target: Target) -> dict[str, Any]:
        if target.ref is None:
            return {"id": self.base_name, "object": "model", "created": int(self.started),
                    "owned_by": "modelfactory", "root": self.settings.base, "parent": None,
                    "max_model_len": self.context_length}
        ref = target.ref
        return {"id": ref.name, "object": "model", "created": int(datetime.fromisoformat(ref.created).timestamp()),
                "owned_by": ref.tenant, "root": str(ref), "parent": self.base_name,
                "max_model_len": self.context_length}

    async def model_cards(self, tenant: str | None) -> list[dict[str, Any]]:
        return [self.model_card(Target(self.base_name))] + \
            [self.model_card(Target(str(ref), ref)) for ref in await self.pool.visible(tenant)]

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        from jinja2 import TemplateError

        turns = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                 for m in messages]
        try:
            text = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except TemplateError as e:
            raise APIError(400, f"messages: the model's chat template refused them: {e}", param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            vocab = len(self.tokenizer)
            if any(not 0 <= t < vocab for t in prompt):
                raise APIError(400, f"prompt: token ids must be within 0..{vocab - 1}", param="prompt")
            ids = list(prompt)
        else:
            ids = list(self.tokenizer(prompt)["input_ids"])
        if not ids:  # an empty prompt starts from the beginning-of-text token, as OpenAI's models do
            start = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else \
                self.tokenizer.eos_token_id
            ids = [start if start is not None else 0]
        return ids

    def sampling(self, req: Any, prompt_ids: list[int], chat: bool) -> SamplingParams:
        n = len(prompt_ids)
        asked = req.limit()
        field_name = "messages" if chat else "prompt"
        if n >= self.context_length or (asked is not None and n + asked > self.context_length):
            raise APIError(400, f"This model's maximum context length is {self.context_length} tokens. However, "
                                f"you requested {n + (asked or 0)} tokens ({n} in the {field_name}, {asked or 0} in "
                                f"the completion). Please reduce the length of the {field_name} or completion.",
                           param=field_name, code="context_length_exceeded")
        return SamplingParams(
            max_tokens=asked or self.context_length - n,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=req.stops() + (self.chat_stops if chat else ()),
            stop_token_ids=self.chat_stop_ids if chat else frozenset(),
            seed=req.seed, ignore_eos=req.ignore_eos)

    async def start(self, target: Target, tenant: str | None, prompt_ids: list[int], params: SamplingParams,
                    arrived: float) -> Job:
        adapter = BASE if target.ref is None else await self.pool.acquire(target.ref)
        try:
            gen = self.engine.submit(prompt_ids, adapter, params)
        except Exception:
            if target.ref is not None:
                self.pool.release(adapter)
            raise
        billed = billed_to(self.auth, tenant)
        return Job(target, gen, adapter, billed, arrived)

    def finish(self, job: Job) -> None:
        """The request is over (answered, failed, or its client left): unpin the adapter, count and meter it."""
        if job.finished:
            return
        job.finished = True
        gen = job.gen
        if gen.finish_reason is None:
            gen.cancel()
        if job.target.ref is not None:
            self.pool.release(job.adapter)
        m, label = self.metrics, job.target.label
        m.prompt_tokens.labels(label).inc(gen.prompt_tokens)
        m.generated_tokens.labels(label).inc(gen.completion_tokens)
        if gen.first_token_at is not None:
            m.ttft.labels(label).observe(max(0.0, gen.first_token_at - job.arrived))
        m.duration.labels(label).observe(time.perf_counter() - job.arrived)
        ref = job.target.ref
        self.meter.record(job.tenant, ref.name if ref else self.base_name, ref.version if ref else 0,
                          gen.prompt_tokens + gen.completion_tokens, gen.compute_seconds * self.threads)

    def classify(self, e: BaseException) -> APIError:
        if isinstance(e, APIError):
            return e
        if isinstance(e, Unauthorized):
            return APIError(401, str(e), code="invalid_api_key")
        if isinstance(e, Forbidden):
            return APIError(403, str(e), code="forbidden")
        if isinstance(e, RateLimited):
            return APIError(429, str(e), code="rate_limit_exceeded")
        if isinstance(e, UnknownModel):
            return APIError(404, f"{e}, or you do not have access to it.", param="model", code="model_not_found")
        if isinstance(e, IncompatibleModel):
            return APIError(400, str(e), param="model", code="model_not_supported")
        if isinstance(e, QueueFull | EngineClosed):
            return APIError(503, str(e), code="server_overloaded" if isinstance(e, QueueFull) else "shutting_down")
        if isinstance(e, AdapterLoadError):
            return APIError(500, str(e), param="model", code="adapter_load_failed")
        if isinstance(e, StarletteHTTPException):  # the body limit, counted while the body streams in
            return APIError(e.status_code, f"request body is larger than {self.settings.max_body_bytes} bytes"
                            if e.status_code == 413 else str(e.detail))
        log.error("internal error", exc_info=e)
        return APIError(500, f"internal error: {type(e).__name__}: {e}")


def _default_name(base: str) -> str:
    p = Path(base).expanduser()
    return p.resolve().name if p.is_dir() else base


def create_app(settings: LLMSettings) -> FastAPI:
    server = LLMServer(settings)

    async def flush_loop() -> None:
        while True:
            await asyncio.sleep(settings.meter_interval_s)
            await asyncio.to_thread(server.meter.flush)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(server.engine.start)
        for name in settings.adapters:
            ref = await server.pool.resolve(name, None)
            key = await server.pool.acquire(ref)
            server.pool.release(key)
        flusher = asyncio.create_task(flush_loop())
        try:
            yield
        finally:
            flusher.cancel()
            await asyncio.to_thread(server.engine.close)
            await asyncio.to_thread(server.meter.flush)

    app = FastAPI(title="modelfactory generation server (OpenAI-compatible)", version=__version__,
                  lifespan=lifespan, max_body_size=settings.max_body_bytes)  # chunked bodies counted too
    app.state.llm = server

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
        if exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return APIError(exc.status_code, message).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return APIError(400, f"bad request: {exc.errors()[0]['msg']}").response()

    # Known errors are answered where they happen; the catch-all (Starlette's last resort, which closes the
    # connection after answering) is left for bugs.
    for known in (APIError, MFError, UnknownModel, IncompatibleModel, QueueFull, EngineClosed, Exception):
        @app.exception_handler(known)
        async def _any_error(request: Request, exc: Exception):
            return server.classify(exc).response()

    app.include_router(router(server))

    @app.get("/health")
    async def health():
        loaded = server.pool.loaded  # with auth on, health is open: it counts adapters without naming them
        return {"status": "ok", "base": server.base_name, "adapters_loaded": len(loaded) if server.auth else loaded,
                "active": server.engine.active, "waiting": server.engine.waiting}

    @app.get("/metrics")
    async def prometheus(request: Request):
        from fastapi.responses import Response

        await require_admin(server.auth, request.headers.get("authorization"),  # it names every tenant's adapters
                            request.client.host if request.client else None)
        content, content_type = server.metrics.render()
        return Response(content, media_type=content_type)

    return app


def run(settings: LLMSettings, host: str = "127.0.0.1", port: int = 8001, log_level: str = "warning",
        access_log: bool = False) -> None:
    """Serve until interrupted."""
    from ..app import run_asgi

    run_asgi(create_app(settings), host=host, port=port, log_level=log_level, access_log=access_log)
