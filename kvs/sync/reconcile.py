"""Reconciliation: what differs between our replica and a peer's, and what moves which way.

Rule: this file decides what differs and what moves. It never awaits, never reads a clock,
never touches the store or a socket: everything arrives as arguments and leaves as return
values. The exchange driver (`kvs/sync/exchange.py`) performs the work it returns and feeds
the answers back; tests drive it with plain data.

One exchange with a peer, after its "root" reply (`PeerRoot`):
1. a stale peer serves nothing, and a syncing peer pulls the data itself: skip (`skip`);
   a joiner may copy the peer's whole store first (`snapshot_wanted`); equal roots: done;
2. `Descent`: walk both Merkle trees top-down ("children", at most MAX_NODES_PER_REQUEST
   nodes per request), into the children whose hashes differ, down to the differing leaves;
3. `Reconciliation`: for each batch of LEAF_BATCH differing leaves --
   a. the leaves we hold nothing of: everything the peer has there wins, so "take" them
      whole (a count of 0 means the first leaf alone does not fit a frame: list it instead);
   b. the others: "leaves" lists the peer's summaries for as many leaves as fit a frame; we
      `compare` them with ours, "fetch" the keys where the peer's version wins under
      `resolve` (FETCH_BATCH keys a request, as many records as fit a reply) and push ours
      where ours wins (PUSH_BATCH keys at a time);
   c. pause, so that a bootstrap paces itself.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from kvs.store import Summary
from kvs.sync import limits
from kvs.sync import protocol as p
from kvs.sync.merkle import FANOUT, MerkleTree

# --- the peer's root ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRoot:
    """A peer's answer to "root"."""

    root: int
    size: Any  # how many keys it holds, as it said (only an int is believed)
    syncing: bool  # bootstrapping itself: it may lack the data
    stale: bool  # cut off too long: it serves nothing


def read_root(reply: Any) -> PeerRoot:
    """The peer's root, or ProtocolError("shape")."""
    if not isinstance(reply, dict) or not isinstance(reply.get("root"), bytes):
        raise p.ProtocolError("shape")
    return PeerRoot(
        root=int.from_bytes(reply["root"], "big"),
        size=reply.get("size"),
        syncing=reply.get("syncing") is True,
        stale=reply.get("stale") is True,
    )


def skip(peer: PeerRoot, *, syncing: bool) -> str | None:
    """Why not to exchange with this peer at all ("stale", "joiner"), or None.

    A joiner pulls the data itself (paced, once): were we to exchange with it too, a
    bootstrap would copy everything twice."""
    if peer.stale:
        return "stale"
    if peer.syncing and not syncing:
        return "joiner"
    return None


def snapshot_wanted(
    peer: PeerRoot, *, syncing: bool, failed_before: bool, min_keys: int, our_keys: int
) -> bool:
    """Whether to copy the peer's whole store instead of taking its records: while
    bootstrapping with (next to) nothing yet, from a peer with enough keys that one read of a
    copy beats a write per record, unless a copy failed already during this run."""
    return (
        syncing
        and not failed_before
        and min_keys > 0
        and our_keys <= limits.SNAPSHOT_MAX_CARRIED
        and isinstance(peer.size, int)
        and peer.size >= min_keys
    )


# --- finding the differing leaves -----------------------------------------------------------------


class Descent:
    """The leaves where our tree and the peer's differ, found top-down: ask for a level's
    child hashes of the nodes that differ, compare them with ours, and go one level down
    into the children that differ. Costs one request per level (per MAX_NODES_PER_REQUEST
    nodes), and nothing below a subtree whose hashes agree.

        descent = Descent(tree)
        while (request := descent.next_request()) is not None:
            descent.on_reply(peer(request))
        descent.leaves
    """

    def __init__(self, tree: MerkleTree, *, nodes_per_request: int | None = None) -> None:
        self._tree = tree
        self._per_request = nodes_per_request or p.MAX_NODES_PER_REQUEST
        self._level = 0
        self._frontier: list[tuple[int, int]] = [(0, 0)]
        self._following: list[tuple[int, int]] = []
        self._start = 0  # of the next chunk of the frontier to ask about
        self._asked: list[tuple[int, int]] | None = None  # the chunk awaiting its reply
        self.leaves: list[int] | None = None  # once done: the differing leaves, in order

    def next_request(self) -> dict[str, Any] | None:
        """The next "children" request, or None once `leaves` is known."""
        if self._asked is not None:
            raise RuntimeError("on_reply() first: a request is awaiting its reply")
        if self.leaves is not None:
            return None
        self._asked = self._frontier[self._start : self._start + self._per_request]
        return {"op": "children", "nodes": [list(n) for n in self._asked]}

    def on_reply(self, reply: Any) -> None:
        """The peer's reply to the last request; ProtocolError if it is not one."""
        chunk = self._asked
        if chunk is None:
            raise RuntimeError("no request is awaiting a reply")
        remote = p.decode_hashes(reply, len(chunk))
        self._asked = None
        for (lvl, index), theirs in zip(chunk, remote, strict=True):
            mine = self._tree.children(lvl, index)
            for child in range(FANOUT):
                if theirs[child] != mine[child]:
                    self._following.append((self._level + 1, index * FANOUT + child))
        self._start += self._per_request
        if self._start < len(self._frontier):
            return  # more of this level to ask about
        self._frontier, self._following, self._start = self._following, [], 0
        self._level += 1
        if not self._frontier:
            self.leaves = []
        elif self._level == self._tree.depth:
            self.leaves = [index for _, index in self._frontier]


# --- reconciling the differing leaves -------------------------------------------------------------


