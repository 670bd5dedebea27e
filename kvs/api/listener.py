"""The HTTP listener: accepts connections and serves each one as its own failure domain.

Rule: nothing a client sends can end the node. Every accepted connection is served by one
`HttpConnection`, whose `run` catches whatever escapes serving it, closes that connection,
counts it and logs it with its traceback (rate-limited: it is a bug to fix). The one
deliberate fatal case is a listening socket that fails for a reason other than a lack of
file descriptors or memory: a node that can no longer accept requests must not pretend to
be up.

Hypercorn's HTTP/1.1 engine (its h11 protocol, request streams and ASGI bridge) does the
protocol work; this module replaces Hypercorn's listener loop and per-connection driver to
add, each found with hostile clients (tests/hostile):

- isolation (above). In Hypercorn's own driver an exception in one connection -- a client
  that half-closes mid-body raced two writers on one socket (`BusyResourceError`) --
  escaped into the server's nursery and ended the node;
- HTTP/1.1 only. HTTP/2 is not tested here as hard as HTTP/1.1 (a malformed `:path` or
  `:method` ended the node), so it is refused cleanly: a prior-knowledge preface gets
  SETTINGS then GOAWAY(HTTP_1_1_REQUIRED), `Upgrade: h2c` is ignored (RFC 9110 lets a
  server ignore Upgrade) and TLS offers only `http/1.1` by ALPN;
- request targets checked before Hypercorn decodes them: origin-form or absolute-form,
  ASCII, percent-escapes that decode to UTF-8; anything else is a JSON 400;
- deadlines. A request head must be complete `header_timeout` after the connection was
  accepted or after the head's first byte; a body `body_timeout` after its head. A late
  client gets 408 and is closed. An idle keep-alive connection closes after
  `keep_alive_timeout`; a client that stops reading is cut by the kernel
  (`FrontConfig.stall_timeout`);
- at most `max_connections` open connections: past that the listener stops accepting until
  one closes, and the kernel's backlog holds the rest.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from itertools import chain
from typing import Any
from urllib.parse import unquote_to_bytes

import h11
import orjson
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr, repr_socket_addr

from kvs.config import Config
from kvs.logs import LogLimiter

log = logging.getLogger("kvs.http")

MAX_RECV = 64 * 1024
LINGER = 2.0  # a closing connection reads (and drops) what the client still sends this long
# Accepting fails this way when the process or the machine is out of a resource; it passes.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CLIENT_GONE = (
    h11.ProtocolError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.BusyResourceError,
)
"""What a send or receive raises when the client broke or left the connection meanwhile: not
a bug here, not worth a log line."""
_PEER_ERRORS = (*CLIENT_GONE, trio.TooSlowError)  # ... or it was too slow
# HTTP/2 frames (RFC 9113 §6.5, §6.8): an empty SETTINGS (the server's preface), then GOAWAY
# with last-stream-id 0 and error code HTTP_1_1_REQUIRED (0xd).
HTTP2_REFUSAL = bytes.fromhex("000000040000000000") + bytes.fromhex(
    "000008070000000000000000000000000d"
)


class FrontConfig(HypercornConfig):
    """Hypercorn's config, with TCP_USER_TIMEOUT on the listening sockets (accepted
    connections inherit it on Linux).

    Hypercorn shields its socket writes from cancellation, so a client that stops reading
    held a write -- and with it a graceful shutdown -- open for ever (measured: a SIGTERM'd
    node still running after 40 s with one such watcher). With this option the kernel
    aborts such a connection (its data unacknowledged, or unsent behind a zero window, for
    `stall_timeout` seconds), the write fails, and the node stops."""

    stall_timeout: float = Config.http_stall_timeout

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is not None:
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(self.stall_timeout * 1000))
        return sockets


@dataclass(frozen=True)
class HttpLimits:
    """How long and how much a client may take; see the module docstring."""

    header_timeout: float = Config.http_header_timeout
    """A request head (line and headers) must be complete this long after the connection
    was accepted, or after its first byte on a kept-alive connection."""
    body_timeout: float = Config.http_body_timeout
    """A request body must be complete this long after its head."""
    keep_alive_timeout: float = 75.0
    """An idle connection between requests is closed after this long."""
    max_connections: int = Config.http_max_connections
    """Open connections at once; more wait in the kernel's backlog."""
    graceful_timeout: float = 10.0
    """On shutdown, requests in flight get this long before their connections are cut."""


