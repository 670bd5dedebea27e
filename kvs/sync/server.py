"""The sync server: answers peers on sync_port (root, children, leaves, take, fetch, push,
snapshot; the protocol is in `protocol.py`).

Isolation: each served connection is a boundary. Whatever a peer makes fail there ends that
connection only: it is counted (`dropped_<reason>`; `dropped_error` plus a log line with the
traceback, at most once a minute, when it is none of `PEER_ERRORS`, i.e. a bug here) and the
node goes on. At most `max_connections` are served at once; more are closed at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from kvs.logs import LogLimiter
from kvs.net.codec import WireError
from kvs.net.frames import FrameStream
from kvs.net.messages import Address
from kvs.net.transport import expected_error
from kvs.store import Merge, StoreError
from kvs.sync import limits, snapshot
from kvs.sync import protocol as p
from kvs.sync.health import Health
from kvs.sync.intake import Intake
from kvs.sync.limits import SyncSettings
from kvs.sync.local import LocalReplica
from kvs.sync.session import PEER_ERRORS, CountingStream
from kvs.sync.witness import Witness

log = logging.getLogger(__name__)

Defer = Callable[[list[Merge]], Awaitable[None]]


class SyncServer:
    def __init__(
        self,
        *,
        local: LocalReplica,
        health: Health,
        intake: Intake,
        keys: tuple[bytes, ...],
        nonce: Callable[[], bytes],
        settings: SyncSettings,
        counters: Counter[str],
    ) -> None:
        self.local = local
        self.health = health
        self.intake = intake
        self.keys = keys  # the keyring ("sync" keys): replaced on a reload
        self._nonce = nonce
        self._settings = settings
        self._counters = counters
        self.inbound = 0  # connections being served
        self.witness: Witness | None = None  # set by SyncService when the audit log is on
        self._errors = LogLimiter(log)

    async def serve(self, stream: trio.abc.Stream, peer: Address) -> None:
        """The transport's handler for one inbound connection."""
        if self.inbound >= self._settings.sync_max_connections:
            # Closed at once (by the transport, when we return): a flood of connections
            # cannot tie up memory and tasks, and honest peers retry at their next round.
            self._counters["refused_connections"] += 1
            log.debug("refused a sync connection from %s:%d: too many", peer[0], peer[1])
            return
        self.inbound += 1
        try:
            await self._serve_one(stream, peer)
        except Exception as exc:  # the merges' nursery itself (they catch their own)
            self._dropped(exc, peer)
        finally:
            self.inbound -= 1

    def _dropped(self, exc: Exception, peer: Address) -> None:
        """Count why a served connection ended badly, and log it (at most once a minute per
        reason: a flood of nonsense costs a line a minute)."""
        failure = expected_error(exc, PEER_ERRORS)
        if isinstance(failure, (p.ProtocolError, WireError)):
            reason = failure.reason
        elif isinstance(failure, trio.TooSlowError):
            # The handshake's deadline and the frame's expire together and the former wins:
            # say "timeout" (a stalled peer), like a stalled frame after the handshake.
            reason = "timeout"
        elif failure is not None:
            reason = "io"
        else:
            self._counters["dropped_error"] += 1
            self._errors.log(
                logging.ERROR,
                "serve",
                "serving a sync connection failed unexpectedly",
                exc_info=True,
            )
            return
        self._counters[f"dropped_{reason}"] += 1
        level = logging.WARNING if isinstance(failure, p.ProtocolError) else logging.INFO
        self._errors.log(
            level, f"dropped_{reason}", "dropped a sync connection from %s:%d: %s", *peer, reason
        )

    async def _serve_one(self, stream: trio.abc.Stream, peer: Address) -> None:
        # Pushes from the push link are merged in the background, at most PUSHES_IN_FLIGHT
        # at once per connection, so its next batch need not wait for our fsync; they finish
        # even if the connection ends (the nursery waits for them).
        async with trio.open_nursery() as commits:
            in_flight = trio.Semaphore(limits.PUSHES_IN_FLIGHT)

            async def defer(ops: list[Merge]) -> None:
                await in_flight.acquire()
                commits.start_soon(self._merge_then_release, ops, in_flight)

            try:
                await self._serve_requests(stream, peer, defer)
            except Exception as exc:  # caught here: raised, it would cancel the merges
                self._dropped(exc, peer)

    async def _serve_requests(self, stream: trio.abc.Stream, peer: Address, defer: Defer) -> None:
        """Answer requests until the peer closes or goes quiet; anything else it does raises,
        and `serve` counts it."""
        stream = CountingStream(stream, self._counters, "bytes", "served_bytes")
        with trio.fail_after(limits.REQUEST_TIMEOUT):
            frames = await FrameStream.server(
                stream, self.keys, purpose="sync", nonce=self._nonce()
            )
        while True:
            try:
                # A quiet connection may wait IDLE_TIMEOUT for its next request; a
                # request once begun must arrive whole within REQUEST_TIMEOUT.
                request = await frames.receive(
                    timeout=limits.REQUEST_TIMEOUT, idle=limits.IDLE_TIMEOUT
                )
            except trio.EndOfChannel:
                return
            except WireError as exc:
                if exc.reason != "idle":
                    raise
                self._counters["closed_idle"] += 1  # not an attack: just quiet
                return
            if isinstance(request, dict) and request.get("op") == "snapshot":
                await self.serve_snapshot(frames, request)
                continue
            reply = await self.answer(request, defer)
            await frames.send(reply, timeout=limits.REQUEST_TIMEOUT)

    async def serve_snapshot(self, frames: FrameStream, request: dict[str, Any]) -> None:
        """Stream a copy of the store (kvs/sync/snapshot.py), or refuse saying why."""
        store = self.local.store
        refusal = None
        if request.get("format") != self.local.data_format:
            refusal = "format"  # another LMDB, byte order, word or page size, or schema
        elif self.health.stale or self.health.syncing:
            refusal = "stale" if self.health.stale else "syncing"
        else:
            # The copy and the tree must describe the same commits: start it while no commit
            # waits for its listeners (a commit growing the map waits for the lease: never
            # wait for "publishing" while holding it).
            while store.publishing:
                await trio.sleep(0.001)
        if refusal is None and not store.lease_env_nowait():
            refusal = "busy"  # one copy at a time (a snapshot or a backup)
        if refusal is not None:
            self._counters[f"snapshots_refused_{refusal}"] += 1
            await frames.send({"refused": refusal}, timeout=limits.REQUEST_TIMEOUT)
            return
        try:
            copied = await snapshot.serve(
                frames,
                store,
                lambda: (self.local.tree.root, self.local.tree.size),
                limits.REQUEST_TIMEOUT,
            )
        except snapshot.SnapshotError as exc:
            log.error("serving a snapshot failed: %s", exc)
            raise p.ProtocolError("snapshot") from None  # the connection is out of step
        finally:
            store.release_env()
        self._counters["served_snapshot"] += 1
        self._counters["snapshot_bytes_served"] += copied

    async def _merge_then_release(self, ops: list[Merge], in_flight: trio.Semaphore) -> None:
        try:
            await self.intake.merge(ops)
        except Exception as exc:  # the records stay with anti-entropy
            self._counters["merge_failures"] += 1
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

    async def answer(self, request: Any, defer: Defer | None = None) -> dict[str, Any]:
        """The reply to one request; counted as served only once it has passed validation.
        A push with "durable": false is answered once validated and queued (`defer`), not
        once committed."""
        tree = self.local.tree
        op = p.request_op(request)
        if op == "root":
            reply: dict[str, Any] = {
                "root": p.encode_hash(tree.root),
                "size": tree.size,
                "syncing": self.health.syncing,
                "stale": self.health.check_now(),
            }
        elif op == "children":
            nodes = p.parse_nodes(request, tree.depth)
            reply = {
                "hashes": [[p.encode_hash(h) for h in tree.children(lvl, i)] for lvl, i in nodes]
            }
        elif op == "leaves":
            leaves = p.parse_leaves(request, tree.leaves)
            self._refuse_if_stale()
            entries, count = self.local.summaries_within(leaves)
            reply = {"entries": [p.encode_summary(s) for s in entries], "count": count}
        elif op == "take":
            leaves = p.parse_leaves(request, tree.leaves)
            self._refuse_if_stale()
            records, count = self.local.store.bucket_records_within(
                [tree.buckets_of_leaf(leaf) for leaf in leaves], limits.FRAME_BUDGET
            )
            reply = {"records": records, "count": count}
        elif op == "fetch":
            keys = p.parse_keys(request)
            self._refuse_if_stale()
            records, count = self.local.store.get_raw_within(keys, limits.FRAME_BUDGET)
            reply = {"records": records, "count": count}
        elif op == "audit":  # chain heads (kvs/sync/witness.py)
            if self.witness is None:
                reply = {"refused": "audit log off"}
            else:
                reply = await self.witness.answer(request)
        elif op == "done":
            # The peer compared its tree with ours and reconciled both ways (or found them
            # equal): we are in step with the cluster as much as it is, so a node that only
            # serves exchanges (its own failed or were cut short) does not go stale.
            await self.health.note_exchange()
            reply = {}
        elif op == "push":
            ops = self.intake.merges(p.parse_records(request.get("records")))
            if request.get("durable") is False and defer is not None:
                await defer(ops)
                reply = {"applied": len(ops)}  # taken; committed with the next group commit
            else:
                reply = {"applied": await self.intake.merge(ops)}
        else:
            raise p.ProtocolError("shape")
        self._counters[f"served_{op}"] += 1
        return reply

    def _refuse_if_stale(self) -> None:
        # Checked here too, not only before our own exchanges: a peer may reach us first.
        if self.health.check_now():
            # Our records could resurrect deletes the cluster has forgotten.
            raise p.ProtocolError("stale")
