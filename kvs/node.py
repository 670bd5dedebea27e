"""A KVS node: the one place that wires the parts together inside one Trio nursery.

    Node.run()
    ├── Store.writer      group-commit writer (LMDB)
    ├── Membership        SWIM over UDP + TCP push-pull on gossip_port (kvs/net/)
    ├── HTTP API          Quart-Trio app served by hypercorn.trio.serve
    ├── housekeeping      TTL sweep, tombstone GC, periodic flush (durability: os)
    └── backups           cron-scheduled LMDB snapshots (backup_enabled; kvs/backup_service.py)

Parts get what they need (clock, rng, store, config) from here, never from globals, so the
same code runs in production and inside a deterministic simulation.
"""

from __future__ import annotations

import logging
import os
import random
import resource
from collections.abc import Callable
from typing import Any

import trio

from kvs.api import create_app
from kvs.api.front import HTTP_GRACE, HttpFront
from kvs.api.kv import batch_body_limit
from kvs.api.server import FrontConfig, HttpLimits, HttpStats, serve_http
from kvs.audit import AUDIT_DIR, AuditLog
from kvs.auth.service import AuthService, IssuedToken
from kvs.backup_service import BackupService, BackupSettings
from kvs.clock import HybridLogicalClock, system_wall_ms
from kvs.config import Config
from kvs.memory import release_free_memory
from kvs.net.membership import Membership, SeedResolver
from kvs.net.messages import MemberInfo, State
from kvs.net.seeds import http_seed_resolver
from kvs.net.swim import SwimConfig, incarnation_at_start
from kvs.net.transport import RealTransport, Transport
from kvs.store import MAINTENANCE_BATCH, Store
from kvs.sync import SyncService, SyncSettings, bootstrap_needed

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0