@dataclass
class HttpStats:
    """What the HTTP front refused or survived; read by /metrics."""

    connections: int = 0
    open_connections: int = 0
    connection_errors: int = 0  # an unexpected exception ended one connection
    header_timeouts: int = 0
    body_timeouts: int = 0
    http2_refused: int = 0
    bad_requests: int = 0  # refused before the app: bad target, Host, upgrade
    body_budget_refusals: int = 0  # 503: the request-body memory budget was full
    app_errors: int = 0  # an exception escaped the app (answered 500 when possible)
    accept_errors: int = 0  # accept() failed for lack of descriptors or memory
    limiter: LogLimiter = field(default_factory=lambda: LogLimiter(log, burst=5))

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


class _Http2Preface(Exception):
    """The client spoke HTTP/2 with prior knowledge."""


class _BadTarget(Exception):
    """A request target that is neither origin-form nor absolute-form ASCII."""


def check_target(target: bytes) -> str | None:
    """Why a request target cannot be served, or None if it can."""
    if not target.isascii():
        return "the request target must be ASCII (percent-encode other bytes)"
    if target.startswith(b"/"):
        path = target.partition(b"?")[0]
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        path = target.partition(b"://")[2].partition(b"?")[0]
    else:
        return "the request target must be a path starting with '/'"
    try:
        unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return "the request path's percent-escapes must decode to UTF-8"
    return None


