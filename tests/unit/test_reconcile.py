"""kvs.sync.reconcile, the pure core of an exchange, driven with plain data (no trio, no store,
no socket): the peer is a function from a request to its reply, our side a dict of summaries.

What it must decide: the leaves where two trees differ (and no more), which keys move which
way, that a leaf we hold nothing of is taken whole (or listed when it does not fit a frame),
that a partial reply is asked again for the rest, that a malformed reply raises
ProtocolError, and when to skip a peer or copy its whole store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from kvs.model import Version
from kvs.store import Summary
from kvs.sync import limits
from kvs.sync import protocol as p
from kvs.sync.merkle import MerkleTree
from kvs.sync.reconcile import (
    Apply,
    Ask,
    Descent,
    Pause,
    PeerRoot,
    Push,
    ReadOurs,
    Reconciliation,
    compare,
    read_root,
    skip,
    snapshot_wanted,
)


def summary(
    key: str, hlc: int = 10, joined: int = 1, uid: str = "u", deleted: bool = False
) -> Summary:
    return Summary(key, Version(hlc, joined, "n1", uid), deleted, None)


def tree_of(summaries: dict[str, Summary]) -> MerkleTree:
    tree = MerkleTree()
    for s in summaries.values():
        tree.toggle(s.key, s.version, s.deleted, adding=True)
    return tree


def raw(s: Summary) -> bytes:
    """A stand-in for an encoded record: the core passes records on, never decodes them."""
    return f"{s.key}@{s.version.hlc}".encode()


@dataclass
class FakePeer:
    """A peer's side of the protocol over plain data. `per_reply` caps how many leaves or keys
    one reply covers (a frame's budget); `too_big` are leaves whose records never fit one."""

    held: dict[str, Summary]
    per_reply: int = 10**6
    too_big: set[int] = field(default_factory=set)
    asked: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tree = tree_of(self.held)

    def in_leaf(self, leaf: int) -> list[Summary]:
        return [s for k, s in sorted(self.held.items()) if self.tree.leaf_of(k) == leaf]

    def answer(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        self.asked.append(op)
        if op == "children":
            return {
                "hashes": [
                    [p.encode_hash(h) for h in self.tree.children(lvl, i)]
                    for lvl, i in request["nodes"]
                ]
            }
        if op == "take":
            leaves = request["leaves"]
            if leaves[0] in self.too_big:
                return {"records": [], "count": 0}
            count = min(len(leaves), self.per_reply)
            records = [raw(s) for leaf in leaves[:count] for s in self.in_leaf(leaf)]
            return {"records": records, "count": count}
        if op == "leaves":
            count = min(len(request["leaves"]), self.per_reply)
            entries = [s for leaf in request["leaves"][:count] for s in self.in_leaf(leaf)]
            return {"entries": [p.encode_summary(s) for s in entries], "count": count}
        if op == "fetch":
            count = min(len(request["keys"]), self.per_reply)
            keys = request["keys"][:count]
            return {"records": [raw(self.held[k]) for k in keys if k in self.held], "count": count}
        raise AssertionError(f"unexpected request {op}")


@dataclass
class Outcome:
    applied: list[bytes] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    pauses: int = 0
    steps: list[str] = field(default_factory=list)


def differing(ours: MerkleTree, peer: FakePeer, **kwargs: Any) -> list[int]:
    descent = Descent(ours, **kwargs)
    while (request := descent.next_request()) is not None:
        descent.on_reply(peer.answer(request))
    assert descent.leaves is not None
    return descent.leaves


def reconcile(ours: dict[str, Summary], peer: FakePeer, **batches: int) -> Outcome:
    """Drive a whole reconciliation the way the exchange driver does, with plain data."""
    tree = tree_of(ours)
    r = Reconciliation(tree, differing(tree, peer), **batches)
    out = Outcome()
    while (step := r.next_step()) is not None:
        out.steps.append(type(step).__name__)
        match step:
            case Ask(request):
                r.on_reply(peer.answer(request))
            case ReadOurs(leaves):
                r.on_ours([s for k, s in sorted(ours.items()) if tree.leaf_of(k) in leaves])
            case Apply(records):
                out.applied += records
            case Push(keys):
                out.pushed += keys
            case Pause():
                out.pauses += 1
    assert r.done
    return out


# --- finding the differing leaves ---------------------------------------------------------------


def test_the_descent_finds_exactly_the_differing_leaves_one_request_per_level() -> None:
    common = {f"base/{i}": summary(f"base/{i}", uid=f"b{i}") for i in range(500)}
    theirs = dict(common, **{"x/1": summary("x/1"), "base/7": summary("base/7", hlc=99)})
    ours = dict(common, **{"y/2": summary("y/2")})
    mine, peer = tree_of(ours), FakePeer(theirs)
    assert differing(mine, peer) == sorted({mine.leaf_of(k) for k in ("x/1", "base/7", "y/2")})
    assert peer.asked == ["children"] * mine.depth


def test_equal_trees_differ_nowhere_after_one_request() -> None:
    same = {f"k/{i}": summary(f"k/{i}") for i in range(50)}
    peer = FakePeer(same)
    assert differing(tree_of(same), peer) == [] and peer.asked == ["children"]


def test_the_descent_asks_in_chunks_of_nodes_per_request() -> None:
    theirs = {f"k/{i}": summary(f"k/{i}") for i in range(40)}
    peer = FakePeer(theirs)
    mine = MerkleTree()
    leaves = differing(mine, peer, nodes_per_request=4)
    assert leaves == sorted({mine.leaf_of(k) for k in theirs})
    # Each level asks about the nodes that differ above it, four at a time.
    assert len(peer.asked) > mine.depth
    with pytest.raises(RuntimeError):  # a request awaits its reply
        descent = Descent(mine)
        descent.next_request()
        descent.next_request()


# --- which way each key moves -------------------------------------------------------------------


def test_each_key_moves_to_the_side_whose_version_loses() -> None:
    ours = [
        summary("only-ours"),
        summary("ours-newer", hlc=20),
        summary("theirs-newer", hlc=10),
        summary("same", hlc=10),
        summary("tie-ours-joined-first", hlc=10, joined=1),
        summary("tie-theirs-joined-first", hlc=10, joined=5),
        summary("deleted-there", hlc=10),
    ]
    theirs = [
        summary("only-theirs"),
        summary("ours-newer", hlc=10),
        summary("theirs-newer", hlc=20),
        summary("same", hlc=10),
        summary("tie-ours-joined-first", hlc=10, joined=2),
        summary("tie-theirs-joined-first", hlc=10, joined=3),
        summary("deleted-there", hlc=11, deleted=True),
    ]
    to_fetch, to_push = compare(ours, theirs)
    assert sorted(to_fetch) == [
        "deleted-there",
        "only-theirs",
        "theirs-newer",
        "tie-theirs-joined-first",
    ]
    assert sorted(to_push) == ["only-ours", "ours-newer", "tie-ours-joined-first"]


# --- reconciling the differing leaves -----------------------------------------------------------


def test_leaves_we_hold_nothing_of_are_taken_whole_without_listing() -> None:
    theirs = {f"k/{i}": summary(f"k/{i}") for i in range(30)}
    peer = FakePeer(theirs)
    out = reconcile({}, peer)
    assert sorted(out.applied) == sorted(raw(s) for s in theirs.values())
    assert "leaves" not in peer.asked and "fetch" not in peer.asked and out.pushed == []


def test_shared_leaves_are_listed_then_fetched_and_pushed_by_who_wins() -> None:
    common = {f"base/{i}": summary(f"base/{i}", uid=f"b{i}") for i in range(300)}
    ours = dict(common, **{"base/1": summary("base/1", hlc=50, uid="b1"), "mine": summary("mine")})
    theirs = dict(common, **{"base/2": summary("base/2", hlc=50, uid="b2")})
    peer = FakePeer(theirs)
    out = reconcile(ours, peer)
    assert out.applied == [raw(theirs["base/2"])]
    assert sorted(out.pushed) == ["base/1", "mine"]
    assert peer.asked.count("fetch") == 1


def test_a_leaf_too_big_to_take_in_one_frame_is_listed_instead() -> None:
    theirs = {f"k/{i}": summary(f"k/{i}") for i in range(5)}
    first = min(tree_of(theirs).leaf_of(k) for k in theirs)
    peer = FakePeer(theirs, too_big={first})
    out = reconcile({}, peer)
    assert sorted(out.applied) == sorted(raw(s) for s in theirs.values())
    assert "leaves" in peer.asked and "fetch" in peer.asked


def test_partial_replies_are_asked_again_for_the_rest() -> None:
    common = {f"base/{i}": summary(f"base/{i}", uid=f"b{i}") for i in range(50)}
    theirs = {k: summary(k, hlc=99, uid=s.version.uuid) for k, s in common.items()}
    peer = FakePeer(theirs, per_reply=3)
    out = reconcile(common, peer, fetch_batch=7)
    assert sorted(out.applied) == sorted(raw(s) for s in theirs.values())
    assert peer.asked.count("fetch") > len(theirs) // 7  # each reply covered 3 of 7 keys


def test_every_batch_of_leaves_is_followed_by_a_pause() -> None:
    theirs = {f"k/{i}": summary(f"k/{i}") for i in range(25)}
    leaves = len({tree_of(theirs).leaf_of(k) for k in theirs})
    out = reconcile({}, FakePeer(theirs), leaf_batch=10)
    assert out.pauses == -(-leaves // 10)
    assert out.steps[-1] == "Pause"


def test_pushes_go_in_batches() -> None:
    ours = {f"k/{i}": summary(f"k/{i}") for i in range(30)}
    peer = FakePeer({"k/0": summary("k/0")})  # a leaf in common: listed, the rest pushed
    tree = tree_of(ours)
    r = Reconciliation(tree, differing(tree, peer), push_batch=2)
    sizes = []
    while (step := r.next_step()) is not None:
        if isinstance(step, Ask):
            r.on_reply(peer.answer(step.request))
        elif isinstance(step, ReadOurs):
            r.on_ours([s for k, s in ours.items() if tree.leaf_of(k) in step.leaves])
        elif isinstance(step, Push):
            sizes.append(len(step.keys))
    assert all(size <= 2 for size in sizes) and sum(sizes) == 29


@pytest.mark.parametrize(
    "reply",
    [
        None,
        ["records"],
        {"records": "x", "count": 1},
        {"records": [b"r"]},
        {"records": [1], "count": 1},
    ],
)
def test_a_malformed_reply_raises_protocol_error_when_it_is_fed_back(reply: Any) -> None:
    r = Reconciliation(MerkleTree(), [0])
    step = r.next_step()
    assert step == Ask({"op": "take", "leaves": [0]})
    with pytest.raises(p.ProtocolError):
        r.on_reply(reply)


def test_a_fetch_reply_must_cover_at_least_one_key() -> None:
    ours = {"k": summary("k", hlc=1)}
    tree = tree_of(ours)
    r = Reconciliation(tree, [tree.leaf_of("k")])
    assert isinstance(step := r.next_step(), Ask) and step.request["op"] == "leaves"
    r.on_reply({"entries": [p.encode_summary(summary("k", hlc=2))], "count": 1})
    assert isinstance(r.next_step(), ReadOurs)
    r.on_ours(list(ours.values()))
    assert r.next_step() == Ask({"op": "fetch", "keys": ["k"]})
    with pytest.raises(p.ProtocolError):
        r.on_reply({"records": [], "count": 0})  # no progress: a peer could stall us forever


def test_each_step_must_be_answered_before_the_next() -> None:
    r = Reconciliation(MerkleTree(), [0])
    assert isinstance(r.next_step(), Ask)
    with pytest.raises(RuntimeError):
        r.next_step()
    with pytest.raises(RuntimeError):
        r.on_ours([])
    r.on_reply({"records": [], "count": 1})
    assert r.next_step() == Pause() and r.next_step() is None and r.done


# --- the peer's root ------------------------------------------------------------------------------


def test_the_root_reply_is_read_strictly() -> None:
    for bad in (None, [], {"root": "00"}, {"size": 1}):
        with pytest.raises(p.ProtocolError):
            read_root(bad)
    peer = read_root({"root": p.encode_hash(5), "size": 3, "syncing": True, "stale": 1})
    assert peer == PeerRoot(root=5, size=3, syncing=True, stale=False)  # only `True` counts


def test_a_stale_peer_is_skipped_and_a_syncing_one_pulls_for_itself() -> None:
    def peer(**flags: bool) -> PeerRoot:
        return PeerRoot(
            root=1, size=10, syncing=flags.get("syncing", False), stale=flags.get("stale", False)
        )

    assert skip(peer(stale=True), syncing=True) == "stale"
    assert skip(peer(syncing=True), syncing=False) == "joiner"
    assert skip(peer(syncing=True), syncing=True) is None  # two joiners: see AntiEntropy
    assert skip(peer(), syncing=False) is None


def test_a_joiner_copies_the_store_of_a_peer_holding_enough_keys_once() -> None:
    big = PeerRoot(root=1, size=50_000, syncing=False, stale=False)
    wanted = {"syncing": True, "failed_before": False, "min_keys": 10_000, "our_keys": 0}
    assert snapshot_wanted(big, **wanted)
    assert not snapshot_wanted(big, **{**wanted, "syncing": False})
    assert not snapshot_wanted(big, **{**wanted, "failed_before": True})
    assert not snapshot_wanted(big, **{**wanted, "min_keys": 0})
    assert not snapshot_wanted(big, **{**wanted, "our_keys": limits.SNAPSHOT_MAX_CARRIED + 1})
    small = PeerRoot(root=1, size=9_999, syncing=False, stale=False)
    assert not snapshot_wanted(small, **wanted)
    assert not snapshot_wanted(PeerRoot(1, "50000", False, False), **wanted)
