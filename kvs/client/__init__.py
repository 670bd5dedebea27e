"""Python client for a KVS node: `Client` (blocking) and `AsyncClient` (Trio or asyncio).

    from kvs.client import Client, NotFound

    with Client("http://127.0.0.1:8080", token="...") as kvs:
        written = kvs.put("home/room/socks", {"colour": "red"}, ttl="1h")
        value = kvs.get("home/room/socks")          # Value(key, data, uuid, timestamp)
        kvs.put("home/room/socks", {"colour": "blue"}, if_match=value.uuid)
        for event in kvs.watch("home", since=written.timestamp - 1):
            print(event.key, event.deleted)

The URL defaults to `$KVS_URL`, then http://127.0.0.1:8080; the token to `$KVS_TOKEN`.
Every error answer raises a `KvsError` subclass named after its status (`NotFound`,
`Conflict`, `RateLimited`, ...) carrying the node's JSON error message; an unreachable node
raises `ConnectionFailed`.

Both clients share everything but the I/O: each request is built as a `Call` by a pure
function (method, path, query, headers, body, and how to decode the answer), and the two
clients only send it -- httpx's `Client` or `AsyncClient` (which runs on Trio through anyio).

The package: `env` (where a client finds a node when not told), `errors`, `operations` (the
`calls` namespace, `Call`, the results, URL and token resolution), `events` (a watch's
events), `sync_client` (`Client`) and `async_client` (`AsyncClient`). Its names are loaded on
first use: the CLI reads `kvs.client.env` without loading httpx, which a node never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvs.client.async_client import AsyncClient
    from kvs.client.env import DEFAULT_URL, TOKEN_ENV, URL_ENV
    from kvs.client.errors import (
        BadRequest,
        Conflict,
        ConnectionFailed,
        Forbidden,
        KvsError,
        MethodNotAllowed,
        NotFound,
        PayloadTooLarge,
        PreconditionFailed,
        RateLimited,
        ReadOnly,
        ServerError,
        Syncing,
        Unauthorized,
        Unavailable,
        UnexpectedResponse,
        WatchEnded,
        error_for,
    )
    from kvs.client.events import Event, WatchStream
    from kvs.client.operations import (
        DEFAULT_TIMEOUT,
        WATCH_READ_TIMEOUT,
        Call,
        Value,
        Written,
        calls,
        key_path,
        resolve_token,
        resolve_url,
    )
    from kvs.client.sync_client import Client

_WHERE = {
    "kvs.client.env": ("DEFAULT_URL", "URL_ENV", "TOKEN_ENV"),
    "kvs.client.errors": (
        "KvsError",
        "ConnectionFailed",
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "MethodNotAllowed",
        "Conflict",
        "PreconditionFailed",
        "PayloadTooLarge",
        "RateLimited",
        "Unavailable",
        "ReadOnly",
        "Syncing",
        "ServerError",
        "UnexpectedResponse",
        "WatchEnded",
        "error_for",
    ),
    "kvs.client.events": ("Event", "WatchStream"),
    "kvs.client.operations": (
        "DEFAULT_TIMEOUT",
        "WATCH_READ_TIMEOUT",
        "Call",
        "Value",
        "Written",
        "calls",
        "key_path",
        "resolve_token",
        "resolve_url",
    ),
    "kvs.client.sync_client": ("Client",),
    "kvs.client.async_client": ("AsyncClient",),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Call",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "Event",
    "Forbidden",
    "KvsError",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "RateLimited",
    "ReadOnly",
    "ServerError",
    "Syncing",
    "TOKEN_ENV",
    "URL_ENV",
    "Unauthorized",
    "Unavailable",
    "UnexpectedResponse",
    "Value",
    "WATCH_READ_TIMEOUT",
    "WatchEnded",
    "WatchStream",
    "Written",
    "calls",
    "error_for",
    "key_path",
    "resolve_token",
    "resolve_url",
]


def __getattr__(name: str) -> Any:
    """`kvs.client.Client` and the rest, imported from their module on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
