"""The inference server: Open Inference Protocol v2 REST routes over the model repository (FastAPI), so a client
written for OIP v2 calls a registry model unchanged. The routes and their error codes are in docs/serving.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from .auth import Forbidden, RateLimited, Unauthorized, billed_to, caller_tenant, require_admin
from .batcher import BatchConfig, Closed, QueueFull, TooLarge
from .metering import Meter
from .metrics import ServeMetrics
from .protocol import (
    HEADER_LENGTH,
    ProtocolError,
    encode_response,
    match_inputs,
    parse_infer_request,
    rows_for,
    wants_binary,
)
from .repository import ModelNotFound, ModelNotReady, ModelRepository, split_name

log = logging.getLogger("modelfactory.serve")

SERVER_NAME = "modelfactory"
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "metrics"]
DEFAULT_MAX_LOADED = 32


@dataclass
class ServeSettings:
    models: list[str] = field(default_factory=list)  # loaded at startup: name, name@3, name@alias
    batch: BatchConfig = field(default_factory=BatchConfig)
    max_loaded: int | None = None  # None: DEFAULT_MAX_LOADED (a client's loads can never grow without bound)
    max_loaded_bytes: int | None = None
    threads: int | None = None  # onnxruntime intra-op threads per model (None: all cores)
    auth: bool = False
    alias_ttl_s: float = 1.0
    load_on_demand: bool = True
    meter_interval_s: float = 60.0
    max_body_bytes: int = 64 << 20  # every request body, chunked ones included, counted as it streams in
    server_id: str | None = None  # names this process in the usage ledger
    load_limits: BatchConfig | None = None  # the most a client's load `config` may ask (None: the `batch` knobs)


class _Error(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _classify(e: BaseException) -> tuple[int, str]:
    """(HTTP status, message) for an exception; 500 (and a log line with the traceback) only for bugs."""
    if isinstance(e, ProtocolError):
        return e.status, str(e)
    if isinstance(e, _Error):
        return e.status, str(e)
    if isinstance(e, ModelNotFound):
        return 404, str(e)
    if isinstance(e, Unauthorized):
        return 401, str(e)
    if isinstance(e, Forbidden):
        return 403, str(e)
    if isinstance(e, RateLimited):
        return 429, str(e)
    if isinstance(e, TooLarge | ModelNotReady):
        return 400, str(e)
    if isinstance(e, QueueFull | Closed):
        return 503, str(e)
    if isinstance(e, ValueError):  # the model refused an input (e.g. bytes that are not an image)
        return 400, f"bad input: {e}"
    if isinstance(e, StarletteHTTPException):  # the body limit, counted while the body streams in
        return e.status_code, ("request body is larger than this server's limit" if e.status_code == 413
                               else str(e.detail))
    if isinstance(e, ClientDisconnect):  # the client hung up mid-body: nobody to answer and nothing broken
        return 499, "the client closed the connection before its body was read"
    log.error("internal error", exc_info=e)
    return 500, f"internal error: {type(e).__name__}: {e}"


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise _Error(415, f"unsupported Content-Encoding '{encoding}' (gzip, deflate or none)")
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise ProtocolError(f"request body is not valid {encoding} data ({e})") from None
    if len(out) > limit:
        raise _Error(413, f"decompressed request body is larger than {limit} bytes")
    return out


def _parse_config(raw: Any, base: BatchConfig) -> BatchConfig:
    """A Triton model config (JSON string or object) -> the batching knobs it sets."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ProtocolError(f"load: 'config' is not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise ProtocolError("load: 'config' must be a JSON object")
    dyn = raw.get("dynamic_batching")
    try:
        return base.with_(max_batch_size=raw.get("max_batch_size"), enabled=dyn is not None,
                          max_queue_delay_microseconds=(dyn or {}).get("max_queue_delay_microseconds"),
                          preferred_batch_size=tuple((dyn or {}).get("preferred_batch_size") or ()) or None,
                          max_queue_size=((dyn or {}).get("default_queue_policy") or {}).get("max_queue_size"))
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"load: bad config: {e}") from None


