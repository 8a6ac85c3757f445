"""One error type for the API, turned into a JSON response by one handler."""

from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def conflict(detail: str) -> ApiError:
    return ApiError(409, detail)
