"""kvs.api.front.HttpFront under real Hypercorn and real sockets, in process (no subprocess).

Each test pins one Hypercorn/Quart-Trio interaction that HttpFront exists for; see its
docstring. They bind 127.0.0.1:0 and use short timeouts, so they cost well under a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio

from kvs.api.front import FrontConfig, HttpFront

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
    async def start(
        app: ASGIApp, config_class: type[HypercornConfig] = HypercornConfig, **settings: Any
    ) -> tuple[int, trio.Event, trio.Event]:
        config = config_class()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.graceful_timeout = 10
        for name, value in settings.items():
            setattr(config, name, value)
        stop, stopped = trio.Event(), trio.Event()

        async def run(task_status: Any) -> None:
            try:
                await serve(app, config, shutdown_trigger=stop.wait, task_status=task_status)
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
        HttpFront(endless_stream), FrontConfig, stall_timeout=1.0, graceful_timeout=0.5
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(0.5)  # the server's send buffer and our receive buffer fill up
    stop.set()
    with trio.fail_after(15):
        await stopped.wait()
    await stream.aclose()
