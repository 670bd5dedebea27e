"""A node for the in-process benchmarks (batch-cost, metrics-cost, the auth check's CPU): real
LMDB in a temporary directory, no sockets, `durability: os`, clustering off; its ASGI app is
called directly, so what is measured is the node's own CPU per request or per key."""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections.abc import AsyncIterator

import trio

from kvs.config import Config
from kvs.node import Node
from kvs.server import ApiServer


@contextlib.asynccontextmanager
async def inprocess_node(prefix: str, *, auth: bool = False) -> AsyncIterator[Node]:
    """The node, started; stopped (and its directory removed) when the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as data_dir:
        config = Config(
            node_id="bench",
            data_dir=data_dir,
            cluster_secret="x" * 43,
            durability="os",
            clustering_enabled=False,
            auth_enabled=auth,
        )
        node = Node(config, rng=random.Random(1), api=ApiServer())
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: node.run(http=False, task_status=task_status))
            yield node
            nursery.cancel_scope.cancel()