def compare(ours: list[Summary], theirs: list[Summary]) -> tuple[list[str], list[str]]:
    """(to_fetch, to_push): the keys whose version wins under `resolve` on the peer's side
    (or that we lack), and those whose version wins on ours (or that the peer lacks)."""
    remote = {s.key: s for s in theirs}
    local = {s.key: s for s in ours}
    to_fetch = [
        key
        for key, t in remote.items()
        if (mine := local.get(key)) is None or t.version.newer_than(mine.version)
    ]
    to_push = [
        key
        for key, mine in local.items()
        if (t := remote.get(key)) is None or mine.version.newer_than(t.version)
    ]
    return to_fetch, to_push


@dataclass(frozen=True, slots=True)
class Ask:
    """Send `request` to the peer; feed its reply to `Reconciliation.on_reply`."""

    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReadOurs:
    """Read our summaries of `leaves`; feed them to `Reconciliation.on_ours`."""

    leaves: list[int]


@dataclass(frozen=True, slots=True)
class Apply:
    """Merge these records from the peer (still to be validated, as any from a peer)."""

    records: list[bytes]


@dataclass(frozen=True, slots=True)
class Push:
    """Send the peer our records of these keys ("push" requests, each fitting a frame)."""

    keys: list[str]


@dataclass(frozen=True, slots=True)
class Pause:
    """A batch of leaves is done: pace here (a bootstrap must not swamp its peer)."""


Step = Ask | ReadOurs | Apply | Push | Pause


class Reconciliation:
    """The work that brings both sides of the differing `leaves` up to date, one step at a
    time: `next_step()` says what to do next (None: all done); an `Ask` must be answered
    with `on_reply`, a `ReadOurs` with `on_ours`, before the next step.

    The counts of our leaves are read from `tree` as each batch begins (we hold nothing of a
    leaf whose count is 0); the tree goes on following our writes meanwhile."""

    def __init__(
        self,
        tree: MerkleTree,
        leaves: list[int],
        *,
        leaf_batch: int | None = None,
        fetch_batch: int | None = None,
        push_batch: int | None = None,
    ) -> None:
        self._tree = tree
        self._leaf_batch = leaf_batch or limits.LEAF_BATCH
        self._fetch_batch = fetch_batch or limits.FETCH_BATCH
        self._push_batch = push_batch or limits.PUSH_BATCH
        self.differing_leaves = len(leaves)
        self._steps = self._run(leaves)
        self._next: Step | None = None  # the step an answer led to
        self._waiting: type[Ask] | type[ReadOurs] | None = None
        self.done = False

    def next_step(self) -> Step | None:
        if self._waiting is not None:
            raise RuntimeError(f"answer the last {self._waiting.__name__} first")
        step = self._next if self._next is not None else self._advance(None)
        self._next = None
        if isinstance(step, Ask | ReadOurs):
            self._waiting = type(step)
        return step

    def on_reply(self, reply: Any) -> None:
        """The peer's reply to the last `Ask`; ProtocolError if it is not a valid one."""
        self._answer(Ask, reply)

    def on_ours(self, summaries: list[Summary]) -> None:
        """Our summaries of the leaves the last `ReadOurs` named."""
        self._answer(ReadOurs, summaries)

    def _answer(self, kind: type[Ask] | type[ReadOurs], value: Any) -> None:
        if self._waiting is not kind:
            raise RuntimeError(f"no {kind.__name__} is awaiting an answer")
        self._waiting = None
        self._next = self._advance(value)

    def _advance(self, value: Any) -> Step | None:
        if self.done:
            return None
        try:
            return self._steps.send(value)
        except StopIteration:
            self.done = True
            return None

    # The decisions, written as generators: each `yield` hands a step out, and evaluates to
    # its answer (the reply, our summaries, or None for the steps that need none).

    def _run(self, leaves: list[int]) -> Generator[Step, Any, None]:
        for start in range(0, len(leaves), self._leaf_batch):
            yield from self._batch(leaves[start : start + self._leaf_batch])
            yield Pause()

    def _batch(self, batch: list[int]) -> Generator[Step, Any, None]:
        counts = self._tree.counts
        whole = [leaf for leaf in batch if counts[leaf] == 0]
        listed = [leaf for leaf in batch if counts[leaf] != 0]
        while whole:  # leaves we hold nothing of: everything the peer has there wins
            reply = yield Ask({"op": "take", "leaves": whole})
            records = _records(reply)
            count = p.decode_count(reply, len(whole), at_least=0)
            if count == 0:  # the first leaf alone is too big for one frame: list it
                listed.append(whole.pop(0))
                continue
            whole = whole[count:]
            if records:
                yield Apply(records)
        while listed:
            reply = yield Ask({"op": "leaves", "leaves": listed})
            theirs = p.decode_summaries(reply, 10**7)
            done = p.decode_count(reply, len(listed))  # what fit in the reply
            chunk, listed = listed[:done], listed[done:]
            ours = yield ReadOurs(chunk)
            to_fetch, to_push = compare(ours, theirs)
            yield from self._fetch(to_fetch)
            for start in range(0, len(to_push), self._push_batch):
                yield Push(to_push[start : start + self._push_batch])

    def _fetch(self, keys: list[str]) -> Generator[Step, Any, None]:
        start = 0
        while start < len(keys):
            asked = keys[start : start + self._fetch_batch]
            reply = yield Ask({"op": "fetch", "keys": asked})
            records = _records(reply)
            start += p.decode_count(reply, len(asked))  # the keys whose records fit
            if records:
                yield Apply(records)


def _records(reply: Any) -> list[bytes]:
    """The records of a "take" or "fetch" reply (not yet decoded: `Intake` checks them)."""
    value = reply.get("records") if isinstance(reply, dict) else None
    return p.parse_records(value, p.MAX_RECORDS_PER_REPLY)
