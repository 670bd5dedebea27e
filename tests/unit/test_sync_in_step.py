"""Which exchanges keep a replica in step (not stale; kvs/sync/health.py), found by the swarm
(seeds 260791147016263, 22132758718082): a node whose own exchanges kept failing or being cut
short by restarts went stale although its peer exchanged with it every few seconds, and a
two-node cluster then went stale whole, its healthy node having only a stale peer.

- An exchange a peer completes with us ("done", after it reconciled or found the roots
  equal) counts for us too.
- A node whose every live peer is stale is in step on its own, as a node alone is."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from kvs.testing.memory import MemoryTransport
from tests.support.sync import open_replica, record

B = ("b", 1)


async def test_an_exchange_a_peer_completes_with_us_counts_for_us(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, sync_interval=1.0) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        await a.merge(record("only-on-a", uid="ua"))
        a.worker.anti_entropy.live_peers = lambda: [("b", B)]
        health = b.worker.health
        assert health.last_exchange_ms == b.wall()  # b never starts an exchange itself
        for _ in range(3):  # synced first, then equal roots: each counts for b
            b.wall.now_ms += 10_000
            async with trio.open_nursery() as nursery:
                await nursery.start(a.worker.run)
                with trio.fail_after(30):
                    while health.last_exchange_ms != b.wall():
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
        assert b.worker.stats()["counters"]["served_done"] == 3
        assert b.contents() == a.contents()


async def test_a_node_whose_every_live_peer_is_stale_stays_in_step(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, sync_interval=1.0) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        b.worker.health.stale = True  # b was away past tombstone_ttl
        a.worker.anti_entropy.live_peers = lambda: [("b", B)]
        async with trio.open_nursery() as nursery:
            await nursery.start(a.worker.run)
            with trio.fail_after(30):
                while "b" not in a.worker.stats()["exchanges_by_peer"]:
                    await trio.sleep(0.1)
            a.wall.now_ms += 10_000  # later exchanges, each skipped, keep a in step
            with trio.fail_after(30):
                while a.worker.health.last_exchange_ms != a.wall():
                    await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        assert a.worker.stats()["counters"]["alone_ticks"] >= 1
        assert a.worker.stats()["exchanges_by_peer"]["b"]["result"] == "skipped"
        assert a.worker.health.stale is False
