"""The real `kvs` process over real HTTP: serve, 413, shutdown, crash durability, start-up time.

These start `python -m kvs CONFIG` as a subprocess on free ports; every process is killed
when its test ends (procs.running), whatever happened.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import trio

from tests.support.procs import (
    KvsProcess,
    assert_clean_stderr,
    config_value,
    init_config,
    running,
)

MAX_JSON_SIZE = 1024 * 1024  # the generated config's max_json_size (1MiB)
STOP_TIMEOUT = 5.0  # a clean stop takes well under a second; 10 s would be hypercorn's grace


def oversize_chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON string body of `total` bytes, streamed so httpx sends it chunked."""
    yield b'"'
    sent = 1
    while sent < total:
        piece = min(size, total - sent)
        yield b"a" * piece
        sent += piece


def test_serve_put_get_delete_413_then_sigterm_exits_cleanly(tmp_path: Path) -> None:
    config = init_config(tmp_path)
    secret = config_value(config, "cluster_secret")
    assert secret
    with running(config) as node:
        with httpx.Client(base_url=node.base_url, timeout=10) as client:
            put = client.put("/kv/home/room/closet/socks", json={"pairs": 3, "colour": "blue"})
            assert put.status_code == 200, put.text
            written = put.json()
            assert set(written) == {"uuid", "timestamp"}

            got = client.get("/kv/home/room/closet/socks")
            assert got.status_code == 200
            assert got.json() == {
                "uuid": written["uuid"],
                "timestamp": written["timestamp"],
                "data": {"pairs": 3, "colour": "blue"},
            }
            assert got.headers["etag"] == f'"{written["uuid"]}"'

            deleted = client.delete("/kv/home/room/closet/socks")
            assert deleted.status_code == 204
            gone = client.get("/kv/home/room/closet/socks")
            assert gone.status_code == 404
            assert gone.headers["content-type"].startswith("application/json")
            assert "error" in gone.json()

        # Over max_json_size with no Content-Length: refused while streaming, as JSON.
        with httpx.Client(base_url=node.base_url, timeout=10) as client:
            big = client.put("/kv/big", content=oversize_chunks(MAX_JSON_SIZE + 1))
            assert "content-length" not in big.request.headers
            assert big.request.headers["transfer-encoding"] == "chunked"
            assert big.status_code == 413
            assert big.headers["content-type"].startswith("application/json")
            assert "limit" in big.json()["error"]

        # ... and the node keeps serving.
        with httpx.Client(base_url=node.base_url, timeout=10) as client:
            assert client.get("/kv/big").status_code == 404
            again = client.put("/kv/after-413", json=[1, 2, 3])
            assert again.status_code == 200
            assert client.get("/kv/after-413").json()["data"] == [1, 2, 3]

        assert node.stop(signal.SIGTERM, timeout=STOP_TIMEOUT) == 0
        stderr = node.stderr()
        assert_clean_stderr(stderr, secret)
        assert "shutting down" in stderr


