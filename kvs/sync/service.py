"""SyncService: replication as one object a node creates, runs and asks (see `kvs.sync`).

    SyncService.run()
    ├── server        (server.py)       answers peers on sync_port
    ├── anti-entropy  (antientropy.py)  when and with whom to exchange; each exchange
    │                 (exchange.py)     performs what the pure reconciler decides (reconcile.py)
    ├── push links    (push.py)         one per live peer: every local write, batched
    └── witness       (witness.py)      audit chain heads, on each anti-entropy session

Around them: our tree and store reads by leaf (local.py), records taken from peers
(intake.py), syncing and stale modes (health.py), sessions (session.py), numbers (limits.py).
This class only wires them: it follows the store's commits and membership's changes, and
gathers what /cluster/stats and /metrics show.

Fatal, on purpose: the listening socket failing (no peer could reach us any more) and the
store's writer failing (the node's own nursery owns that task). Everything a peer can make
fail ends one connection or one exchange, and is counted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import trio

from kvs.net.codec import derive_keys
from kvs.net.messages import Address, MemberChanged
from kvs.net.transport import Transport
from kvs.store import Change, Store
from kvs.sync.antientropy import AntiEntropy, LivePeers
from kvs.sync.exchange import Exchanger, ExchangeResult
from kvs.sync.health import Health
from kvs.sync.intake import Intake
from kvs.sync.limits import SyncSettings
from kvs.sync.local import LocalReplica
from kvs.sync.merkle import MerkleTree
from kvs.sync.push import PushLinks
from kvs.sync.server import SyncServer
from kvs.sync.session import Dialer
from kvs.sync.witness import ChainSource, Witness


class SyncService:
    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        transport: Transport,
        bind: Address,
        cluster_secret: str | Sequence[str],
        settings: SyncSettings,
        rng: random.Random,
        nonce: Callable[[], bytes],
        live_peers: LivePeers,
        syncing: bool = False,
        chain: ChainSource | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.transport = transport
        self.bind = bind
        self.settings = settings
        self.counters: Counter[str] = Counter()
        keys = derive_keys(cluster_secret, "sync")
        counters = self.counters
        self.local = LocalReplica(store)
        self.health = Health(
            store, settings, counters, syncing=syncing, on_stale=lambda: self.push.clear()
        )
        self.intake = Intake(store, settings, counters)
        self._dialer = dialer = Dialer(transport, keys, nonce, counters)
        self.push = PushLinks(store=store, dialer=dialer, health=self.health, counters=counters)
        self.server = SyncServer(
            local=self.local,
            health=self.health,
            intake=self.intake,
            keys=keys,
            nonce=nonce,
            settings=settings,
            counters=counters,
        )
        self.exchanger = Exchanger(
            local=self.local,
            health=self.health,
            intake=self.intake,
            dialer=dialer,
            settings=settings,
            counters=counters,
        )
        self.anti_entropy = AntiEntropy(
            node_id=node_id,
            exchanger=self.exchanger,
            local=self.local,
            health=self.health,
            live_peers=live_peers,
            rng=rng,
            settings=settings,
            counters=counters,
        )
        # Audit chain heads, exchanged on every anti-entropy session (witness.py).
        self.witness = (
            None
            if chain is None
            else Witness(node_id=node_id, chain=chain, store=store, counters=counters)
        )
        self.server.witness = self.exchanger.witness = self.witness

    def set_secrets(self, cluster_secret: str | Sequence[str]) -> None:
        """A keyring reload: new sessions seal with the first secret and accept any; open
        sessions keep the key they were opened with."""
        keys = derive_keys(cluster_secret, "sync")
        self._dialer.keys = keys
        self.server.keys = keys

    # --- what the node and the API read ------------------------------------------------------------

    @property
    def tree(self) -> MerkleTree:
        return self.local.tree

    @property
    def syncing(self) -> bool:
        """Bootstrapping: reads are served, writes refused, until the data is here."""
        return self.health.syncing

    @syncing.setter
    def syncing(self, value: bool) -> None:
        self.health.syncing = value

    @property
    def stale(self) -> bool:
        """Cut off longer than tombstone_ttl: replicates nothing, refuses writes."""
        return self.health.stale

    def stats(self) -> dict[str, Any]:
        peers = self.push.peers
        return {
            "root": self.tree.root_hex(),
            "keys": self.tree.size,
            "syncing": self.syncing,
            "stale": self.stale,
            "last_exchange_ms": self.health.last_exchange_ms,
            "bootstrap": self.health.progress(trio.current_time()),
            "inbound_connections": self.server.inbound,
            "peers": sorted(peers),
            "push_queue": {k: len(v.pending) for k, v in sorted(peers.items())},
            "exchanges_by_peer": dict(sorted(self.anti_entropy.last_by_peer.items())),
            "counters": dict(sorted(self.counters.items())),
        }

    # --- the driver's contract (kvs/sync/__init__.py) ----------------------------------------------

    def rebuild_tree(self) -> None:
        """Build the tree from the store (summaries only, no values), then follow every write."""
        self.local.rebuild()
        if self._on_changes not in self.store.listeners:  # rebuilt: still told once
            self.store.listeners.append(self._on_changes)

    def _on_changes(self, changes: list[Change]) -> None:
        self.local.follow(changes)
        for change in changes:
            if change.local and change.new is not None and not self.health.stale:
                self.push.enqueue(change.new.key)

    def on_member_change(self, change: MemberChanged) -> None:
        """Start pushing to a peer that came up (and sync with it at once); stop for one gone."""
        if change.member.node_id == self.node_id:
            return
        self.push.on_member_change(change)
        self.anti_entropy.on_member_change(change)

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.health.started_at = trio.current_time()
        self.exchanger.discard_partial_copy()
        await self.health.begin()
        async with trio.open_nursery() as nursery:
            self.push.nursery = nursery
            address = await nursery.start(self.transport.serve_stream, self.bind, self.server.serve)
            nursery.start_soon(self.anti_entropy.run)
            # A bootstrap writes all over the data file, and every page it touches would stay
            # in our RSS (see Store.release_mapped_pages): let them go after every commit.
            self.store.release_pages_after_commit = self.syncing
            task_status.started(address)

    # --- for tests and tools -------------------------------------------------------------------------

    async def exchange(self, address: Address) -> ExchangeResult:
        """One anti-entropy exchange with the peer at `address`, now."""
        return await self.exchanger.run(address)

    async def accept(self, raw_records: list[bytes]) -> int:
        """Validate and merge records from a peer (see `Intake.accept`)."""
        return await self.intake.accept(raw_records)
