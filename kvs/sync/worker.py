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

Isolation: each sync connection -- served, or started (an exchange, a push link, a snapshot
either way) -- is a boundary. Whatever a peer makes fail there ends that connection only:
it is counted (`dropped_<reason>` served, `exchange_failures` and `push_failures` started;
plus `errors` and a log line with the traceback, at most once a minute, when it is none of
`PEER_IO_ERRORS` or `ProtocolError`, i.e. a bug here) and the node goes on. Fatal, on
purpose: the listening socket failing (no peer could reach us any more) and the store's
writer failing (the node's own nursery owns that task).
"""

from __future__ import annotations

import itertools
import logging
import random
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

from kvs.logs import LogLimiter
from kvs.model import Record, RecordCodec, hlc_ms
from kvs.net.codec import WireError, derive_key
from kvs.net.frames import MAX_FRAME_BYTES, FrameStream
from kvs.net.messages import Address, MemberChanged, State
from kvs.net.transport import PEER_IO_ERRORS, Transport, expected_error
from kvs.store import Change, Merge, Store, StoreError, Summary, Written
from kvs.sync import protocol as p
from kvs.sync import snapshot
from kvs.sync.merkle import MerkleTree

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # a peer must answer each request (and send each frame) within this
IDLE_TIMEOUT = 120.0  # a server closes a connection on which no request began for this long
PUSHES_IN_FLIGHT = 4  # pushes a server connection merges at once (push link, not durable)
KEEPALIVE = IDLE_TIMEOUT / 4  # an idle push connection says something this often
PUSH_QUEUE_LIMIT = 10_000  # keys waiting for one peer; beyond it anti-entropy takes over
SNAPSHOT_MAX_CARRIED = 10_000  # a joiner holding more bootstraps by records only
PUSH_BATCH = 500
FETCH_BATCH = p.MAX_KEYS_PER_REQUEST
LEAF_BATCH = p.MAX_LEAVES_PER_REQUEST  # leaves listed (or taken whole) per request
# Batches are cut by bytes too: a frame over MAX_FRAME_BYTES cannot be sent at all (and the
# send raises ValueError, which is not an I/O error), and values may be up to 1 MiB each.
FRAME_BUDGET = MAX_FRAME_BYTES // 4
MERGE_BATCH = 2000  # fetched records merged per transaction (LMDB holds its pages in memory)
BOOTSTRAP_RETRY = 0.5  # seconds between exchanges while syncing (not sync_interval)
BOOTSTRAP_GRACE = 10.0  # seconds a syncing node looks for a peer with data before it concludes
# that the cluster is new (every live peer is syncing too) and starts taking writes
_SUMMARY_OVERHEAD = 32  # msgpack framing and integers of one summary, at most
# What a peer can make an exchange fail with: the connection's errors, and a reply (or a
# request) that is not this protocol.
_PEER_ERRORS = (p.ProtocolError, *PEER_IO_ERRORS)


# System-db names (persisted in the store, so that they survive a restart).
BOOTSTRAP_STATE = "sync_bootstrap"  # "pending" while bootstrapping, "done" once complete
LAST_EXCHANGE = "sync_last_exchange_ms"  # wall ms of the last exchange that completed


@dataclass
class SyncSettings:
    sync_interval: float = 5.0
    tombstone_ttl_ms: int = 7 * 86400 * 1000
    max_value_size: int = 1 << 20
    max_clock_offset_ms: int = 60_000
    throttle_delay: float = 0.0  # pause between batches of an exchange (bootstrap pacing)
    max_connections: int = 64  # inbound sync connections served at once; more are refused
    max_future_ms: int = 86_400_000
    """A record from a peer whose HLC is further ahead of our wall clock than this is refused
    (counted in `refused_future`), not stored: taken, it would drag our clock (and every
    write after) that far ahead, up to the HLC's ceiling. Peers' clocks a little ahead are
    normal (max_clock_offset_ms logs them); a day ahead is broken. The refused record comes
    again with anti-entropy, and is taken once our clock is within reach of it."""
    # A joiner copies a peer's whole data file (kvs/sync/snapshot.py) when the peer holds at
    # least this many keys; fewer, or 0, and it takes the records one by one.
    snapshot_min_keys: int = 10_000


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
    peer_stale: bool = False  # the peer was cut off too long: it serves nothing
    skipped: bool = False  # nothing exchanged: the peer pulls itself, or is stale


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


def bootstrap_needed(store: Store, has_seeds: bool) -> bool:
    """Whether a node starts in `syncing` mode: its bootstrap began and never completed
    (persisted), or it starts with an empty store and seeds to join. A node restarted in
    the middle of a bootstrap holds part of the data, and must not take that for all of it."""
    state = store.get_system(BOOTSTRAP_STATE)
    if state == "pending":
        return True
    if state == "done":
        return False
    return has_seeds and store.count() == 0


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
        # Cut off from the cluster for longer than tombstone_ttl: deletes it missed may be
        # forgotten everywhere else, so its data could bring deleted keys back. It then
        # neither sends nor serves records, and refuses writes, until it is re-bootstrapped.
        self.stale = False
        self._peers: dict[str, Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._kick = trio.Event()
        self._urgent: list[str] = []
        self._snapshot_failed = False  # then this run bootstraps by records only
        self.data_format = snapshot.snapshot_format()  # what a copy of our store depends on
        self._peer_syncing: dict[str, bool] = {}  # what each peer said in our last exchange
        self._lost: set[str] = set()  # peers that died (not left) and have not come back
        self._started_at = 0.0
        self._inbound = 0
        self._errors = LogLimiter(log)
        self._last_exchange_ms: int | None = None
        self._persisted_exchange_ms = 0

    # --- start-up ------------------------------------------------------------------------------

    def rebuild_tree(self) -> None:
        """Build the tree from the store (summaries only, no values), then follow every write."""
        tree = MerkleTree()
        for s in self.store.iter_summaries():
            tree.toggle(s.key, s.version, s.deleted, adding=True)
        self.tree = tree
        if self._on_changes not in self.store.listeners:  # rebuilt: still told once
            self.store.listeners.append(self._on_changes)

    def _on_changes(self, changes: list[Change]) -> None:
        self.tree.replace_many((change.old, change.new) for change in changes)
        for change in changes:
            if change.local and change.new is not None and not self.stale:
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
        # A copy a crash interrupted (a finished one was put in place or removed).
        shutil.rmtree(self.store.path / snapshot.STAGING_DIR, ignore_errors=True)
        if self.syncing and self.store.get_system(BOOTSTRAP_STATE) != "pending":
            await self.store.put_system(BOOTSTRAP_STATE, "pending")  # before any record comes
        self._check_staleness_at_start()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            address = await nursery.start(self.transport.serve_stream, self.bind, self._serve)
            nursery.start_soon(self._anti_entropy_loop)
            # A bootstrap writes all over the data file, and every page it touches would stay
            # in our RSS (see Store.release_mapped_pages): let them go after every commit.
            self.store.release_pages_after_commit = self.syncing
            task_status.started(address)

    # --- staleness (a partition or a downtime longer than tombstone_ttl) ---------------------------

    def _check_staleness_at_start(self) -> None:
        now = self.store.clock.wall_ms()
        last = self.store.get_system(LAST_EXCHANGE)
        if isinstance(last, int) and not self.syncing:
            self._last_exchange_ms = self._persisted_exchange_ms = last
            self._check_staleness(now)
        else:
            self._last_exchange_ms = now  # never synced: a new node or a new cluster

    def _check_staleness(self, now: int) -> bool:
        last = self._last_exchange_ms
        if self.stale or self.syncing or last is None:
            return self.stale
        if now - last > self.settings.tombstone_ttl_ms:
            self.stale = True
            for peer in self._peers.values():
                peer.pending.clear()
            hours = (now - last) / 3_600_000
            log.error(
                "this node last synced with the cluster %.1f hours ago, longer than "
                "tombstone_ttl (%.1f hours): deletes it missed may be forgotten by the other "
                "nodes, so its data could bring deleted keys back. It stops replicating and "
                "refuses writes (mode 'stale'). Re-bootstrap it: stop it, move its data_dir "
                "away, and start it again with seed_nodes (README: Replication)",
                hours,
                self.settings.tombstone_ttl_ms / 3_600_000,
            )
        return self.stale

    async def _note_exchange(self, *, alone: bool = False) -> None:
        """Remember (and persist, now and then) that we are in step with the cluster: an
        exchange completed, or there is nobody to be out of step with."""
        if self.stale:
            return
        now = self.store.clock.wall_ms()
        self._last_exchange_ms = now
        every = min(60_000, self.settings.tombstone_ttl_ms // 10)
        if now - self._persisted_exchange_ms >= every:
            self._persisted_exchange_ms = now
            await self.store.put_system(LAST_EXCHANGE, now)
        if alone:
            self.counters["alone_ticks"] += 1

    # --- membership ----------------------------------------------------------------------------

    def on_member_change(self, change: MemberChanged) -> None:
        """Start pushing to a peer that came up (and sync with it at once); stop for one gone."""
        member = change.member
        if member.node_id == self.node_id:
            return
        if change.state is State.ALIVE:
            self._lost.discard(member.node_id)
            peer = self._peers.get(member.node_id)
            if peer is None or peer.address != member.sync:
                self._stop_peer(member.node_id)
                self._start_peer(member.node_id, member.sync)
            # One exchange per pair, not two: the lower node id starts it -- or the joiner,
            # which pulls the data itself (a peer does not exchange with a syncing node).
            if change.previous in (None, State.DEAD, State.LEFT) and (
                self.syncing or self.node_id < member.node_id
            ):
                self._urgent.append(member.node_id)
                self._kick.set()
        elif change.state in (State.DEAD, State.LEFT):
            if change.state is State.DEAD:
                self._lost.add(member.node_id)
            else:
                self._lost.discard(member.node_id)
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
        if self._inbound >= self.settings.max_connections:
            # Closed at once (by the transport, when we return): a flood of connections
            # cannot tie up memory and tasks, and honest peers retry at their next round.
            self.counters["refused_connections"] += 1
            log.debug("refused a sync connection from %s:%d: too many", peer[0], peer[1])
            return
        self._inbound += 1
        try:
            await self._serve_one(stream, peer)
        except Exception as exc:  # the merges' nursery itself (they catch their own)
            self._dropped(exc, peer)
        finally:
            self._inbound -= 1

    def _dropped(self, exc: Exception, peer: Address) -> None:
        """Count why a served connection ended badly, and log it (at most once a minute per
        reason: a flood of nonsense costs a line a minute)."""
        failure = expected_error(exc, _PEER_ERRORS)
        if isinstance(failure, (p.ProtocolError, WireError)):
            reason = failure.reason
        elif isinstance(failure, trio.TooSlowError):
            # The handshake's deadline and the frame's expire together and the former wins:
            # say "timeout" (a stalled peer), like a stalled frame after the handshake.
            reason = "timeout"
        elif failure is not None:
            reason = "io"
        else:
            self.counters["dropped_error"] += 1
            self._errors.log(
                logging.ERROR,
                "serve",
                "serving a sync connection failed unexpectedly",
                exc_info=True,
            )
            return
        self.counters[f"dropped_{reason}"] += 1
        level = logging.WARNING if isinstance(failure, p.ProtocolError) else logging.INFO
        self._errors.log(
            level, f"dropped_{reason}", "dropped a sync connection from %s:%d: %s", *peer, reason
        )

    async def _serve_one(self, stream: trio.abc.Stream, peer: Address) -> None:
        # Pushes from the push link are merged in the background, at most PUSHES_IN_FLIGHT
        # at once per connection, so its next batch need not wait for our fsync; they finish
        # even if the connection ends (the nursery waits for them).
        async with trio.open_nursery() as commits:
            in_flight = trio.Semaphore(PUSHES_IN_FLIGHT)

            async def defer(ops: list[Merge]) -> None:
                await in_flight.acquire()
                commits.start_soon(self._merge_then_release, ops, in_flight)

            try:
                await self._serve_requests(stream, peer, defer)
            except Exception as exc:  # caught here: raised, it would cancel the merges
                self._dropped(exc, peer)

    async def _serve_requests(
        self,
        stream: trio.abc.Stream,
        peer: Address,
        defer: Callable[[list[Merge]], Awaitable[None]],
    ) -> None:
        """Answer requests until the peer closes or goes quiet; anything else it does raises,
        and `_serve` counts it."""
        stream = _CountingStream(stream, self.counters, "bytes", "served_bytes")
        with trio.fail_after(REQUEST_TIMEOUT):
            frames = await FrameStream.server(
                stream, self._key, purpose="sync", nonce=self._nonce()
            )
        while True:
            try:
                # A quiet connection may wait IDLE_TIMEOUT for its next request; a
                # request once begun must arrive whole within REQUEST_TIMEOUT.
                request = await frames.receive(timeout=REQUEST_TIMEOUT, idle=IDLE_TIMEOUT)
            except trio.EndOfChannel:
                return
            except WireError as exc:
                if exc.reason != "idle":
                    raise
                self.counters["closed_idle"] += 1  # not an attack: just quiet
                return
            if isinstance(request, dict) and request.get("op") == "snapshot":
                await self._serve_snapshot(frames, request)
                continue
            reply = await self._answer(request, defer)
            await frames.send(reply, timeout=REQUEST_TIMEOUT)

    async def _serve_snapshot(self, frames: FrameStream, request: dict[str, Any]) -> None:
        """Stream a copy of the store (kvs/sync/snapshot.py), or refuse saying why."""
        refusal = None
        if request.get("format") != self.data_format:
            refusal = "format"  # another LMDB, byte order, word or page size, or schema
        elif self.stale or self.syncing:
            refusal = "stale" if self.stale else "syncing"
        else:
            # The copy and the tree must describe the same commits: start it while no commit
            # waits for its listeners (a commit growing the map waits for the lease: never
            # wait for "publishing" while holding it).
            while self.store.publishing:
                await trio.sleep(0.001)
        if refusal is None and not self.store.lease_env_nowait():
            refusal = "busy"  # one copy at a time (a snapshot or a backup)
        if refusal is not None:
            self.counters[f"snapshots_refused_{refusal}"] += 1
            await frames.send({"refused": refusal}, timeout=REQUEST_TIMEOUT)
            return
        try:
            copied = await snapshot.serve(
                frames, self.store, lambda: (self.tree.root, self.tree.size), REQUEST_TIMEOUT
            )
        except snapshot.SnapshotError as exc:
            log.error("serving a snapshot failed: %s", exc)
            raise p.ProtocolError("snapshot") from None  # the connection is out of step
        finally:
            self.store.release_env()
        self.counters["served_snapshot"] += 1
        self.counters["snapshot_bytes_served"] += copied

    async def _merge_then_release(self, ops: list[Merge], in_flight: trio.Semaphore) -> None:
        try:
            await self._merge(ops)
        except Exception as exc:  # the records stay with anti-entropy
            self.counters["merge_failures"] += 1
            unexpected = not isinstance(exc, StoreError)
            self._errors.log(
                logging.ERROR,
                "merge",
                "merging pushed records failed: %s",
                exc,
                exc_info=unexpected,
            )
        finally:
            in_flight.release()

    async def _answer(
        self,
        request: Any,
        defer: Callable[[list[Merge]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """The reply to one request; counted as served only once it has passed validation.
        A push with "durable": false is answered once validated and queued (`defer`), not
        once committed."""
        op = p.request_op(request)
        if op == "root":
            reply: dict[str, Any] = {
                "root": p.encode_hash(self.tree.root),
                "size": self.tree.size,
                "syncing": self.syncing,
                "stale": self._check_staleness(self.store.clock.wall_ms()),
            }
        elif op == "children":
            nodes = p.parse_nodes(request, self.tree.depth)
            reply = {
                "hashes": [
                    [p.encode_hash(h) for h in self.tree.children(lvl, i)] for lvl, i in nodes
                ]
            }
        elif op == "leaves":
            leaves = p.parse_leaves(request, self.tree.leaves)
            self._refuse_if_stale()
            entries, count = self._summaries_within(leaves)
            reply = {"entries": [p.encode_summary(s) for s in entries], "count": count}
        elif op == "take":
            leaves = p.parse_leaves(request, self.tree.leaves)
            self._refuse_if_stale()
            records, count = self.store.bucket_records_within(
                [self.tree.buckets_of_leaf(leaf) for leaf in leaves], FRAME_BUDGET
            )
            reply = {"records": records, "count": count}
        elif op == "fetch":
            keys = p.parse_keys(request)
            self._refuse_if_stale()
            records, count = self.store.get_raw_within(keys, FRAME_BUDGET)
            reply = {"records": records, "count": count}
        elif op == "push":
            ops = self._merges(p.parse_records(request.get("records")))
            if request.get("durable") is False and defer is not None:
                await defer(ops)
                reply = {"applied": len(ops)}  # taken; committed with the next group commit
            else:
                reply = {"applied": await self._merge(ops)}
        else:
            raise p.ProtocolError("shape")
        self.counters[f"served_{op}"] += 1
        return reply

    def _refuse_if_stale(self) -> None:
        # Checked here too, not only before our own exchanges: a peer may reach us first.
        if self._check_staleness(self.store.clock.wall_ms()):
            # Our records could resurrect deletes the cluster has forgotten.
            raise p.ProtocolError("stale")

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
        return await self._merge(self._merges(raw_records))

    async def _merge(self, ops: list[Merge]) -> int:
        if not ops:
            return 0
        outcomes = await self.store.write(ops)
        stored = sum(1 for o in outcomes if isinstance(o, Written))
        self.counters["records_merged"] += stored
        return stored

    def _merges(self, raw_records: list[bytes]) -> list[Merge]:
        """The store ops for records from a peer, every one validated first (ProtocolError)."""
        now = self.store.clock.wall_ms()
        ops: list[Merge] = []
        oldest_tombstone = now - self.settings.tombstone_ttl_ms
        for raw in raw_records:
            record = self._check(raw)
            stored: bytes | None = raw  # as the peer encoded it: no re-encoding
            if record.expires_at is not None and record.expired(now):
                # Taken as the tombstone it has become here: skipping it would leave an older
                # version of the key live on this replica, and sync would spread it back.
                record, stored = record.expired_tombstone(), None
                self.counters["expired_as_tombstone"] += 1
            written_ms = hlc_ms(record.version.hlc)
            if record.value is None and written_ms < oldest_tombstone:
                self.counters["skipped_old_tombstone"] += 1
                continue
            lead = written_ms - now
            if lead > self.settings.max_future_ms:
                self.counters["refused_future"] += 1
                self._errors.log(
                    logging.WARNING,
                    "future",
                    "refused a record from %s written %d ms in our future (more than %d): "
                    "check that node's clock",
                    record.version.origin[:64],
                    lead,
                    self.settings.max_future_ms,
                )
                continue
            if lead > self.settings.max_clock_offset_ms:
                self.counters["clock_offset_exceeded"] += 1
                self._errors.log(
                    logging.WARNING,
                    "offset",
                    "a record from %s is %d ms in our future: check that node's clock",
                    record.version.origin[:64],
                    lead,
                )
            ops.append(Merge(record, stored))
        return ops

    def _check(self, raw: bytes) -> Record:
        return p.check_record(self.codec, raw, self.settings.max_value_size)

    # --- anti-entropy (client side) ------------------------------------------------------------

    async def _anti_entropy_loop(self) -> None:
        while True:
            interval = BOOTSTRAP_RETRY if self.syncing else self.settings.sync_interval
            with trio.move_on_after(interval * (0.75 + 0.5 * self.rng.random())):
                await self._kick.wait()
            self._kick = trio.Event()
            if self.stale:
                self._urgent.clear()
                continue
            targets = list(dict.fromkeys(self._urgent))
            self._urgent.clear()
            if not targets:
                peers = self._live_peers()
                if self.syncing:  # bootstrap from a peer with the data, if one is known
                    peers = [x for x in peers if not self._peer_syncing.get(x[0])] or peers
                if peers:
                    targets = [self.rng.choice(peers)[0]]
                elif not self._lost and not self.syncing:
                    # Nobody to be out of step with (no peer died without leaving): this
                    # node is the whole cluster, and its data is current.
                    await self._note_exchange(alone=True)
            for node_id in targets:
                address = dict(self._live_peers()).get(node_id)
                if address is None:
                    continue
                if self._check_staleness(self.store.clock.wall_ms()):
                    break
                try:
                    result = await self.exchange(address)
                except Exception as exc:
                    self.counters["exchange_failures"] += 1
                    self._started_failed(exc, "exchange")
                    log.debug("anti-entropy with %s failed: %s", node_id, exc)
                    continue
                self._peer_syncing[node_id] = result.peer_syncing
                if not result.skipped:
                    await self._note_exchange()
                if self.syncing and self._bootstrapped_by(result):
                    await self.store.put_system(BOOTSTRAP_STATE, "done")
                    self.syncing = False
                    self.store.release_pages_after_commit = False
                    self.synced.set()
                    await self._note_exchange()
                    log.info("bootstrap complete: %d records", self.tree.size)
            if self.syncing and not self._live_peers():
                await trio.sleep(0.5)  # nobody to bootstrap from yet: ask again soon

    def _started_failed(self, exc: Exception, what: str) -> None:
        """An exchange or a push link we started failed: a peer's doing (counted by the
        caller), or something unexpected, counted in `errors` and logged with its traceback."""
        if expected_error(exc, _PEER_ERRORS) is None:
            self.counters["errors"] += 1
            self._errors.log(
                logging.ERROR, what, "a sync %s failed unexpectedly", what, exc_info=True
            )

    def _bootstrapped_by(self, result: ExchangeResult) -> bool:
        """Whether an exchange ends our bootstrap: the peer held the cluster's data (it was
        not bootstrapping itself), or no live peer does (a new cluster, where every node
        starts empty and syncing) -- which is only believed after BOOTSTRAP_GRACE, once
        membership has had time to find the others. Two nodes joining together must not
        each take the other's empty store for the cluster's data."""
        if result.peer_stale:
            return False
        if not result.peer_syncing:
            return True
        if trio.current_time() - self._started_at < BOOTSTRAP_GRACE:
            return False
        return all(self._peer_syncing.get(node_id) for node_id, _ in self._live_peers())

    async def exchange(self, address: Address) -> ExchangeResult:
        """One full anti-entropy exchange with the peer at `address` (its sync address).

        Streamed, a batch of differing leaves at a time: list them (or, for a leaf we hold
        nothing of, take its records whole), fetch what wins, push what the peer lacks, then
        pause `throttle_delay` -- so a bootstrap holds one batch in memory, never the data
        set, and paces itself. Received records are applied by a second task while the next
        batch is on the wire."""
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
            result.peer_stale = reply.get("stale") is True
            if result.peer_stale:
                self.counters["exchanges_skipped_stale_peer"] += 1
                result.skipped = True
                return result
            if result.peer_syncing and not self.syncing:
                # A joiner pulls the data itself (paced, once): were we to exchange too,
                # a bootstrap would copy everything twice.
                self.counters["exchanges_left_to_joiner"] += 1
                result.skipped = True
                return result
            if self._snapshot_wanted(reply) and await self._bootstrap_from_snapshot(frames):
                reply = await call({"op": "root"})
                if not isinstance(reply, dict) or not isinstance(reply.get("root"), bytes):
                    raise p.ProtocolError("shape")
            if int.from_bytes(reply["root"], "big") == self.tree.root:
                self.counters["exchanges_equal"] += 1
                return result
            leaves = await self._differing_leaves(call)
            result.differing_leaves = len(leaves)
            send, receive = trio.open_memory_channel[list[bytes]](1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_fetched, receive, result)
                async with send:
                    for start in range(0, len(leaves), LEAF_BATCH):
                        await self._exchange_leaves(
                            call, leaves[start : start + LEAF_BATCH], send, result
                        )
                        if self.settings.throttle_delay:
                            await trio.sleep(self.settings.throttle_delay)
        result.bytes_in, result.bytes_out = stream.bytes_in, stream.bytes_out
        self.counters["exchanges"] += 1
        self.counters["records_fetched"] += result.fetched
        self.counters["records_pushed"] += result.pushed
        return result

    def _snapshot_wanted(self, root_reply: dict[str, Any]) -> bool:
        """Whether to copy the peer's whole store instead of taking its records: while
        bootstrapping with (next to) nothing yet, from a peer with enough keys that one
        read of a copy beats a write per record."""
        size = root_reply.get("size")
        return (
            self.syncing
            and not self._snapshot_failed
            and self.settings.snapshot_min_keys > 0
            and self.tree.size <= SNAPSHOT_MAX_CARRIED
            and isinstance(size, int)
            and size >= self.settings.snapshot_min_keys
        )

    async def _bootstrap_from_snapshot(self, frames: FrameStream) -> bool:
        """Take a snapshot of the peer's store in place of ours; False if the peer refused.
        On any failure the bootstrap goes on by records (this exchange ends; the next one
        takes them)."""
        staging = self.store.path / snapshot.STAGING_DIR
        began = trio.current_time()
        try:
            header = await snapshot.receive(
                frames,
                staging,
                timeout=REQUEST_TIMEOUT,
                pause=self.settings.throttle_delay,
                data_format=self.data_format,
            )
            if header is None:
                self.counters["snapshots_refused"] += 1
                return False
            received = trio.current_time()
            tree, highest = await snapshot.verify(staging, header, self.settings.max_value_size)
            checked = trio.current_time()
            lead = hlc_ms(highest) - self.store.clock.wall_ms()
            if lead > self.settings.max_future_ms:
                self.counters["refused_future"] += 1
                raise snapshot.SnapshotError(f"it holds a record written {lead} ms in our future")

            def installed() -> None:  # in the writer, before any other write
                self.tree = tree
                self.store.clock.observe(highest)

            carried = await self.store.replace_data(staging, installed)
        except BaseException as exc:
            self._snapshot_failed = True
            self.counters["snapshot_failures"] += 1
            if not isinstance(exc, (snapshot.SnapshotError, StoreError, OSError)):
                raise
            log.warning("bootstrap by snapshot failed (%s); taking records instead", exc)
            raise p.ProtocolError("snapshot") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if carried:  # what peers pushed to us meanwhile: merged again, winners kept
            await self.accept(carried)
        installed_s = trio.current_time() - checked
        self.counters["snapshots"] += 1
        self.counters["snapshot_records"] += header.size
        self.counters["snapshot_receive_ms"] += round((received - began) * 1000)
        self.counters["snapshot_check_ms"] += round((checked - received) * 1000)
        self.counters["snapshot_install_ms"] += round(installed_s * 1000)
        log.info(
            "bootstrap: took a snapshot of %d records (%.1f s to receive, %.1f s to check, "
            "%.1f s to put in place)",
            header.size,
            received - began,
            checked - received,
            installed_s,
        )
        return True

    async def _apply_fetched(
        self, receive: trio.MemoryReceiveChannel[list[bytes]], result: ExchangeResult
    ) -> None:
        async with receive:
            async for raws in receive:
                # Transactions of MERGE_BATCH records: LMDB copies every page a transaction
                # changes into memory until it commits, so their size bounds our heap.
                for start in range(0, len(raws), MERGE_BATCH):
                    result.fetched += await self.accept(raws[start : start + MERGE_BATCH])

    async def _exchange_leaves(
        self,
        call: Callable[[dict[str, Any]], Any],
        batch: list[int],
        apply: trio.MemorySendChannel[list[bytes]],
        result: ExchangeResult,
    ) -> None:
        """Reconcile one batch of differing leaves with the peer."""
        counts = self.tree.counts
        whole = [leaf for leaf in batch if counts[leaf] == 0]
        listed = [leaf for leaf in batch if counts[leaf] != 0]
        while whole:  # leaves we hold nothing of: everything the peer has there wins
            reply = await call({"op": "take", "leaves": whole})
            records = p.parse_records(
                reply.get("records") if isinstance(reply, dict) else None, p.MAX_RECORDS_PER_REPLY
            )
            count = p.decode_count(reply, len(whole), at_least=0)
            if count == 0:  # the first leaf alone is too big for one frame: list it
                listed.append(whole.pop(0))
                continue
            whole = whole[count:]
            if records:
                await apply.send(records)
        while listed:
            reply = await call({"op": "leaves", "leaves": listed})
            remote = {s.key: s for s in p.decode_summaries(reply, 10**7)}
            done = p.decode_count(reply, len(listed))  # what fit in the reply
            chunk, listed = listed[:done], listed[done:]
            local = {s.key: s for s in self._summaries(chunk)}
            to_fetch = [
                key
                for key, theirs in remote.items()
                if (mine := local.get(key)) is None or theirs.version.newer_than(mine.version)
            ]
            to_push = [
                key
                for key, mine in local.items()
                if (theirs := remote.get(key)) is None or mine.version.newer_than(theirs.version)
            ]
            start = 0
            while start < len(to_fetch):
                keys = to_fetch[start : start + FETCH_BATCH]
                reply = await call({"op": "fetch", "keys": keys})
                records = p.parse_records(
                    reply.get("records") if isinstance(reply, dict) else None,
                    p.MAX_RECORDS_PER_REPLY,
                )
                start += p.decode_count(reply, len(keys))  # the keys whose records fit
                if records:
                    await apply.send(records)
            for start in range(0, len(to_push), PUSH_BATCH):
                for raw in _by_bytes(self.store.get_raw_many(to_push[start : start + PUSH_BATCH])):
                    await call({"op": "push", "records": raw})
                    result.pushed += len(raw)

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
        """Send this peer every local write over one persistent connection, in batches.

        An idle connection sends a keepalive ("root") every KEEPALIVE seconds, well within
        the server's IDLE_TIMEOUT; a batch whose push fails goes back to the head of the
        queue and is sent again on the next connection (a receiver merges idempotently)."""
        with trio.CancelScope() as scope:
            peer.scope = scope
            backoff = 0.1
            while True:
                in_flight: list[str] = []
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
                                with trio.move_on_after(KEEPALIVE) as idle:
                                    await peer.wakeup.wait()
                                if idle.cancelled_caught:
                                    await frames.send({"op": "root"}, timeout=REQUEST_TIMEOUT)
                                    await frames.receive(timeout=REQUEST_TIMEOUT)
                                    self.counters["push_keepalives"] += 1
                                    continue
                            if self.stale:
                                peer.pending.clear()
                                continue
                            in_flight = list(itertools.islice(peer.pending, PUSH_BATCH))
                            for key in in_flight:
                                del peer.pending[key]
                            for raw in _by_bytes(self.store.get_raw_many(in_flight)):
                                await frames.send(
                                    {"op": "push", "records": raw, "durable": False},
                                    timeout=REQUEST_TIMEOUT,
                                )
                                await frames.receive(timeout=REQUEST_TIMEOUT)
                                self.counters["pushed_on_write"] += len(raw)
                            in_flight = []
                except Exception as exc:
                    self.counters["push_failures"] += 1
                    self._started_failed(exc, "push")
                    log.debug("push to %s failed: %s", peer.node_id, exc)
                    if in_flight:  # not acknowledged: send it again, first
                        self.counters["push_requeued"] += len(in_flight)
                        rest = peer.pending
                        peer.pending = dict.fromkeys(in_flight)
                        for key in rest:
                            if len(peer.pending) >= PUSH_QUEUE_LIMIT:
                                self.counters["push_queue_overflow"] += 1
                                break
                            peer.pending[key] = None
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    # --- views ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "root": self.tree.root_hex(),
            "keys": self.tree.size,
            "syncing": self.syncing,
            "stale": self.stale,
            "last_exchange_ms": self._last_exchange_ms,
            "inbound_connections": self._inbound,
            "peers": sorted(self._peers),
            "push_queue": {k: len(v.pending) for k, v in sorted(self._peers.items())},
            "counters": dict(sorted(self.counters.items())),
        }
