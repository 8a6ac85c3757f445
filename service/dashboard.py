"""The Optuna dashboard, mounted at ``/`` behind our routes.

optuna-dashboard loads ``/static/...`` by absolute path, so it cannot live under a prefix: it is
mounted last at ``/`` and owns ``/dashboard``, ``/api/studies``, ``/api/trials``, ``/csv``,
``/artifacts`` and ``/static``. The gate in front of it keeps our promises there too:

- read-only: its write routes (delete a study, tell a trial, upload artifacts) would bypass
  our ownership rules, so only GET and HEAD pass;
- signed in, with token auth: HTTP Basic with any user name and the API token as password,
  because its front end never sends bearer tokens;
- per team: the study list is filtered to the caller's team, and every route that names a
  study or a trial answers 404 for one of another team;
- 4xx, never 500, for what it would choke on: ids beyond Optuna's 32-bit columns, a
  non-numeric ``after``; and an ASCII ``Content-Disposition`` for the CSV of a study whose
  name is not ASCII (it would send the raw UTF-8 bytes in the header).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote

import sqlalchemy as sa
from a2wsgi import WSGIMiddleware
from optuna.storages import RDBStorage
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_spaces.store import ATTR_SPEC, ATTR_TEAM
from service.auth import LOCAL, principal_for, token_from_header
from service.studies import Principal

READ_METHODS = {"GET", "HEAD"}
# The study id, and a trial id where one follows (``/artifacts/<study>/<trial>/<artifact>``;
# in ``/artifacts/<study>/<artifact>`` the artifact id may start with digits too).
STUDY_PATH = re.compile(r"^/(?:api/studies|csv|artifacts)/([0-9]+)(?:/([0-9]+)(?=/))?")
MAX_ID = 2**31 - 1  # Optuna's id columns are 32-bit; SQLite raises OverflowError beyond
OPEN_PATHS = re.compile(r"^/(?:$|dashboard(?:/.*)?$|api/meta$|favicon\.ico$|static/)")


class DashboardGate:
    def __init__(self, app: ASGIApp, storage: RDBStorage, require_token: bool) -> None:
        self.app = app
        self.storage = storage
        self.require_token = require_token

    def _who(self, scope: Scope) -> Principal | None:
        if not self.require_token:
            return LOCAL
        headers = dict(scope.get("headers") or [])
        token = token_from_header(headers.get(b"authorization", b"").decode("latin-1"))
        return principal_for(self.storage.engine, token) if token else None

    def _visible(self, study_id: int, who: Principal) -> bool:
        if study_id > MAX_ID:
            return False
        try:
            attrs = self.storage.get_study_user_attrs(study_id)
        except KeyError:
            return False
        return ATTR_SPEC in attrs and attrs.get(ATTR_TEAM) == who.team

    def _trial_in_study(self, trial_id: int, study_id: int) -> bool:
        if trial_id > MAX_ID:
            return False
        with self.storage.engine.connect() as conn:
            found = conn.execute(sa.text("SELECT study_id FROM trials WHERE trial_id = :t"),
                                 {"t": trial_id}).scalar()
        return found == study_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if scope["method"] not in READ_METHODS:
            return await _json(405, "the dashboard is read-only in tailtune; use /api/v1 to change "
                               "studies", scope, receive, send)
        who = self._who(scope)
        if who is None:
            return await _json(401, "sign in with any user name and your API token as password",
                               scope, receive, send, {"WWW-Authenticate": 'Basic realm="tailtune"'})
        if path == "/api/studies":
            return await self.app(scope, receive, self._filtered_list(send, who))
        match = STUDY_PATH.match(path)
        if match:
            study_id = int(match.group(1))
            trial_id = match.group(2)
            if not self._visible(study_id, who) or (
                    path.startswith("/artifacts/") and trial_id is not None
                    and not self._trial_in_study(int(trial_id), study_id)):
                return await _json(404, f"study {study_id} not found", scope, receive, send)
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            if any(k == "after" and not (v.isascii() and v.isdigit()) for k, v in query):
                return await _json(400, "query parameter 'after' must be a non-negative integer",
                                   scope, receive, send)
            return await self.app(scope, receive, _ascii_disposition(send))
        if OPEN_PATHS.match(path):
            return await self.app(scope, receive, send)
        return await _json(404, "not found", scope, receive, send)

    def _filtered_list(self, send: Send, who: Principal) -> Send:
        """Buffer the dashboard's study list and drop the studies of other teams."""
        start: dict[str, Any] = {}
        body = bytearray()

        async def filtering_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            data = bytes(body)
            if start.get("status") == 200:
                payload = json.loads(data)
                payload["study_summaries"] = [s for s in payload.get("study_summaries", [])
                                              if self._visible(int(s["study_id"]), who)]
                data = json.dumps(payload).encode()
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data})

        return filtering_send


def _ascii_disposition(send: Send) -> Send:
    """Rewrite a non-ASCII ``Content-Disposition`` file name the RFC 6266 way: UTF-8 and
    percent-encoded in ``filename*``, with an ASCII stand-in in ``filename``."""

    async def rewriting_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = []
            for key, value in message.get("headers", []):
                if key.lower() == b"content-disposition" and not value.isascii():
                    kind, _, rest = value.decode("utf-8", "replace").partition(";")
                    name = rest.strip().removeprefix("filename=").strip('"')
                    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_"
                                       for c in name)
                    value = (f'{kind.strip()}; filename="{fallback}"; '
                             f"filename*=UTF-8''{quote(name, safe='')}").encode("ascii")
                headers.append((key, value))
            message = {**message, "headers": headers}
        await send(message)

    return rewriting_send


async def _json(status: int, detail: str, scope: Scope, receive: Receive, send: Send,
                headers: dict[str, str] | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(scope, receive, send)


def dashboard_app(storage: RDBStorage, artifact_store: Any, require_token: bool) -> ASGIApp:
    from optuna_dashboard import wsgi

    return DashboardGate(WSGIMiddleware(wsgi(storage, artifact_store=artifact_store)), storage,
                         require_token)
