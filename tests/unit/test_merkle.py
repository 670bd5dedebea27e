"""kvs.sync.merkle: the incremental tree equals a rebuilt one, its XOR algebra, its shape, and
the top-down comparison finding exactly the leaves (and keys) where two replicas differ."""

from __future__ import annotations

import functools
import operator
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.model import Record, Version
from kvs.store.layout import SYNC_BUCKETS, sync_bucket
from kvs.sync import protocol as p
from kvs.sync.exchange import differing_leaves
from kvs.sync.merkle import DEFAULT_DEPTH, FANOUT, MerkleTree, hash_of, record_hash
from kvs.testing.memory import MemoryTransport
from tests.support.sync import T0, open_replica, record

KEYS = [f"k/{i}" for i in range(12)]

versions = st.builds(
    Version,
    hlc=st.integers(0, 2**63 - 1),
    origin_joined=st.integers(0, 2**63 - 1),
    origin=st.sampled_from(["n1", "n2", "n3"]),
    uuid=st.text(min_size=1, max_size=8),
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "replace", "delete", "remove"]), st.sampled_from(KEYS), versions
    ),
    max_size=60,
)


def rebuilt(records: list[Record], depth: int) -> MerkleTree:
    tree = MerkleTree(depth)
    for r in records:
        tree.add(r)
    return tree


def assert_consistent(tree: MerkleTree) -> None:
    """Every inner node is the XOR of its children; counts add up to the size."""
    for level in range(tree.depth):
        for index, parent in enumerate(tree.levels[level]):
            assert parent == functools.reduce(operator.xor, tree.children(level, index), 0)
    assert sum(tree.counts) == tree.size


# --- incremental == rebuilt --------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(ops=operations, depth=st.integers(1, DEFAULT_DEPTH))
def test_incremental_updates_equal_a_tree_rebuilt_from_the_final_state(
    ops: list[tuple[str, str, Version]], depth: int
) -> None:
    tree = MerkleTree(depth)
    state: dict[str, Record] = {}
    for kind, key, v in ops:
        old = state.get(key)
        if kind == "remove":  # TTL sweep / tombstone GC
            new = None
        elif kind == "delete":
            new = Record(key, None, v)
        else:  # put, or a replicated version replacing the current one
            new = Record(key, f'"{kind}"'.encode(), v)
        if kind == "replace" and old is None:
            tree.add(new)  # the other entry point, as rebuild_tree uses it
        else:
            tree.replace(old, new)
        if new is None:
            state.pop(key, None)
        else:
            state[key] = new
    expected = rebuilt(sorted(state.values(), key=lambda r: r.key), depth)
    assert tree.root == expected.root
    assert tree.levels == expected.levels
    assert tree.counts == expected.counts
    assert tree.size == expected.size == len(state)
    assert_consistent(tree)


