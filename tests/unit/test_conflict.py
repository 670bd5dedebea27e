"""kvs.conflict (the `kvs conflict` tool) on real LMDB stores, no processes: the two
versions it writes share one HLC, carry each store's own identity, beat what was there, and
the winner it names is the one `resolve` keeps."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

from kvs.clock import HybridLogicalClock
from kvs.conflict import ConflictError, explain, write_conflicts
from kvs.model import Record, Version, resolve
from kvs.store import READER, Put, Store
from tests.support.config import store_settings


def v(hlc: int, joined: int, origin: str, uid: str) -> Version:
    return Version(hlc, joined, origin, uid)


@pytest.mark.parametrize(
    ("a", "b", "winner", "words"),
    [
        (v(7, 1, "n1", "a"), v(5, 1, "n2", "b"), 0, "newer write wins"),
        (v(5, 2, "n1", "a"), v(5, 1, "n2", "b"), 1, "oldest-node rule"),
        (v(5, 1, "n1", "b"), v(5, 1, "n2", "a"), 0, "larger UUID wins"),
        (v(5, 1, "n1", "a"), v(5, 1, "n2", "a"), 1, "origin node id"),
    ],
)
def test_explain_names_the_winner_resolve_keeps_and_the_rule(
    a: Version, b: Version, winner: int, words: str
) -> None:
    ra, rb = Record("k", b"1", a), Record("k", b"2", b)
    got, reason = explain(ra, rb)
    assert got == winner
    assert resolve(ra, rb) is (ra, rb)[winner]
    assert explain(rb, ra)[0] == 1 - winner  # the order of the arguments does not matter
    assert words in reason


def make_store(path: Path, node_id: str, joined: int, keys: dict[str, int]) -> None:
    """A stopped node's data dir: its identity, and each of `keys` written at the wall time
    (ms) it maps to."""

    async def main() -> None:
        wall = [joined]
        clock = HybridLogicalClock(lambda: wall[0])
        store = Store(
            path,
            clock=clock,
            new_uuid=lambda: str(uuid.uuid4()),
            settings=store_settings(),
            in_thread=False,
        )
        store.ensure_identity(node_id, joined)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            for key, ms in keys.items():
                wall[0] = ms
                await store.write([Put(key, b'{"old":true}')])
            nursery.cancel_scope.cancel()
        store.close()

    trio.run(main)


def read(path: Path, key: str) -> Record | None:
    store = Store(
        path, clock=HybridLogicalClock(), new_uuid=lambda: "x", settings=READER, in_thread=False
    )
    try:
        return store.get(key)
    finally:
        store.close()


def test_write_conflicts_same_hlc_own_identities_and_newer_than_anything(tmp_path: Path) -> None:
    far_future = 4_000_000_000_000  # a key written "later" than now must still be beaten
    make_store(tmp_path / "a", "alpha", 1_000, {"k/1": far_future})
    make_store(tmp_path / "b", "beta", 2_000, {})
    sides, hlc, conflicts = write_conflicts(tmp_path / "a", tmp_path / "b", ["k/1", "k/2"])
    assert [s.node_id for s in sides] == ["alpha", "beta"]
    assert [s.joined_timestamp for s in sides] == [1_000, 2_000]
    for c in conflicts:
        a, b = read(tmp_path / "a", c.key), read(tmp_path / "b", c.key)
        assert a == c.records[0] and b == c.records[1]
        assert a.version.hlc == b.version.hlc == hlc > far_future << 16
        assert (a.version.origin, b.version.origin) == ("alpha", "beta")
        assert a.version.uuid != b.version.uuid and a.value != b.value
        assert c.winner == 0 and "oldest-node rule" in c.reason  # alpha joined first
        assert resolve(a, b) is a


def test_write_conflicts_refuses_dirs_it_cannot_use(tmp_path: Path) -> None:
    make_store(tmp_path / "a", "alpha", 1_000, {})
    with pytest.raises(ConflictError, match="same directory"):
        write_conflicts(tmp_path / "a", tmp_path / "a", ["k"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConflictError, match="no data.mdb"):
        write_conflicts(tmp_path / "a", tmp_path / "empty", ["k"])
    # A store that was never a node's (no identity) is refused, and left without one.
    Store(
        tmp_path / "bare",
        clock=HybridLogicalClock(),
        new_uuid=lambda: "x",
        settings=store_settings(),
    ).close()
    with pytest.raises(ConflictError, match="no node identity"):
        write_conflicts(tmp_path / "a", tmp_path / "bare", ["k"])
    assert read(tmp_path / "a", "k") is None  # nothing written on either side
