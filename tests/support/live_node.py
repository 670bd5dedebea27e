"""An in-process node serving HTTP on a real loopback socket, for client, watch and metrics
tests: real Hypercorn, real LMDB, real TCP; only the process is shared with the test."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio

from kvs.node import Node
from kvs.server import ApiServer
from kvs.testing.ports import free_ports
from tests.support.config import make_config


async def start_live_node(
    nursery: trio.Nursery, tmp_path: Path, name: str = "node", **overrides: Any
) -> tuple[Node, str]:
    """Start a node (clustering off unless overridden) in `nursery`; return it and its URL."""
    (port,) = free_ports(1)
    values: dict[str, Any] = {
        "node_id": name,
        "data_dir": str(tmp_path / name),
        "port": port,
        "auth_enabled": False,  # explicit: these tests are about the client, not auth
    }
    values.update(overrides)
    node = Node(make_config(tmp_path, **values), rng=random.Random(name), api=ApiServer())
    await nursery.start(node.run)
    return node, f"http://127.0.0.1:{port}"
