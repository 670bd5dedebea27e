"""Bootstrap by snapshot (kvs/sync/snapshot.py) between real LMDB replicas over in-memory
streams. Real time, not the mock clock: the copy and its check run in worker threads, which
an autojumping clock would not wait for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from kvs.net.codec import derive_key
from kvs.net.frames import FrameStream
from kvs.store import Put, Store, index_entries
from kvs.sync import snapshot
from kvs.sync.health import BOOTSTRAP_STATE
from kvs.testing.memory import MemoryTransport
from tests.support.sync import SECRET, T0, Replica, open_replica, record

A = ("a", 1)


async def fill(replica: Replica, count: int) -> None:
    await replica.merge(*[record(f"k/{i:05d}", uid=f"u{i}") for i in range(count)])


def identity(store: Store) -> Any:
    return store.get_system("identity")


async def test_a_joiner_takes_a_snapshot_keeps_its_identity_and_what_it_had(
    tmp_path: Path,
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, sync_snapshot_min_keys=100) as b,
    ):
        await fill(a, 500)
        await a.store.write([Put("k/00001", b'"newer"', None)])  # history and a tombstone too
        await a.merge(record("gone", None, T0 + 5))
        b.worker.syncing = True
        await b.store.put_system(BOOTSTRAP_STATE, "pending")
        # Pushed to b before its bootstrap: a does not have it; b must keep it.
        await b.merge(record("only/on/b", b'"mine"', T0 + 9, origin="c"))
        before = identity(b.store)
        replaced: list[bool] = []
        b.store.replaced_listeners.append(lambda: replaced.append(True))
        result = await b.worker.exchange(A)
        assert replaced == [True]  # e.g. the auth cache is cleared
        assert b.worker.counters["snapshots"] == 1
        assert a.worker.counters["served_snapshot"] == 1
        # Everything came in the copy; the exchange went on and gave a what b carried.
        assert (result.fetched, result.pushed) == (0, 1)
        assert identity(b.store) == before == {"node_id": "b", "joined_timestamp": T0}
        assert b.store.get_system(BOOTSTRAP_STATE) == "pending"  # b's own system entries
        assert b.store.get("only/on/b").value == b'"mine"'
        assert a.contents() == b.contents() and len(a.contents()) == 502
        assert b.store.get("k/00001").value == b'"newer"' and b.store.get("gone").deleted
        # b's tree follows what it holds: a tree rebuilt from the store agrees.
        root = b.worker.tree.root
        assert root == a.worker.tree.root
        b.worker.rebuild_tree()
        assert b.worker.tree.root == root
        assert not (b.store.path / snapshot.STAGING_DIR).exists()
        # The store goes on taking writes after the swap.
        await b.store.write([Put("after", b"1", None)])
        assert b.store.get("after").value == b"1"


async def test_small_data_sets_and_peers_of_another_format_are_taken_by_records(
    tmp_path: Path,
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, sync_snapshot_min_keys=1000) as b,
    ):
        await fill(a, 300)
        b.worker.syncing = True
        assert (await b.worker.exchange(A)).fetched == 300  # below snapshot_min_keys
        assert b.worker.counters["snapshots"] == 0

    async with (
        open_replica(tmp_path, name="c", transport=transport, serve=True) as c,
        open_replica(
            tmp_path, name="d", transport=transport, serve=True, sync_snapshot_min_keys=1
        ) as d,
    ):
        await fill(c, 300)
        d.worker.syncing = True
        # c runs on another kind of machine: its data file would be of no use to d.
        c.worker.local.data_format = {**c.worker.local.data_format, "byteorder": "middle"}
        frames = await _session(transport, ("c", 1))
        await frames.send({"op": "snapshot", "format": snapshot.snapshot_format()})
        assert await frames.receive() == {"refused": "format"}
        # A node that is bootstrapping itself has no copy to give.
        d.worker.syncing = True
        asked = await _session(transport, ("d", 1))
        await asked.send({"op": "snapshot", "format": d.worker.local.data_format})
        assert await asked.receive() == {"refused": "syncing"}
        result = await d.worker.exchange(("c", 1))
        assert result.fetched == 300 and d.worker.counters["snapshots_refused"] == 1
        assert c.worker.counters["snapshots_refused_format"] == 2
        assert c.contents() == d.contents()


async def _session(transport: MemoryTransport, address: tuple[str, int]) -> FrameStream:
    stream = await transport.connect_stream(address)
    return await FrameStream.client(
        stream, derive_key(SECRET, "sync"), purpose="sync", nonce=b"n" * 16
    )


async def test_a_copy_that_does_not_match_the_peers_root_is_discarded_for_records(
    tmp_path: Path,
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, sync_snapshot_min_keys=1) as b,
    ):
        await fill(a, 200)
        tree = a.worker.tree
        tree.levels[0][0] ^= 1  # a says a root its records do not have
        b.worker.syncing = True
        with pytest.raises(Exception, match="snapshot"):
            await b.worker.exchange(A)
        assert b.worker.counters["snapshot_failures"] == 1 and b.worker.tree.size == 0
        assert b.store.count() == 0 and not (b.store.path / snapshot.STAGING_DIR).exists()
        tree.levels[0][0] ^= 1
        result = await b.worker.exchange(A)  # by records now
        assert result.fetched == 200 and a.contents() == b.contents()


async def test_a_copy_holding_an_invalid_record_is_refused(tmp_path: Path) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, sync_snapshot_min_keys=1) as b,
    ):
        await fill(a, 50)
        # Written behind the store's back: a key the API would refuse ("a//b"), and its
        # summary, so that only the record check can tell.
        bad = record("a//b")
        with a.store.env.begin(write=True) as txn:
            txn.put(index_entries(bad)[0], a.store._write_codec.encode(bad), db=a.store._records)
        b.worker.syncing = True
        with pytest.raises(Exception, match="snapshot"):
            await b.worker.exchange(A)
        assert b.worker.counters["snapshot_failures"] == 1 and b.store.count() == 0


async def test_a_copy_whose_summaries_differ_from_its_records_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The records (and so the Merkle root) are right, but one entry of the summaries index
    anti-entropy lists is not what its record gives: only the index-vs-records check sees it."""
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, sync_snapshot_min_keys=1) as b,
    ):
        await fill(a, 50)
        with a.store.env.begin(write=True, db=a.store._buckets) as txn:
            bucket_key, summary = next(iter(txn.cursor()))
            txn.put(bucket_key, summary[:-1] + bytes([summary[-1] ^ 1]))
        b.worker.syncing = True
        with pytest.raises(Exception, match="snapshot"):
            await b.worker.exchange(A)
        assert "summaries do not match" in caplog.text
        assert b.worker.counters["snapshot_failures"] == 1 and b.store.count() == 0
        assert b.worker.counters["snapshots"] == 0
        result = await b.worker.exchange(A)  # by records now
        assert result.fetched == 50 and b.store.count() == 50


