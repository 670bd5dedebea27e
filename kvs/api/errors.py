"""JSON errors: every failure a client can cause answers `{"error": "..."}` with its status."""

from __future__ import annotations

from typing import Any

from quart import Response

from kvs.model import canonical_json
from kvs.store import StoreError


class ApiError(Exception):
    """Raised by handlers; rendered as a JSON error response."""

    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def not_durable(exc: StoreError) -> ApiError:
    """A write the store could not commit (a disk error: EIO, ENOSPC, a failed fsync): nothing
    of it was made durable or visible, so nothing is acknowledged. 503: the client may retry
    (here, or on another node) once the disk is back."""
    return ApiError(
        503,
        f"the write was not made durable ({exc}); nothing was written: retry later",
        {"Retry-After": "1"},
    )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return raw_json_response(canonical_json(body), status, headers)


def raw_json_response(
    data: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    response = Response(data, status=status, content_type="application/json")
    if headers:
        response.headers.update(headers)
    return response


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return json_response({"error": message, **extra}, status, headers)
