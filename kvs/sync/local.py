"""Our side of every comparison: the Merkle tree that follows the store, and the store read
by tree leaf.

The tree is rebuilt from the store's summaries at start-up (no values are read), then kept in
step with every commit (`follow`, called from the store's writer by `SyncService`). A
bootstrap by snapshot replaces it whole (`kvs/sync/exchange.py`), which is why the other
parts hold this object and read `.tree` each time, never a tree of their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvs.store import Change, Store, Summary
from kvs.sync import limits, snapshot
from kvs.sync.merkle import MerkleTree

_SUMMARY_OVERHEAD = 32  # msgpack framing and integers of one summary, at most


class LocalReplica:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.tree = MerkleTree()
        self.data_format = snapshot.snapshot_format()  # what a copy of our store depends on

    def rebuild(self) -> None:
        """Build the tree from the store (summaries only, no values)."""
        tree = MerkleTree()
        for s in self.store.iter_summaries():
            tree.toggle(s.key, s.version, s.deleted, adding=True)
        self.tree = tree

    def follow(self, changes: list[Change]) -> None:
        """Apply one commit's changes to the tree."""
        self.tree.replace_many((change.old, change.new) for change in changes)

    def summaries(self, leaves: Iterable[int]) -> list[Summary]:
        """Our summaries of every key in these leaves."""
        buckets = [b for leaf in leaves for b in self.tree.buckets_of_leaf(leaf)]
        return self.store.bucket_summaries(buckets)

    def summaries_within(self, leaves: list[int]) -> tuple[list[Summary], int]:
        """The summaries of the longest prefix of `leaves` (one leaf at least) that fits
        FRAME_BUDGET, and the length of that prefix."""
        out: list[Summary] = []
        size = 0
        for done, leaf in enumerate(leaves):
            entries = self.summaries([leaf])
            more = sum(
                len(s.key) * 4 + len(s.version.origin) + len(s.version.uuid) + _SUMMARY_OVERHEAD
                for s in entries
            )
            if out and size + more > limits.FRAME_BUDGET:
                return out, done
            out += entries
            size += more
        return out, len(leaves)
