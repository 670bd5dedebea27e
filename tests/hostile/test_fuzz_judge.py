"""The HTTP fuzzer's oracle against tiny fake servers in process: it accepts exactly the
behaviour issue 12 asks of a fixed node, and flags the rest. (No node here: these pin what
a failure of tests/hostile/test_http_fuzz.py means.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from kvs.testing import http_wire as wire
from kvs.testing.http_conn import run_conn
from kvs.testing.http_context import Context
from kvs.testing.http_judge import Stats, judge
from kvs.testing.http_plan import Conn, Interaction

Handler = Callable[[trio.SocketStream], Awaitable[None]]
MARKER = b"MARKsecret"


async def serve_once(nursery: trio.Nursery, handler: Handler) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def verdict(nursery: trio.Nursery, handler: Handler, conn: Conn) -> list[str]:
    port = await serve_once(nursery, handler)
    inter = Interaction(0, "request", 0, "reader", "test", [conn])
    with trio.fail_after(30):
        res = await run_conn(conn, port, Context(ports=[port]), MARKER)
    return [f"{f.kind}: {f.signature}" for f in judge(inter, conn, res, Stats(), MARKER)]


def answering(raw: bytes, *, close: bool = False) -> Handler:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(raw)
        if close:
            await stream.aclose()
        else:
            await trio.sleep_forever()

    return handler


def http(status: int, body: bytes = b"", *headers: bytes) -> bytes:
    head = [b"HTTP/1.1 %d X" % status, b"content-length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


GET = Conn([("send", b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")], ["test GET"])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (http(200, b"{}"), []),
        (http(404, b'{"error":"not found"}'), []),
        (http(400), []),  # the parser's own bare 400
        (http(431), []),
        (http(503, b'{"error":"read-only","mode":"read-only"}'), []),
        (http(503, b'{"error":"busy"}', b"retry-after: 1"), []),
        (http(500, b'{"error":"internal"}'), ["http-5xx"]),
        (http(501), ["http-5xx"]),
        (http(503, b'{"error":"busy"}'), ["http-503-unexplained"]),
        (http(404, b"not found"), ["http-4xx-not-json"]),
        (http(403), ["http-4xx-not-json"]),  # a bare 403 is not the parser's
        (http(200, b'{"v":"' + MARKER + b'"}'), ["marker-leak"]),
    ],
    ids=lambda v: v.split(b"\r\n", 1)[0].decode() if isinstance(v, bytes) else str(v),
)
async def test_answers_are_judged_by_status_body_and_marker(
    nursery: trio.Nursery, answer: bytes, expected: list[str]
) -> None:
    found = await verdict(nursery, answering(answer), GET)
    assert [f.split(":")[0] for f in found] == expected, found


async def test_a_caller_who_may_read_the_marker_may_see_it(nursery: trio.Nursery) -> None:
    root = Conn([("send", b"GET /x HTTP/1.1\r\nAuthorization: Bearer root-token\r\n\r\n")])
    root.may_see_marker = True  # the generator sets it when it sends a root or owner token
    assert await verdict(nursery, answering(http(200, MARKER)), root) == []


H2 = Conn([("send", wire.PREFACE + wire.settings())], ["h2"], expect=None, h2=True)


async def test_http2_refused_with_goaway_http_1_1_required_passes(nursery: trio.Nursery) -> None:
    refusal = wire.settings() + wire.frame(wire.GOAWAY, 0, 0, b"\x00\x00\x00\x00\x00\x00\x00\x0d")
    assert await verdict(nursery, answering(refusal, close=True), H2) == []


@pytest.mark.parametrize(
    ("answer", "close", "kind"),
    [
        (wire.settings() + wire.frame(wire.GOAWAY, 0, 0, bytes(8)), True, "http2-not-refused"),
        (wire.settings(), False, "http2-not-refused"),
        (wire.settings() + wire.frame(wire.HEADERS, 4, 1, b"\x88"), True, "http2-served"),
        (http(400), True, "http2-not-refused"),
    ],
    ids=["goaway-no-error", "settings-only", "served", "http1-answer"],
)
async def test_http2_served_or_not_refused_is_a_failure(
    nursery: trio.Nursery, answer: bytes, close: bool, kind: str
) -> None:
    found = await verdict(nursery, answering(answer, close=close), H2)
    assert [f.split(":")[0] for f in found] == [kind], found


def stalled(deadline: float) -> Conn:
    conn = Conn(
        [
            ("mark",),
            ("send", b"PUT /x HTTP/1.1\r\nHost: x\r\n"),
            ("sleep", deadline + 3.5),
            ("close",),
        ],
        ["stall mid-headers"],
        expect=None,
    )
    conn.deadline = deadline
    return conn


async def test_a_connection_cut_at_the_deadline_passes(nursery: trio.Nursery) -> None:
    async def cuts(stream: trio.SocketStream) -> None:
        await trio.sleep(0.5)
        await stream.send_all(http(408))
        await stream.aclose()

    assert await verdict(nursery, cuts, stalled(0.5)) == []


async def test_a_connection_never_cut_is_a_missing_deadline(nursery: trio.Nursery) -> None:
    async def waits(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    found = await verdict(nursery, waits, stalled(0.2))
    assert [f.split(":")[0] for f in found] == ["no-deadline"], found


async def test_an_accepted_upgrade_is_a_failure(nursery: trio.Nursery) -> None:
    conn = Conn([("send", b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")], upgrade="websocket")
    switching = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
    found = await verdict(nursery, answering(switching), conn)
    assert [f.split(":")[0] for f in found] == ["upgrade-accepted"], found