def _within(config: BatchConfig, limits: BatchConfig) -> BatchConfig:
    """A client's load config, refused (400) where it asks more than the operator allows."""
    over = [f"{k} {getattr(config, k)} (at most {getattr(limits, k)})"
            for k in ("max_batch_size", "max_queue_size", "max_queue_delay_microseconds")
            if getattr(config, k) > getattr(limits, k)]
    if over:
        raise ProtocolError(f"load: config asks more than this server allows: {', '.join(over)}")
    return config


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    cfg = settings or ServeSettings()
    metrics = ServeMetrics()
    meter = Meter(cfg.server_id, cfg.meter_interval_s)
    max_loaded = cfg.max_loaded if cfg.max_loaded is not None else DEFAULT_MAX_LOADED
    repo = ModelRepository(cfg.batch, max_loaded=max_loaded, max_bytes=cfg.max_loaded_bytes,
                           threads=cfg.threads, alias_ttl_s=cfg.alias_ttl_s, load_on_demand=cfg.load_on_demand,
                           metrics=metrics, meter=meter)
    state = {"ready": False}

    async def flush_loop() -> None:
        while True:
            await asyncio.sleep(cfg.meter_interval_s)
            await asyncio.to_thread(meter.flush)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for ref_str in cfg.models:
            name, tag = split_name(ref_str, None)
            await repo.load(await repo.resolve(name, tag))
        state["ready"] = True
        flusher = asyncio.create_task(flush_loop())
        try:
            yield
        finally:
            state["ready"] = False
            flusher.cancel()
            await repo.close()
            await asyncio.to_thread(meter.flush)

    app = FastAPI(title="modelfactory inference server (Open Inference Protocol v2)", version=__version__,
                  lifespan=lifespan, max_body_size=cfg.max_body_bytes)
    app.state.repository, app.state.metrics, app.state.meter, app.state.settings = repo, metrics, meter, cfg

    # --- errors -----------------------------------------------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else \
            f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        return _error(exc.status_code, str(message))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        return _error(400, f"bad request: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")

    for exc_type in (ProtocolError, _Error, ModelNotFound, Unauthorized, Forbidden, RateLimited, TooLarge,
                     ModelNotReady, QueueFull, Closed, ValueError, Exception):
        @app.exception_handler(exc_type)
        async def _known(request: Request, exc: Exception):
            return _error(*_classify(exc))

    async def caller(request: Request) -> str | None:
        return await caller_tenant(cfg.auth, request.headers.get("authorization"), _client(request))

    async def model_for(request: Request, name: str, version: str | None, load: bool = True):
        tenant = await caller(request)
        base, tag = split_name(name, version)
        ref = await repo.resolve(base, tag, tenant)
        return tenant, ref, (await repo.get(ref) if load else repo.get_loaded(ref))

    async def json_body(request: Request) -> dict:
        body = await request.body()
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"request body is not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise ProtocolError("request body must be a JSON object")
        return doc

    # --- health and metadata ----------------------------------------------------------------------------
    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        if not state["ready"]:
            return JSONResponse({"ready": False, "error": "loading models"}, status_code=503)
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str, version: str | None = None):
        tenant, ref, model = await model_for(request, name, version)
        versions = [str(ref.version)] if version or "@" in name else await repo.versions(ref.name, tenant)
        return model.metadata(versions)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None):
        _, ref, model = await model_for(request, name, version, load=False)
        if model is None:
            return _error(400, f"model '{ref}' is not loaded")
        return {"name": ref.name, "version": str(ref.version), "ready": True}

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(request: Request, name: str, version: str | None = None):
        _, _, model = await model_for(request, name, version)
        return model.triton_config()

    # --- inference --------------------------------------------------------------------------------------
    threads = repo.threads_used()

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None):
        start = time.perf_counter()
        labels, status = ("", ""), 500
        try:
            size = request.headers.get("content-length")
            if size and size.isdigit() and int(size) > cfg.max_body_bytes:
                raise _Error(413, f"request body of {size} bytes is larger than {cfg.max_body_bytes}")
            tenant, ref, model = await model_for(request, name, version)
            labels = (ref.name, str(ref.version))
            body = _decompress(await request.body(), request.headers.get("content-encoding"), cfg.max_body_bytes)
            req, tensors = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
            signature = model.signature
            tensor = match_inputs(signature["inputs"], tensors)
            known = [o["name"] for o in signature["outputs"]]
            asked = [o.name for o in req.outputs] if req.outputs else known
            unknown = [a for a in asked if a not in known]
            if unknown:
                raise ProtocolError(f"unknown output {', '.join(repr(u) for u in unknown)} (this model gives "
                                    f"{', '.join(repr(k) for k in known)})")
            rows = rows_for(signature["inputs"][0], tensor, model.config.max_batch_size)
            probs, share = await model.batcher.submit(rows)
            outputs = [o for o in model.outputs(probs) if o[0] in asked]
            outputs.sort(key=lambda o: asked.index(o[0]))
            content, header_length = encode_response(ref.name, str(ref.version), req.id, outputs,
                                                     [wants_binary(req, o[0]) for o in outputs])
            meter.record(billed_to(cfg.auth, tenant), ref.name, ref.version, len(rows), share * threads)
            metrics.rows.labels(*labels).inc(len(rows))
            status = 200
            if header_length is None:
                return Response(content, media_type="application/json")
            return Response(content, media_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(header_length)})
        except Exception as e:  # every answer, good or bad, is counted under its status below
            status, message = _classify(e)
            return _error(status, message)
        finally:
            metrics.requests.labels(*labels, str(status)).inc()
            if labels[0]:
                metrics.latency.labels(*labels).observe(time.perf_counter() - start)

    # --- the repository ---------------------------------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index(request: Request):
        tenant = await caller(request)
        doc = await json_body(request)
        return await repo.index(tenant, ready_only=bool(doc.get("ready", False)))

    @app.post("/v2/repository/models/{name}/load")
    async def repository_load(request: Request, name: str):
        tenant = await caller(request)
        doc = await json_body(request)
        params = doc.get("parameters") or {}
        base, tag = split_name(name, None)
        ref = await repo.resolve(base, tag, tenant)
        config = _within(_parse_config(params["config"], repo.batch), cfg.load_limits or cfg.batch) \
            if "config" in params else None
        model = await repo.load(ref, config)
        return {"name": ref.name, "version": str(ref.version), "state": "READY",
                "max_batch_size": model.config.max_batch_size}

    @app.post("/v2/repository/models/{name}/unload")
    async def repository_unload(request: Request, name: str):
        tenant = await caller(request)
        await json_body(request)
        base, tag = split_name(name, None)
        if tag:
            ref = await repo.resolve(base, tag, tenant)
            gone = [m for m in [await repo.unload_version(ref)] if m is not None]
        else:
            gone = await repo.unload(base, tenant)
        return {"name": base, "unloaded": [str(m.ref.version) for m in gone]}

    @app.get("/metrics")
    async def prometheus(request: Request):
        await require_admin(cfg.auth, request.headers.get("authorization"), _client(request))  # names every model
        content, content_type = metrics.render()
        return Response(content, media_type=content_type)

    return app


def run(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
        access_log: bool = False) -> None:
    """Serve until interrupted."""
    run_asgi(create_app(settings), host=host, port=port, log_level=log_level, access_log=access_log)


def run_asgi(app: Any, host: str, port: int, log_level: str = "warning", access_log: bool = False) -> None:
    """Any of our ASGI apps under uvicorn (uvloop and httptools when installed), with our log format."""
    import uvicorn

    logging.basicConfig(level=logging.INFO if log_level in ("info", "debug") else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
