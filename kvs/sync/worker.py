"""Replication: push on write, Merkle anti-entropy over TCP, and the bootstrap of a new node.

    SyncWorker.run()
    ├── server          answers peers on sync_port (root, children, leaves, fetch, push)
    ├── anti-entropy    every sync_interval with a random live member, and at once with a
    │                   member that (re)appears: compare trees top-down, then each side takes
    │                   the versions of the other that win under `resolve`
    └── pushers         one per live peer: every local write, batched, over one persistent
                        connection; a full queue or a dead peer leaves the work to anti-entropy

Every record from a peer is decoded strictly, its key and size checked, and stored through
`Merge` (which keeps the winner under `resolve`); an expired record is taken as the tombstone
every replica turns it into, and tombstones older than `tombstone_ttl` are not taken, so
garbage collection on one replica is never undone by another.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from kvs.model import InvalidKey, Record, RecordCodec, hlc_ms, validate_key
from kvs.net.messages import Address, State
from kvs.net.swim import MemberChanged
from kvs.net.transport import Transport
from kvs.net.wire import MAX_FRAME_BYTES, FrameStream, WireError, derive_key
from kvs.store import Change, Merge, Store, Summary, Written
from kvs.sync import protocol as p
from kvs.sync.merkle import MerkleTree

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # a peer must answer each request within this
IDLE_TIMEOUT = 120.0  # a server closes a connection idle this long
PUSH_QUEUE_LIMIT = 10_000  # keys waiting for one peer; beyond it anti-entropy takes over
PUSH_BATCH = 500
FETCH_BATCH = 500
LEAF_BATCH = 256
# Batches are cut by bytes too: a frame over MAX_FRAME_BYTES cannot be sent at all (and the
# send raises ValueError, which is not an I/O error), and values may be up to 1 MiB each.
FRAME_BUDGET = MAX_FRAME_BYTES // 4
BOOTSTRAP_RETRY = 0.5  # seconds between exchanges while syncing (not sync_interval)
BOOTSTRAP_GRACE = 10.0  # seconds a syncing node looks for a peer with data before it concludes
# that the cluster is new (every live peer is syncing too) and starts taking writes
_SUMMARY_OVERHEAD = 32  # msgpack framing and integers of one summary, at most
_IO_ERRORS = (
    OSError,
    WireError,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.EndOfChannel,
    trio.ClosedResourceError,
)


@dataclass
class SyncSettings:
    sync_interval: float = 5.0
    tombstone_ttl_ms: int = 7 * 86400 * 1000
    max_value_size: int = 1 << 20
    max_clock_offset_ms: int = 60_000
    pace_delay: float = 0.0  # pause between fetch batches (bootstrap pacing)


@dataclass
class Peer:
    node_id: str
    address: Address
    pending: dict[str, None] = field(default_factory=dict)  # ordered set of keys to push
    wakeup: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None


@dataclass
class ExchangeResult:
    fetched: int = 0
    pushed: int = 0
    differing_leaves: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    peer_syncing: bool = False  # the peer was bootstrapping itself: it may lack the data


class _CountingStream(trio.abc.Stream):
    """A stream that adds the bytes it carries to `counters` (`<kind>_in`, `<kind>_out` for
    each kind), so /cluster/stats shows what sync costs on the wire."""

    def __init__(self, stream: trio.abc.Stream, counters: Counter[str], *kinds: str) -> None:
        self._stream = stream
        self._counters = counters
        self._kinds = kinds
        self.bytes_in = 0
        self.bytes_out = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)
        self.bytes_out += len(data)
        for kind in self._kinds:
            self._counters[f"{kind}_out"] += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._stream.receive_some(max_bytes)
        self.bytes_in += len(data)
        for kind in self._kinds:
            self._counters[f"{kind}_in"] += len(data)
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


def _by_bytes(raws: list[bytes]) -> Iterator[list[bytes]]:
    """`raws` in consecutive runs of at most FRAME_BUDGET bytes (a record alone may exceed
    it only if it exceeds FRAME_BUDGET itself), so that every push fits one frame."""
    chunk: list[bytes] = []
    size = 0
    for raw in raws:
        if chunk and size + len(raw) > FRAME_BUDGET:
            yield chunk
            chunk, size = [], 0
        chunk.append(raw)
        size += len(raw)
    if chunk:
        yield chunk


class SyncWorker:
    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        transport: Transport,
        bind: Address,
        cluster_secret: str,
        settings: SyncSettings,
        rng: random.Random,
        nonce: Callable[[], bytes],
        live_peers: Callable[[], list[tuple[str, Address]]],
        syncing: bool = False,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.transport = transport
        self.bind = bind
        self.settings = settings
        self.rng = rng
        self._nonce = nonce
        self._key = derive_key(cluster_secret, "sync")
        self._live_peers = live_peers
        self.codec = RecordCodec()
        self.tree = MerkleTree()
        self.counters: Counter[str] = Counter()
        self.syncing = syncing  # a bootstrapping node refuses writes until this clears
        self.synced = trio.Event()
        if not syncing:
            self.synced.set()
        self._peers: dict[str, Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._kick = trio.Event()
        self._urgent: list[str] = []
        self._peer_syncing: dict[str, bool] = {}  # what each peer said in our last exchange
        self._started_at = 0.0

    # --- start-up ------------------------------------------------------------------------------

    def rebuild_tree(self) -> None:
        """Build the tree from the store (summaries only, no values), then follow every write."""
        tree = MerkleTree()
        for s in self.store.iter_summaries():
            tree.toggle(s.key, s.version, s.deleted, adding=True)
        self.tree = tree
        self.store.listeners.append(self._on_changes)

    def _on_changes(self, changes: list[Change]) -> None:
        for change in changes:
            self.tree.replace(change.old, change.new)
            if change.local and change.new is not None:
                for peer in self._peers.values():
                    self._enqueue(peer, change.new.key)

    def _enqueue(self, peer: Peer, key: str) -> None:
        if len(peer.pending) >= PUSH_QUEUE_LIMIT:
            self.counters["push_queue_overflow"] += 1
            return
        peer.pending.pop(key, None)
        peer.pending[key] = None
        peer.wakeup.set()

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            address = await nursery.start(self.transport.serve_stream, self.bind, self._serve)
            nursery.start_soon(self._anti_entropy_loop)
            task_status.started(address)

    # --- membership ----------------------------------------------------------------------------

    def on_member_change(self, change: MemberChanged) -> None:
        """Start pushing to a peer that came up (and sync with it at once); stop for one gone."""
        member = change.member
        if member.node_id == self.node_id:
            return
        if change.state is State.ALIVE:
            peer = self._peers.get(member.node_id)
            if peer is None or peer.address != member.sync:
                self._stop_peer(member.node_id)
                self._start_peer(member.node_id, member.sync)
            if change.previous in (None, State.DEAD, State.LEFT):
                self._urgent.append(member.node_id)
                self._kick.set()
        elif change.state in (State.DEAD, State.LEFT):
            self._stop_peer(member.node_id)

    def _start_peer(self, node_id: str, address: Address) -> None:
        if self._nursery is None:
            return
        peer = Peer(node_id, address)
        self._peers[node_id] = peer
        self._nursery.start_soon(self._pusher, peer)

    def _stop_peer(self, node_id: str) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is not None and peer.scope is not None:
            peer.scope.cancel()

    # --- the server ----------------------------------------------------------------------------

    async def _serve(self, stream: trio.abc.Stream, peer: Address) -> None:
        stream = _CountingStream(stream, self.counters, "bytes", "served_bytes")
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                frames = await FrameStream.server(
                    stream, self._key, purpose="sync", nonce=self._nonce()
                )
            while True:
                try:
                    request = await frames.receive(timeout=IDLE_TIMEOUT)
                except trio.EndOfChannel:
                    return
                reply = await self._answer(request)
                await frames.send(reply, timeout=REQUEST_TIMEOUT)
        except p.ProtocolError as exc:
            self.counters[f"dropped_{exc.reason}"] += 1
            log.warning("dropped a sync connection from %s:%d: %s", peer[0], peer[1], exc.reason)
        except WireError as exc:
            self.counters[f"dropped_{exc.reason}"] += 1
            log.info("dropped a sync connection from %s:%d: %s", peer[0], peer[1], exc.reason)
        except trio.TooSlowError:
            # The handshake's deadline and this one expire together and this one wins: say
            # "timeout" (a stalled peer), not "io", like a stalled frame after the handshake.
            self.counters["dropped_timeout"] += 1
        except _IO_ERRORS:
            self.counters["dropped_io"] += 1

    async def _answer(self, request: Any) -> dict[str, Any]:
        op = p.request_op(request)
        self.counters[f"served_{op}"] += 1
        if op == "root":
            return {
                "root": p.encode_hash(self.tree.root),
                "size": self.tree.size,
                "syncing": self.syncing,
            }
        if op == "children":
            nodes = p.parse_nodes(request, self.tree.depth)
            return {
                "hashes": [
                    [p.encode_hash(h) for h in self.tree.children(lvl, i)] for lvl, i in nodes
                ]
            }
        if op == "leaves":
            entries, count = self._summaries_within(p.parse_leaves(request, self.tree.leaves))
            return {"entries": [p.encode_summary(s) for s in entries], "count": count}
        if op == "fetch":
            records, count = self.store.get_raw_within(p.parse_keys(request), FRAME_BUDGET)
            return {"records": records, "count": count}
        if op == "push":
            applied = await self.accept(p.parse_records(request.get("records")))
            return {"applied": applied}
        raise p.ProtocolError("shape")

    def _summaries_within(self, leaves: list[int]) -> tuple[list[Summary], int]:
        """The summaries of the longest prefix of `leaves` (one leaf at least) that fits
        FRAME_BUDGET, and the length of that prefix."""
        out: list[Summary] = []
        size = 0
        for done, leaf in enumerate(leaves):
            entries = self._summaries([leaf])
            more = sum(
                len(s.key) * 4 + len(s.version.origin) + len(s.version.uuid) + _SUMMARY_OVERHEAD
                for s in entries
            )
            if out and size + more > FRAME_BUDGET:
                return out, done
            out += entries
            size += more
        return out, len(leaves)

    def _summaries(self, leaves: Iterable[int]) -> list[Summary]:
        buckets = [b for leaf in leaves for b in self.tree.buckets_of_leaf(leaf)]
        return self.store.bucket_summaries(buckets)

    # --- taking records from peers ---------------------------------------------------------------

    async def accept(self, raw_records: list[bytes]) -> int:
        """Validate and merge records from a peer; returns how many were stored.
        A record that fails validation raises ProtocolError (the peer is broken or hostile)."""
        now = self.store.clock.wall_ms()
        ops: list[Merge] = []
        for raw in raw_records:
            record = self._check(raw)
            if record.expired(now):
                # Taken as the tombstone it has become here: skipping it would leave an older
                # version of the key live on this replica, and sync would spread it back.
                record = record.expired_tombstone()
                self.counters["expired_as_tombstone"] += 1
            if record.deleted and hlc_ms(record.version.hlc) < now - self.settings.tombstone_ttl_ms:
                self.counters["skipped_old_tombstone"] += 1
                continue
            lead = hlc_ms(record.version.hlc) - now
            if lead > self.settings.max_clock_offset_ms:
                self.counters["clock_offset_exceeded"] += 1
                log.warning(
                    "a record from %s is %d ms in our future: check that node's clock",
                    record.version.origin,
                    lead,
                )
            ops.append(Merge(record))
        if not ops:
            return 0
        outcomes = await self.store.write(ops)
        stored = sum(1 for o in outcomes if isinstance(o, Written))
        self.counters["records_merged"] += stored
        return stored

    def _check(self, raw: bytes) -> Record:
        try:
            record = self.codec.decode(raw, max_value_size=self.settings.max_value_size)
            validate_key(record.key, allow_reserved=True)
            if record.value is not None:
                json.loads(record.value)
        except (ValueError, InvalidKey, RecursionError):
            raise p.ProtocolError("bad_record") from None
        # The indexes and the Merkle tree pack these as unsigned 64-bit integers, and peers'
        # summaries must pass `decode_summaries`: out of range, the store write or the tree
        # update would fail (crashing this connection's node, or leaving the tree wrong).
        v = record.version
        numbers = (v.hlc, v.origin_joined, record.created_at, record.expires_at or 0)
        if not all(0 <= n <= p.MAX_INT for n in numbers) or not 0 <= record.permissions <= 0xFFF:
            raise p.ProtocolError("bad_record")
        return record

    # --- anti-entropy (client side) ------------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        while True:
            interval = BOOTSTRAP_RETRY if self.syncing else self.settings.sync_interval
            with trio.move_on_after(interval * (0.75 + 0.5 * self.rng.random())):
                await self._kick.wait()
            self._kick = trio.Event()
            targets = list(dict.fromkeys(self._urgent))
            self._urgent.clear()
            if not targets:
                peers = self._live_peers()
                if self.syncing:  # bootstrap from a peer with the data, if one is known
                    peers = [x for x in peers if not self._peer_syncing.get(x[0])] or peers
                if peers:
                    targets = [self.rng.choice(peers)[0]]
            for node_id in targets:
                address = dict(self._live_peers()).get(node_id)
                if address is None:
                    continue
                try:
                    result = await self.exchange(address)
                except (p.ProtocolError, *_IO_ERRORS) as exc:
                    self.counters["exchange_failures"] += 1
                    log.debug("anti-entropy with %s failed: %s", node_id, exc)
                    continue
                self._peer_syncing[node_id] = result.peer_syncing
                if self.syncing and self._bootstrapped_by(result):
                    self.syncing = False
                    self.synced.set()
                    log.info("bootstrap complete: %d records", self.tree.size)
            if self.syncing and not self._live_peers():
                await trio.sleep(0.5)  # nobody to bootstrap from yet: ask again soon

    def _bootstrapped_by(self, result: ExchangeResult) -> bool:
        """Whether an exchange ends our bootstrap: the peer held the cluster's data (it was
        not bootstrapping itself), or no live peer does (a new cluster, where every node
        starts empty and syncing) -- which is only believed after BOOTSTRAP_GRACE, once
        membership has had time to find the others. Two nodes joining together must not
        each take the other's empty store for the cluster's data."""
        if not result.peer_syncing:
            return True
        if trio.current_time() - self._started_at < BOOTSTRAP_GRACE:
            return False
        return all(self._peer_syncing.get(node_id) for node_id, _ in self._live_peers())

    async def exchange(self, address: Address) -> ExchangeResult:
        """One full anti-entropy exchange with the peer at `address` (its sync address)."""
        result = ExchangeResult()
        stream = _CountingStream(
            await self._connect(address), self.counters, "bytes", "exchange_bytes"
        )
        async with stream:
            frames = await self._handshake(stream)

            async def call(request: dict[str, Any]) -> Any:
                await frames.send(request, timeout=REQUEST_TIMEOUT)
                return await frames.receive(timeout=REQUEST_TIMEOUT)

            reply = await call({"op": "root"})
            if not isinstance(reply, dict) or not isinstance(reply.get("root"), bytes):
                raise p.ProtocolError("shape")
            result.peer_syncing = reply.get("syncing") is True
            if int.from_bytes(reply["root"], "big") == self.tree.root:
                self.counters["exchanges_equal"] += 1
                return result
            leaves = await self._differing_leaves(call)
            result.differing_leaves = len(leaves)
            to_fetch: list[str] = []
            to_push: list[str] = []
            start = 0
            while start < len(leaves):
                chunk = leaves[start : start + LEAF_BATCH]
                reply = await call({"op": "leaves", "leaves": chunk})
                remote = {s.key: s for s in p.decode_summaries(reply, 10**7)}
                chunk = chunk[: p.decode_count(reply, len(chunk))]  # what fit in the reply
                start += len(chunk)
                local = {s.key: s for s in self._summaries(chunk)}
                for key, theirs in remote.items():
                    mine = local.get(key)
                    if mine is None or theirs.version.newer_than(mine.version):
                        to_fetch.append(key)
                for key, mine in local.items():
                    theirs = remote.get(key)
                    if theirs is None or mine.version.newer_than(theirs.version):
                        to_push.append(key)
            start = 0
            while start < len(to_fetch):
                keys = to_fetch[start : start + FETCH_BATCH]
                reply = await call({"op": "fetch", "keys": keys})
                records = p.parse_records(reply.get("records") if isinstance(reply, dict) else None)
                start += p.decode_count(reply, len(keys))  # the keys whose records fit
                result.fetched += await self.accept(records)
                if self.settings.pace_delay:
                    await trio.sleep(self.settings.pace_delay)
            for start in range(0, len(to_push), PUSH_BATCH):
                for raw in _by_bytes(self.store.get_raw_many(to_push[start : start + PUSH_BATCH])):
                    reply = await call({"op": "push", "records": raw})
                    result.pushed += len(raw)
        result.bytes_in, result.bytes_out = stream.bytes_in, stream.bytes_out
        self.counters["exchanges"] += 1
        self.counters["records_fetched"] += result.fetched
        self.counters["records_pushed"] += result.pushed
        return result

    async def _differing_leaves(self, call: Callable[[dict[str, Any]], Any]) -> list[int]:
        frontier = [(0, 0)]
        for level in range(self.tree.depth):
            following: list[tuple[int, int]] = []
            for start in range(0, len(frontier), p.MAX_NODES_PER_REQUEST):
                chunk = frontier[start : start + p.MAX_NODES_PER_REQUEST]
                reply = await call({"op": "children", "nodes": [list(n) for n in chunk]})
                remote = p.decode_hashes(reply, len(chunk))
                for (lvl, index), theirs in zip(chunk, remote, strict=True):
                    mine = self.tree.children(lvl, index)
                    for child in range(16):
                        if theirs[child] != mine[child]:
                            following.append((level + 1, index * 16 + child))
            frontier = following
            if not frontier:
                return []
        return [index for _, index in frontier]

    async def _connect(self, address: Address) -> trio.abc.Stream:
        with trio.fail_after(REQUEST_TIMEOUT):
            return await self.transport.connect_stream(address)

    async def _handshake(self, stream: trio.abc.Stream) -> FrameStream:
        with trio.fail_after(REQUEST_TIMEOUT):
            return await FrameStream.client(stream, self._key, purpose="sync", nonce=self._nonce())

    # --- push replication ----------------------------------------------------------------------

    async def _pusher(self, peer: Peer) -> None:
        """Send this peer every local write over one persistent connection, in batches."""
        with trio.CancelScope() as scope:
            peer.scope = scope
            backoff = 0.1
            while True:
                try:
                    stream = _CountingStream(
                        await self._connect(peer.address), self.counters, "bytes", "push_bytes"
                    )
                    async with stream:
                        frames = await self._handshake(stream)
                        backoff = 0.1
                        while True:
                            if not peer.pending:
                                peer.wakeup = trio.Event()
                                await peer.wakeup.wait()
                            keys = list(peer.pending)[:PUSH_BATCH]
                            for key in keys:
                                del peer.pending[key]
                            for raw in _by_bytes(self.store.get_raw_many(keys)):
                                await frames.send(
                                    {"op": "push", "records": raw}, timeout=REQUEST_TIMEOUT
                                )
                                await frames.receive(timeout=REQUEST_TIMEOUT)
                                self.counters["pushed_on_write"] += len(raw)
                except _IO_ERRORS as exc:
                    # Whatever was queued is left to anti-entropy; keep going with new writes.
                    self.counters["push_failures"] += 1
                    log.debug("push to %s failed: %s", peer.node_id, exc)
                    peer.pending.clear()
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    # --- views ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "root": self.tree.root_hex(),
            "keys": self.tree.size,
            "syncing": self.syncing,
            "peers": sorted(self._peers),
            "push_queue": {k: len(v.pending) for k, v in sorted(self._peers.items())},
            "counters": dict(sorted(self.counters.items())),
        }
