"""Helpers for the sync tests: real LMDB stores, SyncServices, and an in-memory transport."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from kvs.clock import HybridLogicalClock
from kvs.model import Record, RecordCodec, Version, hlc_pack
from kvs.net.transport import Address, StreamHandler
from kvs.store import Merge, Store
from kvs.sync import SyncService, SyncSettings
from tests.conftest import ManualWallClock

T0 = 1_700_000_000_000
SECRET = "sync-test-secret"
CODEC = RecordCodec()


class MemoryTransport:
    """Stream connections between SyncServices in one process (trio memory streams). Like the
    real and simulated transports, a handler's I/O errors end its connection, nothing more."""

    def __init__(self) -> None:
        self._listeners: dict[Address, tuple[StreamHandler, trio.Nursery]] = {}
        self._ports = itertools.count(40000)

    async def bind_datagram(self, address: Address) -> Any:
        raise NotImplementedError("sync uses streams only")

    async def serve_stream(
        self,
        address: Address,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._listeners[address] = (handler, nursery)
            try:
                task_status.started(address)
                await trio.sleep_forever()
            finally:
                del self._listeners[address]

    async def connect_stream(self, address: Address) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        entry = self._listeners.get(address)
        if entry is None:
            raise ConnectionRefusedError(f"nothing listens on {address}")
        handler, nursery = entry
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(_serve_one, handler, server, ("client", next(self._ports)))
        return client


async def _serve_one(handler: StreamHandler, stream: trio.abc.Stream, peer: Address) -> None:
    try:
        async with stream:
            await handler(stream, peer)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def version(ms: int, joined: int = 1, origin: str = "n1", uid: str = "u") -> Version:
    return Version(hlc_pack(ms), joined, origin, uid)


def record(
    key: str,
    value: bytes | None = b'"v"',
    ms: int = T0,
    *,
    joined: int = 1,
    origin: str = "n1",
    uid: str = "u",
    expires_at: int | None = None,
) -> Record:
    return Record(key, value, version(ms, joined, origin, uid), expires_at=expires_at)


def encode(rec: Record) -> bytes:
    return CODEC.encode(rec)


def raw_fields(rec: Record) -> list[Any]:
    """The 13 msgpack fields of an encoded record (uncompressed), for hand-made variants."""
    v = rec.version
    return [
        1,
        rec.key,
        rec.value,
        False,
        v.hlc,
        v.origin_joined,
        v.origin,
        v.uuid,
        rec.expires_at,
        rec.owner,
        rec.group,
        rec.permissions,
        rec.created_at,
    ]


class Replica:
    """A store with its writer running and a SyncService on a MemoryTransport."""

    def __init__(self, store: Store, worker: SyncService, wall: ManualWallClock) -> None:
        self.store = store
        self.worker = worker
        self.wall = wall

    async def merge(self, *records: Record) -> None:
        await self.store.write([Merge(r) for r in records])

    def contents(self) -> dict[str, bytes]:
        keys = [s.key for s in self.store.iter_summaries()]
        return dict(zip(keys, self.store.get_raw_many(keys), strict=True))


@asynccontextmanager
async def open_replica(
    path: Path,
    *,
    name: str = "a",
    wall: ManualWallClock | None = None,
    transport: MemoryTransport | None = None,
    serve: bool = False,
    secret: str = SECRET,
    **settings: Any,
) -> AsyncIterator[Replica]:
    """A replica named `name` whose sync server listens at (name, 1) when `serve`."""
    wall = wall or ManualWallClock(T0)
    uuids = itertools.count(1)
    store = Store(
        path / name,
        clock=HybridLogicalClock(wall),
        new_uuid=lambda: f"{name}-{next(uuids):08d}",
        durability="os",
        in_thread=False,
        map_size=64 << 20,
    )
    store.ensure_identity(name, wall())
    rng = random.Random(name)
    worker = SyncService(
        node_id=name,
        store=store,
        transport=transport or MemoryTransport(),
        bind=(name, 1),
        cluster_secret=secret,
        settings=SyncSettings(**settings),
        rng=rng,
        nonce=lambda: rng.randbytes(16),
        live_peers=lambda: [],
    )
    worker.rebuild_tree()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            if serve:
                await nursery.start(worker.run)
            yield Replica(store, worker, wall)
            nursery.cancel_scope.cancel()
    finally:
        store.close()
