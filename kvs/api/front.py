"""The outermost ASGI layer: the net under the app, request-body memory, graceful stop.

Every request passes here before Quart or the key fast path sees it: a bad Host or a
WebSocket upgrade is refused, request bodies are held to one node-wide memory budget, an
exception that escapes the app is answered (500) and counted instead of logged with a
traceback per request, and requests in flight are counted so a graceful stop lets them
finish. The class docstring says why each Hypercorn/Quart-Trio workaround exists (each
found with real processes, see tests/integration/test_http_front.py).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio

from kvs.api.listener import CLIENT_GONE, HttpStats
from kvs.config import Config
from kvs.memory import release_free_memory

ASGIMessage = dict[str, Any]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
log = logging.getLogger("kvs.http")
ASGIApp = Callable[[dict[str, Any], ASGIReceive, ASGISend], Awaitable[None]]

FINAL_SEND_GRACE = 5.0
# A request that held at least this much body memory hands what it freed back to the system.
TRIM_AFTER = 1024 * 1024


class HttpFront:
    """The ASGI app as Hypercorn sees it: counts requests in flight and lets each one finish.

    Why each part is here (all found with real processes, see tests/integration):

    - Hypercorn finishes an HTTP/1.1 exchange inside the app's last `http.response.body`
      send: it tells the app `http.disconnect`, then recycles the keep-alive connection
      (restarting its idle timer) or closes the socket when the request body was not read to
      the end (an early 413). Quart-Trio cancels the task making that send as soon as it sees
      `http.disconnect`, which cut Hypercorn off half-way: idle keep-alive connections never
      timed out, and after a 413 on a chunked body the connection hung, answering nothing.
      So that one send runs shielded (bounded by FINAL_SEND_GRACE).
    - Hypercorn hands body chunks to the app through a small bounded queue and puts
      `http.disconnect` on the same queue during that last send. An app that answers without
      reading the whole body (a 413) and stops calling `receive()` could leave the queue full
      and that send blocked for ever; so while it runs, the rest of the body is drained.
    - Graceful shutdown waits for requests in flight (`wait_idle`), not for Hypercorn's
      connection tasks: one of those can miss its wake-up when a client sends more bytes at
      the moment the server stops (Hypercorn's h11 `PAUSED` handling), and then a stop
      under load took the whole 10 s `graceful_timeout`.
    - Every request body is held to one node-wide memory budget (`BodyBudget`): a declared
      body is reserved whole when the app first asks for it (so a request refused before
      its body is read, such as a 401, reserves nothing), a chunked one chunk by chunk.
      Over the budget the app is told the client left, and the client gets 503 with
      Retry-After.
    - The net: an exception that escapes the app is counted, logged (rate-limited) and
      answered with a JSON 500 if no response has begun; a bad Host header or a WebSocket
      upgrade is refused before the app sees it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        body_budget: int = Config.http_body_budget,
        max_body: int = 32 * 1024 * 1024,
        stats: HttpStats | None = None,
    ) -> None:
        self.app = app
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.stats = stats if stats is not None else HttpStats()
        self.budget = BodyBudget(body_budget)
        self.max_body = max_body  # the largest body any endpoint takes (a batch)

    async def wait_idle(self) -> None:
        """Return once no HTTP request is being answered."""
        while self.in_flight:
            await self._idle.wait()

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "websocket":
            with contextlib.suppress(*CLIENT_GONE):  # it may break the handshake meanwhile
                await self._refuse_websocket(scope, send)
            return
        if scope["type"] != "http":
            return  # lifespan: nothing to start or stop
        self.in_flight += 1
        if self.in_flight == 1:
            self._idle = trio.Event()
        try:
            await _Exchange(self, scope, receive, send).run()
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def _refuse_websocket(self, scope: dict[str, Any], send: ASGISend) -> None:
        """No endpoint speaks WebSocket (watch streams are server-sent events)."""
        self.stats.bad_requests += 1
        if "websocket.http.response" in scope.get("extensions", {}):
            body = _error_body("this node serves no WebSocket endpoints; watch uses SSE")
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 404,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})


