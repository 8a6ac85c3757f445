"""The Optuna dashboard, mounted at ``/`` behind our routes.

optuna-dashboard loads ``/static/...`` by absolute path, so it cannot live under a prefix: it is
mounted last at ``/`` and owns ``/dashboard``, ``/api/studies``, ``/api/trials``, ``/csv`` and
``/static``. It is read-only here (its write routes would bypass our ownership rules: delete a
study, tell a trial), and with token auth it asks for HTTP Basic (any user name, the API token
as password), because its front end never sends bearer tokens.
"""

from __future__ import annotations

from typing import Any

from a2wsgi import WSGIMiddleware
from optuna.storages import BaseStorage
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import principal_for, token_from_header

READ_METHODS = {"GET", "HEAD", "OPTIONS"}


class DashboardGate:
    """Read-only and, with token auth, authenticated access to the mounted dashboard."""

    def __init__(self, app: ASGIApp, storage: Any, require_token: bool) -> None:
        self.app = app
        self.storage = storage
        self.require_token = require_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] not in READ_METHODS:
            response = JSONResponse({"detail": "the dashboard is read-only in tailtune; "
                                     "use /api/v1 to change studies"}, status_code=405)
            return await response(scope, receive, send)
        if self.require_token:
            headers = dict(scope.get("headers") or [])
            token = token_from_header(headers.get(b"authorization", b"").decode("latin-1"))
            if not token or principal_for(self.storage.engine, token) is None:
                response = JSONResponse(
                    {"detail": "sign in with any user name and your API token as password"},
                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="tailtune"'})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def dashboard_app(storage: BaseStorage, artifact_store: Any, require_token: bool) -> ASGIApp:
    from optuna_dashboard import wsgi

    return DashboardGate(WSGIMiddleware(wsgi(storage, artifact_store=artifact_store)), storage,
                         require_token)
