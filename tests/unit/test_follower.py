"""HTTP workers, in process: the `http_workers` setting, the beacon a node's store moves for
its workers (kvs/store/follower.py), and which requests a worker answers itself
(kvs/api/proxy.py). The processes themselves: tests/integration/test_workers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from kvs.api.proxy import served_locally
from kvs.clock import HybridLogicalClock
from kvs.config import ConfigError, from_mapping
from kvs.store import Delete, Put, Store
from kvs.store.follower import BEACON_FILE, Beacon
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
        ("PUT", "/kv/a", False),
        ("DELETE", "/kv/a", False),
        ("POST", "/kv/_batch", False),
        ("PUT", "/kv/a/metadata", False),
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
