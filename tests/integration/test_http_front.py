"""kvs.api.front.HttpFront behind kvs.api.listener on real sockets, in process (no subprocess).

Each test pins one Hypercorn/Quart-Trio interaction that HttpFront exists for; see its
docstring. They bind 127.0.0.1:0 and use short timeouts, so they cost well under a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio
from quart_trio import QuartTrio

from kvs.api.front import HttpFront
from kvs.api.listener import HTTP2_REFUSAL, FrontConfig, HttpLimits, HttpStats, serve_http
from kvs.config import Config

ASGIApp = Any


async def handle_lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def early_413(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Plain ASGI, like kvs.api.keys: refuse after the first body chunk, read no further.

    It takes a moment before answering, so Hypercorn's bounded queue of body chunks for
    the app fills up, as it does when a client streams fast into a busy node."""
    if scope["type"] == "lifespan":
        await handle_lifespan(receive, send)
        return
    await receive()
    await trio.sleep(0.2)
    body = b'{"error":"too large"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def quart_app() -> QuartTrio:
    app = QuartTrio(__name__)

    @app.route("/")
    async def index() -> str:
        return "ok"

    return app


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> AsyncIterator[Any]:
    """Serve an ASGI app the way a node does (kvs.api.listener.serve_http) on 127.0.0.1:0."""

    async def start(
        app: ASGIApp,
        *,
        stall_timeout: float = Config.http_stall_timeout,
        stats: HttpStats | None = None,
        **limits: Any,
    ) -> tuple[int, trio.Event, trio.Event]:
        config = FrontConfig()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.stall_timeout = stall_timeout
        stop, stopped = trio.Event(), trio.Event()

        async def run(task_status: Any) -> None:
            try:
                await serve_http(
                    app,
                    config,
                    HttpLimits(**limits),
                    stats or HttpStats(),
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            finally:
                stopped.set()

        binds = await nursery.start(run)
        return int(binds[0].rsplit(":", 1)[1]), stop, stopped

    yield start
    nursery.cancel_scope.cancel()


async def read_until_closed(stream: trio.SocketStream, timeout: float) -> bytes | None:
    """Everything the server sends until it closes; None if still open after `timeout`."""
    received = b""
    with trio.move_on_after(timeout):
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:  # reset: closed, possibly with data discarded
            pass
        return received
    return None


async def test_idle_keep_alive_connection_times_out_after_a_quart_request(
    start_server: Any,
) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()), keep_alive_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        first = await stream.receive_some(65536)
        assert first.startswith(b"HTTP/1.1 200")
        rest = await read_until_closed(stream, timeout=5)
        assert rest is not None, "idle keep-alive connection never timed out"


