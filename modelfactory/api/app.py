"""The control plane's FastAPI app: the `/api/v1` routers, one error shape, and the dashboard's static files."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import MFError, NotFound
from .errors import HTTPError, error, field_errors
from .routes import datasets, jobs, models, orders, pool, tasks, tenants, usage

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("modelfactory.api")


def create_app() -> FastAPI:
    """The app; MF_UPLOAD_MAX_MB (read now) caps every request body, uploads included, while it streams in."""
    app = FastAPI(title="modelfactory control plane", version=__version__, docs_url=None, redoc_url=None,
                  max_body_size=datasets.upload_limit(),
                  description="Tenants and API keys, datasets, orders, jobs, models and usage of the factory. "
                              "Send `Authorization: Bearer <api key>`; a tenant's key sees only its own resources.")

    @app.exception_handler(HTTPError)
    async def _http(request: Request, exc: HTTPError):
        return error(exc.status, str(exc), **exc.extra)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return error(404, str(exc))

    @app.exception_handler(MFError)
    async def _bad(request: Request, exc: MFError):  # 400, or the status the error names (403, 409, 429)
        status = getattr(exc, "status", 400)
        return error(status if isinstance(status, int) and 400 <= status < 500 else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        fields = field_errors(exc.errors())
        first = fields[0] if fields else {"loc": "", "msg": "invalid request"}
        return error(422, f"bad request: {first['loc']}: {first['msg']}", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        elif exc.status_code == 413:  # counted while the body streams in, chunked bodies too
            message = f"request body larger than {datasets.upload_limit() / 1e6:g} MB (MF_UPLOAD_MAX_MB)"
        return error(exc.status_code, message)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):  # nobody to answer, nothing broken: not a bug
        log.info("%s %s: the client closed the connection before its body was read", request.method,
                 request.url.path)
        return error(499, "the client closed the connection before its body was read")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    for module in (tenants, datasets, orders, jobs, models, usage, pool, tasks):
        app.include_router(module.router, prefix="/api/v1")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _docs(app)

    @app.get("/", include_in_schema=False)
    def dashboard():
        index = STATIC / "index.html"
        if not index.is_file():
            return error(404, "the dashboard's files are missing from this install")
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    return app


def _docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its assets served from the fastapi-offline package: no CDN at run time."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html

    assets = files("fastapi_offline") / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="modelfactory API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")
