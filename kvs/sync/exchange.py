"""The exchange driver: one anti-entropy exchange with one peer, over one sync session.

What to ask for and what moves is decided in `reconcile.py`; this module only performs it:
it sends the requests, reads our summaries and records from the store, hands fetched records
to `Intake` (in a second task, so the next batch is on the wire while they are merged), and
sleeps where the reconciliation says to pace. A joiner may first copy the peer's whole store
(`snapshot.py`) and then reconcile only what changed since the copy.

Streamed, a batch of differing leaves at a time: a bootstrap holds one batch in memory,
never the data set.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from kvs.model import hlc_ms
from kvs.net.frames import FrameStream
from kvs.net.messages import Address
from kvs.store import StoreError
from kvs.sync import limits, snapshot
from kvs.sync import protocol as p
from kvs.sync.health import Health
from kvs.sync.intake import Intake
from kvs.sync.limits import SyncSettings
from kvs.sync.local import LocalReplica
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
    read_root,
    skip,
    snapshot_wanted,
)
from kvs.sync.session import PEER_ERRORS, Dialer
from kvs.sync.witness import Witness

log = logging.getLogger(__name__)

Call = Callable[[dict[str, Any]], Awaitable[Any]]

_SKIPPED = {"stale": "exchanges_skipped_stale_peer", "joiner": "exchanges_left_to_joiner"}


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
    roots_equal: bool | None = None  # the peer's Merkle root was ours when compared


async def differing_leaves(tree: MerkleTree, call: Call) -> list[int]:
    """The leaves where `tree` and the peer's tree differ, asking the peer through `call`."""
    descent = Descent(tree)
    while (request := descent.next_request()) is not None:
        descent.on_reply(await call(request))
    assert descent.leaves is not None
    return descent.leaves


