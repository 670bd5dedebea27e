"""kvs.store against a real LMDB environment: outcomes, group commit, indexes, TTL, merge, HLC."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
import trio
import trio.testing

from kvs.clock import MAX_HLC, HybridLogicalClock
from kvs.model import Record, RecordCodec, Version, hlc_ms, hlc_pack, resolve
from kvs.store import (
    MAINTENANCE_BATCH,
    Change,
    Conflict,
    Delete,
    Merge,
    NotFound,
    Outcome,
    Put,
    Store,
    StoreError,
    Unchanged,
    Written,
)
from kvs.sync import protocol
from tests.support.config import ManualWallClock, store_settings

T0 = 1_700_000_000_000


class Stores:
    """Opens stores in tmp_path with their writer running; closes them cleanly."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path, wall: ManualWallClock) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.wall = wall
        self._uuids = itertools.count(1)
        self.running: dict[Store, tuple[trio.CancelScope, trio.Event]] = {}

    def new_uuid(self) -> str:
        return f"00000000-0000-4000-8000-{next(self._uuids):012d}"

    async def open(
        self,
        name: str = "db",
        *,
        clock: HybridLogicalClock | None = None,
        node_id: str = "node-a",
        in_thread: bool = True,
        **kwargs: Any,
    ) -> Store:
        store = Store(
            self.tmp_path / name,
            clock=clock or HybridLogicalClock(self.wall),
            new_uuid=self.new_uuid,
            settings=store_settings(**kwargs),
            in_thread=in_thread,
        )
        store.ensure_identity(node_id, store.clock.wall_ms())
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def run_writer(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await store.writer(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run_writer)
        self.running[store] = (scope, stopped)
        return store

    async def close(self, store: Store) -> None:
        scope, stopped = self.running.pop(store)
        scope.cancel()
        await stopped.wait()
        store.close()


@pytest.fixture
async def stores(
    nursery: trio.Nursery, tmp_path: Path, wall: ManualWallClock
) -> AsyncIterator[Stores]:
    opened = Stores(nursery, tmp_path, wall)
    yield opened
    for store in list(opened.running):
        await opened.close(store)


@pytest.fixture
async def store(stores: Stores) -> Store:
    return await stores.open()


async def put(store: Store, key: str, value: bytes = b"1", **kwargs: Any) -> Record:
    [outcome] = await store.write([Put(key, value, **kwargs)])
    assert isinstance(outcome, Written), outcome
    return outcome.record


async def delete(store: Store, key: str) -> Record:
    [outcome] = await store.write([Delete(key)])
    assert isinstance(outcome, Written), outcome
    assert outcome.record.deleted
    return outcome.record


async def merge(store: Store, record: Record) -> Outcome:
    [outcome] = await store.write([Merge(record)])
    return outcome


def index_keys(store: Store, db: Any) -> list[bytes]:
    with store._env.begin(db=db) as txn:
        return [k for k, _ in txn.cursor()]


def index_names(store: Store, db: Any) -> list[str]:
    """Keys of an `hlc(8) + key` index, without the hlc."""
    return [k[8:].decode() for k in index_keys(store, db)]


def remote(key: str, value: bytes | None, hlc: int, joined: int, uid: str) -> Record:
    return Record(key, value, Version(hlc, joined, f"node-{joined}", uid))


# --- basic reads and writes -------------------------------------------------------------------


async def test_put_get_round_trip(store: Store) -> None:
    record = await put(store, "home/room/socks", b'{"colour":"red"}')
    assert record.key == "home/room/socks"
    assert record.value == b'{"colour":"red"}'
    assert record.version.origin == "node-a"
    assert record.version.origin_joined == T0
    assert record.version.uuid.startswith("00000000-")
    assert hlc_ms(record.version.hlc) == T0
    assert record.created_at == T0
    assert store.get("home/room/socks") == record
    assert store.get_live("home/room/socks") == record
    assert store.get("home/room") is None
    assert store.get_live("nothing") is None
    assert store.count() == 1


async def test_large_value_round_trip(store: Store) -> None:
    value = b'{"text":"' + b"compressible " * 20_000 + b'"}'
    record = await put(store, "big", value)
    assert store.get("big") == record
    assert store.get("big").value == value


async def test_unicode_keys_round_trip(store: Store) -> None:
    for key in ("日本/語", "é/ü", "🧦"):
        record = await put(store, key, b'"x"')
        assert store.get(key) == record


async def test_update_keeps_created_at_and_gets_a_newer_version(
    store: Store, wall: ManualWallClock
) -> None:
    first = await put(store, "k", b"1")
    wall.advance(5)
    second = await put(store, "k", b"2")
    assert second.version.hlc > first.version.hlc
    assert second.version.uuid != first.version.uuid
    assert second.created_at == first.created_at == T0
    assert store.get("k") == second
    await delete(store, "k")
    wall.advance(5)
    third = await put(store, "k", b"3")
    assert third.created_at == T0 + 10_000  # a new life after a delete


async def test_versions_strictly_increase_even_in_one_millisecond(store: Store) -> None:
    records = [await put(store, f"k{i % 3}", b"%d" % i) for i in range(20)]
    hlcs = [r.version.hlc for r in records]
    assert all(a < b for a, b in zip(hlcs, hlcs[1:], strict=False))
    assert len({r.version.uuid for r in records}) == 20


async def test_outcomes_of_a_multi_op_write_are_in_order(store: Store) -> None:
    outcomes = await store.write(
        [Put("a", b"1"), Delete("missing"), Put("b", b"2"), Delete("a"), Delete("x", False)]
    )
    assert [type(o) for o in outcomes] == [Written, NotFound, Written, Written, Unchanged]
    assert outcomes[1] == NotFound("missing")
    assert outcomes[4] == Unchanged("x")
    assert store.get("a").deleted
    assert store.get_live("b").value == b"2"
    # versions of one write are distinct and ordered
    assert outcomes[0].record.version.hlc < outcomes[2].record.version.hlc


async def test_ops_of_one_write_take_consecutive_hlcs_after_every_earlier_one(
    store: Store,
) -> None:
    before = await put(store, "first")
    ahead = remote("theirs", b"9", hlc_pack(T0 + 5_000), 1, "u-remote")
    outcomes = await store.write([Put("a", b"1"), Merge(ahead), Delete("a"), Put("b", b"2")])
    assert [type(o) for o in outcomes] == [Written, Written, Written, Written]
    mine = [o.record.version for i, o in enumerate(outcomes) if i != 1]  # type: ignore[union-attr]
    first = mine[0].hlc
    assert first > before.version.hlc
    assert [v.hlc for v in mine] == [first, first + 1, first + 2]
    assert len({v.uuid for v in mine}) == 3
    assert outcomes[1].record.version == ahead.version  # type: ignore[union-attr]
    # The merged version moved the clock: the next write comes after it.
    after = await put(store, "later")
    assert after.version.hlc > ahead.version.hlc


# --- delete and compare-and-set -----------------------------------------------------------------


async def test_delete_outcomes_and_tombstones(store: Store) -> None:
    assert await store.write([Delete("absent")]) == [NotFound("absent")]
    assert await store.write([Delete("absent", must_exist=False)]) == [Unchanged("absent")]
    live = await put(store, "k", b"1")
    tomb = await delete(store, "k")
    assert tomb.version.hlc > live.version.hlc
    assert tomb.created_at == live.created_at
    assert store.get("k") == tomb  # get returns the tombstone: replication needs it
    assert store.get("k").deleted
    assert store.get_live("k") is None
    # deleting a tombstone is like deleting an absent key
    assert await store.write([Delete("k")]) == [NotFound("k")]
    assert await store.write([Delete("k", must_exist=False)]) == [Unchanged("k")]
    assert store.get("k") == tomb
    assert store.count() == 0


async def test_if_match(store: Store) -> None:
    # absent key: nothing to match
    assert await store.write([Put("k", b"1", if_match="anything")]) == [Conflict("k", None)]
    assert store.get("k") is None
    first = await put(store, "k", b"1")
    # a stale or wrong uuid conflicts and reports the current one
    [outcome] = await store.write([Put("k", b"2", if_match="wrong")])
    assert outcome == Conflict("k", first.version.uuid)
    assert store.get("k") == first
    # the current uuid succeeds
    second = await put(store, "k", b"2", if_match=first.version.uuid)
    assert store.get("k") == second
    # the old uuid is now stale
    [outcome] = await store.write([Put("k", b"3", if_match=first.version.uuid)])
    assert outcome == Conflict("k", second.version.uuid)
    # a deleted key cannot be matched, even with its tombstone's uuid
    tomb = await delete(store, "k")
    [outcome] = await store.write([Put("k", b"4", if_match=tomb.version.uuid)])
    assert outcome == Conflict("k", None)


async def test_if_match_on_an_expired_key_conflicts(store: Store, wall: ManualWallClock) -> None:
    record = await put(store, "k", b"1", expires_at=T0 + 1000)
    wall.advance(2)
    [outcome] = await store.write([Put("k", b"2", if_match=record.version.uuid)])
    assert outcome == Conflict("k", None)
    assert await store.write([Delete("k")]) == [NotFound("k")]


async def test_count_excludes_tombstones(store: Store) -> None:
    for key in ("a", "b", "c"):
        await put(store, key)
    assert store.count() == 3
    await delete(store, "b")
    assert store.count() == 2
    await put(store, "b")
    assert store.count() == 3
    await put(store, "b", b"2")  # an update is not a new key
    assert store.count() == 3
    assert await merge(store, remote("d", None, hlc_pack(T0), 1, "u")) == Written(
        remote("d", None, hlc_pack(T0), 1, "u")
    )
    assert store.count() == 3
    assert isinstance(await merge(store, remote("d", b"1", hlc_pack(T0 + 1), 1, "v")), Written)
    assert store.count() == 4


# --- group commit -------------------------------------------------------------------------------


@pytest.mark.parametrize("in_thread", [True, False])
async def test_group_commit_batches_concurrent_writes(stores: Stores, in_thread: bool) -> None:
    store = await stores.open(in_thread=in_thread)
    before = store.stats["transactions"]
    results: dict[int, Outcome] = {}

    async def writer(i: int) -> None:
        [results[i]] = await store.write([Put(f"key/{i}", b"%d" % i)])

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(writer, i)

    transactions = store.stats["transactions"] - before
    assert transactions < 200
    assert transactions <= 10  # everything queued at once goes in a handful of commits
    assert store.stats["max_batch"] > 1
    assert sorted(results) == list(range(200))
    for i, outcome in results.items():
        assert isinstance(outcome, Written)
        assert outcome.record.key == f"key/{i}"
        assert outcome.record.value == b"%d" % i
        assert store.get(f"key/{i}") == outcome.record
    assert len({o.record.version.uuid for o in results.values()}) == 200
    assert len({o.record.version.hlc for o in results.values()}) == 200
    assert store.count() == 200
    assert store.stats["ops"] >= 200


async def test_group_commit_of_concurrent_writes_to_one_key(store: Store) -> None:
    """Writes to one key in one batch apply in order: the last queued is the current one."""
    results: list[Record] = []

    async def writer(i: int) -> None:
        results.append(await put(store, "hot", b"%d" % i))

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(writer, i)
    newest = max(results, key=lambda r: r.version.order_key())
    assert store.get("hot") == newest
    assert len(store.history("hot")) == 3
    assert [r.version for r in store.history("hot")] == [
        r.version for r in sorted(results, key=lambda r: r.version.hlc, reverse=True)[1:4]
    ]


async def test_in_thread_false_works(stores: Stores, wall: ManualWallClock) -> None:
    store = await stores.open(in_thread=False)
    record = await put(store, "a", b"1", expires_at=T0 + 1000)
    assert store.get_live("a") == record
    assert (await store.write([Put("b", b"2"), Delete("a")]))[1].record.deleted
    assert store.get_live("a") is None
    wall.advance(1)
    assert await store.maintain(tombstone_ttl_ms=0) == 1  # the tombstone of a
    assert store.get("a") is None


async def test_a_failed_op_is_reported_and_the_writer_keeps_serving(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.write([Put("bad", b"1", expires_at=-1)])  # does not fit the u64 index
    assert store.get("bad") is None
    record = await put(store, "good")
    assert store.get("good") == record


# --- history ------------------------------------------------------------------------------------


async def test_history_keeps_depth_previous_versions_newest_first(stores: Stores) -> None:
    store = await stores.open(revision_history_depth=3)
    records = [await put(store, "a", b"%d" % i) for i in range(6)]
    assert store.history("a") == [records[4], records[3], records[2]]
    assert store.history("a", limit=1) == [records[4]]
    assert store.history("a", limit=10) == [records[4], records[3], records[2]]
    assert store.history("missing") == []


async def test_history_includes_tombstones(stores: Stores) -> None:
    store = await stores.open(revision_history_depth=3)
    first = await put(store, "a", b"1")
    tomb = await delete(store, "a")
    again = await put(store, "a", b"2")
    assert store.get("a") == again
    assert store.history("a") == [tomb, first]
    second_tomb = await delete(store, "a")
    assert store.history("a") == [again, tomb, first]
    assert store.get("a") == second_tomb


async def test_history_does_not_mix_keys_that_share_a_prefix(stores: Stores) -> None:
    store = await stores.open(revision_history_depth=5)
    keys = ["a", "a!", "a/b", "a/b/c", "ab", "a\u00e9", "b", "0"]
    written: dict[str, list[Record]] = {k: [] for k in keys}
    for round_ in range(3):
        for key in keys:
            written[key].append(await put(store, key, b"%d" % round_))
    for key in keys:
        assert store.history(key) == written[key][-2::-1], key
    assert store.history("a/") == [] and store.history("") == []


async def test_history_limit_zero_is_empty(store: Store) -> None:
    for i in range(3):
        await put(store, "a", b"%d" % i)
    assert len(store.history("a")) == 2
    assert store.history("a", limit=0) == []


async def test_a_smaller_history_depth_after_restart_trims_on_the_next_write(
    stores: Stores,
) -> None:
    store = await stores.open(revision_history_depth=5)
    records = [await put(store, "a", b"%d" % i) for i in range(6)]
    await put(store, "b")
    await put(store, "b", b"2")
    assert len(store.history("a")) == 5
    await stores.close(store)
    store = await stores.open(revision_history_depth=2)
    latest = await put(store, "a", b"new")
    assert store.history("a") == [records[5], records[4]]
    await stores.close(store)
    store = await stores.open(revision_history_depth=0)
    await put(store, "a", b"newer")
    assert store.history("a") == []
    assert store.history("b") != []  # untouched keys keep theirs until written
    assert store.get("a").version.hlc > latest.version.hlc


async def test_history_depth_zero_keeps_none(stores: Stores) -> None:
    store = await stores.open(revision_history_depth=0)
    for i in range(4):
        await put(store, "a", b"%d" % i)
    await delete(store, "a")
    assert store.history("a") == []
    assert index_keys(store, store._history) == []


# --- the time index -----------------------------------------------------------------------------


async def test_changes_after_lists_current_versions_in_hlc_order(store: Store) -> None:
    a = await put(store, "a")
    b = await put(store, "b")
    c = await put(store, "c")
    assert store.changes_after(0, None, 10) == [a, b, c]
    a2 = await put(store, "a", b"2")  # moves to the end; its old entry is gone
    assert store.changes_after(0, None, 10) == [b, c, a2]
    tomb = await delete(store, "b")  # tombstones replicate too
    assert store.changes_after(0, None, 10) == [c, a2, tomb]
    assert store.changes_after(0, None, 2) == [c, a2]
    assert store.changes_after(0, None, 0) == []
    # strictly after
    assert store.changes_after(c.version.hlc, None, 10) == [a2, tomb]
    assert store.changes_after(c.version.hlc - 1, None, 10) == [c, a2, tomb]
    assert store.changes_after(tomb.version.hlc, None, 10) == []
    assert store.changes_after(c.version.hlc, "c", 10) == [a2, tomb]
    assert len(index_keys(store, store._changes)) == 3


async def test_changes_after_with_a_cursor_handles_equal_hlcs(store: Store) -> None:
    h = hlc_pack(T0 + 10)
    before = await put(store, "first")
    for key in ("b", "a", "c"):  # three keys replicated with the same HLC
        assert isinstance(await merge(store, remote(key, b"1", h, 1, "u-" + key)), Written)
    after = await put(store, "last")
    names = [r.key for r in store.changes_after(0, None, 100)]
    assert names == ["first", "a", "b", "c", "last"]
    assert [r.key for r in store.changes_after(h, "a", 10)] == ["b", "c", "last"]
    assert [r.key for r in store.changes_after(h, "aa", 10)] == ["b", "c", "last"]
    assert [r.key for r in store.changes_after(h, "c", 10)] == ["last"]
    assert [r.key for r in store.changes_after(h, None, 10)] == ["last"]
    assert [r.key for r in store.changes_after(h - 1, None, 10)] == ["a", "b", "c", "last"]
    assert [r.key for r in store.changes_after(h, "", 10)] == ["a", "b", "c", "last"]
    assert before.version.hlc < h < after.version.hlc


async def test_changes_after_paginates_without_gaps_or_repeats(store: Store) -> None:
    rng = random.Random(5)
    h = hlc_pack(T0 + 1)
    keys = [f"k{i:02d}" for i in range(30)]
    for key in keys:
        if rng.random() < 0.4:
            await merge(store, remote(key, b"1", h + rng.randrange(3), 1, "u" + key))
        else:
            await put(store, key)
    for key in rng.sample(keys, 8):
        await put(store, key, b"2")
    everything = store.changes_after(0, None, 1000)
    assert sorted(r.key for r in everything) == keys
    order = [(r.version.hlc, r.key.encode()) for r in everything]
    assert order == sorted(order)
    for page_size in (1, 2, 7):
        seen: list[Record] = []
        cursor: tuple[int, str | None] = (0, None)
        while True:
            page = store.changes_after(cursor[0], cursor[1], page_size)
            if not page:
                break
            assert len(page) <= page_size
            seen.extend(page)
            cursor = (page[-1].version.hlc, page[-1].key)
        assert seen == everything


# --- scans --------------------------------------------------------------------------------------


async def test_scan_crosses_chunk_boundaries(store: Store) -> None:
    keys = [f"k/{i:04d}" for i in range(600)]
    await store.write([Put(k, b"1") for k in keys] + [Put("j", b"1"), Put("l", b"1")])
    assert [r.key for r in store.scan("k/", "k0")] == keys
    assert [r.key for r in store.scan("")] == ["j", *keys, "l"]
    assert [r.key for r in store.scan("k/0100", "k/0103")] == ["k/0100", "k/0101", "k/0102"]
    assert store.seek("k/0599x").key == "l"
    assert store.seek("m") is None


# --- TTL and tombstone GC -----------------------------------------------------------------------


async def test_ttl_expiry_and_sweep(store: Store, wall: ManualWallClock) -> None:
    short = await put(store, "short", expires_at=T0 + 1000)
    long = await put(store, "long", expires_at=T0 + 60_000)
    await put(store, "forever")
    await put(store, "short", b"2", expires_at=T0 + 1000)  # gives "short" some history
    assert store.get_live("short") is not None
    assert sorted(index_names(store, store._expiry)) == ["long", "short"]
    wall.advance(0.999)
    assert store.get_live("short") is not None
    assert await store.maintain(tombstone_ttl_ms=10**9) == 0
    wall.advance(0.001)  # expires_at is the first millisecond it is gone
    assert store.get_live("short") is None
    assert store.get("short") is not None  # still stored until the sweep
    assert store.count() == 3
    latest = store.get("short")
    assert await store.maintain(tombstone_ttl_ms=10**9) == 1
    # The sweep leaves a tombstone of the expired version (replicas that missed it may still
    # hold an older one, which it must keep beating), collected like a delete's.
    assert store.get("short") == latest.expired_tombstone()
    assert store.get("short").version == latest.version and store.get("short").deleted
    assert store.history("short") == []  # the expired values are gone
    assert index_names(store, store._expiry) == ["long"]
    assert index_names(store, store._tombstones) == ["short"]
    assert store.get_live("long") == long
    assert store.count() == 2
    assert short.expires_at == T0 + 1000
    assert await store.maintain(tombstone_ttl_ms=0) == 1  # the tombstone is collected
    assert store.get("short") is None
    assert store.history("short") == []
    assert "short" not in index_names(store, store._changes)


async def test_replacing_a_ttl_moves_or_clears_its_expiry(
    store: Store, wall: ManualWallClock
) -> None:
    await put(store, "cleared", expires_at=T0 + 1000)
    await put(store, "cleared", b"2")  # no TTL any more
    await put(store, "extended", expires_at=T0 + 1000)
    await put(store, "extended", b"2", expires_at=T0 + 5000)
    await put(store, "deleted", expires_at=T0 + 1000)
    await delete(store, "deleted")
    assert index_names(store, store._expiry) == ["extended"]
    wall.advance(2)
    assert await store.maintain(tombstone_ttl_ms=10**9) == 0
    assert store.get_live("cleared").value == b"2"
    assert store.get_live("extended").value == b"2"
    wall.advance(3)
    assert await store.maintain(tombstone_ttl_ms=10**9) == 1
    assert store.get("extended").deleted  # its tombstone (see test_ttl_expiry_and_sweep)


async def test_maintain_respects_its_limit(store: Store, wall: ManualWallClock) -> None:
    await store.write([Put(f"k{i}", b"1", expires_at=T0 + 10) for i in range(25)])
    wall.advance(1)
    assert await store.maintain(tombstone_ttl_ms=10**9, limit=10) == 10
    assert await store.maintain(tombstone_ttl_ms=10**9, limit=10) == 10
    assert await store.maintain(tombstone_ttl_ms=10**9, limit=10) == 5
    assert store.count() == 0


async def test_tombstone_gc_after_the_ttl(store: Store, wall: ManualWallClock) -> None:
    for key in ("old", "young", "live"):
        await put(store, key)
    old = await delete(store, "old")
    wall.advance(10)
    young = await delete(store, "young")
    wall.advance(6)  # old is 16 s dead, young 6 s
    assert index_names(store, store._tombstones) == ["old", "young"]
    assert await store.maintain(tombstone_ttl_ms=10_000) == 1
    assert store.get("old") is None
    assert store.history("old") == []
    assert store.get("young") == young
    assert index_names(store, store._tombstones) == ["young"]
    assert "old" not in index_names(store, store._changes)
    assert store.get_live("live") is not None
    assert store.count() == 1
    wall.advance(4)  # young is exactly 10 s dead: collected
    assert await store.maintain(tombstone_ttl_ms=10_000) == 1
    assert store.get("young") is None
    assert index_keys(store, store._tombstones) == []
    assert old.version.hlc < young.version.hlc


# --- merge --------------------------------------------------------------------------------------


async def test_merge_newer_wins_older_loses(store: Store) -> None:
    local = await put(store, "m", b'"local"')
    newer = remote("m", b'"remote"', local.version.hlc + 1, T0 + 5, "zzz")
    assert await merge(store, newer) == Written(newer)
    assert store.get("m") == newer
    assert store.history("m") == [local]
    older = remote("m", b'"old"', local.version.hlc - 1, 0, "zzzz")
    assert await merge(store, older) == Unchanged("m")
    assert store.get("m") == newer
    assert await merge(store, newer) == Unchanged("m")  # a duplicate delivery
    assert store.history("m") == [local]


async def test_merge_into_absent_key_and_of_tombstones(store: Store) -> None:
    incoming = remote("new", b"1", hlc_pack(T0 - 1000), 1, "a")
    assert await merge(store, incoming) == Written(incoming)
    assert store.get_live("new") == incoming
    tomb = remote("new", None, hlc_pack(T0 - 500), 2, "b")
    assert await merge(store, tomb) == Written(tomb)
    assert store.get("new") == tomb
    assert store.get_live("new") is None
    assert index_names(store, store._tombstones) == ["new"]
    # an older write cannot resurrect the deleted key
    assert await merge(store, remote("new", b"2", hlc_pack(T0 - 700), 1, "c")) == Unchanged("new")
    assert store.get("new") == tomb


async def test_merge_ties_on_hlc_go_to_the_earliest_joined_node_then_larger_uuid(
    store: Store,
) -> None:
    local = await put(store, "t", b"1")
    h, joined = local.version.hlc, local.version.origin_joined
    later_node = remote("t", b"2", h, joined + 1, "ffffffff")
    assert await merge(store, later_node) == Unchanged("t")
    earlier_node = remote("t", b"3", h, joined - 1, "00000000")
    assert await merge(store, earlier_node) == Written(earlier_node)
    same_node_smaller_uuid = remote("t", b"4", h, joined - 1, "0")
    assert await merge(store, same_node_smaller_uuid) == Unchanged("t")
    same_node_larger_uuid = remote("t", b"5", h, joined - 1, "00000001")
    assert await merge(store, same_node_larger_uuid) == Written(same_node_larger_uuid)
    assert store.get("t") == resolve(
        resolve(resolve(local, later_node), earlier_node),
        resolve(same_node_smaller_uuid, same_node_larger_uuid),
    )


async def test_merge_advances_the_clock(store: Store, wall: ManualWallClock) -> None:
    ahead = hlc_pack(T0 + 3_600_000, 3)  # a peer an hour ahead
    await merge(store, remote("x", b"1", ahead, 1, "u"))
    assert store.clock.last >= ahead
    assert store.clock.max_offset_seen_ms >= 3_600_000
    mine = await put(store, "x", b"2")  # overwriting it locally still wins
    assert mine.version.hlc > ahead
    assert store.get("x") == mine


async def test_merge_order_does_not_matter(stores: Stores) -> None:
    rng = random.Random(11)
    versions = [
        remote("k", None if i % 4 == 0 else b"%d" % i, hlc_pack(T0 + rng.randrange(3)), j, u)
        for i, (j, u) in enumerate(itertools.product([1, 2], ["a", "b", "c"]))
    ]
    winners = []
    for attempt in range(3):
        store = await stores.open(f"db{attempt}")
        rng.shuffle(versions)
        for record in versions:
            await merge(store, record)
        winners.append(store.get("k"))
    assert winners[0] == winners[1] == winners[2]
    assert winners[0].version.order_key() == max(v.version.order_key() for v in versions)


# --- persistence --------------------------------------------------------------------------------


async def test_hlc_persists_across_a_restart_with_a_lagging_wall_clock(
    stores: Stores, wall: ManualWallClock
) -> None:
    store = await stores.open()
    wall.advance(3600)
    last = await put(store, "k", b"1")
    await stores.close(store)
    behind = HybridLogicalClock(ManualWallClock(T0))  # the machine's clock jumped back an hour
    store = await stores.open(clock=behind)
    assert behind.last >= last.version.hlc
    assert store.get("k") == last
    nxt = await put(store, "k", b"2")
    assert nxt.version.hlc > last.version.hlc
    assert store.get("k") == nxt


async def test_observed_remote_hlc_persists_too(stores: Stores) -> None:
    store = await stores.open()
    ahead = hlc_pack(T0 + 86_400_000)
    await merge(store, remote("r", b"1", ahead, 1, "u"))
    await stores.close(store)
    store = await stores.open(clock=HybridLogicalClock(ManualWallClock(T0)))
    assert (await put(store, "r", b"2")).version.hlc > ahead


async def test_a_persisted_clock_reading_beyond_any_real_time_is_ignored(
    stores: Stores,
) -> None:
    """Before peers' records were bounded in time, one written at 2**63 - 1 moved the clock
    there, and the reading was persisted: every write after carried an HLC over 63 bits,
    which every peer refuses. The clock no longer follows such a reading, persisted or not."""
    with trio.fail_after(30):
        store = await stores.open()
        poisoned = 2**63 - 1
        await merge(store, remote("p", b"1", poisoned, 1, "u"))
        assert store.clock.last < MAX_HLC  # not followed now
        store.set_system_now("hlc", poisoned)  # what the old code persisted
        await stores.close(store)
        store = await stores.open(clock=HybridLogicalClock(ManualWallClock(T0)))
        written = await put(store, "k", b"2")
        assert written.version.hlc < MAX_HLC
        [raw] = store.get_raw_many(["k"])
        protocol.check_record(RecordCodec(), raw, 1 << 20)  # a peer takes it


async def test_identity_is_stable_across_reopen_and_node_id_change(
    stores: Stores, wall: ManualWallClock
) -> None:
    store = await stores.open(node_id="node-a")
    assert store.identity is not None
    assert (store.identity.node_id, store.identity.joined_timestamp) == ("node-a", T0)
    await put(store, "k")
    await stores.close(store)
    wall.advance(100)
    store = await stores.open(node_id="node-a")
    assert (store.identity.node_id, store.identity.joined_timestamp) == ("node-a", T0)
    await stores.close(store)
    wall.advance(100)
    store = await stores.open(node_id="node-b")
    assert (store.identity.node_id, store.identity.joined_timestamp) == ("node-b", T0)
    record = await put(store, "k", b"2")
    assert (record.version.origin, record.version.origin_joined) == ("node-b", T0)
    await stores.close(store)
    store = await stores.open(node_id="node-b")
    assert (store.identity.node_id, store.identity.joined_timestamp) == ("node-b", T0)


async def test_a_fresh_store_gets_the_joined_timestamp_of_its_first_start(
    stores: Stores, wall: ManualWallClock
) -> None:
    wall.advance(42)
    store = await stores.open("fresh")
    assert store.identity is not None and store.identity.joined_timestamp == T0 + 42_000


async def test_data_survives_reopen(stores: Stores) -> None:
    store = await stores.open()
    records = [await put(store, f"k{i}", b"%d" % i) for i in range(5)]
    tomb = await delete(store, "k0")
    await stores.close(store)
    store = await stores.open()
    assert [store.get(f"k{i}") for i in range(1, 5)] == records[1:]
    assert store.get("k0") == tomb
    assert store.count() == 4


def test_wrong_schema_version_is_refused(tmp_path: Path, wall: ManualWallClock) -> None:
    path = tmp_path / "db"
    Store(path, clock=HybridLogicalClock(wall), new_uuid=str, settings=store_settings()).close()
    env = lmdb.open(str(path), max_dbs=8)
    system = env.open_db(b"system")
    with env.begin(write=True, db=system) as txn:
        txn.put(b"schema", msgpack.packb(99))
    env.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path, clock=HybridLogicalClock(wall), new_uuid=str, settings=store_settings())


def test_an_unusable_path_is_a_store_error(tmp_path: Path, wall: ManualWallClock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        Store(
            blocker / "db", clock=HybridLogicalClock(wall), new_uuid=str, settings=store_settings()
        )


# --- map growth ---------------------------------------------------------------------------------


async def test_a_full_map_grows_and_no_write_fails(stores: Stores) -> None:
    store = await stores.open(lmdb_map_size=1 << 20)
    rng = random.Random(3)
    values = {f"blob/{i}": rng.randbytes(100_000) for i in range(40)}  # ~4 MB, incompressible
    results: dict[str, Outcome] = {}

    async def writer(key: str, value: bytes) -> None:
        [results[key]] = await store.write([Put(key, value)])

    async with trio.open_nursery() as nursery:
        for key, value in values.items():
            nursery.start_soon(writer, key, value)
    assert all(isinstance(o, Written) for o in results.values())
    assert len(results) == 40
    # one value bigger than the whole map is fine too
    huge = rng.randbytes(3 << 20)
    await put(store, "huge", huge)
    assert store.stats["map_grows"] > 0
    assert store.info()["map_size"] > 1 << 20
    for key, value in values.items():
        assert store.get(key).value == value
    assert store.get("huge").value == huge
    assert store.count() == 41


# --- listeners ----------------------------------------------------------------------------------


async def test_listeners_receive_changes(store: Store, wall: ManualWallClock) -> None:
    got: list[list[Change]] = []
    store.listeners.append(got.append)
    first = await put(store, "k", b"1")
    second = await put(store, "k", b"2")
    tomb = await delete(store, "k")
    assert got == [
        [Change(None, first, local=True)],
        [Change(first, second, local=True)],
        [Change(second, tomb, local=True)],
    ]
    got.clear()
    incoming = remote("k", b"3", tomb.version.hlc + 1, 1, "r")
    await merge(store, incoming)
    assert got == [[Change(tomb, incoming, local=False)]]
    got.clear()
    # nothing changed: no call
    assert await merge(store, incoming) == Unchanged("k")
    assert await store.write([Delete("absent")]) == [NotFound("absent")]
    assert await store.write([Put("k", b"x", if_match="nope")]) == [
        Conflict("k", incoming.version.uuid)
    ]
    assert got == []
    # one batch, one call with every change of the batch
    outcomes = await store.write([Put("a", b"1"), Put("b", b"1")])
    assert got == [[Change(None, o.record, local=True) for o in outcomes]]
    got.clear()
    # an expiry turns the record into its tombstone (not local: every replica does it, so
    # it is not pushed); removals by tombstone GC report new=None
    ttl = await put(store, "ttl", expires_at=T0 + 1)
    got.clear()
    wall.advance(1)
    assert await store.maintain(tombstone_ttl_ms=10**9) == 1
    assert got == [[Change(ttl, ttl.expired_tombstone(), local=False)]]
    got.clear()
    assert await store.maintain(tombstone_ttl_ms=0) == 1
    assert got == [[Change(ttl.expired_tombstone(), None, local=True)]]


async def test_every_listener_is_called(store: Store) -> None:
    calls: list[str] = []
    store.listeners.append(lambda changes: calls.append("one"))
    store.listeners.append(lambda changes: calls.append("two"))
    await put(store, "k")
    assert calls == ["one", "two"]


# --- keys longer than LMDB's key limit ------------------------------------------------------------


def key_of_bytes(size: int, stem: str = "") -> str:
    """A key of exactly `size` UTF-8 bytes, mostly two-byte characters."""
    rest = size - len(stem.encode())
    return stem + "é" * (rest // 2) + "k" * (rest % 2)


@pytest.mark.parametrize("size", [484, 485, 486, 502, 503, 511, 512, 1024])
async def test_keys_up_to_1024_bytes_work_in_every_index(
    store: Store, wall: ManualWallClock, size: int
) -> None:
    key = key_of_bytes(size)
    assert len(key.encode()) == size
    first = await put(store, key, b"1", expires_at=T0 + 1000)  # expiry index
    second = await put(store, key, b"2")  # history
    tomb = await delete(store, key)  # tombstone index
    third = await put(store, key, b"3", expires_at=T0 + 1000)
    assert store.get(key) == third
    assert store.history(key) == [tomb, second, first]
    assert store.changes_after(0, None, 10) == [third]
    assert store.changes_after(third.version.hlc, key, 10) == []
    assert list(store.scan("")) == [third]
    assert store.seek(key) == third
    wall.advance(2)
    assert await store.maintain(tombstone_ttl_ms=0) == 2  # expired, then its tombstone collected
    assert store.get(key) is None and store.history(key) == []
    assert await store.write([Delete(key)]) == [NotFound(key)]
    merged = remote(key, b"4", hlc_pack(T0 + 5000), 1, "m")
    assert await merge(store, merged) == Written(merged)
    assert store.get_live(key) == merged
    assert isinstance(await merge(store, remote(key, None, hlc_pack(T0 + 6000), 1, "n")), Written)
    wall.advance(10)
    assert await store.maintain(tombstone_ttl_ms=1000) == 1
    assert store.count() == 0


async def test_long_keys_sharing_a_long_prefix_are_distinct(store: Store) -> None:
    stem = "x" * 600
    keys = [stem + suffix for suffix in ("a", "b", "a/b", "é")]
    for key in keys:
        await put(store, key, key[600:].encode())
    for key in keys:
        assert store.get(key).value == key[600:].encode()
        assert store.get(key).key == key
    assert store.get(stem) is None
    assert store.get(stem + "c") is None


async def test_scan_with_long_keys_is_in_key_order(stores: Stores) -> None:
    store = await stores.open(in_thread=False)
    rng = random.Random(17)
    # Many keys around the length where the store switches to a stand-in key, sharing long
    # prefixes, so that long-key groups are large, interleave with short keys, and cross
    # scan chunk boundaries.
    alphabet = ["a", "b", "/", "!", "0", "é", "~"]
    keys: set[str] = set()
    for stem_len in (470, 484, 485, 486, 500):
        stem = "s" * stem_len
        keys.add(stem)
        while len([k for k in keys if k.startswith(stem)]) < 120:
            keys.add(stem + "".join(rng.choices(alphabet, k=rng.randrange(1, 30))))
    keys |= {"a", "t", "s/x", "s" * 1000}
    await store.write([Put(k, b"1") for k in keys])
    ordered = sorted(keys, key=str.encode)
    assert [r.key for r in store.scan("")] == ordered
    bounds = [*rng.sample(ordered, 40), "", "s" * 485 + "a", "s" * 490 + "\U0010ffff"]
    for _ in range(60):
        start = rng.choice(bounds)
        end = rng.choice([None, *bounds])
        expected = [
            k
            for k in ordered
            if k.encode() >= start.encode() and (end is None or k.encode() < end.encode())
        ]
        assert [r.key for r in store.scan(start, end)] == expected, (len(start), end and len(end))
        first = store.seek(start)
        first_key = next((k for k in ordered if k.encode() >= start.encode()), None)
        assert (first.key if first is not None else None) == first_key


async def test_one_failing_op_fails_only_its_own_request(store: Store) -> None:
    results: dict[str, Any] = {}

    async def write(name: str, ops: list[Any]) -> None:
        try:
            results[name] = await store.write(ops)
        except StoreError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(write, f"good{i}", [Put(f"good{i}", b"1")])
            if i == 10:
                nursery.start_soon(
                    write, "bad-ttl", [Put("x", b"1"), Put("y", b"1", expires_at=-1)]
                )
            if i == 20:
                nursery.start_soon(write, "bad-merge", [Merge(remote("z", b"1", -5, 1, "u"))])
    assert isinstance(results.pop("bad-ttl"), StoreError)
    assert isinstance(results.pop("bad-merge"), StoreError)
    assert all(isinstance(r[0], Written) for r in results.values()), results
    assert store.count() == 30
    assert store.get("x") is None  # the failed request is atomic: none of its ops applied
    assert store.get("z") is None


# --- memory ---------------------------------------------------------------------------------------


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux /proc needed")
async def test_release_mapped_pages_takes_the_data_file_out_of_rss(store: Store) -> None:
    """A bootstrap reads and writes all over the data file; its pages must not stay in RSS."""
    rng = random.Random(1)
    for start in range(0, 4000, 1000):  # ~16 MB of incompressible values
        await store.write(
            [
                Put(f"big/{i}", b'"' + rng.randbytes(2048).hex().encode() + b'"')
                for i in range(start, start + 1000)
            ]
        )
    assert sum(1 for _ in store.scan("big/")) == 4000  # every page read through the map
    mapped = _rss_file_kib()
    released = store.release_mapped_pages()
    after = _rss_file_kib()
    assert released >= store.info()["used_bytes"]
    assert mapped - after >= 12_000, (mapped, after)  # KiB: the data file's pages left RSS
    assert sum(1 for _ in store.scan("big/")) == 4000  # and are mapped again on demand
    assert store.get("big/7") is not None


async def test_a_node_sweep_takes_everything_due_in_bounded_transactions(
    start_node: Any, wall: ManualWallClock, mock_clock: trio.testing.MockClock
) -> None:
    """More than one transaction's worth of expired keys: one sweep expires them all, but
    no transaction is larger than MAINTENANCE_BATCH (each blocks the event loop). Trio's
    clock stands still (mock_clock), so the node's own housekeeping never runs meanwhile."""
    node = await start_node(wall_ms=wall)
    due = MAINTENANCE_BATCH * 2 + 7
    expires = wall.now_ms + 10
    for start in range(0, due, 1000):
        end = min(start + 1000, due)
        await node.store.write([Put(f"t/{i}", b"1", expires_at=expires) for i in range(start, end)])
    await node.store.write([Put("kept", b"1")])
    wall.advance(1)
    transactions = node.store.stats["transactions"]
    assert await node.sweep() == due
    assert node.store.get_live("kept") is not None
    assert all(node.store.get(f"t/{i}").deleted for i in range(due))  # tombstones now
    # One transaction per MAINTENANCE_BATCH (and an empty one answering each call).
    assert node.store.stats["transactions"] - transactions >= -(-due // MAINTENANCE_BATCH)
    assert await node.sweep() == 0
