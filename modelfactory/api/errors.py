"""HTTP errors of the control plane. Every error answers `{"error": "<one line a person can act on>"}`, plus
details where they help: a failed validation (422) adds `"fields": [{"loc": "targets.max_size_mb", "msg": ...}]`,
an upload with bad rows adds `"rows": [{"where": "data.csv:14", "message": "empty text"}]`."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ..errors import MFError


class HTTPError(MFError):
    status = 400

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.extra = extra


class Unauthorized(HTTPError):
    status = 401


class Forbidden(HTTPError):
    status = 403


class TooManyRequests(HTTPError):
    status = 429


class Invalid(HTTPError):
    """Field-level validation errors: `fields` = [{"loc", "msg"}]."""

    status = 422


def error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def field_errors(errors) -> list[dict]:
    out = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:] or loc
        out.append({"loc": ".".join(loc), "msg": str(e.get("msg", "")).removeprefix("Value error, ")})
    return out