@settings(max_examples=150, deadline=None)
@given(ops=operations, depth=st.integers(1, DEFAULT_DEPTH), cuts=st.lists(st.integers(0, 60)))
def test_replace_many_equals_one_replace_per_change(
    ops: list[tuple[str, str, Version]], depth: int, cuts: list[int]
) -> None:
    """A commit's changes applied at once (what the sync worker does) give the tree that
    applying them one by one gives, however the changes are split into commits."""
    one_by_one, batched = MerkleTree(depth), MerkleTree(depth)
    state: dict[str, Record] = {}
    changes: list[tuple[Record | None, Record | None]] = []
    for kind, key, v in ops:
        old = state.get(key)
        new = None if kind == "remove" else Record(key, None if kind == "delete" else b"1", v)
        one_by_one.replace(old, new)
        changes.append((old, new))
        if new is None:
            state.pop(key, None)
        else:
            state[key] = new
    bounds = sorted({0, len(changes), *(c for c in cuts if c < len(changes))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        batched.replace_many(changes[start:end])
    assert batched.levels == one_by_one.levels
    assert batched.counts == one_by_one.counts
    assert batched.size == one_by_one.size == len(state)
    assert_consistent(batched)


# --- XOR algebra -------------------------------------------------------------------------------


distinct_records = st.lists(
    st.builds(
        lambda key, v, deleted: Record(key, None if deleted else b"1", v),
        st.text(min_size=1, max_size=12),
        versions,
        st.booleans(),
    ),
    max_size=40,
    unique_by=lambda r: r.key,
)


@settings(max_examples=100, deadline=None)
@given(records=distinct_records, seed=st.randoms(use_true_random=False))
def test_the_tree_does_not_depend_on_the_order_of_insertion(
    records: list[Record], seed: random.Random
) -> None:
    shuffled = list(records)
    seed.shuffle(shuffled)
    assert rebuilt(records, 2).levels == rebuilt(shuffled, 2).levels
    # Removing everything, in yet another order, gives back the empty tree.
    tree = rebuilt(records, 2)
    seed.shuffle(shuffled)
    for r in shuffled:
        tree.remove(r)
    assert tree.levels == MerkleTree(2).levels and tree.size == 0 and not any(tree.counts)


@given(records=distinct_records)
def test_the_root_is_the_xor_of_every_record_hash(records: list[Record]) -> None:
    tree = rebuilt(records, DEFAULT_DEPTH)
    assert tree.root == functools.reduce(operator.xor, (hash_of(r) for r in records), 0)
    assert_consistent(rebuilt(records, 1))


def test_a_record_hash_covers_key_version_and_tombstone_but_not_the_value() -> None:
    v = Version(T0, 5, "n1", "u1")
    base = record_hash("k", v, False)
    assert record_hash("k", v, False) == base
    assert hash_of(Record("k", b"1", v)) == hash_of(Record("k", b'"other"', v)) == base
    others = [
        record_hash("k2", v, False),
        record_hash("k", v, True),
        record_hash("k", Version(T0 + 1, 5, "n1", "u1"), False),
        record_hash("k", Version(T0, 6, "n1", "u1"), False),
        record_hash("k", Version(T0, 5, "n2", "u1"), False),
        record_hash("k", Version(T0, 5, "n1", "u2"), False),
    ]
    assert base not in others and len(set(others)) == len(others)
    assert 0 < base < 2**128


# --- shape ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, -1, DEFAULT_DEPTH + 1])
def test_depth_is_bounded(depth: int) -> None:
    with pytest.raises(ValueError):
        MerkleTree(depth)


@pytest.mark.parametrize("depth", range(1, DEFAULT_DEPTH + 1))
def test_shape_of_levels_children_and_ranges(depth: int) -> None:
    tree = MerkleTree(depth)
    assert tree.leaves == FANOUT**depth
    assert [len(level) for level in tree.levels] == [FANOUT**i for i in range(depth + 1)]
    assert tree.root == 0 and tree.root_hex() == "0" * 32 and tree.size == 0
    assert tree.leaf_range(0, 0) == range(tree.leaves)
    for level in range(depth):
        for index in (0, FANOUT**level - 1):
            assert len(tree.children(level, index)) == FANOUT
            parent = tree.leaf_range(level, index)
            assert len(parent) == FANOUT ** (depth - level)
            kids = [tree.leaf_range(level + 1, index * FANOUT + c) for c in range(FANOUT)]
            assert [leaf for kid in kids for leaf in kid] == list(parent)
        for bad in ((level, -1), (level, FANOUT**level)):
            with pytest.raises(IndexError):
                tree.children(*bad)
    for bad in ((depth, 0), (-1, 0)):
        with pytest.raises(IndexError):
            tree.children(*bad)
    assert tree.leaf_range(depth, 7 % tree.leaves) == range(7 % tree.leaves, 7 % tree.leaves + 1)
    # Leaves partition the store's sync buckets into equal, contiguous runs.
    per_leaf = SYNC_BUCKETS // tree.leaves
    buckets = [b for leaf in range(tree.leaves) for b in tree.buckets_of_leaf(leaf)]
    assert buckets == list(range(SYNC_BUCKETS))
    assert all(len(tree.buckets_of_leaf(leaf)) == per_leaf for leaf in (0, tree.leaves - 1))


@given(key=st.text(min_size=1, max_size=50), depth=st.integers(1, DEFAULT_DEPTH))
def test_a_key_lives_in_the_leaf_holding_its_sync_bucket(key: str, depth: int) -> None:
    tree = MerkleTree(depth)
    leaf = tree.leaf_of(key)
    assert 0 <= leaf < tree.leaves
    assert sync_bucket(key) in tree.buckets_of_leaf(leaf)
    tree.add(Record(key, b"1", Version(1, 1, "n", "u")))
    assert tree.counts[leaf] == 1 and tree.levels[depth][leaf] == tree.root != 0


# --- finding the differences ---------------------------------------------------------------------


def wire(obj: Any) -> Any:
    """What the peer receives: msgpack in, msgpack out, as over the sync connection."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


def tree_server(tree: MerkleTree, requests: list[Any]) -> Any:
    """A `call` answering "children" from `tree`, the way SyncServer.answer does."""

    async def call(request: dict[str, Any]) -> Any:
        request = wire(request)
        requests.append(request)
        assert p.request_op(request) == "children"
        nodes = p.parse_nodes(request, tree.depth)
        return wire({"hashes": [[p.encode_hash(h) for h in tree.children(*n)] for n in nodes]})

    return call


def replica_pair(
    base: int, differing: dict[str, tuple[str, ...]]
) -> tuple[list[Record], list[Record]]:
    """Two replicas' records: `base` keys in common, plus the given differences."""
    common = [record(f"base/{i}", ms=T0 + i, uid=f"b{i}") for i in range(base)]
    mine, theirs = list(common), list(common)
    for key, kinds in differing.items():
        for kind in kinds:
            if kind == "only_mine":
                mine.append(record(key, uid="m"))
            elif kind == "only_theirs":
                theirs.append(record(key, uid="t"))
            elif kind == "mine_newer":
                mine.append(record(key, ms=T0 + 10, uid="m"))
                theirs.append(record(key, ms=T0, uid="t"))
            elif kind == "theirs_newer":
                mine.append(record(key, ms=T0, uid="m"))
                theirs.append(record(key, ms=T0 + 10, uid="t"))
            elif kind == "deleted_there":
                mine.append(record(key, ms=T0, uid="m"))
                theirs.append(record(key, None, ms=T0 + 10, uid="t"))
            elif kind == "tie_on_hlc":  # same HLC, the earlier-joined node's version wins
                mine.append(record(key, ms=T0, joined=1, uid="m"))
                theirs.append(record(key, ms=T0, joined=2, uid="t"))
    return mine, theirs


KINDS = ["only_mine", "only_theirs", "mine_newer", "theirs_newer", "deleted_there", "tie_on_hlc"]


@settings(max_examples=60, deadline=None)
@given(
    differing=st.dictionaries(
        st.text(min_size=1, max_size=10).map(lambda s: f"diff/{s}"),
        st.sampled_from(KINDS).map(lambda k: (k,)),
        max_size=30,
    ),
    depth=st.integers(1, DEFAULT_DEPTH),
)
async def test_top_down_comparison_finds_exactly_the_leaves_holding_differing_keys(
    differing: dict[str, tuple[str, ...]], depth: int
) -> None:
    mine, theirs = replica_pair(200, differing)
    a, b = rebuilt(mine, depth), rebuilt(theirs, depth)
    requests: list[Any] = []
    leaves = await differing_leaves(a, tree_server(b, requests))
    assert leaves == sorted({a.leaf_of(k) for k in differing})
    # One request per level at most, and none below a subtree whose hashes agree.
    assert len(requests) <= depth
    if not differing:
        assert a.root == b.root and leaves == [] and len(requests) == 1
    else:
        assert len(requests) == depth


async def test_diff_between_two_stores_yields_exactly_the_differing_keys(tmp_path: Path) -> None:
    differing = {f"diff/{kind}/{i}": (kind,) for kind in KINDS for i in range(5)}
    mine, theirs = replica_pair(3000, differing)
    async with (
        open_replica(tmp_path, name="a") as a,
        open_replica(tmp_path, name="b") as b,
    ):
        await a.merge(*mine)
        await b.merge(*theirs)
        assert a.worker.tree.levels == rebuilt(mine, DEFAULT_DEPTH).levels

        async def call(request: dict[str, Any]) -> Any:
            return wire(await b.worker.server.answer(wire(request)))

        leaves = await differing_leaves(a.worker.tree, call)
        assert leaves == sorted({a.worker.tree.leaf_of(k) for k in differing})
        # The summaries of just those leaves differ in exactly the differing keys.
        reply = await call({"op": "leaves", "leaves": leaves})
        remote = {s.key: s for s in p.decode_summaries(reply, 10**6)}
        assert p.decode_count(reply, len(leaves)) == len(leaves)
        local = {s.key: s for s in a.worker.local.summaries(leaves)}
        found = {k for k in local.keys() | remote.keys() if local.get(k) != remote.get(k)}
        assert found == set(differing)
        assert len(local) + len(remote) < 2 * len(differing) + 200  # not the 3000 keys


async def test_an_exchange_moves_exactly_the_winning_versions_each_way(tmp_path: Path) -> None:
    differing = {f"diff/{kind}/{i}": (kind,) for kind in KINDS for i in range(4)}
    mine, theirs = replica_pair(1000, differing)
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport) as a,
        open_replica(tmp_path, name="b", transport=transport, serve=True) as b,
    ):
        await a.merge(*mine)
        await b.merge(*theirs)
        result = await a.worker.exchange(("b", 1))
        wins = {"only_mine": "a", "mine_newer": "a", "tie_on_hlc": "a"}
        pushed = [k for k, (kind,) in differing.items() if wins.get(kind) == "a"]
        assert result.pushed == len(pushed)
        assert result.fetched == len(differing) - len(pushed)
        assert result.differing_leaves == len({a.worker.tree.leaf_of(k) for k in differing})
        assert a.contents() == b.contents()
        assert a.worker.tree.root == b.worker.tree.root
        assert b.worker.counters["served_fetch"] == 1 and b.worker.counters["served_push"] == 1
        # A second exchange finds nothing to do after comparing the roots.
        again = await a.worker.exchange(("b", 1))
        assert again.fetched == again.pushed == again.differing_leaves == 0
        assert a.worker.counters["exchanges_equal"] == 1
