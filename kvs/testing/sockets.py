"""What a simulated host binds on a `kvs.testing.network.SimNetwork`: its `SimTransport` (the
`Transport` that membership and sync see), datagram endpoints and stream ends.

Stream semantics (TCP without its corner cases): a connection costs one round trip; bytes
arrive in order after the link latency (jitter, never loss or duplication). A partition between
the two hosts (either direction) or a crash of either host *severs* the connection for good:
from then on nothing is delivered in either direction, the survivor's `send_all` succeeds and
its bytes vanish, and its `receive_some` blocks until the caller's own timeout fires, exactly
like a TCP peer that went silent. The crashed side's own stream ends raise
`trio.BrokenResourceError`. A healed partition does not revive a severed connection.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Protocol

import trio

from kvs.net.transport import (
    MAX_DATAGRAM,
    PEER_IO_ERRORS,
    Address,
    StreamHandler,
    expected_error,
)

__all__ = [
    "HostCounters",
    "HostState",
    "Connection",
    "Listener",
    "SimDatagramEndpoint",
    "SimStream",
    "SimTransport",
    "serve_one",
]

WILDCARD_HOSTS = ("", "0.0.0.0", "::")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_RECEIVE_SIZE = 65536


FIRST_EPHEMERAL_PORT = 49152
LAST_PORT = 65535


class Wire(Protocol):
    """What the endpoints here ask of the network that carries them (kvs.testing.network
    `SimNetwork`), typed structurally: this module does not import the network's."""

    queue_size: int
    _connections: dict[int, Connection]

    def _host(self, name: str) -> HostState: ...

    def _schedule(self, at: float, action: Callable[[], None]) -> None: ...

    def _drop(
        self, sender: HostState, src: Address, dst: Address, size: int, reason: str
    ) -> None: ...

    def _send_datagram(self, sender: HostState, port: int, data: bytes, to: Address) -> None: ...

    async def _connect(self, client: HostState, boot: int, to: Address) -> SimStream: ...

    def _send_stream(self, end: SimStream, data: bytes) -> None: ...

    def _stream_arrival(self, end: SimStream) -> float: ...


@dataclass(slots=True)
class HostCounters:
    """Traffic seen by one host. Datagrams: sent + duplicated == delivered + dropped + in flight,
    where `dropped` is charged to the sender and `delivered` to the receiver."""

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_duplicated: int = 0  # extra copies the network made of this host's datagrams
    datagrams_dropped: int = 0  # this host's datagrams (copies) that never reached a queue
    datagrams_delivered: int = 0  # datagrams put into this host's receive queues
    bytes_delivered: int = 0
    receive_overflows: int = 0  # datagrams for this host dropped because a queue was full
    streams_opened: int = 0  # successful connect_stream calls from this host
    stream_connect_failures: int = 0
    stream_bytes_sent: int = 0
    stream_bytes_delivered: int = 0


@dataclass(eq=False, slots=True)
class HostState:
    """One host of the network: its counters, whether it is up (and which boot), what it
    has bound, and the cancel scopes a crash cancels."""

    name: str
    counters: HostCounters = field(default_factory=HostCounters)
    up: bool = True
    boot: int = 0
    next_port: int = FIRST_EPHEMERAL_PORT
    datagrams: dict[int, SimDatagramEndpoint] = field(default_factory=dict)
    listeners: dict[int, Listener] = field(default_factory=dict)
    scopes: list[trio.CancelScope] = field(default_factory=list)
    held_until: float = 0.0  # paused (`SimNetwork.pause`): its traffic waits until then

    def allocate_port(self, in_use: Container[int]) -> int:
        """Deterministic ephemeral ports: count upwards, wrap, skip what is taken."""
        span = LAST_PORT - FIRST_EPHEMERAL_PORT + 1
        for _ in range(span):
            port = self.next_port
            self.next_port = FIRST_EPHEMERAL_PORT + (port + 1 - FIRST_EPHEMERAL_PORT) % span
            if port not in in_use:
                return port
        raise OSError(errno.EADDRINUSE, f"no free port on {self.name}")


@dataclass(eq=False, slots=True)
class Listener:
    """A listening port of a host: the handler, and the nursery its connections run in."""

    handler: StreamHandler
    nursery: trio.Nursery


@dataclass(eq=False, slots=True)
class Connection:
    """One simulated TCP connection: its two ends; severed for good by a partition or crash."""

    net: Wire
    id: int
    a_address: Address
    b_address: Address
    a: SimStream = field(init=False)
    b: SimStream = field(init=False)
    severed: bool = False

    def __post_init__(self) -> None:
        self.a = SimStream(self, self.a_address[0], self.b_address)
        self.b = SimStream(self, self.b_address[0], self.a_address)
        self.a._peer = self.b
        self.b._peer = self.a

    def sever(self, crashed: str | None = None) -> None:
        """Stop all delivery for good; the ends on a crashed host break."""
        self.severed = True
        for end in (self.a, self.b):
            if end.host == crashed:
                end._broken = True
                end._lot.unpark_all()
        self.forget_if_done()

    def forget_if_done(self) -> None:
        if self.severed or (self.a._closed and self.b._closed):
            self.net._connections.pop(self.id, None)