def test_oversize_chunked_body_closes_its_connection_and_does_not_delay_shutdown(
    tmp_path: Path,
) -> None:
    """Regression: a 413 on a chunked body used to leave its connection hanging forever
    (no answer, no close), and SIGTERM then waited hypercorn's 10 s graceful_timeout."""
    config = init_config(tmp_path)
    with running(config) as node:
        sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        try:
            sock.sendall(b"PUT /kv/big HTTP/1.1\r\nHost: kvs\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                for _ in range(40):  # 2.5 MiB, far past the 1 MiB limit
                    chunk = b'"' + b"a" * 65535
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server may close before taking it all: that is allowed
            received = b""
            closed = False
            sock.settimeout(STOP_TIMEOUT)
            try:
                while chunk := sock.recv(65536):
                    received += chunk
                closed = True
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                pass
            assert closed, f"connection left open after the 413; got {received[:200]!r}"
            if received:  # a reset may have discarded the response; if it arrived, it is a 413
                assert received.startswith(b"HTTP/1.1 413"), received[:200]
        finally:
            sock.close()
        assert node.health() is not None
        started = time.monotonic()
        assert node.stop(signal.SIGTERM, timeout=STOP_TIMEOUT) == 0
        assert time.monotonic() - started < STOP_TIMEOUT


def test_idle_keep_alive_connection_does_not_delay_shutdown(tmp_path: Path) -> None:
    """Regression: an idle keep-alive connection that had served a request kept a graceful
    shutdown waiting hypercorn's full graceful_timeout (10 s); it must close at once."""
    config = init_config(tmp_path)
    with running(config) as node:
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
        try:
            conn.request("PUT", "/kv/a", body=b"{}", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            response.read()  # the connection stays open, idle, kept alive
            started = time.monotonic()
            assert node.stop(signal.SIGTERM, timeout=STOP_TIMEOUT) == 0
            assert time.monotonic() - started < STOP_TIMEOUT
        finally:
            conn.close()
        assert_clean_stderr(node.stderr())


async def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    config = init_config(tmp_path)
    assert config_value(config, "durability") == "fsync"  # the default is the durable one
    expected: dict[str, str | None] = {}  # key -> acknowledged uuid (None: acknowledged delete)
    with running(config) as node:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=node.base_url, timeout=30, limits=limits) as client:
            # Deletes are acknowledged writes too: these must stay deleted.
            for i in range(5):
                key = f"gone/k{i}"
                assert (await client.put(f"/kv/{key}", json=i)).status_code == 200
                assert (await client.delete(f"/kv/{key}")).status_code == 204
                expected[key] = None

            async def put(i: int) -> None:
                key = f"crash/k{i:03d}"
                response = await client.put(f"/kv/{key}", json={"i": i, "pad": "x" * (i % 50)})
                assert response.status_code == 200, response.text
                expected[key] = response.json()["uuid"]

            async def batch() -> None:
                ops = [
                    {"op": "put", "key": f"batch/k{i:03d}", "data": {"b": i}} for i in range(100)
                ]
                response = await client.post("/kv/_batch", json={"ops": ops})
                assert response.status_code == 200, response.text
                for result in response.json()["results"]:
                    expected[result["key"]] = result["uuid"]

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(put, i)
                nursery.start_soon(batch)
            node.kill()  # kill -9 right after the last acknowledgement: no clean close
    assert len(expected) == 305

    with running(config) as node:
        async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as client:
            health = (await client.get("/health")).json()
            assert health["keys"] == 300
            missing: list[str] = []

            async def check(key: str, uuid: str | None) -> None:
                response = await client.get(f"/kv/{key}")
                if uuid is None:
                    if response.status_code != 404:
                        missing.append(f"{key}: deleted, but reads {response.status_code}")
                elif response.status_code != 200 or response.json()["uuid"] != uuid:
                    missing.append(f"{key}: {response.status_code} {response.text[:100]}")

            async with trio.open_nursery() as nursery:
                for key, uuid in expected.items():
                    nursery.start_soon(check, key, uuid)
            assert not missing, missing
        assert node.stop(signal.SIGTERM, timeout=STOP_TIMEOUT) == 0


def test_sigint_once_is_a_graceful_exit_0(tmp_path: Path) -> None:
    config = init_config(tmp_path)
    secret = config_value(config, "cluster_secret")
    with running(config) as node:
        response = httpx.put(f"{node.base_url}/kv/ctrl/c", json={"pressed": True}, timeout=10)
        assert response.status_code == 200
        uuid = response.json()["uuid"]
        assert node.stop(signal.SIGINT, timeout=STOP_TIMEOUT) == 0
        stderr = node.stderr()
        assert_clean_stderr(stderr, secret)
        assert "SIGINT" in stderr
        assert "KeyboardInterrupt" not in stderr
    with running(config) as node:
        assert httpx.get(f"{node.base_url}/kv/ctrl/c", timeout=10).json()["uuid"] == uuid


def test_second_sigint_stops_at_once_even_with_a_request_stuck(tmp_path: Path) -> None:
    """Ctrl-C twice: the first waits for in-flight requests, the second does not."""
    config = init_config(tmp_path)
    with running(config) as node:
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
        try:
            conn.request("GET", "/health")
            assert conn.getresponse().read()
            conn.putrequest("PUT", "/kv/never/finished")
            conn.putheader("Content-Length", "100")
            conn.endheaders(b"{")  # 99 bytes short: this request holds a graceful shutdown
            time.sleep(0.5)  # no server-side signal to poll: give the node time to parse the head
            node.send_signal(signal.SIGINT)
            wait_until_refused(node.port)
            assert node.popen.poll() is None  # still waiting for the stuck request
            started = time.monotonic()
            assert node.stop(signal.SIGINT, timeout=STOP_TIMEOUT) == 0
            assert time.monotonic() - started < STOP_TIMEOUT
        finally:
            conn.close()
        stderr = node.stderr()
        assert_clean_stderr(stderr)
        assert "again" in stderr
    with running(config) as node:
        assert httpx.get(f"{node.base_url}/kv/never/finished", timeout=10).status_code == 404


def wait_until_refused(port: int, timeout: float = 10.0) -> None:
    """Poll until new connections are refused: the node has stopped accepting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.01)
    raise AssertionError(f"port {port} still accepting {timeout}s after SIGTERM")


def test_request_in_flight_at_sigterm_completes_and_is_durable(tmp_path: Path) -> None:
    config = init_config(tmp_path)
    with running(config) as node:
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
        try:
            # One full exchange first: the connection is accepted and being served.
            conn.request("GET", "/health")
            assert conn.getresponse().read()
            body = b'{"sent": "in two parts"}'
            conn.putrequest("PUT", "/kv/in/flight")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body[:10])
            time.sleep(0.5)  # no server-side signal to poll: give the node time to parse the head
            node.send_signal(signal.SIGTERM)
            wait_until_refused(node.port)  # shutdown has begun: no new connections
            assert node.popen.poll() is None  # ... but the node waits for this request
            conn.send(body[10:])
            response = conn.getresponse()
            assert response.status == 200
            uuid = json.loads(response.read())["uuid"]
            assert response.getheader("ETag") == f'"{uuid}"'
        finally:
            conn.close()
        assert node.wait_exit(STOP_TIMEOUT) == 0
        assert_clean_stderr(node.stderr())
    with running(config) as node:
        got = httpx.get(f"{node.base_url}/kv/in/flight", timeout=10)
        assert got.status_code == 200
        assert got.json()["uuid"] == uuid
        assert got.json()["data"] == {"sent": "in two parts"}


async def test_puts_racing_sigterm_acknowledged_ones_survive(tmp_path: Path) -> None:
    config = init_config(tmp_path)
    acked: dict[str, str] = {}
    refused = 0
    with running(config) as node:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=node.base_url, timeout=10, limits=limits) as client:
            enough = trio.Event()

            async def put(i: int) -> None:
                nonlocal refused
                key = f"race/k{i:03d}"
                try:
                    response = await client.put(f"/kv/{key}", json=i)
                except httpx.TransportError:
                    refused += 1  # sent after the node stopped accepting: not acknowledged
                    return
                assert response.status_code == 200, response.text
                acked[key] = response.json()["uuid"]
                if len(acked) >= 20:
                    enough.set()

            async def terminate_midway() -> None:
                await enough.wait()
                node.send_signal(signal.SIGTERM)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(terminate_midway)
                for i in range(300):
                    nursery.start_soon(put, i)
        assert node.wait_exit(STOP_TIMEOUT) == 0
        assert_clean_stderr(node.stderr())
    assert len(acked) >= 20
    assert len(acked) + refused == 300

    with running(config) as node:
        async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as client:
            for key, uuid in acked.items():
                response = await client.get(f"/kv/{key}")
                assert response.status_code == 200, key
                assert response.json()["uuid"] == uuid


def test_ready_within_5_seconds_on_an_empty_store(tmp_path: Path) -> None:
    config = init_config(tmp_path)
    port = int(config_value(config, "port"))
    node = KvsProcess([str(config)], cwd=tmp_path, port=port, log_dir=tmp_path / "logs")
    try:
        elapsed = node.wait_ready(timeout=30)
        health = node.health()
        assert health is not None
        assert health.json()["keys"] == 0
        assert health.json()["mode"] == "normal"
        assert elapsed < 5.0, f"ready after {elapsed:.2f}s"
    finally:
        node.kill()
