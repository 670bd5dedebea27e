"""Push on write: one link per live peer sends it every local write, batched, over one
persistent connection.

Anti-entropy is the safety net, not the main path: a full queue (PUSH_QUEUE_LIMIT keys) or a
dead peer leaves the work to it. A batch whose push fails goes back to the head of its
queue and is sent again on the next connection (a receiver merges idempotently). A stale
replica pushes nothing. Failures are counted in `push_failures` (and `errors` when
unexpected, see `session.py`).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field

import trio

from kvs.logs import LogLimiter
from kvs.net.messages import Address, MemberChanged, State
from kvs.store import Store
from kvs.sync import limits
from kvs.sync.health import Health
from kvs.sync.session import Dialer, started_failed

log = logging.getLogger(__name__)


@dataclass
class Peer:
    node_id: str
    address: Address
    pending: dict[str, None] = field(default_factory=dict)  # ordered set of keys to push
    wakeup: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None


class PushLinks:
    """The push links, by peer. Links start once `nursery` is set (by `SyncService.run`)."""

    def __init__(
        self, *, store: Store, dialer: Dialer, health: Health, counters: Counter[str]
    ) -> None:
        self._store = store
        self._dialer = dialer
        self._health = health
        self._counters = counters
        self.peers: dict[str, Peer] = {}
        self.nursery: trio.Nursery | None = None
        self._errors = LogLimiter(log)

    def on_member_change(self, change: MemberChanged) -> None:
        """Link to a peer that came up (again, if its address changed); unlink one gone."""
        node_id = change.member.node_id
        if change.state is State.ALIVE:
            peer = self.peers.get(node_id)
            if peer is None or peer.address != change.member.sync:
                self.stop(node_id)
                self.start(node_id, change.member.sync)
        elif change.state in (State.DEAD, State.LEFT):
            self.stop(node_id)

    def start(self, node_id: str, address: Address) -> None:
        if self.nursery is None:
            return
        peer = Peer(node_id, address)
        self.peers[node_id] = peer
        self.nursery.start_soon(self._pusher, peer)

    def stop(self, node_id: str) -> None:
        peer = self.peers.pop(node_id, None)
        if peer is not None and peer.scope is not None:
            peer.scope.cancel()

    def enqueue(self, key: str) -> None:
        """A local write of `key`: push it to every peer."""
        for peer in self.peers.values():
            self._enqueue(peer, key)

    def clear(self) -> None:
        """Drop every queued key (a stale replica pushes nothing)."""
        for peer in self.peers.values():
            peer.pending.clear()

    def _enqueue(self, peer: Peer, key: str) -> None:
        if len(peer.pending) >= limits.PUSH_QUEUE_LIMIT:
            self._counters["push_queue_overflow"] += 1
            return
        peer.pending.pop(key, None)
        peer.pending[key] = None
        peer.wakeup.set()

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
                    stream = await self._dialer.connect(peer.address, "push_bytes")
                    async with stream:
                        frames = await self._dialer.handshake(stream)
                        backoff = 0.1
                        while True:
                            if not peer.pending:
                                peer.wakeup = trio.Event()
                                with trio.move_on_after(limits.KEEPALIVE) as idle:
                                    await peer.wakeup.wait()
                                if idle.cancelled_caught:
                                    await frames.send(
                                        {"op": "root"}, timeout=limits.REQUEST_TIMEOUT
                                    )
                                    await frames.receive(timeout=limits.REQUEST_TIMEOUT)
                                    self._counters["push_keepalives"] += 1
                                    continue
                            if self._health.stale:
                                peer.pending.clear()
                                continue
                            in_flight = list(itertools.islice(peer.pending, limits.PUSH_BATCH))
                            for key in in_flight:
                                del peer.pending[key]
                            for raw in limits.by_bytes(self._store.get_raw_many(in_flight)):
                                await frames.send(
                                    {"op": "push", "records": raw, "durable": False},
                                    timeout=limits.REQUEST_TIMEOUT,
                                )
                                await frames.receive(timeout=limits.REQUEST_TIMEOUT)
                                self._counters["pushed_on_write"] += len(raw)
                            in_flight = []
                except Exception as exc:
                    self._counters["push_failures"] += 1
                    started_failed(exc, "push", self._counters, self._errors)
                    log.debug("push to %s failed: %s", peer.node_id, exc)
                    self._requeue(peer, in_flight)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)

    def _requeue(self, peer: Peer, in_flight: list[str]) -> None:
        """Keys sent but not acknowledged go back to the head of the queue, to be sent first."""
        if not in_flight:
            return
        self._counters["push_requeued"] += len(in_flight)
        rest = peer.pending
        peer.pending = dict.fromkeys(in_flight)
        for key in rest:
            if len(peer.pending) >= limits.PUSH_QUEUE_LIMIT:
                self._counters["push_queue_overflow"] += 1
                break
            peer.pending[key] = None
