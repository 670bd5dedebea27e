"""One sync peer cannot end the node (issue 12): whatever a peer does to a connection --
served or started, a snapshot either way -- ends that connection, is counted, and the node
goes on serving everyone else. Real LMDB replicas over in-memory streams."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import zstandard

from kvs.net.transport import expected_error
from kvs.store import Put
from kvs.sync import limits, snapshot
from kvs.sync.session import PEER_ERRORS
from kvs.testing.memory import MemoryTransport, serve_one
from tests.support.sync import T0, encode, open_replica, record, session, still_serving

A = ("a", 1)
DAY_MS = 86_400_000
DEADLINE = 60  # seconds of real time for any test here


class LockstepTransport(MemoryTransport):
    """A MemoryTransport whose streams push back: a send waits until the peer reads it."""

    async def connect_stream(self, address: tuple[str, int]) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        handler, nursery = self._listeners[address]
        client, server = trio.testing.lockstep_stream_pair()
        nursery.start_soon(serve_one, handler, server, ("client", 1))
        return client


async def big_values(replica: Any, count: int = 64, size: int = 1 << 16) -> None:
    """Values of random hex (~4 MB with the defaults, half of it once compressed): a snapshot
    of them is sent in several chunks, so the copy is still running when the joiner
    misbehaves."""
    rng = random.Random(1)
    await replica.merge(
        *[
            record(f"big/{i}", b'"' + rng.randbytes(size // 2).hex().encode() + b'"')
            for i in range(count)
        ]
    )


@pytest.mark.parametrize("how", ["closes", "stalls"])
async def test_a_joiner_that_leaves_or_stalls_mid_snapshot_ends_only_its_connection(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send that fails is inside the copy's nursery, which wrapped it in an exception
    group that no handler caught: the peer serving the snapshot exited. (Real time: the copy
    runs in a thread, which a mock clock would jump past.)"""
    monkeypatch.setattr(limits, "REQUEST_TIMEOUT", 0.5)
    transport = LockstepTransport()
    with trio.fail_after(DEADLINE):
        async with open_replica(tmp_path, transport=transport, serve=True) as a:
            await big_values(a)
            frames = await session(transport)
            await frames.send({"op": "snapshot", "format": snapshot.snapshot_format()})
            header = await frames.receive()
            assert "snapshot" in header
            await frames.receive()  # the first chunk: the copy is under way
            if how == "closes":
                await frames.aclose()
            await trio.sleep(1.5)  # a stalled joiner reads nothing more meanwhile
            await trio.testing.wait_all_tasks_blocked()
            counters = a.worker.counters
            assert counters["dropped_closed"] + counters["dropped_timeout"] == 1, counters
            assert counters["dropped_error"] == 0
            assert a.store.lease_env_nowait()  # the copy let go of the environment
            a.store.release_env()
            await a.store.write([Put("k", b"1")])
            frames = await session(transport)
            await frames.send({"op": "root"})
            assert (await frames.receive())["size"] == 65


HOSTILE_REPLIES: dict[str, Any] = {
    "take: a record that is not one": {"records": [b"\x93garbage"], "count": 1},
    "take: records not a list": {"records": "x", "count": 1},
    "take: no count": {"records": []},
    "take: not a map": ["records"],
}


