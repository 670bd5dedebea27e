"""A sync session's plumbing, for both ends: opening one, counting its bytes, and telling a
peer's failure from ours.

A session is one TCP connection of authenticated frames (`kvs.net.frames`, purpose "sync"),
served (`server.py`) or started (an exchange, a push link). Whatever ends one is either the
peer's doing -- `PEER_ERRORS`: the connection's errors, or something that is not this
protocol -- or a bug here, which is counted in `errors` and logged with its traceback.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import trio

from kvs.logs import LogLimiter
from kvs.net.frames import FrameStream
from kvs.net.messages import Address
from kvs.net.transport import PEER_IO_ERRORS, Transport, expected_error
from kvs.sync import limits
from kvs.sync import protocol as p

# What a peer can make a session fail with: the connection's errors, and a reply (or a
# request) that is not this protocol.
PEER_ERRORS = (p.ProtocolError, *PEER_IO_ERRORS)


class CountingStream(trio.abc.Stream):
    """A stream that adds the bytes it carries to `counters` (`<kind>_in`, `<kind>_out` for
    each kind), so /cluster/stats shows what sync costs on the wire."""

    def __init__(self, stream: trio.abc.Stream, counters: Counter[str], *kinds: str) -> None:
        self._stream = stream
        self._counters = counters
        self._kinds = kinds
        self.bytes_in = 0
        self.bytes_out = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self.bytes_out += len(data)
        for kind in self._kinds:
            self._counters[f"{kind}_out"] += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self.bytes_in += len(data)
        for kind in self._kinds:
            self._counters[f"{kind}_in"] += len(data)
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


class Dialer:
    """Starts our sessions with peers: connect, count the bytes, then shake hands (each
    within REQUEST_TIMEOUT)."""

    def __init__(
        self,
        transport: Transport,
        keys: tuple[bytes, ...],
        nonce: Callable[[], bytes],
        counters: Counter[str],
    ) -> None:
        self._transport = transport
        self.keys = keys  # the keyring ("sync" keys): replaced on a reload
        self._nonce = nonce
        self._counters = counters

    async def connect(self, address: Address, kind: str) -> CountingStream:
        """A connection to `address` whose bytes count as `bytes` and as `kind`."""
        with trio.fail_after(limits.REQUEST_TIMEOUT):
            stream = await self._transport.connect_stream(address)
        return CountingStream(stream, self._counters, "bytes", kind)

    async def handshake(self, stream: trio.abc.Stream) -> FrameStream:
        with trio.fail_after(limits.REQUEST_TIMEOUT):
            return await FrameStream.client(stream, self.keys, purpose="sync", nonce=self._nonce())


def started_failed(exc: Exception, what: str, counters: Counter[str], errors: LogLimiter) -> None:
    """A session we started (`what`: "exchange", "push") failed: a peer's doing (counted by
    the caller), or something unexpected, counted in `errors` and logged with its traceback."""
    if expected_error(exc, PEER_ERRORS) is None:
        counters["errors"] += 1
        errors.log(logging.ERROR, what, "a sync %s failed unexpectedly", what, exc_info=True)
