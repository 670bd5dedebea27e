"""HTTP workers, in process: the `http_workers` setting, the beacon a node's store moves for
its workers (kvs/store/follower.py), and which requests a worker answers itself
(kvs/api/proxy.py). The processes themselves: tests/integration/test_workers.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from kvs.api.instruments import LATENCY_BUCKETS, HttpMetrics
from kvs.api.proxy import CLIENT_HEADER, MAX_REPORT, REPORT_PATH, ForwardedClient, served_locally
from kvs.clock import HybridLogicalClock
from kvs.config import ConfigError, from_mapping
from kvs.store import Delete, Put, Store
from kvs.store.follower import BEACON_FILE, Beacon
from tests.support.api import app_of
from tests.support.config import ManualWallClock, store_settings


def test_http_workers_setting() -> None:
    base = {"node_id": "n1"}
    assert from_mapping(base).http_workers == 1
    assert from_mapping({**base, "http_workers": 4}).http_workers == 4
    assert from_mapping({**base, "http_workers": "auto"}).http_workers == min(
        os.cpu_count() or 1, 64
    )
    for bad in (0, -1, 65, "many", 2.5, True):
        with pytest.raises(ConfigError) as info:
            from_mapping({**base, "http_workers": bad})
        assert str(info.value).startswith("http_workers:"), info.value
        assert "\n" not in str(info.value)


def test_beacon_is_shared_through_its_file(tmp_path: Path) -> None:
    node = Beacon.create(tmp_path)
    worker = Beacon(tmp_path / BEACON_FILE, writable=False)
    assert (os.stat(tmp_path / BEACON_FILE).st_mode & 0o777) == 0o600
    assert worker.read() == (0, 0)
    node.bump(system=True)
    assert worker.read() == (1, 0)
    node.bump(data=True)  # a replaced file also invalidates every cache
    assert worker.read() == (2, 1)
    with pytest.raises(TypeError):
        worker.bump(system=True)  # read only
    worker.close()
    node.close(remove=True)
    assert not (tmp_path / BEACON_FILE).exists()


async def test_the_store_moves_the_beacon_on_system_changes_only(tmp_path: Path) -> None:
    store = Store(
        tmp_path / "db",
        clock=HybridLogicalClock(ManualWallClock()),
        new_uuid=lambda: "00000000-0000-4000-8000-000000000001",
        settings=store_settings(),
        in_thread=False,
    )
    store.ensure_identity("node-a", store.clock.wall_ms())
    beacon = Beacon.create(tmp_path)
    beacon.follow_store(store)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            await store.write([Put("plain/key", b'{"a":1}')])
            assert beacon.read() == (0, 0)  # client keys do not touch workers' caches
            await store.write([Put("_sys/tokens/t1", b'{"token_hash":"x"}')])
            assert beacon.read() == (1, 0)  # moved before the write was acknowledged
            await store.write([Delete("_sys/tokens/t1"), Put("plain/2", b"2")])
            assert beacon.read() == (2, 0)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
        beacon.close()


@pytest.mark.parametrize(
    ("method", "path", "local"),
    [
        ("GET", "/kv/a/b", True),
        ("HEAD", "/kv/a/b", True),
        ("GET", "/kv/a/_ls", True),
        ("GET", "/kv/a/_tree", True),
        ("GET", "/kv/a/metadata", True),
        ("GET", "/kv/", True),
        ("GET", "/api/data/a/history", True),
        ("GET", "/kv/a/_watch", False),
        ("GET", "/kv/_watch", False),
        ("PUT", "/kv/a", True),  # up to the store ops, then the write link
        ("DELETE", "/kv/a/b", True),
        ("POST", "/kv/_batch", True),
        ("PUT", "/kv/_batch", False),
        ("POST", "/kv/a", False),
        ("PUT", "/kv/a/metadata", False),
        ("DELETE", "/kv/a/_ls", False),
        ("PUT", "/kv/", False),
        ("GET", "/kv_changes", False),
        ("GET", "/health", False),
        ("GET", "/metrics", False),
        ("GET", "/members/", False),
        ("GET", "/api/tokens", False),
        ("GET", "/api/audit", False),
        ("POST", "/api/admin/recover", False),
    ],
)
def test_what_a_worker_answers_itself(method: str, path: str, local: bool) -> None:
    assert served_locally(method, path) is local


class _Recorder:
    """An ASGI app that records the scope it was given and answers 200."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, object]] = []

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


