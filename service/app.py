"""The FastAPI application factory: ``create_app(settings)``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.artifacts import FileSystemArtifactStore
from starlette.types import ASGIApp, Receive, Scope, Send

import service
from search_spaces.store import StoreUnavailable, make_storage
from service.api.routes import catalogue, health, studies
from service.auth import create_tables
from service.dashboard import dashboard_app
from service.errors import ApiError
from service.settings import Settings


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before anything reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = JSONResponse({"detail": f"request body over {self.limit} bytes"}, status_code=413)
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_big(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    storage = make_storage(settings.database_url)
    create_tables(storage.engine)
    Path(settings.artifacts_dir).mkdir(parents=True, exist_ok=True)

    app = FastAPI(title="tailtune", version="0.1.0", description=service.__doc__,
                  docs_url="/docs", openapi_url="/api/v1/openapi.json")
    app.state.settings = settings
    app.state.storage = storage

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    for router in (studies.router, catalogue.router):
        app.include_router(router, prefix="/api/v1")
    app.include_router(health.router)
    if settings.dashboard:
        app.mount("/", dashboard_app(storage, FileSystemArtifactStore(settings.artifacts_dir),
                                     require_token=settings.auth == "token"))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
