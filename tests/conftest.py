"""Shared fixtures: an in-process node (real LMDB, no socket) and its Quart test client."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from kvs.config import Config
from kvs.node import Node


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "node_id": "test-node",
        "data_dir": str(tmp_path / "data"),
        "backup_path": str(tmp_path / "backups"),  # never the working directory's ./backups
        "cluster_secret": "test-secret",
        "durability": "os",  # tests do not need fsync; the process tests cover the real thing
        "clustering_enabled": False,  # single-node tests; cluster tests opt in
        "auth_enabled": False,  # tests not about auth; tests/unit/test_auth_*.py opt in
    }
    values.update(overrides)
    return Config(**values)


class ManualWallClock:
    """A wall clock (ms) that tests move by hand, for TTL and ordering tests."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@pytest.fixture
def wall() -> ManualWallClock:
    return ManualWallClock()


@pytest.fixture
def start_node(tmp_path: Path, nursery: trio.Nursery) -> Callable[..., Any]:
    """Start an in-process node (writer + housekeeping, no HTTP socket); returns the Node."""

    async def start(wall_ms: Callable[[], int] | None = None, **overrides: Any) -> Node:
        config = make_config(tmp_path, **overrides)
        kwargs: dict[str, Any] = {"rng": random.Random(1234)}
        if wall_ms is not None:
            kwargs["wall_ms"] = wall_ms
        node = Node(config, **kwargs)
        await nursery.start(lambda task_status: node.run(http=False, task_status=task_status))
        return node

    return start


@pytest.fixture
async def node(start_node: Callable[..., Any]) -> AsyncIterator[Node]:
    yield await start_node()


@pytest.fixture
def client(node: Node) -> Any:
    return node.app.test_client()
