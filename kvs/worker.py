"""An HTTP worker process: `python -m kvs.worker --index I`, started by its node
(kvs/api/workers.py), never by hand. It reads the node's config from its stdin.

A worker serves the node's own API app (kvs/api) on the node's HTTP port (`SO_REUSEPORT`:
the kernel spreads connections over the node and its workers) over a `WorkerView`: the
node's LMDB environment opened read only (`FollowerStore`, kvs/store/follower.py) and an
`AuthService` over it. `WorkerRouter` (kvs/api/proxy.py) answers reads from the store, and
single-key and `_batch` writes up to their store ops, which go to the node's one writer over
the write link (kvs/api/writelink.py); it streams everything else to the node over its Unix
socket. It stops on SIGTERM (finishing what it answers), and when its node
dies.
"""

# ruff: noqa: E402 - the httpx line below must run before the imports that load httpx
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import random
import signal
import sys
import uuid

# httpx imports its command-line client, and with it click, rich and pygments, whenever
# those are installed (a development venv has them): ~3 MB of every worker's memory for a
# command it never runs. A None entry makes that one import fail; httpx then defines a stub.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import trio

from kvs.api import create_app
from kvs.api.batch import batch_body_limit
from kvs.api.front import HttpFront
from kvs.api.listener import HttpStats, serve_http
from kvs.api.proxy import NodeProxy, WorkerRouter, report_metrics
from kvs.api.writelink import WRITES_SOCKET, WriteLink
from kvs.auth.service import AuthService, IssuedToken
from kvs.backup_service import BackupService, BackupSettings
from kvs.clock import HybridLogicalClock, system_wall_ms
from kvs.config import Config, project
from kvs.memory import tune_gc
from kvs.server import WORKERS_SOCKET, http_limits, listener_config
from kvs.store import Delete, Outcome, Put, StoreSettings
from kvs.store.follower import BEACON_FILE, Beacon, FollowerStore

log = logging.getLogger("kvs.worker")


class WorkerView:
    """What the API may touch of a node, in a worker (kvs/api/view.py `NodeView`). Only the
    reads `served_locally` names reach this view; the rest has no state here."""

    def __init__(
        self, config: Config, store: FollowerStore, clock: HybridLogicalClock, link: WriteLink
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.link = link
        rng = random.Random(os.urandom(16))
        self._rng = rng
        self.auth = AuthService(
            config,
            store,  # type: ignore[arg-type]
            wall_ms=clock.wall_ms,
            monotonic=trio.current_time,
            new_uuid=self.new_uuid,
            nonce=lambda: os.urandom(16),
        )
        self.backups = BackupService(
            node_id=config.node_id,
            env=lambda: store.lease_env(),
            settings=project(BackupSettings, config, backup_dir=config.backup_dir),
        )
        self._stopping = trio.Event()
        self._started_at = trio.current_time()

    node_id = property(lambda self: self.config.node_id)
    keyring = property(lambda self: self.config.cluster_secrets)
    audit = None  # a worker's writes are audited by the node (`client_write`)
    cluster = None

    @property
    def mode(self) -> str:
        """What a worker knows of its node's mode before it writes: the node checks again
        (syncing and stale are the node's to know) and refuses through the link."""
        return "read-only" if self.config.read_only else "normal"

    async def client_write(
        self, ops: list[Put | Delete], user: str, detail: str = ""
    ) -> list[Outcome]:
        """Through the node's writer (kvs/api/writelink.py); then this process's next read
        sees the write (the node answers once it is committed)."""
        return await self.link.client_write(ops, user, detail)

    @property
    def stopping(self) -> trio.Event:
        return self._stopping

    def uptime_s(self) -> float:
        return trio.current_time() - self._started_at

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    async def audit_event(self, action: str, user: str, target: str, detail: str = "") -> None:
        raise RuntimeError("a worker writes no audit entry; the request belongs to the node")

    async def recover_root(self, via: str) -> IssuedToken:
        raise RuntimeError("admin recovery belongs to the node")


async def serve_worker(config: Config, index: int) -> None:
    """Serve until SIGTERM, or until the node is gone."""
    clock = HybridLogicalClock(system_wall_ms)
    beacon = Beacon(config.data_path / BEACON_FILE, writable=False)
    store = FollowerStore(
        config.data_path,
        beacon,
        clock=clock,
        new_uuid=lambda: "",
        settings=project(StoreSettings, config),
    )
    link = WriteLink(config.data_path / WRITES_SOCKET, config)
    view = WorkerView(config, store, clock, link)
    stats = HttpStats()
    app = create_app(view, stats)  # type: ignore[arg-type]
    proxy = NodeProxy(str(config.data_path / WORKERS_SOCKET))
    router = WorkerRouter(app, proxy, view.auth, store.follow, index)
    front = HttpFront(
        router, body_budget=config.http_body_budget, max_body=batch_body_limit(config), stats=stats
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, view.stopping, nursery.cancel_scope)
            nursery.start_soon(_watch_parent, view.stopping)
            nursery.start_soon(report_metrics, proxy, index, app.extensions["kvs.http_metrics"])
            await nursery.start(
                lambda task_status: serve_http(
                    front,
                    listener_config(config, reuse_port=True),
                    http_limits(config),
                    stats,
                    shutdown_trigger=view.stopping.wait,
                    task_status=task_status,
                )
            )
            log.info("serving on port %d (pid %d)", config.port, os.getpid())
            await view.stopping.wait()
            with trio.move_on_after(http_limits(config).graceful_timeout + 1):
                await front.wait_idle()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await proxy.aclose()
            await link.aclose()
        store.close()
        beacon.close()


async def _watch_signals(stopping: trio.Event, everything: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            if stopping.is_set():
                everything.cancel()  # a second signal: stop now
            stopping.set()


async def _watch_parent(stopping: trio.Event) -> None:
    """A worker outlives no node: the node holds the other end of our stdin open for as long
    as it runs, so its end (a crash, a SIGKILL) is an end of file here."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        with contextlib.suppress(OSError, trio.BrokenResourceError):
            while await stream.receive_some(4096):
                pass
    if not stopping.is_set():
        log.warning("the node is gone; stopping")
        stopping.set()


def _read_config(fd: int) -> Config:
    """The node's config, as the node sent it (length, then pickle) through a pipe only it
    holds; the pipe then stays open (`_watch_parent`)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                raise SystemExit("kvs.worker: no config on stdin (a worker is started by its node)")
            data += chunk
        return data

    config = pickle.loads(exactly(int.from_bytes(exactly(8), "big")))
    assert isinstance(config, Config)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvs.worker", description=__doc__)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    config = _read_config(sys.stdin.fileno())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, config.log_level.upper()))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.umask(0o077)
    tune_gc()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve_worker, config, args.index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
