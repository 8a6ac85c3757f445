"""Request bodies that are not readable JSON answer 422 with the reason, like any invalid field.

FastAPI turns a ``json.JSONDecodeError`` into a 422 that names the position, but any other
failure of ``json.loads`` (a body nested deeper than the parser's recursion limit, an integer
of more than 4300 digits, bytes that are not UTF-8) into a bare 400 "There was an error
parsing the body". ``JSONBodyRoute`` reports those as ``JSONDecodeError``s with their reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class JSONBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body)
            except json.JSONDecodeError:
                raise
            except RecursionError:
                raise json.JSONDecodeError("the JSON nests too deeply", "", 0) from None
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})",
                                           "", 0) from None
            except ValueError as exc:  # e.g. an integer with too many digits
                raise json.JSONDecodeError(str(exc), "", 0) from None
        return self._json


class JSONBodyRoute(APIRoute):
    """An ``APIRoute`` whose request parses its JSON body with ``JSONBodyRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(JSONBodyRequest(request.scope, request.receive))

        return route
