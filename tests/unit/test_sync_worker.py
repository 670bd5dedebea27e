"""SyncService behaviour between real LMDB replicas over in-memory streams (mock time):
who starts an exchange, streaming and pacing, the push link, connection limits, and the
persisted bootstrap and staleness state."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from kvs.net.codec import WireError
from kvs.net.messages import MemberChanged, MemberInfo, State
from kvs.store import Put
from kvs.sync import SyncService, bootstrap_needed, limits
from kvs.sync import protocol as p
from kvs.sync.antientropy import AntiEntropy
from kvs.sync.health import BOOTSTRAP_STATE, LAST_EXCHANGE
from kvs.sync.limits import FRAME_BUDGET, IDLE_TIMEOUT
from kvs.sync.merkle import MerkleTree
from kvs.testing.memory import MemoryTransport
from tests.support.sync import T0, Replica, encode, open_replica, record, session

A, B = ("a", 1), ("b", 1)
DAY_MS = 86_400_000


def served(worker: SyncService) -> dict[str, int]:
    return {
        k: v
        for k, v in worker.counters.items()
        if k.startswith("served_") and not k.startswith("served_bytes") and v
    }


def log_requests(replica: Replica, log: list[tuple[str, int]], observed: Replica) -> None:
    """Record each request `replica` serves, with `observed`'s record count at that moment."""
    answer = replica.worker.server.answer

    async def logged(request: Any, *args: Any) -> dict[str, Any]:
        if isinstance(request, dict):
            log.append((str(request.get("op")), observed.worker.tree.size))
        return await answer(request, *args)

    replica.worker.server.answer = logged  # type: ignore[method-assign]


async def fill(replica: Replica, count: int, prefix: str = "k") -> None:
    await replica.merge(*[record(f"{prefix}/{i:05d}", uid=f"u{i}") for i in range(count)])


def member(node_id: str) -> MemberInfo:
    return MemberInfo(node_id, 1, 1, (node_id, 2), (node_id, 1), (node_id, 3))


# --- who starts an exchange ------------------------------------------------------------------------


async def test_a_node_leaves_the_exchange_to_a_syncing_peer_which_pulls_everything_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        await fill(a, 300)
        b.worker.syncing = True
        skipped = await a.worker.exchange(B)
        assert skipped.skipped and (skipped.fetched, skipped.pushed) == (0, 0)
        assert a.worker.counters["exchanges_left_to_joiner"] == 1
        assert b.worker.tree.size == 0 and "served_take" not in served(b.worker)
        pulled = await b.worker.exchange(A)
        assert (pulled.fetched, pulled.pushed) == (300, 0)
        assert a.contents() == b.contents()


def test_on_first_contact_only_the_lower_node_id_or_the_joiner_starts_an_exchange() -> None:
    async def main() -> None:
        with_a_peer: dict[str, list[str]] = {}
        for me, other, syncing in (("a", "b", False), ("b", "a", False), ("b", "a", True)):
            worker = AntiEntropy.__new__(AntiEntropy)  # only the membership bookkeeping runs
            worker.node_id, worker.health = me, SimpleNamespace(syncing=syncing)  # type: ignore[assignment]
            worker._urgent, worker._lost = [], set()
            worker._kick = trio.Event()
            worker.on_member_change(MemberChanged(member(other), State.ALIVE, None))
            with_a_peer[f"{me}{'/syncing' if syncing else ''}"] = list(worker._urgent)
        assert with_a_peer == {"a": ["b"], "b": [], "b/syncing": ["a"]}

    trio.run(main)


# --- streaming and pacing ------------------------------------------------------------------------