class Exchanger:
    def __init__(
        self,
        *,
        local: LocalReplica,
        health: Health,
        intake: Intake,
        dialer: Dialer,
        settings: SyncSettings,
        counters: Counter[str],
    ) -> None:
        self._local = local
        self._health = health
        self._intake = intake
        self._dialer = dialer
        self._settings = settings
        self._counters = counters
        self._snapshot_failed = False  # then this run bootstraps by records only
        self.witness: Witness | None = None  # set by SyncService when the audit log is on

    def discard_partial_copy(self) -> None:
        """Remove a copy a crash interrupted (a finished one was put in place or removed)."""
        shutil.rmtree(self._local.store.path / snapshot.STAGING_DIR, ignore_errors=True)

    async def run(self, address: Address, node_id: str | None = None) -> ExchangeResult:
        """One full anti-entropy exchange with the peer at `address` (its sync address;
        `node_id`, when known, to exchange audit chain heads with it too)."""
        result = ExchangeResult()
        stream = await self._dialer.connect(address, "exchange_bytes")
        async with stream:
            frames = await self._dialer.handshake(stream)

            async def call(request: dict[str, Any]) -> Any:
                await frames.send(request, timeout=limits.REQUEST_TIMEOUT)
                return await frames.receive(timeout=limits.REQUEST_TIMEOUT)

            full = await self._session(frames, call, result)
            if self.witness is not None:
                try:  # after the records: a peer that does not know the request ends only this
                    await self.witness.exchange(call, node_id)
                except PEER_ERRORS:
                    self._counters["audit_heads_failed"] += 1
            if not result.skipped:
                try:  # last: a peer of an older release refuses it, ending only this session
                    await call({"op": "done"})
                except PEER_ERRORS:
                    self._counters["done_refused"] += 1
        if not full:
            return result
        result.bytes_in, result.bytes_out = stream.bytes_in, stream.bytes_out
        self._counters["exchanges"] += 1
        self._counters["records_fetched"] += result.fetched
        self._counters["records_pushed"] += result.pushed
        return result

    async def _session(self, frames: FrameStream, call: Call, result: ExchangeResult) -> bool:
        """The records' part of an exchange; False if it ended early (skipped, or equal)."""
        peer = read_root(await call({"op": "root"}))
        result.peer_syncing, result.peer_stale = peer.syncing, peer.stale
        self._health.note_peer_size(peer.size, trio.current_time())
        why = skip(peer, syncing=self._health.syncing)
        if why is not None:
            self._counters[_SKIPPED[why]] += 1
            result.skipped = True
            return False
        if self._snapshot_wanted(peer) and await self._bootstrap_from_snapshot(frames):
            peer = read_root(await call({"op": "root"}))
        result.roots_equal = peer.root == self._local.tree.root
        if result.roots_equal:
            self._counters["exchanges_equal"] += 1
            return False
        leaves = await differing_leaves(self._local.tree, call)
        result.differing_leaves = len(leaves)
        send, receive = trio.open_memory_channel[list[bytes]](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._apply_fetched, receive, result)
            async with send:
                await self._reconcile(Reconciliation(self._local.tree, leaves), call, send, result)
        return True

    async def _reconcile(
        self,
        r: Reconciliation,
        call: Call,
        apply: trio.MemorySendChannel[list[bytes]],
        result: ExchangeResult,
    ) -> None:
        """Perform the reconciliation's work, feeding it the answers."""
        while (step := r.next_step()) is not None:
            match step:
                case Ask(request):
                    r.on_reply(await call(request))
                case ReadOurs(leaves):
                    r.on_ours(self._local.summaries(leaves))
                case Apply(records):
                    await apply.send(records)
                case Push(keys):
                    for raw in limits.by_bytes(self._local.store.get_raw_many(keys)):
                        await call({"op": "push", "records": raw})
                        result.pushed += len(raw)
                case Pause():
                    if self._settings.sync_throttle_delay:
                        await trio.sleep(self._settings.sync_throttle_delay)

    async def _apply_fetched(
        self, receive: trio.MemoryReceiveChannel[list[bytes]], result: ExchangeResult
    ) -> None:
        async with receive:
            async for raws in receive:
                # Transactions of MERGE_BATCH records: LMDB copies every page a transaction
                # changes into memory until it commits, so their size bounds our heap.
                for start in range(0, len(raws), limits.MERGE_BATCH):
                    result.fetched += await self._intake.accept(
                        raws[start : start + limits.MERGE_BATCH]
                    )

    def _snapshot_wanted(self, peer: PeerRoot) -> bool:
        return snapshot_wanted(
            peer,
            syncing=self._health.syncing,
            failed_before=self._snapshot_failed,
            min_keys=self._settings.sync_snapshot_min_keys,
            our_keys=self._local.tree.size,
        )

    async def _bootstrap_from_snapshot(self, frames: FrameStream) -> bool:
        """Take a snapshot of the peer's store in place of ours; False if the peer refused.
        On any failure the bootstrap goes on by records (this exchange ends; the next one
        takes them)."""
        store = self._local.store
        staging = store.path / snapshot.STAGING_DIR
        began = trio.current_time()
        try:
            header = await snapshot.receive(
                frames,
                staging,
                timeout=limits.REQUEST_TIMEOUT,
                pause=self._settings.sync_throttle_delay,
                data_format=self._local.data_format,
            )
            if header is None:
                self._counters["snapshots_refused"] += 1
                return False
            received = trio.current_time()
            tree, highest = await snapshot.verify(staging, header, self._settings.max_json_size)
            checked = trio.current_time()
            lead = hlc_ms(highest) - store.clock.wall_ms()
            if lead > limits.MAX_FUTURE_MS:
                self._counters["refused_future"] += 1
                raise snapshot.SnapshotError(f"it holds a record written {lead} ms in our future")

            def installed() -> None:  # in the writer, before any other write
                self._local.tree = tree
                store.clock.observe(highest)

            carried = await store.replace_data(staging, installed)
        except BaseException as exc:
            self._snapshot_failed = True
            self._counters["snapshot_failures"] += 1
            if not isinstance(exc, (snapshot.SnapshotError, StoreError, OSError)):
                raise
            log.warning("bootstrap by snapshot failed (%s); taking records instead", exc)
            raise p.ProtocolError("snapshot") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if carried:  # what peers pushed to us meanwhile: merged again, winners kept
            await self._intake.accept(carried)
        installed_s = trio.current_time() - checked
        self._counters["snapshots"] += 1
        self._counters["snapshot_records"] += header.size
        self._counters["snapshot_receive_ms"] += round((received - began) * 1000)
        self._counters["snapshot_check_ms"] += round((checked - received) * 1000)
        self._counters["snapshot_install_ms"] += round(installed_s * 1000)
        log.info(
            "bootstrap: took a snapshot of %d records (%.1f s to receive, %.1f s to check, "
            "%.1f s to put in place)",
            header.size,
            received - began,
            checked - received,
            installed_s,
        )
        return True
