"""The network as the rest of KVS sees it: datagrams and byte streams between addresses.

Membership and sync talk only to a `Transport`, never to sockets, so the same protocol code
runs on real UDP/TCP (`RealTransport`, here) and on the deterministic simulated network
(`kvs.testing.network.SimNetwork.transport(...)`), where loss, delay and partitions are injected.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import trio

from kvs.logs import LogLimiter
from kvs.net.codec import WireError

log = logging.getLogger(__name__)

Address = tuple[str, int]
StreamHandler = Callable[[trio.abc.Stream, Address], Awaitable[None]]

MAX_DATAGRAM = 65_507  # what a UDP socket can carry; the protocol keeps far below it
SEND_TIMEOUT = 1.0  # a datagram to a name the resolver is slow to answer is given up after this

PEER_IO_ERRORS: Final = (
    OSError,
    WireError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.EndOfChannel,
    trio.ClosedResourceError,
)
"""What ends a session with a peer without being a bug here: the connection failed or broke,
the peer was too slow, went away, or sent what the wire codec refuses. Caught at every
boundary where one peer's input enters (a datagram, a push-pull, a sync connection), counted
there, and never allowed to end the node. Anything else raised at those boundaries is
unexpected: it is caught there too, but counted apart and logged with its traceback."""


def expected_error(exc: BaseException, expected: tuple[type[BaseException], ...]) -> Any:
    """The first of the `expected` errors that `exc` consists of, or None if any part of it
    is something else. Looks inside exception groups: a Trio nursery wraps even a single
    error of one of its tasks in one (strict exception groups)."""
    if isinstance(exc, BaseExceptionGroup):
        first = None
        for inner in exc.exceptions:
            found = expected_error(inner, expected)
            if found is None:
                return None
            first = first or found
        return first
    return exc if isinstance(exc, expected) else None


class DatagramEndpoint(Protocol):
    """A bound datagram socket."""

    @property
    def address(self) -> Address: ...

    async def send(self, data: bytes, to: Address) -> None:
        """Send one datagram; best effort (a lost datagram is not an error)."""

    async def receive(self) -> tuple[bytes, Address]:
        """The next datagram and its sender's address."""

    def close(self) -> None: ...


class Transport(Protocol):
    async def bind_datagram(self, address: Address) -> DatagramEndpoint:
        """Bind a datagram endpoint (port 0: any free port)."""

    async def serve_stream(
        self,
        address: Address,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept stream connections on `address` until cancelled, running `handler(stream,
        peer)` for each in its own task; report the bound address through task_status."""

    async def connect_stream(self, address: Address) -> trio.abc.Stream:
        """Open a stream to `address`; raises OSError when it cannot be reached."""


class _UdpEndpoint:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._address: Address = (host, port)

    @property
    def address(self) -> Address:
        return self._address

    async def send(self, data: bytes, to: Address) -> None:
        # Unreachable peer, full buffer, a name that does not resolve (ValueError: the IDNA
        # codec refuses some before the resolver sees them; OverflowError: a port out of
        # range), a resolver that does not answer: UDP is best effort, and a datagram lost
        # is never an error. (The wire codec refuses all of those before they get here.)
        suppressed = (OSError, ValueError, OverflowError)
        with trio.move_on_after(SEND_TIMEOUT), contextlib.suppress(*suppressed):
            await self._sock.sendto(data, to)

    async def receive(self) -> tuple[bytes, Address]:
        while True:
            try:
                data, addr = await self._sock.recvfrom(MAX_DATAGRAM)
            except ConnectionError:
                continue  # ICMP port unreachable from an earlier send on Linux
            return data, (addr[0], addr[1])

    def close(self) -> None:
        self._sock.close()


class RealTransport:
    """UDP and TCP on the host's network stack, through trio sockets."""

    def __init__(self) -> None:
        self._errors = LogLimiter(log)

    async def bind_datagram(self, address: Address) -> DatagramEndpoint:
        family = trio.socket.AF_INET6 if ":" in address[0] else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        try:
            await sock.bind(address)
        except OSError:
            sock.close()
            raise
        return _UdpEndpoint(sock)

    async def serve_stream(
        self,
        address: Address,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(address[1], host=address[0])
        bound = listeners[0].socket.getsockname()

        async def serve_one(stream: trio.SocketStream) -> None:
            # The handler owns its connection's failures (it counts them); what still gets
            # here ends this connection only, never the node.
            try:
                peer = stream.socket.getpeername()
                async with stream:
                    await handler(stream, (peer[0], peer[1]))
            except Exception as exc:
                if expected_error(exc, PEER_IO_ERRORS) is None:
                    self._errors.log(
                        logging.ERROR,
                        "handler",
                        "a connection handler failed unexpectedly",
                        exc_info=True,
                    )

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve_one, listeners)
            task_status.started((bound[0], bound[1]))

    async def connect_stream(self, address: Address) -> trio.abc.Stream:
        try:
            return await trio.open_tcp_stream(address[0], address[1])
        except (ValueError, OverflowError) as exc:  # a name the IDNA codec refuses, a port
            # out of range: as unreachable as any other address
            raise OSError(f"cannot connect to an invalid address: {exc}") from None
