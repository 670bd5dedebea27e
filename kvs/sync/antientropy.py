"""Anti-entropy: when to exchange, and with whom.

Every `sync_interval` (jittered, so nodes do not move in step) an exchange with a random live
member, and at once with a member that (re)appears -- one exchange per pair, not two: the
lower node id starts it, or the joiner, which pulls the data itself. While bootstrapping,
every BOOTSTRAP_RETRY seconds, preferring peers that hold the data; the bootstrap ends with
the first exchange that shows the cluster's data is here (`_bootstrapped_by`).

A node with no live peer, none of which died without leaving, is the whole cluster: its data
is current, and it counts as in step. A stale node exchanges nothing. A failed exchange is
counted (`exchange_failures`; `errors` when unexpected) and the loop goes on.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable

import trio

from kvs.logs import LogLimiter
from kvs.net.messages import Address, MemberChanged, State
from kvs.sync import limits
from kvs.sync.exchange import Exchanger, ExchangeResult
from kvs.sync.health import Health
from kvs.sync.limits import SyncSettings
from kvs.sync.local import LocalReplica
from kvs.sync.session import started_failed

log = logging.getLogger(__name__)

LivePeers = Callable[[], list[tuple[str, Address]]]


class AntiEntropy:
    def __init__(
        self,
        *,
        node_id: str,
        exchanger: Exchanger,
        local: LocalReplica,
        health: Health,
        live_peers: LivePeers,
        rng: random.Random,
        settings: SyncSettings,
        counters: Counter[str],
    ) -> None:
        self.node_id = node_id
        self._exchanger = exchanger
        self._local = local
        self.health = health
        self.live_peers = live_peers  # (node id, sync address) of every live member but us
        self._rng = rng
        self._settings = settings
        self._counters = counters
        self._kick = trio.Event()
        self._urgent: list[str] = []  # exchange with these at once
        self._peer_syncing: dict[str, bool] = {}  # what each peer said in our last exchange
        self._peer_stale: dict[str, bool] = {}
        self._lost: set[str] = set()  # peers that died (not left) and have not come back
        self._errors = LogLimiter(log)
        # The last exchange this node started with each peer, as the console shows it
        # (`GET /cluster/stats`, "exchanges_by_peer"); peers that left are forgotten.
        self.last_by_peer: dict[str, dict[str, object]] = {}

    def on_member_change(self, change: MemberChanged) -> None:
        """Exchange at once with a member that (re)appears, if it is ours to start."""
        node_id = change.member.node_id
        if change.state is State.ALIVE:
            self._lost.discard(node_id)
            # One exchange per pair, not two: the lower node id starts it -- or the joiner,
            # which pulls the data itself (a peer does not exchange with a syncing node).
            if change.previous in (None, State.DEAD, State.LEFT) and (
                self.health.syncing or self.node_id < node_id
            ):
                self._urgent.append(node_id)
                self._kick.set()
        elif change.state is State.DEAD:
            self._lost.add(node_id)
        elif change.state is State.LEFT:
            self._lost.discard(node_id)
            self.last_by_peer.pop(node_id, None)

    async def run(self) -> None:
        while True:
            syncing = self.health.syncing
            interval = limits.BOOTSTRAP_RETRY if syncing else self._settings.sync_interval
            with trio.move_on_after(interval * (0.75 + 0.5 * self._rng.random())):
                await self._kick.wait()
            self._kick = trio.Event()
            if self.health.stale:
                self._urgent.clear()
                continue
            for node_id in await self._targets():
                address = dict(self.live_peers()).get(node_id)
                if address is None:
                    continue
                if self.health.check_now():
                    break
                await self._exchange(node_id, address)
            if self.health.syncing and not self.live_peers():
                await trio.sleep(0.5)  # nobody to bootstrap from yet: ask again soon

    async def _targets(self) -> list[str]:
        """Whom to exchange with this round: those that (re)appeared, else one live peer at
        random (while bootstrapping, one with the data if one is known)."""
        targets = list(dict.fromkeys(self._urgent))
        self._urgent.clear()
        if not targets:
            peers = self.live_peers()
            if self.health.syncing:  # bootstrap from a peer with the data, if one is known
                peers = [x for x in peers if not self._peer_syncing.get(x[0])] or peers
            if peers:
                targets = [self._rng.choice(peers)[0]]
            elif not self._lost and not self.health.syncing:
                # Nobody to be out of step with (no peer died without leaving): this
                # node is the whole cluster, and its data is current.
                await self.health.note_exchange(alone=True)
        return targets

    async def _exchange(self, node_id: str, address: Address) -> None:
        try:
            result = await self._exchanger.run(address, node_id)
        except Exception as exc:
            self._counters["exchange_failures"] += 1
            self._note(node_id, {"result": "failed", "error": type(exc).__name__})
            started_failed(exc, "exchange", self._counters, self._errors)
            log.debug("anti-entropy with %s failed: %s", node_id, exc)
            return
        self._note(node_id, _outcome(result))
        self._peer_syncing[node_id] = result.peer_syncing
        self._peer_stale[node_id] = result.peer_stale
        if not result.skipped:
            await self.health.note_exchange()
        elif self._only_stale_peers() and not self._lost and not self.health.syncing:
            # Every live peer is stale (out of replication until re-bootstrapped): we are
            # the part of the cluster that is in step, as a node alone is -- without this a
            # stale peer would make its healthy partner stale too, in time.
            await self.health.note_exchange(alone=True)
        if self.health.syncing and self._bootstrapped_by(result):
            await self.health.finish_bootstrap()
            log.info("bootstrap complete: %d records", self._local.tree.size)

    def _note(self, node_id: str, outcome: dict[str, object]) -> None:
        self.last_by_peer[node_id] = {"at_ms": self._local.store.clock.wall_ms(), **outcome}
        if len(self.last_by_peer) > limits.MAX_PEERS_SHOWN:  # bounded, whatever the churn
            del self.last_by_peer[next(iter(self.last_by_peer))]

    def _only_stale_peers(self) -> bool:
        """Whether every live peer said, in our last exchange with it, that it is stale."""
        peers = self.live_peers()
        return bool(peers) and all(self._peer_stale.get(node_id) for node_id, _ in peers)

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
        if trio.current_time() - self.health.started_at < limits.BOOTSTRAP_GRACE:
            return False
        return all(self._peer_syncing.get(node_id) for node_id, _ in self.live_peers())


def _outcome(result: ExchangeResult) -> dict[str, object]:
    """What an exchange that ran to its end did: `equal` (nothing differed), `synced` (the
    differing leaves were reconciled both ways) or `skipped` (the peer was stale, or
    bootstrapping and pulling the data itself)."""
    if result.skipped:
        return {
            "result": "skipped",
            "peer_syncing": result.peer_syncing,
            "peer_stale": result.peer_stale,
        }
    return {
        "result": "equal" if result.roots_equal else "synced",
        "roots_equal": result.roots_equal,
        "fetched": result.fetched,
        "pushed": result.pushed,
        "differing_leaves": result.differing_leaves,
    }