async def _call(app: object, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    sent: list[dict[str, object]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    await app(scope, receive, send)  # type: ignore[operator]
    return int(sent[0]["status"])  # type: ignore[arg-type]


async def test_the_node_believes_a_workers_client_header_and_takes_only_sound_reports() -> None:
    """The node's side of its Unix socket: the client a worker names becomes the request's
    client; a worker's counters report is checked, and one that is malformed is refused
    (400) and counted, never absorbed; a passed-on request can never be a report."""
    metrics = HttpMetrics()
    inner = _Recorder()
    node = ForwardedClient(inner, metrics)
    status = await _call(node, "/kv/a", [(CLIENT_HEADER, b"10.1.2.3:4567")], b"")
    assert status == 200 and inner.scopes[-1]["client"] == ("10.1.2.3", 4567)
    assert all(k != CLIENT_HEADER for k, _ in inner.scopes[-1]["headers"])  # type: ignore[attr-defined]
    await _call(node, "/kv/a", [(CLIENT_HEADER, b"garbage")], b"")
    assert inner.scopes[-1]["client"] == ("unknown", 0)

    row = ["/kv/{key}", "GET", 200, 5, 0.01, [5] + [0] * len(LATENCY_BUCKETS)]
    good = orjson.dumps({"index": 1, "pid": 42, "rows": [row]})
    assert await _call(node, REPORT_PATH, [], good) == 204
    bad_bodies = [
        b"not json",
        b"[]",
        orjson.dumps({"index": "1", "pid": 42, "rows": []}),
        orjson.dumps({"index": 1, "pid": 42, "rows": [row[:5]]}),
        orjson.dumps({"index": 1, "pid": 42, "rows": [[*row[:5], [1, 2]]]}),
        orjson.dumps({"index": 1, "pid": 42, "rows": [[*row[:3], "5", *row[4:]]]}),
        b"{" * (MAX_REPORT + 10),
    ]
    for body in bad_bodies:
        assert await _call(node, REPORT_PATH, [], body) == 400
    assert node.refused_reports == len(bad_bodies)
    # A report passed on for a client (it names one) reaches the app, not the metrics.
    calls = len(inner.scopes)
    await _call(node, REPORT_PATH, [(CLIENT_HEADER, b"1.2.3.4:5")], good)
    assert len(inner.scopes) == calls + 1
    totals = {(r, m, s): v[0] for (r, m, s), v in metrics._totals().items()}
    assert totals == {("/kv/{key}", "GET", 200): 5}
    # A restarted worker (new pid): what the old one counted is kept.
    again = orjson.dumps({"index": 1, "pid": 43, "rows": [[*row[:3], 2, *row[4:]]]})
    assert await _call(node, REPORT_PATH, [], again) == 204
    assert metrics._totals()[("/kv/{key}", "GET", 200)][0] == 7


async def test_a_node_driven_in_process_starts_no_workers(
    start_node: Callable[..., Any], tmp_path: Path
) -> None:
    """Tests and the simulator drive the node's app in process (no socket): `http_workers`
    changes nothing there -- no process, no Unix socket, no beacon."""
    node = await start_node(http_workers=3)
    client = app_of(node).test_client()
    assert (await client.put("/kv/a", json={"x": 1})).status_code == 200
    assert (await (await client.get("/kv/a")).get_json())["data"] == {"x": 1}
    assert node.api.workers is None
    data = tmp_path / "data"
    assert not (data / "workers.sock").exists() and not (data / BEACON_FILE).exists()
