"""The network as the rest of KVS sees it: datagrams and byte streams between addresses.

Membership and sync talk only to a `Transport`, never to sockets, so the same protocol code
runs on real UDP/TCP (`RealTransport`, here) and on the deterministic simulated network
(`kvs.net.sim.SimNetwork.transport(...)`), where loss, delay and partitions are injected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

Address = tuple[str, int]
StreamHandler = Callable[[trio.abc.Stream, Address], Awaitable[None]]

MAX_DATAGRAM = 65_507  # what a UDP socket can carry; the protocol keeps far below it


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
        with contextlib.suppress(OSError):  # unreachable peer, full buffer: UDP is best effort
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
            try:
                peer = stream.socket.getpeername()
                async with stream:
                    await handler(stream, (peer[0], peer[1]))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the peer went away: nothing to do, and never a reason to crash the node

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve_one, listeners)
            task_status.started((bound[0], bound[1]))

    async def connect_stream(self, address: Address) -> trio.abc.Stream:
        return await trio.open_tcp_stream(address[0], address[1])
