"""Shared fixtures: an in-process node (real LMDB, no socket) and its Quart test client."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from kvs.node import Node
from kvs.server import ApiServer
from tests.support.api import app_of
from tests.support.config import ManualWallClock, make_config


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
        node = Node(config, api=ApiServer(), **kwargs)
        await nursery.start(lambda task_status: node.run(http=False, task_status=task_status))
        return node

    return start


@pytest.fixture
async def node(start_node: Callable[..., Any]) -> AsyncIterator[Node]:
    yield await start_node()


@pytest.fixture
def client(node: Node) -> Any:
    return app_of(node).test_client()