async def test_a_bootstrap_is_streamed_in_paced_batches_taking_empty_leaves_whole(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Records are applied while later leaves are still to be asked for (one batch in
    memory, not the data set), and every batch is followed by `throttle_delay`."""
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, sync_throttle_delay=2.0) as b,
    ):
        await fill(a, 3000)  # ~3,000 differing leaves: 3 batches of 1,024
        requests: list[tuple[str, int]] = []
        log_requests(a, requests, observed=b)
        start = trio.current_time()
        result = await b.worker.exchange(A)
        elapsed = trio.current_time() - start
        assert result.fetched == 3000 and a.contents() == b.contents()
        takes = [size for op, size in requests if op == "take"]
        assert len(takes) == 3 and "leaves" not in dict(requests)  # no listing of empty leaves
        assert takes[0] == 0 and 0 < takes[-1] < 3000  # applied while streaming
        assert 6.0 <= elapsed < 7.0  # three batches, each followed by the pause


async def test_fetched_records_are_merged_in_bounded_transactions_and_pages_released(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LMDB holds every page a transaction changes in memory until it commits, and keeps
    every page read mapped: a bootstrap bounds both (smaller figures here, same code)."""
    monkeypatch.setattr(limits, "MERGE_BATCH", 50)
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport) as b,
    ):
        await fill(a, 3000)
        releases: list[float] = []
        release = b.store.release_mapped_pages

        def counted() -> int:
            releases.append(trio.current_time())
            return release()

        b.store.release_mapped_pages = counted  # type: ignore[method-assign]
        b.worker.syncing = True
        b.worker.anti_entropy.live_peers = lambda: [("a", A)]
        before = b.store.stats["transactions"]
        async with trio.open_nursery() as nursery:
            await nursery.start(b.worker.run)
            with trio.fail_after(60):
                while b.worker.syncing:
                    await trio.sleep(0.01)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
        assert a.contents() == b.contents()
        assert b.store.stats["max_batch"] <= 50
        assert b.store.stats["transactions"] - before >= 3000 // 50
        # Released after every commit while syncing (not after the bootstrap).
        assert len(releases) >= 3000 // 50
        assert max(releases) <= trio.current_time() - 4
        assert not b.store.release_pages_after_commit


async def test_a_leaf_too_big_for_one_frame_is_listed_and_fetched_instead(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(
            tmp_path, name="a", transport=transport, serve=True, max_json_size=2 << 20
        ) as a,
        open_replica(tmp_path, name="b", transport=transport, max_json_size=2 << 20) as b,
    ):
        tree = MerkleTree()
        candidates = (f"big/{i}" for i in itertools.count())
        crowded = list(itertools.islice((k for k in candidates if tree.leaf_of(k) == 7), 10))
        values = [  # ~512 kB each once compressed: the leaf holds more than a frame's budget
            b'"' + random.Random(i).randbytes(1 << 19).hex().encode() + b'"' for i in range(10)
        ]
        await a.merge(*[record(k, v) for k, v in zip(crowded, values, strict=True)])
        await a.merge(record("small"))
        assert sum(map(len, a.contents().values())) > FRAME_BUDGET
        result = await b.worker.exchange(A)
        assert result.fetched == 11 and a.contents() == b.contents()
        assert served(a.worker)["served_leaves"] >= 1 and served(a.worker)["served_fetch"] >= 2


# --- the server ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "format-disk"},
        {"op": "fetch", "keys": [None]},
        {"op": "push", "records": [b"\x93garbage"]},
        {"op": "take", "leaves": [-1]},
    ],
)
async def test_requests_are_counted_as_served_only_once_valid(
    tmp_path: Path, request_: dict[str, Any], autojump_clock: trio.testing.MockClock
) -> None:
    async with open_replica(tmp_path) as replica:
        with pytest.raises(p.ProtocolError):
            await replica.worker.server.answer(request_)
        assert served(replica.worker) == {}
        await replica.worker.server.answer({"op": "root"})
        assert served(replica.worker) == {"served_root": 1}


