"""Real HTTP requests through a node's ASGI app, in process: no socket, no thread, so they
run on the simulator's clock and replay exactly.

Rule: this file speaks ASGI and nothing else -- it builds the `scope`, feeds the body through
`receive` and collects what the app `send`s. It knows no endpoint and judges no answer.

The callable is the node's whole app as the listener would call it (`node.api.app`: metrics,
watch streams, the single-key fast path, then Quart), so handlers, auth, If-Match and TTL
parsing run as they do in production; only the listener and the front (HTTP/1.1 parsing,
the body budget) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import trio

__all__ = ["AsgiApp", "Response", "Stream", "request", "open_stream"]

AsgiApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _scope(
    method: str, path: str, query: str, headers: Iterable[tuple[str, str]], host: str
) -> dict[str, Any]:
    raw_path = quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(b"host", host.encode())]
        + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("10.9.0.1", 40000),
        "server": (host.rpartition(":")[0] or host, 8000),
        "extensions": {},
    }


async def request(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    host: str = "localhost:8000",
) -> Response:
    """One request, answered whole (not for streams: see `open_stream`)."""
    sent = False
    status = 0
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []
    done = trio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client stays connected until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for k, v in message.get("headers", ()):
                response_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    await app(_scope(method, path, query, headers, host), receive, send)
    done.set()
    return Response(status, response_headers, b"".join(chunks))


@dataclass
class Stream:
    """A streaming answer (a watch): its status and headers, then its body as it comes."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    buffer: bytearray = field(default_factory=bytearray)
    started: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    disconnect: trio.Event = field(default_factory=trio.Event)

    def lines(self) -> list[bytes]:
        """The complete lines received so far (and drop them from the buffer)."""
        *whole, rest = bytes(self.buffer).split(b"\n")
        self.buffer[:] = rest
        return [line for line in whole if line.strip()]


async def open_stream(
    nursery: trio.Nursery,
    app: Any,
    path: str,
    *,
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    host: str = "localhost:8000",
) -> Stream:
    """Start a GET whose answer streams (a watch); returns once its head arrived. Set
    `stream.disconnect` to hang up."""
    stream = Stream()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await stream.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if stream.disconnect.is_set():
            raise OSError("the client hung up")
        if message["type"] == "http.response.start":
            stream.status = message["status"]
            for k, v in message.get("headers", ()):
                stream.headers[k.decode("latin-1").lower()] = v.decode("latin-1")
            stream.started.set()
        elif message["type"] == "http.response.body":
            stream.buffer.extend(message.get("body", b""))
            if not message.get("more_body", False):
                stream.ended.set()

    async def run() -> None:
        try:
            await app(_scope("GET", path, query, headers, host), receive, send)
        except OSError:
            pass
        finally:
            stream.started.set()
            stream.ended.set()

    nursery.start_soon(run)
    await stream.started.wait()
    return stream