async def test_early_413_on_chunked_body_answers_and_closes(start_server: Any) -> None:
    front = HttpFront(early_413)
    port, _, _ = await start_server(front)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"PUT /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")

        async def upload() -> None:
            chunk = b"a" * 65536
            try:
                for _ in range(64):  # 4 MiB, far more than the app will read
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await stream.send_all(b"0\r\n\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            received = await read_until_closed(stream, timeout=5)
            nursery.cancel_scope.cancel()
        assert received is not None, "connection hung after the 413"
        if received:
            assert received.startswith(b"HTTP/1.1 413"), received[:100]
    with trio.fail_after(5):
        await front.wait_idle()  # the app's last send returned: nothing stuck in flight


async def test_wait_idle_waits_for_the_request_in_flight(start_server: Any) -> None:
    release = trio.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await handle_lifespan(receive, send)
            return
        await release.wait()
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    front = HttpFront(slow)
    port, _, _ = await start_server(front)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(5):
            while front.in_flight == 0:
                await trio.sleep(0.005)
        with trio.move_on_after(0.2) as early:
            await front.wait_idle()
        assert early.cancelled_caught, "wait_idle returned with a request in flight"
        release.set()
        with trio.fail_after(5):
            await front.wait_idle()
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
    assert front.in_flight == 0


async def endless_stream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Like a watch: a response that never ends, written as fast as the client takes it."""
    if scope["type"] == "lifespan":
        await handle_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = b"x" * 65536
    while True:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def test_a_client_that_stops_reading_cannot_hold_a_shutdown_open(start_server: Any) -> None:
    # Hypercorn shields its socket writes from cancellation: without TCP_USER_TIMEOUT (what
    # FrontConfig adds) a client that stops reading kept the server from ever stopping.
    port, stop, stopped = await start_server(
        HttpFront(endless_stream), stall_timeout=1.0, graceful_timeout=0.5
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(0.5)  # the server's send buffer and our receive buffer fill up
    stop.set()
    with trio.fail_after(15):
        await stopped.wait()
    await stream.aclose()


# --- hostile clients (issue 12): kvs.api.listener and HttpFront keep every other client served


async def request(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a new connection; everything the server sends until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        received = await read_until_closed(stream, timeout)
    assert received is not None, f"the server neither answered nor closed: {raw[:80]!r}"
    return received


async def read_response(stream: trio.SocketStream) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def healthy(port: int) -> None:
    response = await request(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200"), response


def json_error(response: bytes, status: int) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), response[:200]
    assert b"content-type: application/json" in head.lower(), head
    return orjson.loads(body)


async def test_half_closed_requests_with_short_bodies_leave_the_server_up(
    start_server: Any,
) -> None:
    # Reproduced against a node: ten of these at once ended it (BusyResourceError escaped
    # Hypercorn's connection task into the server's nursery).
    port, _, _ = await start_server(HttpFront(quart_app()))

    async def half_close(method: bytes) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                method + b" / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab"
            )
            await stream.send_eof()
            await read_until_closed(stream, timeout=5)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(half_close, b"POST" if i % 2 else b"GET")
    await healthy(port)


async def test_http2_with_prior_knowledge_is_refused_with_goaway(start_server: Any) -> None:
    stats = HttpStats()
    port, _, _ = await start_server(HttpFront(quart_app()), stats=stats)
    # A malformed HEADERS frame follows the preface, as in the crash seen on a node.
    frame = b"\x00\x00\x05\x01\x05\x00\x00\x00\x01" + b"\x82\x84\xff\xff\xff"
    response = await request(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame)
    assert response == HTTP2_REFUSAL
    assert response[-4:] == b"\x00\x00\x00\x0d"  # GOAWAY error code HTTP_1_1_REQUIRED
    assert stats.http2_refused == 1
    await healthy(port)


async def test_an_h2c_upgrade_is_ignored_and_answered_in_http_1_1(start_server: Any) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()))
    response = await request(
        port,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    assert response.startswith(b"HTTP/1.1 200"), response
    assert response.endswith(b"ok")


@pytest.mark.parametrize(
    "target",
    [b"?a=1", b"*", b"a/b", b"/%ff", b"/%c3", b"http://h/%fe"],
)
async def test_a_bad_request_target_is_a_json_400(start_server: Any, target: bytes) -> None:
    stats = HttpStats()
    port, _, _ = await start_server(HttpFront(quart_app()), stats=stats)
    response = await request(port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert "request" in json_error(response, 400)["error"]
    assert stats.bad_requests == 1
    await healthy(port)


async def test_an_absolute_form_target_is_served(start_server: Any) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()))
    response = await request(
        port, b"GET http://t/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 200"), response


@pytest.mark.parametrize(
    "host",
    [
        b"a" * 64 + b".example",
        "bücher.example".encode(),
        b"a b",
        b"h:99999999",
        b"[zz]",
        b".",
        b"a..b",
        b".a",
    ],
)
async def test_a_bad_host_header_is_a_json_400(start_server: Any, host: bytes) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()))
    response = await request(
        port, b"GET / HTTP/1.1\r\nConnection: close\r\nHost: " + host + b"\r\n\r\n"
    )
    assert "Host" in json_error(response, 400)["error"]


@pytest.mark.parametrize("host", [b"localhost", b"127.0.0.1:8080", b"[::1]:80", b"a-b.c_d.e"])
async def test_good_host_headers_are_served(start_server: Any, host: bytes) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()))
    response = await request(
        port, b"GET / HTTP/1.1\r\nConnection: close\r\nHost: " + host + b"\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 200"), response


async def test_a_websocket_upgrade_is_a_json_404(start_server: Any) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()))
    response = await request(
        port,
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert "WebSocket" in json_error(response, 404)["error"]
    await healthy(port)


async def test_request_headers_have_a_deadline(start_server: Any) -> None:
    stats = HttpStats()
    port, _, _ = await start_server(HttpFront(quart_app()), stats=stats, header_timeout=0.5)
    started = trio.current_time()
    # A head trickled too slowly, and a connection that never sends a byte: both end.
    response = await request(port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    assert "headers" in json_error(response, 408)["error"]
    assert "headers" in json_error(await request(port, b""), 408)["error"]
    assert trio.current_time() - started < 4
    assert stats.header_timeouts == 2
    await healthy(port)


async def test_a_request_body_has_a_deadline(start_server: Any) -> None:
    stats = HttpStats()
    seen: list[str] = []

    async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    port, _, _ = await start_server(HttpFront(reader), stats=stats, body_timeout=0.5)
    started = trio.current_time()
    response = await request(port, b"PUT /k HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123")
    assert "body" in json_error(response, 408)["error"]
    assert trio.current_time() - started < 4
    assert stats.body_timeouts == 1
    with trio.fail_after(5):
        while "http.disconnect" not in seen:  # the app learnt that the client is gone
            await trio.sleep(0.01)


async def test_a_kept_alive_connection_owes_no_head_until_it_sends_one(start_server: Any) -> None:
    port, _, _ = await start_server(
        HttpFront(quart_app()), header_timeout=0.3, keep_alive_timeout=5
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(stream)).startswith(b"HTTP/1.1 200")
        await trio.sleep(0.8)  # idle past the header timeout: still open
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await read_response(stream)).startswith(b"HTTP/1.1 200")


async def test_request_bodies_share_one_memory_budget(start_server: Any) -> None:
    stats = HttpStats()
    release = trio.Event()
    bodies: list[int] = []

    async def holder(scope: dict[str, Any], receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        bodies.append(size)
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    front = HttpFront(holder, body_budget=1000, max_body=10_000, stats=stats)
    port, _, _ = await start_server(front)
    put = b"PUT /k HTTP/1.1\r\nHost: t\r\nContent-Length: 600\r\nConnection: close\r\n\r\n"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, port, put + b"a" * 600)
        with trio.fail_after(5):
            while not bodies:
                await trio.sleep(0.01)
        assert front.budget.held == 600
        # Declared: refused before a byte is read. Chunked: refused once over.
        second = await request(port, put + b"b" * 600)
        assert "http_body_budget" in json_error(second, 503)["error"]
        assert b"retry-after: 1" in second.lower()
        chunked = (
            b"PUT /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        third = await request(port, chunked + b"258\r\n" + b"c" * 600 + b"\r\n0\r\n\r\n")
        json_error(third, 503)
        release.set()
    assert front.budget.held == 0
    assert stats.body_budget_refusals == 2
    # Larger than the whole budget (but within an endpoint's limit): a 413, not a 503.
    big = b"PUT /k HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
    assert "too large" in json_error(await request(port, big), 413)["error"]


async def test_an_exception_in_the_app_is_a_json_500_and_the_server_goes_on(
    start_server: Any,
) -> None:
    stats = HttpStats()

    async def broken(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/":
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        raise RuntimeError("a bug")

    port, _, _ = await start_server(HttpFront(broken, stats=stats))
    for _ in range(3):
        response = await request(port, b"GET /bug HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert json_error(response, 500) == {"error": "internal error; see the node's log"}
    assert stats.app_errors == 3
    await healthy(port)


async def test_connections_past_the_cap_wait_for_a_free_slot(start_server: Any) -> None:
    port, _, _ = await start_server(HttpFront(quart_app()), max_connections=2)
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    third = await trio.open_tcp_stream("127.0.0.1", port)  # in the kernel's backlog
    async with third:
        await third.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.move_on_after(0.5) as waited:
            await third.receive_some(65536)
        assert waited.cancelled_caught, "a connection past the cap was served"
        await idle[0].aclose()
        with trio.fail_after(5):
            assert (await third.receive_some(65536)).startswith(b"HTTP/1.1 200")
    await idle[1].aclose()