def error_bytes(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 JSON error response that closes the connection."""
    body = orjson.dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Http11Only(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol without its switches to HTTP/2, and with the request
    target checked before Hypercorn decodes it as ASCII (a non-ASCII target raised)."""

    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*":
            raise _Http2Preface()
        if check_target(event.target) is not None:
            raise _BadTarget(check_target(event.target))
        # An `Upgrade: h2c` header is ignored: the request is answered over HTTP/1.1.

    async def _send_h11_event(self, event: Any) -> None:
        """Every status line with its reason phrase (`HTTP/1.1 404 Not Found`): Hypercorn
        sends none, which some clients and proxies print as an empty reason."""
        if isinstance(event, h11.Response | h11.InformationalResponse) and not event.reason:
            try:
                reason = HTTPStatus(event.status_code).phrase.encode("ascii")
            except ValueError:
                reason = b""
            if reason:
                event = type(event)(
                    status_code=event.status_code, headers=event.headers.raw_items(), reason=reason
                )
        await super()._send_h11_event(event)

    async def _send_error_response(self, status_code: int) -> None:
        """The parser's own answer to a malformed request. h11 hints 501 for a transfer
        coding it does not implement (`Transfer-Encoding: gzip`); that is bad input here, so
        a 400: a node answers no 5xx for what a client sent."""
        await super()._send_error_response(400 if status_code >= 500 else status_code)


class HttpConnection:
    """One accepted connection, served to the end or closed; never raises (but Cancelled)."""

    def __init__(
        self,
        app: Any,
        config: FrontConfig,
        context: WorkerContext,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        limits: HttpLimits,
        stats: HttpStats,
    ) -> None:
        self.app = app
        self.config = config
        self.context = context
        self.stream = stream
        self.limits = limits
        self.stats = stats
        self.protocol: _Http11Only | None = None
        self._send_lock = trio.Lock()
        self._task_group: TaskGroup | None = None
        self._idle_scope: trio.CancelScope | None = None
        self._closed = False
        self._reading = True
        self._linger_until: float | None = None  # set once the connection is closing

    async def run(self) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        try:
            await self._serve()
        except* _PEER_ERRORS:
            pass  # the client went away or broke the protocol: nothing to report
        except* Exception as group:  # the boundary: this connection ends, the node goes on
            self.stats.connection_errors += 1
            first = group.exceptions[0]
            self.stats.limiter.log(
                logging.WARNING,
                "connection",
                "an HTTP connection ended by an unexpected %s: %s",
                type(first).__name__,
                first,
                exc_info=first,
            )
        finally:
            self.stats.open_connections -= 1
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + 1.0
                await self._close()

    async def _serve(self) -> None:
        accepted_at = trio.current_time()
        if isinstance(self.stream, trio.SSLStream):
            with trio.move_on_after(self.limits.header_timeout) as handshake:
                await self.stream.do_handshake()
            if handshake.cancelled_caught:
                self.stats.header_timeouts += 1
                return
            sock = self.stream.transport_stream.socket
            ssl = True
        else:
            sock = self.stream.socket
            ssl = False
        client = parse_socket_addr(sock.family, sock.getpeername())
        server = parse_socket_addr(sock.family, sock.getsockname())
        async with TaskGroup() as task_group:
            self._task_group = task_group
            self.protocol = _Http11Only(
                self.app,
                self.config,
                self.context,
                task_group,
                ConnectionState({}),
                ssl,
                client,
                server,
                self._protocol_send,
            )
            self._restart_idle_timer()
            await self._read_loop(accepted_at + self.limits.header_timeout)
            # Nothing more will be read: the idle timer has nothing left to guard, and the
            # task group waits only for the app to finish the request in flight, if any.
            self._reading = False
            if self._idle_scope is not None:
                self._idle_scope.cancel()

    async def _read_loop(self, head_deadline: float | None) -> None:
        """Feed the protocol what the client sends, holding the client to its deadlines."""
        assert self.protocol is not None
        body_deadline: float | None = None
        while True:
            if self._linger_until is not None:
                await self._linger()
                return
            deadline, head_deadline, body_deadline = self._deadline(head_deadline, body_deadline)
            with trio.move_on_at(deadline) as timer:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
            if self._linger_until is not None:
                continue  # closing: what arrived meanwhile is discarded
            if timer.cancelled_caught:
                await self._timed_out(head=body_deadline is None)
                return
            try:
                await self.protocol.handle(RawData(bytes(data)))
            except _Http2Preface:
                self.stats.http2_refused += 1
                await self._send_raw(HTTP2_REFUSAL)
                continue  # lingers, then closes
            except _BadTarget as exc:
                self.stats.bad_requests += 1
                await self._send_raw(error_bytes(400, "Bad Request", str(exc)))
                continue
            if not data:
                break
        await self.protocol.handle(Closed())

    def _deadline(
        self, head: float | None, body: float | None
    ) -> tuple[float, float | None, float | None]:
        """(deadline for the next read, head deadline, body deadline) in the current state.

        A head deadline starts at accept (first request) or at the first byte of a later
        head; a body deadline when the head is complete. While the app works on a request
        (or on a WebSocket) the client owes nothing."""
        assert self.protocol is not None
        connection = self.protocol.connection
        if not isinstance(connection, h11.Connection):
            return math.inf, None, None  # an upgraded (WebSocket) connection
        state = connection.their_state
        if state is h11.IDLE:
            if head is None and connection.trailing_data[0]:
                head = trio.current_time() + self.limits.header_timeout
            return (head if head is not None else math.inf), head, None
        if state is h11.SEND_BODY:
            if body is None:
                body = trio.current_time() + self.limits.body_timeout
            return body, None, body
        return math.inf, None, None

    async def _timed_out(self, *, head: bool) -> None:
        """A client too slow with a head or body: 408 if no response has begun, then close."""
        assert self.protocol is not None
        if head:
            self.stats.header_timeouts += 1
        else:
            self.stats.body_timeouts += 1
        connection = self.protocol.connection
        if isinstance(connection, h11.Connection) and connection.our_state in (
            h11.IDLE,
            h11.SEND_RESPONSE,
        ):
            what = "request headers" if head else "request body"
            limit = self.limits.header_timeout if head else self.limits.body_timeout
            message = f"the {what} did not arrive within {limit:g} s"
            await self._send_raw(error_bytes(408, "Request Timeout", message))
        else:
            await self._close()
        await self.protocol.handle(Closed())

    async def _send_raw(self, data: bytes) -> None:
        """Write bytes outside the protocol (a refusal), then close the connection."""
        async with self._send_lock:
            if not self._closed:
                try:
                    with trio.move_on_after(self.limits.header_timeout):
                        await self.stream.send_all(data)
                except _PEER_ERRORS:
                    pass
        await self._close()

    async def _protocol_send(self, event: Event) -> None:
        """What Hypercorn's protocol asks of the connection."""
        assert self.protocol is not None
        if isinstance(event, RawData):
            async with self._send_lock:
                try:
                    # Shielded as Hypercorn does: a response is never cut half-way by a
                    # cancellation; a client that stops reading is cut by the kernel.
                    with trio.CancelScope(shield=True):
                        await self.stream.send_all(event.data)
                except (
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                    trio.BusyResourceError,
                ):
                    await self.protocol.handle(Closed())
        elif isinstance(event, Closed):
            await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            if event.idle:
                self._restart_idle_timer()
            elif self._idle_scope is not None:
                self._idle_scope.cancel()
                self._idle_scope = None

    def _restart_idle_timer(self) -> None:
        if self._idle_scope is not None:
            self._idle_scope.cancel()
        if not self._reading:
            return
        self._idle_scope = trio.CancelScope()
        assert self._task_group is not None
        self._task_group.spawn(self._idle_timeout, self._idle_scope)

    async def _idle_timeout(self, scope: trio.CancelScope) -> None:
        """Close a connection idle for keep_alive_timeout, or at once when the server stops."""
        assert self.protocol is not None
        with scope:
            with trio.move_on_after(self.limits.keep_alive_timeout):
                await self.context.terminated.wait()
            with trio.CancelScope(shield=True):
                await self.protocol.handle(Closed())
                await self._close()

    async def _linger(self) -> None:
        """Read and discard what the client still sends, until it closes or LINGER passes.

        Closing a socket with unread data makes the kernel answer with a reset, and a
        client still sending its body (say, the 29 MiB batch a 503 refused) then loses the
        answer waiting in its receive buffer. So the server first stops writing, then reads
        until the client has seen the answer and closed too (Apache's lingering close)."""
        assert self._linger_until is not None
        with trio.move_on_at(self._linger_until), contextlib.suppress(_PEER_ERRORS):
            while await self.stream.receive_some(MAX_RECV):
                pass

    async def _close(self) -> None:
        """Close the connection: at once, or, while the read loop runs, after it lingers."""
        if self._closed:
            return
        if isinstance(self.stream, trio.SocketStream) and self._linger_until is None:
            self._linger_until = trio.current_time() + LINGER
            with contextlib.suppress(_PEER_ERRORS):
                await self.stream.send_eof()
            if self._reading:
                return  # the read loop lingers, then the connection closes
        self._closed = True
        with contextlib.suppress(_PEER_ERRORS):
            await self.stream.aclose()


async def serve_http(
    app: Any,
    config: FrontConfig,
    limits: HttpLimits,
    stats: HttpStats,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the sockets `config` binds until `shutdown_trigger` returns, then let
    requests in flight finish (at most `limits.graceful_timeout`). Reports the bound URLs."""
    config.alpn_protocols = ["http/1.1"]
    sockets = config.create_sockets()
    listeners: list[trio.SocketListener | trio.SSLListener[trio.SocketStream]] = []
    binds: list[str] = []
    ssl_context = config.create_ssl_context() if sockets.secure_sockets else None
    for sock, secure in chain(
        ((s, True) for s in sockets.secure_sockets), ((s, False) for s in sockets.insecure_sockets)
    ):
        sock.listen(config.backlog)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        if secure:
            assert ssl_context is not None
            listeners.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
        else:
            listeners.append(listener)
        scheme = "https" if secure else "http"
        binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
    asgi = ASGIWrapper(app)
    context = WorkerContext(None)
    slots = trio.Semaphore(limits.max_connections)

    async def serve_one(stream: Any) -> None:
        try:
            await HttpConnection(asgi, config, context, stream, limits, stats).run()
        finally:
            slots.release()

    async def accept_loop(listener: Any, connections: trio.Nursery) -> None:
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise  # the listening socket itself failed: fatal, on purpose
                stats.accept_errors += 1
                stats.limiter.log(
                    logging.WARNING, "accept", "cannot accept HTTP connections: %s", exc
                )
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            connections.start_soon(serve_one, stream)

    async with trio.open_nursery() as connections:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(accept_loop, listener, connections)
            task_status.started(binds)
            await shutdown_trigger()
            accepting.cancel_scope.cancel()
        for listener in listeners:
            await listener.aclose()
        await context.terminated.set()  # idle connections close; busy ones after answering
        connections.cancel_scope.deadline = trio.current_time() + limits.graceful_timeout