async def _fake_peer(server: trio.abc.Stream, frames_to_send: list[Any]) -> None:
    frames = await FrameStream.server(
        server, derive_key(SECRET, "sync"), purpose="sync", nonce=b"s" * 16
    )
    await frames.receive()  # the request
    for frame in frames_to_send:
        await frames.send(frame)


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        ([{"chunk": b"not zstd at all"}], "does not decompress"),
        ([{"chunk": b""}, {"end": True, "raw_size": 5, "sha256": b"x" * 32}], "damaged"),
        ([{"chunk": "text"}], "shape"),
        ([{"snapshot": {"root": b"short", "size": 0}}], "shape"),
    ],
)
async def test_a_damaged_stream_is_refused(tmp_path: Path, sent: list[Any], error: str) -> None:
    header = {"snapshot": {"root": bytes(16), "size": 0}}
    if "snapshot" not in sent[0]:
        sent = [header, *sent]
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_fake_peer, server, sent)
        frames = await FrameStream.client(
            client, derive_key(SECRET, "sync"), purpose="sync", nonce=b"c" * 16
        )
        with pytest.raises(Exception, match=error):
            await snapshot.receive(frames, tmp_path / "staging", timeout=5)


async def test_the_data_is_replaced_only_once_no_thread_holds_the_environment(
    tmp_path: Path,
) -> None:
    """A backup's copy reads the map from a worker thread: closing the environment under it
    would crash the node, so `replace_data` waits for the lease (and keeps taking none of
    the writes queued behind it until then)."""
    async with (
        open_replica(tmp_path, name="a") as a,
        open_replica(tmp_path, name="b") as b,
    ):
        await fill(a, 20)
        staged = tmp_path / "staged"
        staged.mkdir()
        a.store.env.copy(str(staged), compact=True)
        assert b.store.lease_env_nowait()  # as a backup in progress holds it
        done = trio.Event()

        async def replace() -> None:
            await b.store.replace_data(staged)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(replace)
            for _ in range(3):
                await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(0.06)  # the writer looks at the lease every 50 ms
            assert not done.is_set() and b.store.count() == 0
            b.store.release_env()
        assert done.is_set() and b.store.count() == 20
        assert identity(b.store) == {"node_id": "b", "joined_timestamp": T0}
