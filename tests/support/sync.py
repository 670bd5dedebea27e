"""Helpers for the sync tests: real LMDB stores and SyncServices on a `MemoryTransport`, records
made by hand, and a client session with a replica's sync server."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from kvs.clock import HybridLogicalClock
from kvs.config import Config, project
from kvs.model import Record, RecordCodec, Version, hlc_pack
from kvs.net.codec import derive_key
from kvs.net.frames import FrameStream
from kvs.store import Merge, Store
from kvs.sync import SyncService, SyncSettings
from kvs.sync import protocol as p
from kvs.testing.memory import MemoryTransport
from tests.support.config import ManualWallClock, store_settings

T0 = 1_700_000_000_000
SECRET = "sync-test-secret"
CODEC = RecordCodec()


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
        settings=store_settings(lmdb_map_size=64 << 20),
        in_thread=False,
    )
    store.ensure_identity(name, wall())
    rng = random.Random(name)
    worker = SyncService(
        node_id=name,
        store=store,
        transport=transport or MemoryTransport(),
        bind=(name, 1),
        cluster_secret=secret,
        settings=project(SyncSettings, Config(), **settings),
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


# --- a client of a replica's sync server -------------------------------------------------------

ADDRESS = ("a", 1)  # where `open_replica(name="a", serve=True)` listens


async def connect(transport: MemoryTransport) -> trio.abc.Stream:
    return await transport.connect_stream(ADDRESS)


async def session(transport: MemoryTransport, secret: str = SECRET) -> FrameStream:
    stream = await connect(transport)
    return await FrameStream.client(
        stream, derive_key(secret, "sync"), purpose="sync", nonce=b"n" * 16
    )


async def still_serving(transport: MemoryTransport, replica: Replica) -> None:
    frames = await session(transport)
    await frames.send({"op": "root"})
    reply = await frames.receive()
    assert reply == {
        "root": p.encode_hash(replica.worker.tree.root),
        "size": 1,
        "syncing": False,
        "stale": False,
    }
    await frames.aclose()
