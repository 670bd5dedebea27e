"""The client's exceptions: one `KvsError` subclass per error status, with the node's message,
its JSON body and `.status`; `error_for` picks the one for an answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


class KvsError(Exception):
    """An error answer from the node (or no answer: `status` None)."""

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.headers: dict[str, str] = dict(headers or {})


class ConnectionFailed(KvsError):
    """The node could not be reached, or the connection broke."""


class BadRequest(KvsError):
    status = 400


class Unauthorized(KvsError):
    status = 401


class Forbidden(KvsError):
    status = 403


class NotFound(KvsError):
    status = 404


class MethodNotAllowed(KvsError):
    status = 405


class Conflict(KvsError):
    """A conditional write (`if_match`) found another version; `current_uuid` names it."""

    status = 409

    @property
    def current_uuid(self) -> str | None:
        value = self.body.get("current_uuid")
        return value if isinstance(value, str) else None


PreconditionFailed = Conflict  # the node answers a failed If-Match with 409


class PayloadTooLarge(KvsError):
    status = 413


class RateLimited(KvsError):
    """Too many requests; `retry_after` is how many seconds the node asks to wait."""

    status = 429

    @property
    def retry_after(self) -> float | None:
        try:
            return float(self.headers.get("retry-after", ""))
        except ValueError:
            return None


class Unavailable(KvsError):
    """503: the node refuses writes (`mode` says why) or cannot serve now."""

    status = 503

    @property
    def mode(self) -> str | None:
        value = self.body.get("mode")
        return value if isinstance(value, str) else None


class ReadOnly(Unavailable):
    pass


class Syncing(Unavailable):
    pass


class ServerError(KvsError):
    """A 5xx other than 503."""


class UnexpectedResponse(KvsError):
    """An answer that is not what the API documents (wrong status or not JSON)."""


class WatchEnded(KvsError):
    """The node ended a watch: `reason` is "overflow" (this client read too slowly) or
    "shutdown"; resume with `watch(prefix, since=error.last_id)`."""

    def __init__(self, message: str, *, reason: str | None, last_id: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.last_id = last_id


_BY_STATUS: dict[int, type[KvsError]] = {
    cls.status: cls  # type: ignore[misc]
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        RateLimited,
        Unavailable,
    )
}
_BY_STATUS[412] = Conflict


def error_for(response: httpx.Response) -> KvsError:
    """The typed exception for an error answer, with the node's message."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    message = body.get("error")
    if not isinstance(message, str):
        message = response.text.strip()[:200] or response.reason_phrase
    status = response.status_code
    cls = _BY_STATUS.get(status)
    if cls is Unavailable:
        cls = {"read-only": ReadOnly, "syncing": Syncing}.get(str(body.get("mode")), Unavailable)
    if cls is None:
        cls = ServerError if status >= 500 else KvsError
    return cls(message, status=status, body=body, headers=dict(response.headers))
