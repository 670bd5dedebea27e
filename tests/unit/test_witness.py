"""Peers as witnesses of each other's audit chain (kvs/sync/witness.py): the pure
comparison, the bounded memory, and hostile answers counted, never trusted."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from kvs.sync.protocol import ProtocolError
from kvs.sync.witness import (
    MAX_CHECKPOINTS,
    MAX_PEERS,
    WITNESS,
    Witness,
    compare,
    parse_heads,
    remember,
    report_of,
)

H = [bytes([i]) * 64 for i in range(256)]


def test_a_consistent_growing_chain_shows_nothing():
    seen = [(5, H[5]), (9, H[9])]
    assert compare(seen, 9, H[9], {}) == []
    assert compare(seen, 20, H[20], {5: H[5], 9: H[9]}) == []


def test_a_shorter_chain_is_cut_short():
    found = compare([(5, H[5]), (9, H[9])], 7, H[7], {5: H[5], 9: None})
    assert found == ["its chain has 7 entries; it reported 9 before (cut short)"]


def test_a_missing_entry_below_the_reported_count_is_cut_short():
    # Truncated on disk while the node runs: it still reports 9, but has no entry 9.
    assert compare([(9, H[9])], 9, H[9], {9: None}) == [
        "it has no entry 9, which it reported before (cut short)"
    ]


def test_another_hash_at_a_remembered_count_is_a_rewrite():
    assert compare([(9, H[9])], 9, H[1], {}) == [
        "another hash at entry 9 than it reported before (rewritten)"
    ]
    # Rewritten and grown past the checkpoint: the answer at 9 shows it.
    assert compare([(9, H[9])], 30, H[30], {9: H[2]}) == [
        "another hash at entry 9 than it reported before (rewritten)"
    ]


def test_checkpoints_stay_bounded_and_spread_over_the_chain():
    seen: list[tuple[int, bytes]] = []
    for count in range(1, 200):
        seen = remember(seen, count, H[count % 256])
    counts = [c for c, _ in seen]
    assert len(seen) == MAX_CHECKPOINTS
    assert counts[0] == 1 and counts[-1] == 199 and counts == sorted(counts)
    # nothing older or equal is remembered, nor an empty chain
    assert remember(seen, 150, H[0]) == seen and remember([], 0, H[0]) == []


def _request(**overrides):
    message = {"node": "n2", "count": 3, "head": H[3], "at": [1, 2], "noticed": [0, ""]}
    message.update(overrides)
    return message


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"node": "n2"},
        _request(node=""),
        _request(node="x" * 65),
        _request(node=7),
        _request(count=-1),
        _request(count=True),
        _request(count=1 << 64),
        _request(head=b"short"),
        _request(head="a" * 64),
        _request(at=list(range(MAX_CHECKPOINTS + 1))),
        _request(at=["1"]),
        _request(noticed=[0]),
        _request(noticed=[-1, ""]),
        _request(noticed=[1, 2]),
    ],
)
def test_malformed_heads_are_refused(bad):
    with pytest.raises(ProtocolError):
        parse_heads(bad, reply=False)


def test_malformed_answers_are_refused():
    parse_heads(_request(at=[[1, H[1]], [2, None]]), reply=True)
    for at in ([[1]], [[1, b"x"]], [1], [[1, H[1], 3]]):
        with pytest.raises(ProtocolError):
            parse_heads(_request(at=at), reply=True)
    # a long note is cut, not refused; one that would forge log lines is made one line
    assert len(parse_heads(_request(noticed=[1, "y" * 5000]), reply=False).last) == 300
    forged = parse_heads(_request(noticed=[1, "ok\nCRITICAL fake\x1b[31m"]), reply=False)
    assert forged.last == "ok?CRITICAL fake?[31m"
    with pytest.raises(ProtocolError):
        parse_heads(_request(node="n2\nforged"), reply=False)


class _Chain:
    def __init__(self, hashes: list[bytes]) -> None:
        self.hashes = hashes

    def head(self) -> tuple[int, bytes]:
        return len(self.hashes), self.hashes[-1] if self.hashes else bytes(64)

    def hash_at(self, seq: int) -> bytes | None:
        return self.hashes[seq - 1] if 0 < seq <= len(self.hashes) else None


class _Store:
    def __init__(self) -> None:
        self.system: dict[str, object] = {}

    def get_system(self, name: str) -> object:
        return self.system.get(name)

    async def put_system(self, name: str, value: object) -> None:
        self.system[name] = value


def _pair():
    a_chain, b_chain = _Chain(H[1:6]), _Chain(H[11:20])
    a_store, b_store = _Store(), _Store()
    counters: Counter[str] = Counter()
    a = Witness(node_id="a", chain=a_chain, store=a_store, counters=counters)  # type: ignore[arg-type]
    b = Witness(node_id="b", chain=b_chain, store=b_store, counters=counters)  # type: ignore[arg-type]
    return a, b, b_chain, a_store, counters


async def _session(client: Witness, server: Witness, peer: str) -> None:
    async def call(request):
        return await server.answer(request)

    await client.exchange(call, peer)


def test_a_truncated_peer_is_flagged_once_and_told():
    async def main():
        a, b, b_chain, a_store, counters = _pair()
        await _session(a, b, "b")
        assert a.report()["peers"]["b"]["entries"] == 9 and b.report()["peers"]["a"]["entries"] == 5
        del b_chain.hashes[6:]  # b's log cut to 6 entries
        for _ in range(3):
            await _session(a, b, "b")
        report = a.report()
        assert report["ok"] is False and report["peers"]["b"]["findings"] == 1
        assert "cut short" in report["peers"]["b"]["notes"][0]
        assert counters["audit_findings"] == 1  # logged and counted once, not per session
        # b hears it on the next session, whoever starts it
        await _session(b, a, "a")
        about = b.report()["about_this_node"]
        assert about["a"]["findings"] == 1 and "cut short" in about["a"]["last"]
        # persisted: a restarted witness remembers
        again = Witness(node_id="a", chain=_Chain(H[1:6]), store=a_store, counters=Counter())  # type: ignore[arg-type]
        assert again.report()["peers"]["b"]["findings"] == 1
        assert report_of(a_store.system[WITNESS]) == a.report()

    trio.run(main)


def test_hostile_answers_are_counted_never_trusted():
    async def main():
        a, b, _, _, counters = _pair()

        async def liar(request):
            return {"node": "someone-else", "count": 1, "head": H[1], "at": [], "noticed": [0, ""]}

        async def garbage(request):
            return {"node": "b", "count": "lots"}

        for call in (liar, garbage):
            await a.exchange(call, "b")
        assert counters["audit_heads_refused"] == 2 and "b" not in a.peers
        # a flood of node ids is bounded
        for i in range(MAX_PEERS + 10):
            await b.answer(_request(node=f"p{i}"))
        assert len(b.peers) == MAX_PEERS and counters["audit_heads_refused"] >= 12

    trio.run(main)
