"""The last exchange per peer, as `GET /cluster/stats` shows it (`sync.exchanges_by_peer`)
and the console's cluster page reads it: its time, its result (synced, equal, failed,
skipped), whether the Merkle roots were equal, and what moved. Real LMDB replicas over
in-memory streams, mock time."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from kvs.net.messages import MemberChanged, MemberInfo, State
from kvs.testing.memory import MemoryTransport
from tests.support.sync import open_replica, record

A, B, C = ("a", 1), ("b", 1), ("c", 1)


def member(node_id: str) -> MemberInfo:
    return MemberInfo(node_id, 1, 1, (node_id, 2), (node_id, 1), (node_id, 3))


async def test_each_peers_last_exchange_is_shown_and_forgotten_when_it_leaves(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, sync_interval=1.0) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        await a.merge(*[record(f"k/{i}", uid=f"u{i}") for i in range(20)])
        await b.merge(record("only-on-b", uid="ub"))
        assert a.worker.stats()["exchanges_by_peer"] == {}
        peers = [("b", B), ("c", C)]  # nobody serves at c: exchanges with it fail
        a.worker.anti_entropy.live_peers = lambda: peers
        async with trio.open_nursery() as nursery:
            await nursery.start(a.worker.run)
            a.worker.on_member_change(MemberChanged(member("b"), State.ALIVE, None))
            with trio.fail_after(60):
                while "b" not in a.worker.stats()["exchanges_by_peer"]:
                    await trio.sleep(0.1)
            first = a.worker.stats()["exchanges_by_peer"]["b"]
            assert first["result"] == "synced" and first["roots_equal"] is False
            assert (first["fetched"], first["pushed"]) == (1, 20)
            assert first["at_ms"] == a.wall()
            # The next exchanges with b find equal roots; those with c fail.
            with trio.fail_after(120):
                while (
                    a.worker.stats()["exchanges_by_peer"]["b"]["result"] != "equal"
                    or "c" not in a.worker.stats()["exchanges_by_peer"]
                ):
                    await trio.sleep(0.5)
            shown = a.worker.stats()["exchanges_by_peer"]
            assert shown["b"]["roots_equal"] is True
            assert shown["c"]["result"] == "failed" and shown["c"]["error"]
            assert set(shown["c"]) == {"at_ms", "result", "error"}  # a class name, no address
            # c leaves for good: it is no longer shown.
            peers.remove(("c", C))
            a.worker.on_member_change(MemberChanged(member("c"), State.LEFT, State.ALIVE))
            assert "c" not in a.worker.stats()["exchanges_by_peer"]
            nursery.cancel_scope.cancel()
        assert a.contents() == b.contents()