async def test_inbound_connections_beyond_the_limit_are_refused_and_counted(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(
        tmp_path, name="a", transport=transport, serve=True, sync_max_connections=2
    ) as a:
        await a.merge(record("k"))
        first, second = await session(transport), await session(transport)
        start = trio.current_time()
        with pytest.raises(WireError):  # closed before the handshake
            await session(transport)
        assert trio.current_time() - start < 1
        await trio.testing.wait_all_tasks_blocked()
        assert a.worker.counters["refused_connections"] == 1
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        third = await session(transport)  # a slot is free again
        await third.send({"op": "root"})
        assert (await third.receive())["size"] == 1
        await second.send({"op": "root"})
        assert (await second.receive())["size"] == 1
        assert a.worker.counters["refused_connections"] == 1


# --- the push link -------------------------------------------------------------------------------


async def test_the_push_link_outlives_the_idle_timeout_and_loses_no_write(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        a.worker.push.start("b", B)
        await a.store.write([Put("first", b"1")])
        with trio.fail_after(1):
            while b.store.get("first") is None:
                await trio.sleep(0.01)
        await trio.sleep(3 * IDLE_TIMEOUT)  # quiet for longer than the server's idle timeout
        await a.store.write([Put("second", b"2")])
        with trio.fail_after(1):  # pushed at once, not left to anti-entropy
            while b.store.get("second") is None:
                await trio.sleep(0.01)
        assert a.worker.counters["push_failures"] == 0
        assert a.worker.counters["push_keepalives"] >= 3
        assert b.worker.counters["closed_idle"] == 0


async def test_the_push_link_is_answered_before_the_receivers_commit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The next batch need not wait for the receiver's fsync; an exchange's push still does."""
    transport = MemoryTransport()
    async with open_replica(tmp_path, name="a", transport=transport, serve=True) as a:
        write = a.store.write
        release = trio.Event()

        async def slow_write(ops: Any) -> Any:
            await release.wait()  # a commit that takes as long as the test likes
            return await write(ops)

        a.store.write = slow_write  # type: ignore[method-assign]
        frames = await session(transport)
        await frames.send({"op": "push", "records": [encode(record("k"))], "durable": False})
        with trio.fail_after(1):
            assert await frames.receive() == {"applied": 1}
        assert a.store.get("k") is None
        await frames.send({"op": "push", "records": [encode(record("j"))]})
        with trio.move_on_after(5) as waited:
            await frames.receive()
        assert waited.cancelled_caught  # a durable push waits for the commit
        release.set()
        with trio.fail_after(1):
            assert await frames.receive() == {"applied": 1}
        assert a.store.get("k") is not None and a.store.get("j") is not None


async def test_a_push_that_fails_is_sent_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        merges = b.worker.intake.merges
        refused: list[int] = []

        def fails_once(raws: list[bytes]) -> Any:
            if not refused:
                refused.append(len(raws))
                raise p.ProtocolError("bad_record")  # the server drops the connection
            return merges(raws)

        b.worker.intake.merges = fails_once  # type: ignore[method-assign]
        a.worker.push.start("b", B)
        await a.store.write([Put("k1", b"1"), Put("k2", b"2")])
        with trio.fail_after(10):
            while b.store.get("k1") is None or b.store.get("k2") is None:
                await trio.sleep(0.01)
        assert refused == [2]
        assert a.worker.counters["push_requeued"] == 2


# --- persisted state -------------------------------------------------------------------------------


async def test_bootstrap_state_is_persisted_so_a_restart_mid_bootstrap_resumes_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, name="a", transport=transport) as a:
        assert bootstrap_needed(a.store, has_seeds=True)  # empty, with seeds
        assert not bootstrap_needed(a.store, has_seeds=False)
        a.worker.syncing = True
        async with trio.open_nursery() as nursery:
            await nursery.start(a.worker.run)
            assert a.store.get_system(BOOTSTRAP_STATE) == "pending"
            nursery.cancel_scope.cancel()
        await fill(a, 10)  # part of the data came, then the node stopped
        assert bootstrap_needed(a.store, has_seeds=True)
        assert bootstrap_needed(a.store, has_seeds=False)
        await a.store.put_system(BOOTSTRAP_STATE, "done")
        assert not bootstrap_needed(a.store, has_seeds=True)


async def test_a_node_completing_its_bootstrap_persists_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport) as b,
    ):
        await fill(a, 50)
        b.worker.syncing = True
        b.worker.anti_entropy.live_peers = lambda: [("a", A)]
        async with trio.open_nursery() as nursery:
            await nursery.start(b.worker.run)
            with trio.fail_after(30):
                while b.worker.syncing:
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert b.store.get_system(BOOTSTRAP_STATE) == "done"
        assert b.store.get_system(LAST_EXCHANGE) == b.wall()
        assert not bootstrap_needed(b.store, has_seeds=True)
        assert a.contents() == b.contents()


async def test_a_node_out_of_touch_longer_than_tombstone_ttl_goes_stale_and_serves_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, tombstone_ttl=DAY_MS / 1000) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        await fill(a, 20)
        await a.store.put_system(LAST_EXCHANGE, T0 - 2 * DAY_MS)  # then two days down
        async with trio.open_nursery() as nursery:
            await nursery.start(a.worker.run)
            assert a.worker.stale
            assert "re-bootstrap" in caplog.text.lower() and "tombstone_ttl" in caplog.text
            # It sends nothing: no exchange it starts, no push, no records it serves.
            a.worker.anti_entropy.live_peers = lambda: [("b", B)]
            a.worker.push.start("b", B)
            await a.store.write([Put("after", b"1")])
            await trio.sleep(60)
            assert b.worker.tree.size == 0
            assert set(served(b.worker)) <= {"served_root"}  # at most push-link keepalives
            result = await b.worker.exchange(A)
            assert result.skipped and result.peer_stale and b.worker.tree.size == 0
            frames = await session(transport)
            await frames.send({"op": "take", "leaves": [0]})
            with pytest.raises((trio.EndOfChannel, WireError)):
                await frames.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert a.worker.counters["dropped_stale"] == 1
            nursery.cancel_scope.cancel()
        # Its persisted time is not refreshed while stale: a restart is still stale.
        assert a.store.get_system(LAST_EXCHANGE) == T0 - 2 * DAY_MS


async def test_a_running_node_cut_off_longer_than_tombstone_ttl_goes_stale_on_reconnect(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, tombstone_ttl=DAY_MS / 1000) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True),
    ):
        peers: list[tuple[str, tuple[str, int]]] = [("b", B)]
        a.worker.anti_entropy.live_peers = lambda: peers
        async with trio.open_nursery() as nursery:
            await nursery.start(a.worker.run)
            a.worker.on_member_change(MemberChanged(member("b"), State.ALIVE, None))
            await trio.sleep(30)
            assert a.worker.counters["exchanges_equal"] >= 1 and not a.worker.stale
            # b dies (not a graceful leave) and stays away for more than a day.
            peers.clear()
            a.worker.on_member_change(MemberChanged(member("b"), State.DEAD, State.ALIVE))
            a.wall.now_ms += DAY_MS + 1
            await trio.sleep(30)
            assert not a.worker.stale and a.worker.counters["alone_ticks"] == 0
            peers.append(("b", B))
            a.worker.on_member_change(MemberChanged(member("b"), State.ALIVE, State.DEAD))
            await trio.sleep(30)
            assert a.worker.stale
            nursery.cancel_scope.cancel()


async def test_a_node_alone_in_its_cluster_does_not_go_stale(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_replica(tmp_path, name="a", tombstone_ttl=DAY_MS / 1000) as a:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.worker.run)
            for _ in range(3):
                a.wall.now_ms += DAY_MS // 2
                await trio.sleep(30)
            assert not a.worker.stale and a.worker.counters["alone_ticks"] >= 3
            nursery.cancel_scope.cancel()
        assert a.store.get_system(LAST_EXCHANGE) == a.wall()
