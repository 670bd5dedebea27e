"""The HTTP side of a node: the API app over the node's view, the front and the listener.

    kvs.cli.serve ── Node(config, api=ApiServer())
                      └── Node.run(): ... await nursery.start(api.run, node) ...
                              └── ApiServer.run: create_app(node) → HttpFront → serve_http

This is where the layers meet (model → store → net/sync → node → server/api → cli): the node
composes its parts and owns the nursery without knowing that an API exists; it runs
whatever `HttpService` it was given. The API sees the node only through `NodeView`
(kvs/api/view.py). Tests and the simulator pass `listen=False` and drive `app` in process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from functools import partial
from typing import TYPE_CHECKING

import trio
from quart_trio import QuartTrio

from kvs.api import create_app
from kvs.api.batch import batch_body_limit
from kvs.api.front import HttpFront
from kvs.api.listener import FrontConfig, HttpLimits, HttpStats, serve_http
from kvs.node import STOP_GRACE

if TYPE_CHECKING:
    from kvs.api.view import NodeView
    from kvs.api.workers import WorkerPool
    from kvs.api.writelink import WriteLinkServer
    from kvs.config import Config

log = logging.getLogger("kvs.http")

WORKERS_SOCKET = "workers.sock"  # in data_dir: the node's app, for its HTTP workers only


class ApiServer:
    """One node's HTTP API: built when the node starts, served until it stops."""

    def __init__(self) -> None:
        self.stats = HttpStats()
        self.app: QuartTrio | None = None
        self.front: HttpFront | None = None
        self.workers: WorkerPool | None = None
        self.write_link: WriteLinkServer | None = None

    async def run(
        self,
        node: NodeView,
        *,
        listen: bool = True,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Build the app; with `listen`, serve it on the configured port until the node
        stops (requests in flight finish first), reporting the bound URLs; without, wait."""
        self.app = create_app(node, self.stats)
        if not listen:
            task_status.started([])
            await trio.sleep_forever()
        c = node.config
        self.front = HttpFront(
            self.app, body_budget=c.http_body_budget, max_body=batch_body_limit(c), stats=self.stats
        )
        if c.http_workers > 1:
            await self._run_with_workers(node, task_status)
            return
        await serve_http(
            self.front,
            listener_config(c),
            http_limits(c),
            self.stats,
            shutdown_trigger=node.stopping.wait,
            task_status=task_status,
        )

    async def _run_with_workers(
        self, node: NodeView, task_status: trio.TaskStatus[list[str]]
    ) -> None:
        """Serve with worker processes (kvs/api/workers.py has the contract): the app on the
        private Unix socket for them, the port shared with them, the pool supervised."""
        # Imported here: a node without workers does not load the proxy's HTTP client.
        from kvs.api.proxy import ForwardedClient
        from kvs.api.workers import WorkerPool
        from kvs.api.writelink import WriteLinkServer
        from kvs.store.follower import Beacon

        c = node.config
        assert self.front is not None and self.app is not None
        beacon = Beacon.create(c.data_path)
        beacon.follow_store(node.store)
        socket_path = c.data_path / WORKERS_SOCKET
        self.workers = WorkerPool(
            c,
            c.http_workers,
            stopping=node.stopping,
            grace=STOP_GRACE,
            after_exit=lambda: node.store.env.reader_check(),
            keyring=lambda: node.keyring,
        )
        private = listener_config(c)
        private.bind = [f"unix:{socket_path}"]
        private.umask = 0o177  # the socket: 0600, this user's processes only
        private.certfile = private.keyfile = None
        self.write_link = WriteLinkServer(node)
        self.app.extensions["kvs.metrics_registry"].register(self.write_link)
        try:
            # The write link outlives the rest: workers finishing their requests after
            # `stopping` still write through it; it closes once no worker is left.
            async with trio.open_nursery() as link:
                await link.start(self.write_link.serve)
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        partial(
                            serve_http,
                            ForwardedClient(self.front, self.app.extensions["kvs.http_metrics"]),
                            private,
                            http_limits(c),
                            HttpStats(),
                            shutdown_trigger=node.stopping.wait,
                        )
                    )
                    binds = await nursery.start(
                        partial(
                            serve_http,
                            self.front,
                            listener_config(c, reuse_port=True),
                            http_limits(c),
                            self.stats,
                            shutdown_trigger=node.stopping.wait,
                        )
                    )
                    await nursery.start(self.workers.run)
                    task_status.started(binds)
                link.cancel_scope.cancel()
        finally:
            beacon.close(remove=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)

    async def wait_idle(self) -> None:
        """Return once no request is being answered (a graceful stop waits for this)."""
        if self.front is not None:
            await self.front.wait_idle()


def listener_config(c: Config, *, reuse_port: bool = False) -> FrontConfig:
    """The listener's config for the node's port; with `reuse_port`, bound with SO_REUSEPORT
    so that the node and its HTTP workers share it."""
    hc = FrontConfig()
    hc.workers = 2 if reuse_port else 1  # Hypercorn sets SO_REUSEPORT for more than one
    hc.stall_timeout = c.http_stall_timeout
    hc.bind = [f"{c.bind_address}:{c.port}"]
    hc.accesslog = None
    hc.errorlog = log
    if c.tls_cert_file:
        hc.certfile = str(c.file_path(c.tls_cert_file))
        hc.keyfile = str(c.file_path(c.tls_key_file))
    return hc


def http_limits(c: Config) -> HttpLimits:
    return HttpLimits(
        header_timeout=c.http_header_timeout,
        body_timeout=c.http_body_timeout,
        max_connections=connection_cap(
            c.http_max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        ),
        graceful_timeout=STOP_GRACE,
    )


def connection_cap(configured: int, file_limit: int) -> int:
    """http_max_connections, lowered to what the open-file limit leaves room for: half of
    it, the rest for LMDB, gossip, sync peers, backups and the log."""
    room = max(16, (file_limit - 64) // 2)
    if room < configured:
        log.warning(
            "http_max_connections lowered from %d to %d: the open-file limit is %d",
            configured,
            room,
            file_limit,
        )
    return min(configured, room)