class _Exchange:
    """One HTTP request as HttpFront passes it to the app (see HttpFront for why)."""

    def __init__(
        self, front: HttpFront, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        self.front = front
        self.scope = scope
        self._receive = receive
        self._send = send
        self.body_done = not _has_body(scope)
        self.response_started = False
        self.over_budget = False
        self.held = 0  # bytes of the budget this request holds
        declared = _content_length(scope)
        self.declared = declared
        # Reserved at the app's first receive(); over every endpoint's limit it is the
        # app's to refuse (413), unread, so nothing is reserved.
        self.unreserved = declared if declared is not None and declared <= front.max_body else 0

    async def run(self) -> None:
        front = self.front
        problem = check_host(self.scope)
        if problem is not None:
            front.stats.bad_requests += 1
            await self.send_error(400, problem)
            return
        if self.unreserved > front.budget.limit:
            # It could never fit: a 413 now, not a 503 "retry" that can never succeed.
            front.stats.bad_requests += 1
            limit = front.budget.limit
            await self.send_error(413, f"request body is too large; the limit is {limit} bytes")
            return
        try:
            await front.app(self.scope, self.receive, self.send)
        except Exception as exc:  # the net under the app: this request ends, the node goes on
            front.stats.app_errors += 1
            front.stats.limiter.log(
                logging.ERROR,
                "app",
                "an HTTP request to %s ended by an unexpected %s: %s",
                _route_name(self.scope),
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            if not self.response_started:
                await self.send_error(500, "internal error; see the node's log")
        finally:
            front.budget.give(self.held)
            if self.held >= TRIM_AFTER:
                release_free_memory()  # the body and what it was parsed into are freed now
            self.held = 0
        if self.over_budget and not self.response_started:
            front.stats.body_budget_refusals += 1
            await self.send_error(
                503,
                "the node holds as many request bodies in memory as it may "
                "(http_body_budget); retry shortly",
                {"retry-after": "1"},
            )

    async def receive(self) -> ASGIMessage:
        """The app's receive(): the client's messages, held to the body budget."""
        budget = self.front.budget
        if self.over_budget:
            return {"type": "http.disconnect"}
        if self.unreserved:
            if not budget.take(self.unreserved):
                self.over_budget = True  # the app sees the client go; run() answers 503
                return {"type": "http.disconnect"}
            self.held, self.unreserved = self.unreserved, 0
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        if self.declared is None and message["type"] == "http.request":
            size = len(message.get("body", b""))
            if not budget.take(size):
                self.over_budget = True
                return {"type": "http.disconnect"}
            self.held += size
        return message

    async def send(self, message: ASGIMessage) -> None:
        """The app's send(): its last body message shielded, the rest of the body drained.

        A client that broke the protocol meanwhile makes Hypercorn's send raise; that is
        the client's doing, not the app's, so the message is dropped as if the client had
        gone, and the app finishes normally."""
        if message["type"] == "http.response.start":
            self.response_started = True
        try:
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await self._send(message)
                return
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + FINAL_SEND_GRACE
                if self.body_done:
                    await self._send(message)
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._drain_body)
                    await self._send(message)
                    nursery.cancel_scope.cancel()
        except* CLIENT_GONE:
            pass

    async def _drain_body(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return

    async def send_error(
        self, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        body = _error_body(message)
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})
        await self.send({"type": "http.response.body", "body": body})


class BodyBudget:
    """Request-body bytes that all requests together may hold in memory at once.

    Each endpoint limits its own body (1 MiB for a value, 32 MiB for a batch), but without a
    shared limit a few concurrent batches held the node's memory ten times over. A request
    that would pass the budget is refused with 503 and Retry-After, before anything is
    written."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


# A Host header: a registered name or IPv4 address (RFC 3986 reg-name characters), or an
# IPv6 literal in brackets, then an optional port. Names longer than DNS allows are refused
# here: further in, encoding one as IDNA raised (a 500).
_HOST = re.compile(
    r"(?:(?P<name>[A-Za-z0-9\-._~!$&'()*+,;=%]{0,253})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{0,5})?"
)


def check_host(scope: dict[str, Any]) -> str | None:
    """Why the request's Host header cannot be served, or None."""
    hosts = [value for name, value in scope["headers"] if name == b"host"]
    if not hosts:
        return None  # HTTP/1.0 (h11 requires Host of HTTP/1.1 requests)
    if len(hosts) > 1:
        return "a request carries one Host header"
    try:
        host = hosts[0].decode("ascii")
    except UnicodeDecodeError:
        return "the Host header must be ASCII (IDNA-encode a name)"
    match = _HOST.fullmatch(host)
    if match is None:
        return "the Host header is not a host name or address with an optional port"
    name = match.group("name")
    if name:
        labels = name.removesuffix(".").split(".")  # a fully qualified name may end in '.'
        if any(len(label) > 63 for label in labels):
            return "a label of the Host header's name is longer than 63 characters"
        if not all(labels):
            return "the Host header's name has an empty label ('a..b' or a leading '.')"
    return None


def _content_length(scope: dict[str, Any]) -> int | None:
    """The declared body length (h11 has checked it is digits), or None for chunked."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) <= 18 else 0
    return None


def _route_name(scope: dict[str, Any]) -> str:
    """The request's first path segment: enough to find the handler, never a key or token."""
    segment = scope.get("path", "").lstrip("/").split("/", 1)[0]
    return "/" + segment[:32]


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def _has_body(scope: dict[str, Any]) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False
