"""The ASGI app as Hypercorn sees it: requests in flight are counted and allowed to finish.

Workarounds for how Hypercorn and Quart-Trio interact, each found with real processes (see
tests/integration/test_http_front.py); the class docstring says why each part exists.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

ASGIMessage = dict[str, Any]
ASGISend = Callable[[ASGIMessage], Awaitable[None]]
ASGIReceive = Callable[[], Awaitable[ASGIMessage]]
ASGIApp = Callable[[dict[str, Any], ASGIReceive, ASGISend], Awaitable[None]]

HTTP_GRACE = 10.0  # a graceful shutdown waits this long at most for requests in flight
FINAL_SEND_GRACE = 5.0  # bound on the shielded last send of a response (see HttpFront)


class FrontConfig(HypercornConfig):
    """Hypercorn's config, with TCP_USER_TIMEOUT on the listening sockets (accepted
    connections inherit it on Linux).

    Hypercorn shields its socket writes from cancellation, so a client that stops reading
    held a write -- and with it a graceful shutdown -- open for ever (measured: a SIGTERM'd
    node still running after 40 s with one such watcher). With this option the kernel
    aborts such a connection (its data unacknowledged, or unsent behind a zero window, for
    `stall_timeout` seconds), the write fails, and the node stops."""

    stall_timeout: float = 20.0

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if option is not None:
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, option, int(self.stall_timeout * 1000))
        return sockets


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
      under load took the whole 10 s `graceful_timeout`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no HTTP request is being answered."""
        while self.in_flight:
            await self._idle.wait()

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        if self.in_flight == 1:
            self._idle = trio.Event()
        body_done = False

        async def tracked_receive() -> ASGIMessage:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def drain_body() -> None:
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return

        async def guarded_send(message: ASGIMessage) -> None:
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            with trio.CancelScope(shield=True) as scope_:
                scope_.deadline = trio.current_time() + FINAL_SEND_GRACE
                if body_done or not _has_body(scope):
                    await send(message)
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain_body)
                    await send(message)
                    nursery.cancel_scope.cancel()

        try:
            await self.app(scope, tracked_receive, guarded_send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()


def _has_body(scope: dict[str, Any]) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False
