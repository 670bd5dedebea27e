"""A KVS node: the one place that wires the parts together inside one Trio nursery.

    Node.run()
    ├── Store.writer      group-commit writer (LMDB)
    ├── HTTP API          Quart-Trio app served by hypercorn.trio.serve
    └── housekeeping      TTL sweep, tombstone GC, periodic flush (durability: os)

Parts get what they need (clock, rng, store, config) from here, never from globals, so the
same code runs in production and inside a deterministic simulation.
"""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from kvs.api import create_app
from kvs.clock import HybridLogicalClock, system_wall_ms
from kvs.config import Config
from kvs.store import Store

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0


class Node:
    def __init__(
        self,
        config: Config,
        *,
        wall_ms: Callable[[], int] = system_wall_ms,
        rng: random.Random | None = None,
        store_in_thread: bool = True,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.rng = rng or random.Random(os.urandom(16))
        self.clock = HybridLogicalClock(wall_ms)
        self._store_in_thread = store_in_thread
        self.store: Store | Any = None
        self.http_addresses: list[str] = []
        self.app: Any = None
        self._started_at = 0.0
        self._shutdown = trio.Event()
        self._cancel_scope: trio.CancelScope | None = None

    # --- state the API reads ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self.config.read_only:
            return "read-only"
        return "normal"

    def uptime_s(self) -> float:
        return trio.current_time() - self._started_at

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # --- lifecycle ------------------------------------------------------------------------------

    def open_store(self) -> Store:
        """Open LMDB and the node identity (raises StoreError for an unusable data_dir)."""
        store = Store(
            self.config.data_path,
            clock=self.clock,
            new_uuid=self.new_uuid,
            map_size=self.config.lmdb_map_size,
            durability=self.config.durability,
            compression_level=self.config.compression_level,
            history_depth=self.config.revision_history_depth
            if self.config.revision_history_enabled
            else 0,
            in_thread=self._store_in_thread,
        )
        store.ensure_identity(self.node_id, self.clock.wall_ms())
        return store

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown: stop taking HTTP requests, finish those in flight, stop."""
        self._shutdown.set()

    def stop_now(self) -> None:
        """Cancel everything at once (a second Ctrl-C). Committed writes are safe in LMDB."""
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def run(
        self, *, http: bool = True, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until shut down; report readiness only once every listener is bound.

        `http=False` runs everything but the HTTP listener: tests and the simulator drive
        `self.app` in process instead of through a socket."""
        self._started_at = trio.current_time()
        if self.store is None:
            self.store = self.open_store()
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                await nursery.start(self.store.writer)
                self.app = create_app(self)
                if http:
                    self.http_addresses = await nursery.start(self._serve_http, self.app)
                nursery.start_soon(self._housekeeping)
                log.info(
                    "node %s ready: http://%s:%d (data in %s)",
                    self.node_id,
                    self.config.bind_address,
                    self.config.port,
                    self.config.data_path,
                )
                task_status.started(self)
                await self._shutdown.wait()
                log.info("node %s shutting down", self.node_id)
                if not http:
                    nursery.cancel_scope.cancel()
                # else _serve_http returns once hypercorn has drained, and stops the rest.
        finally:
            self.store.close()
            self.store = None
            log.info("node %s stopped", self.node_id)

    async def _serve_http(
        self, app: Any, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        hc = HypercornConfig()
        hc.bind = [f"{self.config.bind_address}:{self.config.port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("kvs.http")
        hc.graceful_timeout = 10.0
        hc.keep_alive_timeout = 75.0
        await serve(app, hc, shutdown_trigger=self._shutdown.wait, task_status=task_status)
        # Hypercorn has stopped accepting and drained in-flight requests: end the node.
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def _housekeeping(self) -> None:
        ttl_ms = int(self.config.tombstone_ttl * 1000)
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            removed = await self.store.maintain(tombstone_ttl_ms=ttl_ms)
            if removed:
                log.debug("housekeeping removed %d expired records and old tombstones", removed)
            if self.config.durability == "os":
                await trio.to_thread.run_sync(self.store.sync_to_disk)
