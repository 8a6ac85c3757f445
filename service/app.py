"""The FastAPI application factory: ``create_app(settings)``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import StorageInternalError
from starlette.types import ASGIApp, Receive, Scope, Send

import service
from search_spaces.store import StoreUnavailable, is_transient_store_error, make_storage
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
        too_big = f"request body over {self.limit} bytes"
        if length is not None and not length.isdigit():
            response = JSONResponse({"detail": "the Content-Length header is not a number"},
                                    status_code=400)
            return await response(scope, receive, send)
        if length is not None and int(length) > self.limit:
            return await JSONResponse({"detail": too_big}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            # A body sent without Content-Length (chunked) is counted as it arrives. FastAPI
            # turns any other exception raised while it reads a body into a bare 400, but lets
            # an HTTPException through to its handler.
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, too_big)
            return message

        await self.app(scope, limited_receive, send)


def _safe_text(value: str, limit: int) -> str:
    """``value`` as encodable UTF-8 (lone surrogates, which JSON's ``\\ud800`` escapes can
    produce, written as escapes) and cut to ``limit`` characters."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def validation_error(error: dict[str, Any]) -> dict[str, Any]:
    """One entry of a 422: where (``loc``), why (``msg``) and the pydantic ``type``.

    The location and message can echo what the client sent (a key, a name); they are made
    safe to encode and cut short. A JSON syntax error also gets the parser's reason, which
    pydantic keeps in ``ctx``.
    """
    msg = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and reason:
        msg = f"{msg}: {reason}"
    loc = [_safe_text(p, 200) if isinstance(p, str) else p for p in error.get("loc", ())]
    return {"loc": loc, "msg": _safe_text(msg, 1000), "type": error.get("type")}


def connections_of(engine: sa.Engine) -> int | None:
    """How many connections the engine's pool hands out at most (None: no such limit).

    ``QueuePool`` keeps ``size()`` connections and opens up to ``_max_overflow`` more (no public
    accessor for that one).
    """
    pool = engine.pool
    if not isinstance(pool, sa.pool.QueuePool):
        return None
    return pool.size() + max(0, pool._max_overflow)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    storage = make_storage(settings.database_url)
    create_tables(storage.engine)
    Path(settings.artifacts_dir).mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Routes and dependencies are plain functions that run in anyio's thread pool, 40
        # threads by default. With more threads than pooled connections, a burst of requests
        # made threads wait for a connection until the pool's timeout and answer 500; with no
        # more threads than connections a request waits for a thread instead, without a limit.
        limit = connections_of(storage.engine)
        if limit is not None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = limit
        yield

    app = FastAPI(title="tailtune", version="0.1.0", description=service.__doc__,
                  docs_url="/docs", openapi_url="/api/v1/openapi.json", lifespan=lifespan)
    app.state.settings = settings
    app.state.storage = storage

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    async def store_error(_: Request, exc: Exception) -> JSONResponse:
        """A database that is restarting or out of reach: 503, so clients know to retry."""
        if is_transient_store_error(exc):
            return JSONResponse({"detail": "the store is unavailable; try again shortly "
                                           f"({exc.__class__.__name__})"},
                                status_code=503, headers={"Retry-After": "5"})
        raise exc

    app.add_exception_handler(sa.exc.SQLAlchemyError, store_error)
    app.add_exception_handler(StorageInternalError, store_error)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [validation_error(e) for e in exc.errors()]}, status_code=422)

    for router in (studies.router, catalogue.router):
        app.include_router(router, prefix="/api/v1")
    app.include_router(health.router)
    if settings.dashboard:
        app.mount("/", dashboard_app(storage, FileSystemArtifactStore(settings.artifacts_dir),
                                     require_token=settings.auth == "token"))
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
