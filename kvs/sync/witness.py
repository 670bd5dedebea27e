"""Peers as witnesses of each other's audit chain: cutting or rewriting a node's log shows.

A keyed chain (kvs/audit.py) shows an edited entry, but not its newest entries cut off,
nor a whole log rewritten by someone who holds the cluster secret. So on every anti-entropy
session the two nodes also exchange their chain heads, one request on the same connection:

    {"op": "audit", "node": id, "count": n, "head": bytes64,
     "at": [count, ...], "noticed": [findings, "last finding"]}
        -> {"node": id, "count": n, "head": bytes64,
            "at": [[count, bytes64 | None], ...], "noticed": [findings, "last finding"]}

`count`/`head`: the sender's entries and newest hash. `at`: counts of the receiver's chain
the sender remembers (its checkpoints); the receiver answers with its hash of each (None:
it has no such entry). `noticed`: what the sender has found wrong with the receiver's
chain, so a node learns what its peers say about it.

Each node remembers, per peer, up to MAX_CHECKPOINTS (count, head) pairs it was told, the
newest and older ones spread over the chain (persisted in the store's system records, so
a restart forgets nothing). A peer that later reports fewer entries than it did, another
hash at a count it reported, or no entry at one, is flagged: logged once per finding,
counted (`audit_findings`), remembered (MAX_FINDINGS per peer), reported by
`GET /api/audit/verify` and `kvs audit verify`, and told to the peer.

Rule: `compare` and `remember` are pure; `Witness` keeps the memory and does the I/O.
Whatever a peer sends is validated and bounded here; a bad answer is counted
(`audit_heads_refused`), never trusted and never fatal.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lmdb

from kvs.store import Store
from kvs.store.layout import DATA_FILE, MAX_DBS, system_entries, unpack_value
from kvs.sync.protocol import ProtocolError, bounded_int, bounded_list

log = logging.getLogger(__name__)

WITNESS = "audit_witness"  # the system record: what this node remembers of its peers' chains
HASH_BYTES = 64  # SHA3-512 / HMAC-SHA3-512
MAX_CHECKPOINTS = 8  # remembered (count, head) pairs per peer; also the bound of "at"
MAX_FINDINGS = 8  # remembered findings per peer (older ones are dropped, the count stays)
MAX_PEERS = 256  # peers remembered (a larger cluster: the newest beyond it are not)
MAX_NODE_ID = 64
MAX_NOTE = 300  # characters of a finding, as remembered and as told to the peer
MAX_COUNT = (1 << 63) - 1

Call = Callable[[dict[str, Any]], Awaitable[Any]]


class ChainSource(Protocol):
    """This node's audit chain as the witness reads it (kvs/audit.py `AuditLog`)."""

    def head(self) -> tuple[int, bytes]:
        """(entries, newest hash)."""

    def hash_at(self, seq: int) -> bytes | None:
        """The stored hash of entry `seq`, None if there is no such entry."""


@dataclass(frozen=True)
class Heads:
    """One side's message, validated."""

    node: str
    count: int
    head: bytes
    at: list[int]  # the asks (in a request)
    answers: dict[int, bytes | None]  # the answers (in a reply)
    findings: int  # what the sender has found wrong with our chain
    last: str


@dataclass
class PeerMemory:
    checkpoints: list[tuple[int, bytes]] = field(default_factory=list)  # ascending counts
    findings: int = 0
    notes: list[str] = field(default_factory=list)  # the newest MAX_FINDINGS findings

    @property
    def last(self) -> str:
        return self.notes[-1] if self.notes else ""


# --- the pure comparison ----------------------------------------------------------------------


def compare(
    checkpoints: list[tuple[int, bytes]],
    count: int,
    head: bytes,
    answers: dict[int, bytes | None],
) -> list[str]:
    """What a peer's report shows, against the checkpoints we remember of its chain: one
    line per problem (none: consistent). `answers` are its hashes at counts we asked for."""
    found: list[str] = []
    highest = max((c for c, _ in checkpoints), default=0)
    if count < highest:
        found.append(f"its chain has {count} entries; it reported {highest} before (cut short)")
    for c, h in checkpoints:
        if c == count and head != h:
            found.append(f"another hash at entry {c} than it reported before (rewritten)")
        if c in answers:
            answer = answers[c]
            if answer is None:
                if c <= count:  # past its count, "cut short" above says it already
                    found.append(f"it has no entry {c}, which it reported before (cut short)")
            elif answer != h:
                found.append(f"another hash at entry {c} than it reported before (rewritten)")
    return list(dict.fromkeys(found))