class SimStream(trio.abc.Stream):
    """One end of a simulated TCP connection; see the module docstring for failure semantics."""

    def __init__(self, conn: Connection, host: str, peer_address: Address) -> None:
        self._conn = conn
        self.host = host
        self.peer_address = peer_address
        self._peer: SimStream = self
        self._inbox = bytearray()
        self._eof = False
        self._closed = False
        self._broken = False
        self._sending = False
        self._receiving = False
        self._last_arrival = -math.inf
        self._lot = trio.lowlevel.ParkingLot()

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._broken:
            raise trio.BrokenResourceError(f"host {self.host} crashed")

    def _arrive(self, data: bytes | None) -> None:
        """Called by the wire at arrival time; None is the peer's close (EOF)."""
        if self._conn.severed or self._closed or self._broken:
            return
        if data is None:
            self._eof = True
        else:
            self._inbox += data
            self._conn.net._host(self.host).counters.stream_bytes_delivered += len(data)
        self._lot.unpark_all()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_usable()
            if self._peer._closed and not self._conn.severed:
                raise trio.BrokenResourceError("the peer closed the connection")
            if data:
                self._conn.net._send_stream(self, bytes(data))
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_usable()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            # One schedule point either way: a checkpoint when there is something to return
            # at once, else the park itself (cancellable too), not a checkpoint and then a
            # park -- half the task steps of a simulated connection that mostly waits.
            if self._inbox or self._eof:
                await trio.lowlevel.checkpoint()
            while True:
                self._check_usable()
                if self._inbox:
                    chunk = bytes(self._inbox[:max_bytes])
                    del self._inbox[:max_bytes]
                    return chunk
                if self._eof:
                    return b""
                await self._lot.park()
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._lot.unpark_all()  # a blocked receive_some in another task raises Closed
            conn = self._conn
            if not (conn.severed or self._broken or self._peer._closed):
                net = conn.net
                net._schedule(net._stream_arrival(self), lambda: self._peer._arrive(None))
            conn.forget_if_done()
        await trio.lowlevel.checkpoint()


async def serve_one(handler: StreamHandler, stream: SimStream, peer: Address) -> None:
    """As in RealTransport: a peer going away is never a reason to crash the node. Unlike
    RealTransport, anything unexpected is raised, to fail the simulation that found it."""
    try:
        async with stream:
            await handler(stream, peer)
    except Exception as exc:
        if expected_error(exc, PEER_IO_ERRORS) is None:
            raise


class SimDatagramEndpoint:
    """A bound simulated UDP socket with a bounded receive queue (overflow drops and counts).

    After `close()` both calls raise `trio.ClosedResourceError`. After a crash of its host,
    `send` silently drops (a dead host emits nothing, even from cleanup code) and `receive`
    raises `trio.ClosedResourceError` unless the task was already cancelled by `host_scope`.
    """

    def __init__(self, net: Wire, host: HostState, port: int) -> None:
        self._net = net
        self._host = host
        self._address: Address = (host.name, port)
        self._inbox_send, self._inbox = trio.open_memory_channel[tuple[bytes, Address]](
            net.queue_size
        )
        self._closed = False
        self._crashed = False

    @property
    def address(self) -> Address:
        return self._address

    async def send(self, data: bytes, to: Address) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("datagram endpoint was closed")
        if len(data) > MAX_DATAGRAM:
            raise OSError(errno.EMSGSIZE, f"datagram of {len(data)} bytes is too long")
        if self._crashed:
            self._host.counters.datagrams_sent += 1
            self._host.counters.bytes_sent += len(data)
            self._net._drop(self._host, self._address, to, len(data), "sender-down")
            return
        self._net._send_datagram(self._host, self._address[1], bytes(data), to)

    async def receive(self) -> tuple[bytes, Address]:
        return await self._inbox.receive()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._host.datagrams.get(self._address[1]) is self:
            del self._host.datagrams[self._address[1]]
        self._inbox.close()
        self._inbox_send.close()

    def _crash(self) -> None:
        self._crashed = True
        self._inbox.close()  # wakes a blocked receive with ClosedResourceError
        self._inbox_send.close()


class SimTransport:
    """The `Transport` of one boot of one simulated host. Binding to the host's own name, a
    wildcard or loopback is allowed; loopback destinations mean the host itself."""

    def __init__(self, net: Wire, host: HostState, boot: int) -> None:
        self._net = net
        self._host = host
        self._boot = boot

    @property
    def host(self) -> str:
        return self._host.name

    def _check_up(self) -> HostState:
        host = self._host
        if not host.up or host.boot != self._boot:
            raise OSError(errno.ENETDOWN, f"host {host.name} crashed (this transport is stale)")
        return host

    def _local_port(self, address: Address, in_use: Container[int]) -> int:
        host = self._host
        if address[0] not in (host.name, *WILDCARD_HOSTS, *LOOPBACK_HOSTS):
            raise OSError(errno.EADDRNOTAVAIL, f"{address[0]} is not an address of {host.name}")
        port = address[1]
        if port == 0:
            return host.allocate_port(in_use)
        if port in in_use:
            raise OSError(errno.EADDRINUSE, f"{host.name}:{port} is already bound")
        return port

    async def bind_datagram(self, address: Address) -> SimDatagramEndpoint:
        await trio.lowlevel.checkpoint()
        host = self._check_up()
        port = self._local_port(address, host.datagrams)
        endpoint = SimDatagramEndpoint(self._net, host, port)
        host.datagrams[port] = endpoint
        return endpoint

    async def serve_stream(
        self,
        address: Address,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await trio.lowlevel.checkpoint()
        host = self._check_up()
        port = self._local_port(address, host.listeners)
        async with trio.open_nursery() as nursery:
            listener = Listener(handler, nursery)
            host.listeners[port] = listener
            try:
                task_status.started((host.name, port))
                await trio.sleep_forever()
            finally:
                if host.listeners.get(port) is listener:
                    del host.listeners[port]

    async def connect_stream(self, address: Address) -> SimStream:
        """One round trip to a listener; ConnectionRefusedError when nothing listens there,
        TimeoutError (an OSError) after `connect_timeout` when the host is down or cut off."""
        await trio.lowlevel.checkpoint()
        host = self._check_up()
        return await self._net._connect(host, self._boot, address)
