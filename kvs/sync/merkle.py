"""An incremental Merkle tree over the store's records (Riak's "tictac" idea).

Fixed shape: a 16-ary tree whose leaves are chosen by a hash of the key. A record hashes to
128 bits from `(key, version, tombstone)` -- the version, not the value: two replicas with
the same versions hold the same values -- and every node's hash is the XOR of the hashes
below it. Adding, replacing or removing a record is therefore one XOR delta applied to a
leaf and its ancestors (O(depth)), never a rebuild; and two trees can be compared top-down,
descending only into children whose hashes differ, so a comparison costs in proportion to
the number of differences, not the number of keys.

With the default depth of 4 there are 65,536 leaves: a million keys put ~15 records in a
leaf, so listing one differing leaf costs about a kilobyte on the wire.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from kvs.model import Record, Version
from kvs.store import layout

FANOUT = 16
DEFAULT_DEPTH = 4  # 16**4 leaves == the store's 65,536 sync buckets
_VERSION = struct.Struct(">QQ")


def record_hash(key: str, version: Version, deleted: bool) -> int:
    """128 bits identifying one version of one key (tombstones differ from values)."""
    # One hash call over the concatenation (the same digest as one update per part: the
    # bytes hashed are what they always were), a third of the cost.
    data = b"".join(
        (
            key.encode(),
            b"\x00",
            _VERSION.pack(version.hlc, version.origin_joined),
            version.uuid.encode(),
            b"\x00",
            version.origin.encode(),
            b"\x01" if deleted else b"\x00",
        )
    )
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


def hash_of(record: Record) -> int:
    return record_hash(record.key, record.version, record.deleted)


class MerkleTree:
    """Level 0 is the root; level `depth` holds the leaves (FANOUT ** depth of them)."""

    def __init__(self, depth: int = DEFAULT_DEPTH) -> None:
        if not 1 <= depth <= DEFAULT_DEPTH:
            raise ValueError(f"depth must be between 1 and {DEFAULT_DEPTH}")
        self.depth = depth
        self.leaves = FANOUT**depth
        self.levels: list[list[int]] = [[0] * (FANOUT**level) for level in range(depth + 1)]
        self.counts = [0] * self.leaves  # records per leaf
        self.size = 0

    @classmethod
    def from_leaves(cls, leaves: list[int], counts: list[int]) -> MerkleTree:
        """The full-depth tree over these leaf hashes and per-leaf record counts."""
        tree = cls()
        if len(leaves) != tree.leaves or len(counts) != tree.leaves:
            raise ValueError(f"a tree of depth {tree.depth} has {tree.leaves} leaves")
        tree.levels[-1] = list(leaves)
        tree.counts = list(counts)
        tree.size = sum(counts)
        for level in range(tree.depth - 1, -1, -1):
            below = tree.levels[level + 1]
            row = tree.levels[level]
            for index, value in enumerate(below):
                row[index // FANOUT] ^= value
        return tree

    def leaf_of(self, key: str) -> int:
        """Leaves are the store's sync buckets (grouped, for a shallower tree)."""
        return layout.leaf_of(key, self.leaves)

    def buckets_of_leaf(self, leaf: int) -> range:
        return layout.buckets_of_leaf(leaf, self.leaves)

    def toggle(self, key: str, version: Version, deleted: bool, *, adding: bool) -> None:
        """XOR one version in or out (the same operation; `adding` only keeps the counts)."""
        leaf = self.leaf_of(key)
        self._apply(leaf, record_hash(key, version, deleted))
        step = 1 if adding else -1
        self.counts[leaf] += step
        self.size += step

    def _apply(self, leaf: int, delta: int) -> None:
        index = leaf
        for level in range(self.depth, -1, -1):
            self.levels[level][index] ^= delta
            index //= FANOUT

    def add(self, record: Record) -> None:
        self.toggle(record.key, record.version, record.deleted, adding=True)

    def remove(self, record: Record) -> None:
        self.toggle(record.key, record.version, record.deleted, adding=False)

    def replace(self, old: Record | None, new: Record | None) -> None:
        """Apply one store change of one key: `old` -> `new` (either may be None)."""
        self.replace_many([(old, new)])

    def replace_many(self, changes: Iterable[tuple[Record | None, Record | None]]) -> None:
        """`replace` for each of a commit's `(old, new)` changes, in one pass.

        The XORs are batched: a commit's deltas are summed per leaf, then per inner node
        level by level, instead of walking every change up to the root. Every write and
        every record a sync takes comes through here."""
        leaves = self.leaves
        counts = self.counts
        deltas: dict[int, int] = {}
        for old, new in changes:
            if old is None and new is None:
                continue
            delta = 0
            if old is not None:
                delta = record_hash(old.key, old.version, old.value is None)
            if new is not None:
                delta ^= record_hash(new.key, new.version, new.value is None)
            leaf = layout.leaf_of((new or old).key, leaves)  # type: ignore[union-attr]
            if old is None:
                counts[leaf] += 1
                self.size += 1
            elif new is None:
                counts[leaf] -= 1
                self.size -= 1
            deltas[leaf] = deltas.get(leaf, 0) ^ delta
        for row in reversed(self.levels):
            above: dict[int, int] = {}
            for index, delta in deltas.items():
                row[index] ^= delta
                parent = index // FANOUT
                above[parent] = above.get(parent, 0) ^ delta
            deltas = above

    @property
    def root(self) -> int:
        return self.levels[0][0]

    def root_hex(self) -> str:
        return f"{self.root:032x}"

    def children(self, level: int, index: int) -> list[int]:
        """The FANOUT child hashes of node (level, index); level must be above the leaves."""
        if not 0 <= level < self.depth or not 0 <= index < FANOUT**level:
            raise IndexError(f"no inner node ({level}, {index})")
        start = index * FANOUT
        return self.levels[level + 1][start : start + FANOUT]

    def leaf_range(self, level: int, index: int) -> range:
        """The leaves below node (level, index)."""
        span = FANOUT ** (self.depth - level)
        return range(index * span, (index + 1) * span)