@pytest.mark.parametrize("reply", HOSTILE_REPLIES.values(), ids=list(HOSTILE_REPLIES))
async def test_a_hostile_peer_fails_our_exchanges_not_our_node(
    tmp_path: Path, reply: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """Records are applied by a second task: its ProtocolError (and the body's) came out of
    the exchange's nursery as an exception group, which the anti-entropy loop did not catch."""
    transport = MemoryTransport()
    with trio.fail_after(DEADLINE):
        async with (
            open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
            open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
        ):
            await a.merge(record("k"), record("k2", uid="2"))
            answer = a.worker.server.answer

            async def hostile(request: Any, *args: Any) -> Any:
                if isinstance(request, dict) and request.get("op") == "take":
                    return reply
                return await answer(request, *args)

            a.worker.server.answer = hostile  # type: ignore[method-assign]
            b.worker.anti_entropy.live_peers = lambda: [("a", A)]
            await trio.sleep(b.worker.settings.sync_interval * 4)
            assert b.worker.counters["exchange_failures"] >= 2
            assert b.worker.counters["errors"] == 0  # a peer's doing, not a bug here
            assert b.store.count() == 0
            a.worker.server.answer = answer  # type: ignore[method-assign]
            await trio.sleep(b.worker.settings.sync_interval * 2)
            assert b.contents() == a.contents()


async def test_records_from_far_in_the_future_are_refused_not_stored(tmp_path: Path) -> None:
    """A record an hour ahead is a clock off (taken, and logged); a day ahead is refused: it
    would drag our clock, and every write after, that far ahead -- and the HLC's arithmetic
    towards its ceiling."""
    with trio.fail_after(DEADLINE):
        async with open_replica(tmp_path) as replica:
            hour = record("hour", ms=T0 + 3_600_000)
            far = record("far", ms=T0 + 2 * DAY_MS)
            ceiling = record("ceiling", ms=(2**63 - 1) >> 16)
            raws = [encode(r) for r in (hour, far, ceiling)]
            assert await replica.worker.accept(raws) == 1
            assert list(replica.contents()) == ["hour"]
            assert replica.worker.counters["refused_future"] == 2
            assert replica.store.clock.last < far.version.hlc
            # Once our clock is within reach, the same record is taken.
            replica.wall.advance(2 * 86_400)
            assert await replica.worker.accept([encode(far)]) == 1


async def test_a_pushed_batch_that_fails_to_merge_is_counted_not_fatal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    with trio.fail_after(DEADLINE):
        async with open_replica(tmp_path, transport=transport, serve=True) as a:
            await a.merge(record("k"))

            async def broken(ops: Any) -> int:
                raise RuntimeError("a bug in the merge")

            a.worker.intake.merge = broken  # type: ignore[method-assign]
            frames = await session(transport)
            await frames.send({"op": "push", "records": [encode(record("x"))], "durable": False})
            assert await frames.receive() == {"applied": 1}
            await trio.testing.wait_all_tasks_blocked()
            assert a.worker.counters["merge_failures"] == 1
            await frames.send({"op": "push", "records": [encode(record("y"))]})  # durable
            with pytest.raises((trio.EndOfChannel, Exception)):
                await frames.receive()
            await trio.testing.wait_all_tasks_blocked()
            assert a.worker.counters["dropped_error"] == 1
            del a.worker.intake.merge
            await still_serving(transport, a)


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


HOSTILE_SNAPSHOTS: dict[str, list[Any]] = {
    "not zstd": [{"chunk": b"\x00" * 64}],
    "a chunk that is not bytes": [{"chunk": "text"}],
    "not a map": [["chunk"]],
    "no end, then silence": [{"chunk": zstd(b"x" * 100)}],
    "zstd cut short": [{"chunk": zstd(random.Random(1).randbytes(5000))[:-10]}],
    "wrong size and hash": [{"chunk": zstd(b"x" * 100)}, {"end": True, "raw_size": 10**12}],
    "not an LMDB file": [
        {"chunk": zstd(b"x" * 100)},
        {"end": True, "raw_size": 100, "sha256": hashlib.sha256(b"x" * 100).digest()},
    ],
}


@pytest.mark.parametrize("frames_sent", HOSTILE_SNAPSHOTS.values(), ids=list(HOSTILE_SNAPSHOTS))
async def test_a_hostile_snapshot_fails_the_joiners_exchange_not_the_joiner(
    tmp_path: Path, frames_sent: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A joiner taking a copy from a peer that sends nonsense: that exchange fails (as a
    peer's doing, not a bug), nothing is installed, and the next exchange takes records."""
    monkeypatch.setattr(limits, "REQUEST_TIMEOUT", 1.0)
    transport = MemoryTransport()
    with trio.fail_after(DEADLINE):
        async with (
            open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
            open_replica(tmp_path, name="b", transport=transport, sync_snapshot_min_keys=1) as b,
        ):
            await a.merge(record("k"), record("k2", uid="2"))

            async def hostile(frames: Any, request: Any) -> None:
                await frames.send({"snapshot": {"root": bytes(16), "size": 2}})
                for frame in frames_sent:
                    await frames.send(frame)

            a.worker.server.serve_snapshot = hostile  # type: ignore[method-assign]
            b.worker.syncing = True
            with pytest.raises(Exception) as caught:
                await b.worker.exchange(A)
            assert expected_error(caught.value, PEER_ERRORS) is not None
            assert b.worker.counters["snapshot_failures"] == 1
            assert b.store.count() == 0
            assert not (b.store.path / snapshot.STAGING_DIR).exists()
            result = await b.worker.exchange(A)  # by records now
            assert result.fetched == 2 and b.contents() == a.contents()