class Node:
    def __init__(
        self,
        config: Config,
        *,
        wall_ms: Callable[[], int] = system_wall_ms,
        rng: random.Random | None = None,
        store_in_thread: bool = True,
        transport: Transport | None = None,
        resolve_seed: SeedResolver | None = None,
        show_root_token: Callable[[IssuedToken, str], None] | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        # A node given an rng (tests, the simulator) takes every random choice from it, nonces
        # included, so a seed replays exactly; a production node uses the OS's entropy.
        self.rng = rng or random.Random(os.urandom(16))
        self._nonce: Callable[[], bytes] = (
            (lambda: self.rng.randbytes(16)) if rng else (lambda: os.urandom(16))
        )
        self.transport: Transport = transport or RealTransport()
        self._resolve_seed = resolve_seed
        self.membership: Membership | None = None
        self.sync: SyncService | None = None
        self.clock = HybridLogicalClock(wall_ms)
        self._store_in_thread = store_in_thread
        self.store: Store | Any = None
        self.http_addresses: list[str] = []
        self.app: Any = None
        self._started_at = 0.0
        self._shutdown = trio.Event()
        self._cancel_scope: trio.CancelScope | None = None
        self._http_front: HttpFront | None = None
        self.http_stats = HttpStats()
        # The process's open-file limit (the CLI raises and sets it; tests keep the default).
        self.file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.backups = BackupService(
            node_id=self.node_id,
            env=lambda: self.store.lease_env(),
            settings=BackupSettings(
                enabled=config.backup_enabled,
                schedule=config.backup_schedule,
                directory=config.backup_dir,
                retention_days=config.backup_retention,
            ),
        )
        self.auth: AuthService | Any = None
        self.audit: AuditLog | None = None
        # How the root token created on a first start reaches its operator (besides the
        # 0600 file): the CLI prints it on a terminal. Never the log.
        self._show_root_token = show_root_token
        self.root_token_path = self.config.data_path / "root.token"

    # --- state the API reads ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self.config.read_only:
            return "read-only"
        if self.sync is not None and self.sync.syncing:
            return "syncing"
        if self.sync is not None and self.sync.stale:
            return "stale"
        return "normal"

    @property
    def stopping(self) -> trio.Event:
        """Set once a graceful shutdown begins (long-lived streams end on it)."""
        return self._shutdown

    def uptime_s(self) -> float:
        return trio.current_time() - self._started_at

    def new_uuid(self) -> str:
        """A version-4 UUID from the node's rng: `str(uuid.UUID(int=bits, version=4))`,
        formatted directly (2.5x faster; every write needs one)."""
        bits = self.rng.getrandbits(128)
        # Set the version (4) and variant (RFC 4122) fields as uuid.UUID(version=4) does.
        bits = bits & ~(0xF000 << 64 | 0xC000 << 48) | 0x4000 << 64 | 0x8000 << 48
        h = bits.to_bytes(16, "big").hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    # --- lifecycle ------------------------------------------------------------------------------

    def open_store(self) -> Store:
        """Open LMDB and the node identity (raises StoreError for an unusable data_dir)."""
        store = Store(
            self.config.data_path,
            clock=self.clock,
            new_uuid=self.new_uuid,
            map_size=self.config.lmdb_map_size,
            durability=self.config.durability,
            compression_level=self.config.compression_level,
            history_depth=self.config.revision_history_depth
            if self.config.revision_history_enabled
            else 0,
            in_thread=self._store_in_thread,
        )
        store.ensure_identity(self.node_id, self.clock.wall_ms())
        return store

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown: stop taking HTTP requests, finish those in flight, stop."""
        self._shutdown.set()

    def stop_now(self) -> None:
        """Cancel everything at once (a second Ctrl-C). Committed writes are safe in LMDB."""
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def run(
        self, *, http: bool = True, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until shut down; report readiness only once every listener is bound.

        `http=False` runs everything but the HTTP listener: tests and the simulator drive
        `self.app` in process instead of through a socket."""
        self._started_at = trio.current_time()
        if self.store is None:
            self.store = self.open_store()
        self.auth = AuthService(
            self.config,
            self.store,
            wall_ms=self.clock.wall_ms,
            monotonic=trio.current_time,
            new_uuid=self.new_uuid,
            nonce=self._nonce,
        )
        if self.config.tamper_logging_enabled:
            self.audit = AuditLog(
                self.config.data_path / AUDIT_DIR,
                node_id=self.node_id,
                sync=self.config.durability == "fsync",
                in_thread=self._store_in_thread,
            )
            self.auth.audit_hook = self.audit_event
        # "stopped" is logged only after "ready": a node that fails to bind must leave just
        # the CLI's one-line error on stderr, not a misleading lifecycle line before it.
        ready = False
        try:
            async with trio.open_nursery() as nursery:
                self._cancel_scope = nursery.cancel_scope
                await nursery.start(self.store.writer)
                if self.audit is not None:
                    await nursery.start(self.audit.writer)
                if self.config.clustering_enabled:
                    self.membership = await self._make_membership()
                    try:
                        await nursery.start(self.membership.run)
                    except OSError as exc:
                        exc.config_key = "gossip_port"  # type: ignore[attr-defined]
                        raise
                    self.sync = self._make_sync()
                    self.membership.listeners.append(self.sync.on_member_change)
                    try:
                        await nursery.start(self.sync.run)
                    except OSError as exc:
                        exc.config_key = "sync_port"  # type: ignore[attr-defined]
                        raise
                self.app = create_app(self)
                # Before HTTP answers, so a node that is up has its root.token in place.
                issued = await self.auth.bootstrap_root()
                if issued is not None:
                    self._publish_root_token(issued)
                if http:
                    self.http_addresses = await nursery.start(self._serve_http, self.app)
                nursery.start_soon(self._housekeeping)
                if self.config.backup_enabled:
                    nursery.start_soon(self.backups.run_schedule)
                log.info(
                    "node %s ready: %s://%s:%d (data in %s)",
                    self.node_id,
                    "https" if self.config.tls_cert_file else "http",
                    self.config.bind_address,
                    self.config.port,
                    self.config.data_path,
                )
                task_status.started(self)
                ready = True
                await self._shutdown.wait()
                log.info("node %s shutting down", self.node_id)
                if self.membership is not None:
                    await self.membership.leave()  # peers mark us "left", not failed
                if http and self._http_front is not None:
                    # Hypercorn stops accepting (the same event is its shutdown trigger);
                    # answer every request already in flight, then stop everything.
                    with trio.move_on_after(HTTP_GRACE):
                        await self._http_front.wait_idle()
                nursery.cancel_scope.cancel()
        finally:
            self.store.close()
            self.store = None
            if self.audit is not None:
                self.audit.close()
                self.audit = None
            if ready:
                log.info("node %s stopped", self.node_id)

    async def audit_event(self, action: str, user: str, target: str, detail: str = "") -> None:
        """Append to the tamper-evident log (when it is on); returns once durable."""
        if self.audit is not None:
            await self.audit.append(self.clock.wall_ms(), action, user, target, detail)

    def _publish_root_token(self, issued: IssuedToken) -> None:
        """Write the root token to <data_dir>/root.token (0600) and hand it to the console."""
        path = self.root_token_path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(issued.token + "\n")
        if self._show_root_token is not None:
            self._show_root_token(issued, str(path))

    async def _make_membership(self) -> Membership:
        """Membership for this node. The incarnation rises on every start (and is persisted
        first), so a restarted node out-ranks any lingering rumour that it is dead. One that
        cannot rise (see `incarnation_at_start`) starts again from 1: a node must start from
        whatever it persisted."""
        c = self.config
        stored = self.store.get_system("incarnation")
        incarnation, discarded = incarnation_at_start(stored)
        if discarded:
            log.warning(
                "the persisted incarnation (%s) leaves no room to refute rumours about this "
                "node; starting again from %d (peers' rumours are out-ranked by refutation)",
                str(stored)[:40],
                incarnation,
            )
        await self.store.put_system("incarnation", incarnation)
        host = c.effective_advertise_address
        identity = self.store.identity
        assert identity is not None
        me = MemberInfo(
            node_id=self.node_id,
            joined_timestamp=identity.joined_timestamp,
            incarnation=incarnation,
            gossip=(host, c.effective_gossip_port),
            sync=(host, c.effective_sync_port),
            http=(host, c.port),
        )
        swim = SwimConfig(
            probe_interval=c.probe_interval,
            probe_timeout=c.probe_timeout,
            indirect_checks=c.indirect_checks,
            suspicion_mult=c.suspicion_mult,
            suspicion_max_timeout_mult=c.suspicion_max_timeout_mult,
            gossip_interval=c.gossip_interval,
            gossip_nodes=c.gossip_nodes,
            retransmit_mult=c.retransmit_mult,
            push_pull_interval=c.push_pull_interval,
            dead_retention=c.dead_member_retention,
        )

        async def persist_incarnation(value: int) -> None:
            await self.store.put_system("incarnation", value)

        async def persist_peers(addresses: list[tuple[str, int]]) -> None:
            await self.store.put_system("peers", [list(a) for a in addresses])

        known_peers = _known_peers(self.store.get_system("peers"))

        return Membership(
            me=me,
            config=swim,
            transport=self.transport,
            bind=(c.bind_address, c.effective_gossip_port),
            cluster_secret=c.cluster_secret,
            rng=self.rng,
            nonce=self._nonce,
            seeds=c.seed_nodes,
            resolve_seed=self._resolve_seed
            or http_seed_resolver(c.cluster_secret, self.clock.wall_ms),
            persist_incarnation=persist_incarnation,
            known_peers=known_peers,
            persist_peers=persist_peers,
        )

    def _make_sync(self) -> SyncService:
        """Replication for this node. A node that starts empty with seeds to join must first
        copy the cluster's data (and one restarted before it finished must go on): until
        then it is "syncing" and refuses writes."""
        c = self.config
        membership = self.membership
        assert membership is not None

        def live_peers() -> list[tuple[str, tuple[str, int]]]:
            return [
                (node_id, m.info.sync)
                for node_id, m in sorted(membership.core.members.items())
                if node_id != self.node_id and m.state is State.ALIVE
            ]

        service = SyncService(
            node_id=self.node_id,
            store=self.store,
            transport=self.transport,
            bind=(c.bind_address, c.effective_sync_port),
            cluster_secret=c.cluster_secret,
            settings=SyncSettings(
                sync_interval=c.sync_interval,
                tombstone_ttl_ms=int(c.tombstone_ttl * 1000),
                max_value_size=c.max_json_size,
                max_clock_offset_ms=int(c.max_clock_offset * 1000),
                throttle_delay=c.sync_throttle_delay,
                max_connections=c.sync_max_connections,
                snapshot_min_keys=c.sync_snapshot_min_keys,
            ),
            rng=self.rng,
            nonce=self._nonce,
            live_peers=live_peers,
            syncing=bootstrap_needed(self.store, bool(c.seed_nodes)),
        )
        service.rebuild_tree()
        return service

    async def _serve_http(
        self, app: Any, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        c = self.config
        hc = FrontConfig()
        hc.stall_timeout = c.http_stall_timeout
        hc.bind = [f"{c.bind_address}:{c.port}"]
        hc.accesslog = None
        hc.errorlog = logging.getLogger("kvs.http")
        if c.tls_cert_file:
            hc.certfile = str(c.file_path(c.tls_cert_file))
            hc.keyfile = str(c.file_path(c.tls_key_file))
        limits = HttpLimits(
            header_timeout=c.http_header_timeout,
            body_timeout=c.http_body_timeout,
            max_connections=self._connection_cap(),
            graceful_timeout=HTTP_GRACE,
        )
        self._http_front = HttpFront(
            app,
            body_budget=c.http_body_budget,
            max_body=batch_body_limit(c),
            stats=self.http_stats,
        )
        await serve_http(
            self._http_front,
            hc,
            limits,
            self.http_stats,
            shutdown_trigger=self._shutdown.wait,
            task_status=task_status,
        )
        # The listener has stopped and requests in flight are answered: end the node.
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def _connection_cap(self) -> int:
        """http_max_connections, lowered to what the open-file limit leaves room for: half
        of it, the rest for LMDB, gossip, sync peers, backups and the log."""
        cap = self.config.http_max_connections
        room = max(16, (self.file_limit - 64) // 2)
        if room < cap:
            log.warning(
                "http_max_connections lowered from %d to %d: the open-file limit is %d",
                cap,
                room,
                self.file_limit,
            )
        return min(cap, room)

    async def sweep(self) -> int:
        """Expire what is due and collect old tombstones, all of it, a bounded transaction
        at a time (each one blocks the event loop while it runs); returns how many."""
        ttl_ms = int(self.config.tombstone_ttl * 1000)
        removed = step = await self.store.maintain(tombstone_ttl_ms=ttl_ms)
        while step >= MAINTENANCE_BATCH:  # a full transaction: more may be due
            step = await self.store.maintain(tombstone_ttl_ms=ttl_ms)
            removed += step
        return removed

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(HOUSEKEEPING_INTERVAL)
            removed = await self.sweep()
            if removed:
                log.debug("housekeeping removed %d expired records and old tombstones", removed)
            release_free_memory()  # what the last second's requests and peers freed
            if self.config.durability == "os":
                await trio.to_thread.run_sync(self.store.sync_to_disk)


def _known_peers(stored: Any) -> list[tuple[str, int]]:
    """The peers' addresses persisted by the last run, each that is one (an entry that is
    not -- whatever wrote it -- is skipped: a node starts from whatever it persisted)."""
    peers = []
    for entry in stored if isinstance(stored, list) else []:
        if (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and type(entry[1]) is int
            and 0 < entry[1] <= 65535
        ):
            peers.append((entry[0], entry[1]))
    return peers