def remember(
    checkpoints: list[tuple[int, bytes]], count: int, head: bytes, limit: int = MAX_CHECKPOINTS
) -> list[tuple[int, bytes]]:
    """The checkpoints after a report of (count, head) that `compare` found consistent: it
    is added if it is new and beyond the highest; past `limit`, the checkpoint closest to its
    predecessor goes (the first and the newest stay), so they spread over the chain."""
    if count == 0 or any(c >= count for c, _ in checkpoints):
        return list(checkpoints)
    kept = [*checkpoints, (count, head)]
    while len(kept) > limit:
        gaps = [(kept[i][0] - kept[i - 1][0], i) for i in range(1, len(kept) - 1)]
        kept.pop(min(gaps)[1])
    return kept


# --- validation of what a peer sends ----------------------------------------------------------


def _count(value: Any) -> int:
    return bounded_int(value, 0, MAX_COUNT)


def _hash(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise ProtocolError("shape")
    return value


def parse_heads(message: Any, *, reply: bool) -> Heads:
    """A request (`reply=False`) or a reply, checked field by field; ProtocolError if not."""
    if not isinstance(message, dict):
        raise ProtocolError("shape")
    node = message.get("node")
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID or not node.isprintable():
        raise ProtocolError("shape")
    count = _count(message.get("count"))
    head = _hash(message.get("head"))
    at: list[int] = []
    answers: dict[int, bytes | None] = {}
    for item in bounded_list(message.get("at"), MAX_CHECKPOINTS):
        if not reply:
            at.append(_count(item))
            continue
        pair = bounded_list(item, 2)
        if len(pair) != 2:
            raise ProtocolError("shape")
        answers[_count(pair[0])] = None if pair[1] is None else _hash(pair[1])
    noticed = bounded_list(message.get("noticed"), 2)
    if len(noticed) != 2 or not isinstance(noticed[1], str):
        raise ProtocolError("shape")
    return Heads(node, count, head, at, answers, _count(noticed[0]), _printable(noticed[1]))


def _printable(text: str) -> str:
    """A peer's note as it may reach our log: bounded, one line, no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_NOTE])


# --- the witness ------------------------------------------------------------------------------


class Witness:
    """What this node remembers of its peers' chains, and what they say about its own."""

    def __init__(
        self, *, node_id: str, chain: ChainSource, store: Store, counters: Counter[str]
    ) -> None:
        self.node_id = node_id
        self.chain = chain
        self._store = store
        self._counters = counters
        self.peers: dict[str, PeerMemory] = {}
        self.about_us: dict[str, tuple[int, str]] = {}  # peer -> (its findings, the last)
        self._load(store.get_system(WITNESS))

    # --- the two sides of one request

    def request(self, peer: str) -> dict[str, Any]:
        memory = self.peers.get(peer)
        return self._message([c for c, _ in memory.checkpoints] if memory else [], peer, {})

    async def answer(self, request: Any) -> dict[str, Any]:
        """The server's side: note what the requester says, answer its asks."""
        heads = parse_heads(request, reply=False)
        await self._observe(heads, {})
        answers = {c: self.chain.hash_at(c) for c in heads.at}
        return self._message([], heads.node, answers)

    async def exchange(self, call: Call, peer: str | None) -> None:
        """The client's side, on an anti-entropy session with `peer` (its node id, if
        known). A reply that is not one is counted and dropped; the session goes on."""
        if peer is None:
            return
        reply = await call({"op": "audit", **self.request(peer)})
        if isinstance(reply, dict) and "refused" in reply:  # its audit log is off
            self._counters["audit_heads_unavailable"] += 1
            return
        try:
            heads = parse_heads(reply, reply=True)
            if heads.node != peer:
                raise ProtocolError("shape")
        except ProtocolError:
            self._counters["audit_heads_refused"] += 1
            return
        await self._observe(heads, heads.answers)

    # --- memory

    async def _observe(self, heads: Heads, answers: dict[int, bytes | None]) -> None:
        self._counters["audit_heads_seen"] += 1
        peer = heads.node
        memory = self.peers.get(peer)
        if memory is None:
            if len(self.peers) >= MAX_PEERS or peer == self.node_id:
                self._counters["audit_heads_refused"] += 1
                return
            memory = self.peers[peer] = PeerMemory()
        changed = False
        if (heads.findings, heads.last) != self.about_us.get(peer, (0, "")):
            self.about_us[peer] = (heads.findings, heads.last)
            changed = True
            if heads.findings:
                log.warning("audit: peer %s reports about this node's log: %s", peer, heads.last)
        for finding in compare(memory.checkpoints, heads.count, heads.head, answers):
            if finding not in memory.notes:
                memory.findings += 1
                memory.notes = [*memory.notes, finding][-MAX_FINDINGS:]
                self._counters["audit_findings"] += 1
                log.warning("audit: the log of peer %s: %s", peer, finding)
                changed = True
        updated = remember(memory.checkpoints, heads.count, heads.head)
        if updated != memory.checkpoints:
            memory.checkpoints = updated
            changed = True
        if changed:
            await self._store.put_system(WITNESS, self._dump())

    def _message(
        self, at: list[int], peer: str, answers: dict[int, bytes | None]
    ) -> dict[str, Any]:
        count, head = self.chain.head()
        memory = self.peers.get(peer)
        noticed = [memory.findings, memory.last] if memory else [0, ""]
        return {
            "node": self.node_id,
            "count": count,
            "head": head,
            "at": [[c, h] for c, h in answers.items()] if answers else at,
            "noticed": noticed,
        }

    def report(self) -> dict[str, Any]:
        """What /api/audit/verify and `kvs audit verify` show (see `report_of`)."""
        return report_of(self._dump())

    def _dump(self) -> dict[str, Any]:
        return {
            "peers": {
                peer: {
                    "checkpoints": [[c, h.hex()] for c, h in m.checkpoints],
                    "findings": m.findings,
                    "notes": m.notes,
                }
                for peer, m in sorted(self.peers.items())
            },
            "about_us": {peer: list(v) for peer, v in sorted(self.about_us.items())},
        }

    def _load(self, stored: Any) -> None:
        """Whatever was persisted, each part that is well formed (a node starts from
        whatever it persisted)."""
        self.peers, self.about_us = load_memory(stored)


def load_memory(stored: Any) -> tuple[dict[str, PeerMemory], dict[str, tuple[int, str]]]:
    """The persisted memory (`WITNESS`), each well-formed part of it."""
    peers: dict[str, PeerMemory] = {}
    about: dict[str, tuple[int, str]] = {}
    if not isinstance(stored, dict):
        return peers, about
    raw_peers = stored.get("peers")
    for peer, m in (raw_peers if isinstance(raw_peers, dict) else {}).items():
        try:
            checkpoints = [(_count(c), _hash(bytes.fromhex(h))) for c, h in m["checkpoints"]]
            notes = [str(n)[:MAX_NOTE] for n in m["notes"]][-MAX_FINDINGS:]
            peers[str(peer)] = PeerMemory(
                checkpoints[-MAX_CHECKPOINTS:], _count(m["findings"]), notes
            )
        except (ProtocolError, KeyError, TypeError, ValueError):
            continue
    raw_about = stored.get("about_us")
    for peer, v in (raw_about if isinstance(raw_about, dict) else {}).items():
        if isinstance(v, list) and len(v) == 2 and type(v[0]) is int and isinstance(v[1], str):
            about[str(peer)] = (v[0], v[1])
    return dict(list(peers.items())[:MAX_PEERS]), dict(list(about.items())[:MAX_PEERS])


def report_of(stored: Any) -> dict[str, Any]:
    """The witness's report from its persisted memory (also read by `kvs audit verify` from
    a stopped node's store): per peer, the chain we last saw and what we found wrong; and
    what each peer says about ours."""
    peers, about = load_memory(stored)
    return {
        "peers": {
            peer: {
                "entries": m.checkpoints[-1][0] if m.checkpoints else 0,
                "head": m.checkpoints[-1][1].hex() if m.checkpoints else "",
                "findings": m.findings,
                "notes": m.notes,
            }
            for peer, m in peers.items()
        },
        "about_this_node": {
            peer: {"findings": n, "last": last} for peer, (n, last) in about.items() if n
        },
        "ok": not any(m.findings for m in peers.values()) and not any(n for n, _ in about.values()),
    }


def read_report(data_dir: Path) -> dict[str, Any] | None:
    """The witness's report from the store in `data_dir` (a running or stopped node's,
    read-only); None if there is no store or it remembers nothing."""
    if not (data_dir / DATA_FILE).exists():
        return None
    try:
        env = lmdb.open(str(data_dir), readonly=True, max_dbs=MAX_DBS)
    except lmdb.Error:
        return None
    try:
        [raw] = system_entries(env, WITNESS)
        return None if raw is None else report_of(unpack_value(raw))
    except (lmdb.Error, ValueError):
        return None
    finally:
        env.close()
