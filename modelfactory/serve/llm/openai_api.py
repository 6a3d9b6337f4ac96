"""The OpenAI API's generation routes, shapes and errors, as the official clients expect them. Parameters this
server cannot honour are refused with 400 naming them rather than silently ignored; unknown ones are ignored,
as OpenAI-compatible servers do. Routes, parameters and stream format: docs/serve-llm.md.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# --- request shapes --------------------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Generate(BaseModel):
    """What chat and completions share."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    # defined by the API, honoured only at their neutral value (refused otherwise, see UNSUPPORTED)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None
    top_logprobs: int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if isinstance(v, list) and any(not s for s in v) or v == "":
            raise ValueError("stop sequences must not be empty")
        return v

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatCompletionRequest(_Generate):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generate):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    def limit(self) -> int | None:
        return self.max_tokens

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, str):
            return p
        if p and all(isinstance(x, int) for x in p):
            return p  # token ids
        if len(p) != 1:
            raise APIError(400, f"this server completes one prompt per request (got {len(p)})", param="prompt")
        return p[0]  # type: ignore[return-value]


UNSUPPORTED = {  # field -> its neutral value(s)
    "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {}),
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []), "echo": (None, False),
    "suffix": (None, ""), "best_of": (None, 1),
}


def check_supported(req: BaseModel) -> None:
    for name, neutral in UNSUPPORTED.items():
        value = getattr(req, name, None)
        if value not in neutral:
            raise APIError(400, f"'{name}' is not supported by this server", param=name,
                           code="unsupported_parameter")
    fmt = getattr(req, "response_format", None)
    if fmt and fmt.get("type") not in (None, "text"):
        raise APIError(400, "'response_format' other than text is not supported by this server",
                       param="response_format", code="unsupported_parameter")


# --- errors ------------------------------------------------------------------------------------------------------
class APIError(Exception):
    """An answer in OpenAI's error shape."""

    TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
             413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def validation_error(e: ValidationError) -> APIError:
    """400 naming the first bad field as a path (`messages.0.role`), without pydantic's union-branch names."""
    err = e.errors()[0]
    path = [str(p) for p in err["loc"]
            if not (isinstance(p, str) and (p in ("str", "int", "float", "bool") or "[" in p))]
    loc = ".".join(path)
    message = "Field required" if err["type"] == "missing" else err["msg"]
    return APIError(400, f"{loc}: {message}" if loc else message, param=loc or None)


async def json_body(request: Request, max_bytes: int) -> dict[str, Any]:
    body = await request.body()
    if len(body) > max_bytes:
        raise APIError(413, f"request body of {len(body)} bytes is larger than {max_bytes}")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request ({e}). The OpenAI API expects a "
                            f"JSON payload.") from None
    if not isinstance(doc, dict):
        raise APIError(400, "the request body must be a JSON object")
    return doc


# --- responses ---------------------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def router(server: Any) -> APIRouter:
    """The /v1 routes over an `LLMServer` (app.py)."""
    r = APIRouter()

    @r.get("/v1/models")
    async def list_models(request: Request):
        tenant = await server.caller(request)
        return {"object": "list", "data": await server.model_cards(tenant)}

    @r.get("/v1/models/{model:path}")
    async def get_model(request: Request, model: str):
        tenant = await server.caller(request)
        target = await server.target(model, tenant)
        return server.model_card(target)

    @r.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat=True)

    @r.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, chat=False)

    async def generate(request: Request, chat: bool) -> Response:
        arrived = time.perf_counter()
        endpoint = "chat" if chat else "completions"
        label, status = "", 500
        job = None
        try:
            tenant = await server.caller(request)
            doc = await json_body(request, server.settings.max_body_bytes)
            try:
                req = (ChatCompletionRequest if chat else CompletionRequest).model_validate(doc)
            except ValidationError as e:
                raise validation_error(e) from None
            check_supported(req)
            target = await server.target(req.model, tenant)
            label = target.label
            if chat:
                prompt_ids = server.chat_prompt([m.model_dump() | {"content": m.text()} for m in req.messages])
            else:
                prompt_ids = server.text_prompt(req.single_prompt())
            params = server.sampling(req, prompt_ids, chat)
            job = await server.start(target, tenant, prompt_ids, params, arrived)
            status = 200
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                stream = stream_chunks(job, chat, include_usage)
                return StreamingResponse(stream, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            try:
                text = await job.gen.text()
            finally:
                server.finish(job)
            gen = job.gen
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": gen.finish_reason}
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None}, **choice}
            else:
                choice = {"index": 0, "text": text, **choice}
            return JSONResponse({
                "id": new_id(chat), "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": target.label, "system_fingerprint": server.fingerprint,
                "choices": [choice], "usage": usage(gen.prompt_tokens, gen.completion_tokens)})
        except Exception as e:
            err = server.classify(e)
            status = err.status
            if job is not None and not job.finished:
                server.finish(job)
            return err.response()
        finally:
            server.metrics.requests.labels(label, endpoint, str(status)).inc()

    async def stream_chunks(job: Any, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        gen = job.gen
        cid, created = new_id(chat), int(time.time())
        head = {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": job.target.label, "system_fingerprint": server.fingerprint}
        extra = {"usage": None} if include_usage else {}

        def chunk(piece: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                    ({"content": piece} if piece is not None else {})
                c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                c = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            return sse({**head, "choices": [c], **extra})

        try:
            if chat:
                yield chunk(None, None, role=True)
            async for piece in gen.stream():
                yield chunk(piece, None)
            yield chunk(None, gen.finish_reason)
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(gen.prompt_tokens, gen.completion_tokens)})
            yield sse("[DONE]")
        except Exception as e:  # after the 200 went out, an error can only be an event
            yield sse(server.classify(e).body())
        finally:
            server.finish(job)

    return r
