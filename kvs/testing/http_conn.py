"""One connection of an interaction, run for real: open it, perform its steps (send, big,
trickle, sleep, mark, eof, rst, close) while a reader takes whatever comes back, hang up
once the expected answers are in, the server closed, or the read timeout passed.

Rule: test tooling (see kvs.testing); it talks to nodes only as a client would.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field

import trio

from kvs.testing import http_wire as wire
from kvs.testing.http_context import Context
from kvs.testing.http_plan import Big, Conn, Step
from kvs.testing.procs import HOST

# --- run time: one connection ---------------------------------------------------------------------

RAW_KEEP = 1 << 20  # bytes of each connection's received data kept for judging


@dataclass
class ConnResult:
    started: float
    answers: list[wire.Answer] = field(default_factory=list)
    pending: wire.Answer | None = None  # a stream's head (a watch)
    upgraded: bytes | None = None
    garbage: bytes = b""
    raw: bytearray = field(default_factory=bytearray)
    server_closed_at: float | None = None
    reset: bool = False
    we_ended_at: float | None = None
    mark: float | None = None
    connect_error: str = ""
    send_error: str = ""
    marker_seen: bool = False


async def run_conn(conn: Conn, port: int, ctx: Context, marker: bytes) -> ConnResult:
    """Open one connection, perform its steps while reading whatever comes back, hang up
    once the expected answers are in, the server closed, or `read_timeout` passed."""
    res = ConnResult(started=time.monotonic())
    try:
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(HOST, port)
    except (OSError, trio.TooSlowError) as exc:
        res.connect_error = type(exc).__name__
        return res
    session = _Session(conn, stream, ctx, marker, res)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.read_loop)
        try:
            await session.perform_steps()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            res.send_error = type(exc).__name__
        if not session.ended_by_us and not session.closed.is_set():
            await session.wait_for_answers()
        session.ended_by_us = True
        res.we_ended_at = time.monotonic()
        with contextlib.suppress(OSError):
            await stream.aclose()
        nursery.cancel_scope.cancel()
    return session.result()


class _Session:
    """One open connection: its steps sent by `perform_steps`, while `read_loop` (a task
    beside it) takes in what comes back and says when the answers are in or it closed."""

    def __init__(
        self, conn: Conn, stream: trio.SocketStream, ctx: Context, marker: bytes, res: ConnResult
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.ctx = ctx
        self.marker = marker
        self.res = res
        self.reader = wire.AnswerReader(head_requests=list(conn.heads))
        self.closed = trio.Event()
        self.answered = trio.Event()
        self.ended_by_us = False
        self.tail = b""

    async def read_loop(self) -> None:
        res = self.res
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self._take(data)
        except trio.BrokenResourceError:
            res.reset = True
        except trio.ClosedResourceError:
            return  # we closed it
        if not self.ended_by_us:
            res.server_closed_at = time.monotonic()
        self.closed.set()

    def _take(self, data: bytes) -> None:
        res, conn, marker = self.res, self.conn, self.marker
        if len(res.raw) < RAW_KEEP:
            res.raw += data[: RAW_KEEP - len(res.raw)]
        if marker in self.tail + data:
            res.marker_seen = True
        self.tail = data[-len(marker) :]
        if conn.h2:
            return
        reader = self.reader
        reader.feed(data)
        done = len(reader.answers) >= (conn.expect or 0)
        other = reader.upgraded is not None or bool(reader.garbage)
        if other and looks_like_h2(res.raw):
            return  # an HTTP/2 refusal: judged with the close that must follow
        if conn.expect is not None and (done or other):
            self.answered.set()  # all answers in, or no more HTTP/1.1 to come

    async def wait_closed(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self.closed.wait()

    async def perform_steps(self) -> None:
        for step in self.conn.steps:
            if await self._step(step):
                break

    async def _step(self, step: Step) -> bool:
        """Perform one step; True when it ends the connection (rst, close)."""
        what, stream = step[0], self.stream
        if what == "send":
            await stream.send_all(self.ctx.resolve(step[1]))
        elif what == "big":
            big = step[1]
            big = Big(self.ctx.resolve(big.head), big.fill, big.count, self.ctx.resolve(big.tail))
            for piece in big.pieces():
                if self.closed.is_set():
                    break
                await stream.send_all(piece)
        elif what == "trickle":
            data, interval = step[1], step[2]
            for i in range(len(data)):
                if self.closed.is_set():
                    break
                await stream.send_all(data[i : i + 1])
                await self.wait_closed(interval)
        elif what == "sleep":
            await self.wait_closed(step[1])
        elif what == "mark":
            self.res.mark = time.monotonic()
        elif what == "eof":
            await stream.send_eof()
        elif what in ("rst", "close"):
            self.ended_by_us = True
            if what == "rst":
                with contextlib.suppress(OSError):
                    stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            return True
        return False

    async def wait_for_answers(self) -> None:
        """Up to `read_timeout`: until the server closes, or (when answers are expected)
        until they are all in."""
        with trio.move_on_after(self.conn.read_timeout):
            if self.conn.expect is None:
                await self.closed.wait()
                return
            async with trio.open_nursery() as waiters:

                async def first(event: trio.Event) -> None:
                    await event.wait()
                    waiters.cancel_scope.cancel()

                waiters.start_soon(first, self.closed)
                waiters.start_soon(first, self.answered)

    def result(self) -> ConnResult:
        res, reader = self.res, self.reader
        if res.server_closed_at is not None:
            reader.close()
        res.answers = reader.answers
        res.pending = reader.pending() if self.conn.stream or res.server_closed_at is None else None
        res.upgraded = reader.upgraded
        res.garbage = reader.garbage
        return res


def looks_like_h2(data: bytes) -> bool:
    """A server SETTINGS frame (what an HTTP/2 server sends first)."""
    return len(data) >= 9 and data[3] == wire.SETTINGS and data[5:9] == b"\x00\x00\x00\x00"
