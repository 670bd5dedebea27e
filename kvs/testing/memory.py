"""An in-memory `Transport` for stream protocols: connections inside one process, no sockets.

Sync tests use it to connect SyncServices (real stores, real protocol) through Trio memory
streams. Like the real and simulated transports, a handler's I/O errors end its connection,
nothing more. It carries no datagrams: use `kvs.testing.network` for membership.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio
import trio.testing

from kvs.net.transport import Address, StreamHandler

__all__ = ["MemoryTransport", "serve_one"]


class MemoryTransport:
    """Stream connections between SyncServices in one process (trio memory streams). Like the
    real and simulated transports, a handler's I/O errors end its connection, nothing more."""

    def __init__(self) -> None:
        self._listeners: dict[Address, tuple[StreamHandler, trio.Nursery]] = {}
        self._ports = itertools.count(40000)

    async def bind_datagram(self, address: Address) -> Any:
        raise NotImplementedError("sync uses streams only")

    async def serve_stream(
        self,
        address: Address,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._listeners[address] = (handler, nursery)
            try:
                task_status.started(address)
                await trio.sleep_forever()
            finally:
                del self._listeners[address]

    async def connect_stream(self, address: Address) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        entry = self._listeners.get(address)
        if entry is None:
            raise ConnectionRefusedError(f"nothing listens on {address}")
        handler, nursery = entry
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(serve_one, handler, server, ("client", next(self._ports)))
        return client


async def serve_one(handler: StreamHandler, stream: trio.abc.Stream, peer: Address) -> None:
    """Run `handler` on one accepted stream; the peer going away ends it quietly."""
    try:
        async with stream:
            await handler(stream, peer)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
