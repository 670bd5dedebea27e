"""Reading a request: keys, query parameters, TTLs, ETags and bodies, each refused with a
400 (or 413) that says what is wrong. Shared by every endpoint module."""

from __future__ import annotations

import math
from typing import Any

import trio
from quart import request
from werkzeug.exceptions import RequestTimeout

from kvs.api.bodies import parse_json_document
from kvs.api.errors import ApiError
from kvs.model import InvalidKey, parse_duration, validate_key

MAX_TTL_SECONDS = 100 * 365 * 86400  # far beyond any real use, far inside the u64 ms index
TTL_HEADER = "X-KVS-TTL"
MAX_ADMIN_BODY = 64 * 1024  # users, groups, tokens, metadata: small JSON objects


def check_key(key: str) -> str:
    try:
        return validate_key(key)
    except InvalidKey as exc:
        raise ApiError(400, f"invalid key: {exc}", key=key) from None


def parse_ttl(raw: Any, *, what: str = "ttl") -> float | None:
    if raw is None or raw == "":
        return None
    try:
        seconds = parse_duration(raw, what=what)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    # Under 1 ms rounds to an already-expired key; a huge TTL overflowed the expiry index (500).
    if seconds < 0.001:
        raise ApiError(400, f"{what} must be at least 1ms")
    if seconds > MAX_TTL_SECONDS:
        raise ApiError(400, f"{what} must be at most {MAX_TTL_SECONDS} seconds (100 years)")
    return seconds


def int_arg(name: str, default: int, maximum: int, minimum: int = 1) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ApiError(400, f"query parameter {name} must be at least {minimum}")
    return min(value, maximum)


def bool_arg(name: str) -> bool:
    raw = request.args.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"query parameter {name} must be true or false, got {raw!r}")


def etag_value(raw: str) -> str:
    """`If-Match` accepts the ETag as sent (quoted, with or without `W/`) or the bare uuid."""
    value = raw.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


async def read_body(limit: int) -> bytearray:
    """The request body, refused with 413 as soon as it passes `limit` (never fully buffered).

    Quart fixes a body's limit when the request is created (app-wide MAX_CONTENT_LENGTH, set
    to the largest per-endpoint limit), so the per-endpoint limit is enforced here, chunk by
    chunk, whether or not the client sent a Content-Length."""
    request.max_content_length = limit
    too_large = ApiError(413, f"request body is too large; the limit is {limit} bytes")
    length = request.content_length
    if length is not None and length > limit:
        raise too_large
    body = bytearray()
    timeout = request.body_timeout if request.body_timeout is not None else math.inf
    with trio.move_on_after(timeout) as scope:
        async for chunk in request.body:
            body += chunk
            if len(body) > limit:
                raise too_large
    if scope.cancelled_caught:
        raise RequestTimeout()
    return body  # not copied into bytes: a batch body may be tens of MiB


async def object_body(
    allowed: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The JSON object body, with only `allowed` fields of the right types (else 400)."""
    body = parse_json_document(await read_body(MAX_ADMIN_BODY))
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(
            400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    for name in required:
        if name not in body:
            raise ApiError(400, f"field {name!r} is required")
    for name, value in body.items():
        kinds = allowed[name]
        if isinstance(value, bool) and bool not in (
            kinds if isinstance(kinds, tuple) else (kinds,)
        ):
            raise ApiError(400, f"field {name!r} has the wrong type")
        if not isinstance(value, kinds):
            raise ApiError(400, f"field {name!r} has the wrong type")
    return body
