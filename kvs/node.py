"""A KVS node: the one place that wires the parts together inside one Trio nursery.

    Node.run()
    ├── Store.writer      group-commit writer (LMDB)
    ├── Membership        SWIM over UDP + TCP push-pull on gossip_port (kvs/net/)
    ├── HTTP API          whatever HttpService it is given (kvs/server.py ApiServer)
    ├── housekeeping      TTL sweep, tombstone GC, periodic flush (durability: os)
    └── backups           cron-scheduled LMDB snapshots (backup_enabled; kvs/backup_service.py)

Parts get what they need (clock, rng, store, config) from here, never from globals, so the
same code runs in production and inside a deterministic simulation.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any, Protocol

import trio

from kvs.audit import AUDIT_DIR, AUDIT_KEYED, AuditLog, audit_keys, open_audit
from kvs.auth.service import AuthService, IssuedToken
from kvs.backup import ROOT_TOKEN_FILE
from kvs.backup_service import BackupService, BackupSettings
from kvs.clock import HybridLogicalClock, system_wall_ms
from kvs.config import Config, project
from kvs.memory import release_free_memory
from kvs.net.membership import Membership, SeedResolver
from kvs.net.messages import MemberInfo, State
from kvs.net.seeds import http_seed_resolver, tls_client_context
from kvs.net.swim import incarnation_at_start
from kvs.net.swim_settings import SwimSettings
from kvs.net.transport import RealTransport, Transport
from kvs.private_files import secure_dir, write_private
from kvs.store import (
    MAINTENANCE_BATCH,
    CommitGate,
    Delete,
    Outcome,
    Put,
    Store,
    StoreError,
    StoreSettings,
    Written,
)
from kvs.sync import SyncService, SyncSettings, bootstrap_needed

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0
STOP_GRACE = 10.0  # a graceful stop waits this long at most for API requests in flight


class HttpService(Protocol):
    """What a node runs to serve its API (kvs/server.py `ApiServer`); the node does not know
    what is behind it, so it depends on nothing above it."""

    async def run(
        self, node: Any, *, listen: bool, task_status: trio.TaskStatus[list[str]]
    ) -> None:
        """Serve `node` until it stops, reporting the bound URLs (none without `listen`)."""

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""


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
        api: HttpService | None = None,
        commit_gate: CommitGate | None = None,
    ) -> None:
        self.config = config
        self._commit_gate = commit_gate  # disk faults under the store: the simulator's seam
        self.api = api
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
        self._keyring = config.cluster_secrets
        self._store_in_thread = store_in_thread
        self.store: Store | Any = None
        self.http_addresses: list[str] = []
        self._started_at = 0.0
        self._shutdown = trio.Event()
        self._cancel_scope: trio.CancelScope | None = None
        self.backups = BackupService(
            node_id=self.node_id,
            env=lambda: self.store.lease_env(),
            settings=project(BackupSettings, config, backup_dir=config.backup_dir),
        )
        self.auth: AuthService | Any = None
        self.audit: AuditLog | None = None
        # How the root token created on a first start reaches its operator (besides the
        # 0600 file): the CLI prints it on a terminal. Never the log.
        self._show_root_token = show_root_token
        self.root_token_path = self.config.data_path / ROOT_TOKEN_FILE

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
    def cluster(self) -> _Cluster | None:
        """Membership and replication as the API shows them; None with clustering off."""
        if self.membership is None or self.sync is None:
            return None
        return _Cluster(self.membership, self.sync)

    @property
    def keyring(self) -> tuple[str, ...]:
        """The cluster secrets in force: the first sends and signs, all are accepted."""
        return self._keyring

    def reload_keyring(self, secrets: tuple[str, ...]) -> None:
        """Put a new keyring in force without a restart (SIGHUP): gossip, push-pull, sync,
        the seed lookup and tokens. Sessions already open keep their session keys. A node
        cannot go from keyed to unkeyed (or back) this way: ValueError, nothing changed."""
        if bool(secrets) != bool(self._keyring):
            raise ValueError("cluster_secret cannot be added or removed by a reload: restart")
        if self.membership is not None:
            self.membership.set_secrets(secrets)
        if self.sync is not None:
            self.sync.set_secrets(secrets)
        if self.auth is not None:
            self.auth.set_secrets(secrets)
        if self.audit is not None and self.audit.set_keys(
            audit_keys(secrets), self.clock.wall_ms()
        ):
            log.info("audit log: rekeyed under the keyring's first secret")
        self._keyring = secrets

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
        try:  # 0700, its files 0600: data an older version left readable is narrowed
            secure_dir(self.config.data_path, "data_dir")
        except OSError as exc:
            raise StoreError(f"cannot use data_dir {self.config.data_path}: {exc}") from None
        store = Store(
            self.config.data_path,
            clock=self.clock,
            new_uuid=self.new_uuid,
            settings=project(StoreSettings, self.config),
            in_thread=self._store_in_thread,
            commit_gate=self._commit_gate,
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

        `http=False` runs everything but the HTTP listener: tests and the simulator drive the
        API's app in process instead of through a socket."""
        self._started_at = trio.current_time()
        self._open_parts()
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
                    await self._start_cluster(nursery)
                # Before HTTP answers, so a node that is up has its root.token in place.
                issued = await self.auth.bootstrap_root()
                if issued is not None:
                    self._publish_root_token(issued)
                if self.api is not None:
                    self.http_addresses = await nursery.start(self._run_api, http)
                nursery.start_soon(self._housekeeping)
                if self.config.backup_enabled:
                    nursery.start_soon(self.backups.run_schedule)
                self._log_ready()
                task_status.started(self)
                ready = True
                await self._shutdown.wait()
                await self._stop_gracefully()
                nursery.cancel_scope.cancel()
        finally:
            self._close_parts()
            if ready:
                log.info("node %s stopped", self.node_id)

    def _open_parts(self) -> None:
        """The store, authentication and the audit log: what everything else stands on."""
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
            keys = audit_keys(self.config.cluster_secrets)
            self.audit = open_audit(
                self.config.data_path / AUDIT_DIR,
                node_id=self.node_id,
                keys=keys,
                sealed_before=self.store.get_system(AUDIT_KEYED) is True,
                now_ms=self.clock.wall_ms(),
                sync=self.config.durability == "fsync",
                in_thread=self._store_in_thread,
            )
            if keys and self.store.get_system(AUDIT_KEYED) is not True:
                self.store.set_system_now(AUDIT_KEYED, True)  # see kvs.audit.open_audit
            self.auth.audit_hook = self.audit_event

    def _close_parts(self) -> None:
        self.store.close()
        self.store = None
        if self.audit is not None:
            self.audit.close()
            self.audit = None

    async def _start_cluster(self, nursery: trio.Nursery) -> None:
        """Membership, then replication; a port that cannot be bound names its config key."""
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

    async def _run_api(
        self, listen: bool, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.api is not None
        await self.api.run(self, listen=listen, task_status=task_status)
        # The listener has stopped and requests in flight are answered: end the node.
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    async def _stop_gracefully(self) -> None:
        """Tell the peers we leave, and let the API answer what it has in flight (the
        listener stops accepting on the same event)."""
        log.info("node %s shutting down", self.node_id)
        if self.membership is not None:
            await self.membership.leave()  # peers mark us "left", not failed
        if self.api is not None:
            with trio.move_on_after(STOP_GRACE):
                await self.api.wait_idle()

    def _log_ready(self) -> None:
        log.info(
            "node %s ready: %s://%s:%d (data in %s)",
            self.node_id,
            "https" if self.config.tls_cert_file else "http",
            self.config.bind_address,
            self.config.port,
            self.config.data_path,
        )

    async def audit_event(self, action: str, user: str, target: str, detail: str = "") -> None:
        """Append to the tamper-evident log (when it is on); returns once durable."""
        if self.audit is not None:
            await self.audit.append(self.clock.wall_ms(), action, user, target, detail)

    async def client_write(
        self, ops: list[Put | Delete], user: str, detail: str = ""
    ) -> list[Outcome]:
        """A client's puts and deletes, in one transaction; then each that took effect is
        audited (with the log on) as `put` or `delete` by `user`. The one way the API
        writes keys, in this process or from an HTTP worker (kvs/api/writelink.py)."""
        outcomes = await self.store.write(ops)
        if self.audit is not None:
            for op, outcome in zip(ops, outcomes, strict=True):
                if isinstance(outcome, Written):
                    action = "delete" if isinstance(op, Delete) else "put"
                    await self.audit_event(action, user, op.key, detail)
        return outcomes

    async def recover_root(self, via: str) -> IssuedToken:
        """Admin recovery: a fresh root token, audited (`admin.recover`, with the token's id,
        never the token) and logged without it. `via` says how it was asked for."""
        issued, root = await self.auth.recover_root()
        self.auth.counters["admin_recoveries"] += 1
        await self.audit_event("admin.recover", root, via, f"token {issued.token_id}")
        log.warning(
            "admin recovery (%s): issued root token %s, valid until %d",
            via,
            issued.token_id,
            issued.expires_at,
        )
        return issued

    async def recover_offline(self) -> IssuedToken:
        """Admin recovery on a stopped node (`kvs admin recover`): open the store and the
        audit log, issue and audit the token, close them. The caller made sure that no
        process has the store open."""
        self._open_parts()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.store.writer)
                if self.audit is not None:
                    await nursery.start(self.audit.writer)
                issued = await self.recover_root("offline, on the node's host")
                nursery.cancel_scope.cancel()
        finally:
            self._close_parts()
        return issued

    def _publish_root_token(self, issued: IssuedToken) -> None:
        """Write the root token to <data_dir>/root.token (0600) and hand it to the console."""
        path = self.root_token_path
        write_private(path, issued.token + "\n")
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
        swim = project(SwimSettings, c)

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
            cluster_secret=self._keyring,
            rng=self.rng,
            nonce=self._nonce,
            wall_ms=self.clock.wall_ms,
            seeds=c.seed_nodes,
            resolve_seed=self._resolve_seed or self._seed_resolver(),
            persist_incarnation=persist_incarnation,
            known_peers=known_peers,
            persist_peers=persist_peers,
        )

    def _seed_resolver(self) -> SeedResolver:
        """Asks seeds over HTTP(S): a bare `host:port` over this node's own scheme, an https
        seed's certificate checked against `tls_ca_file` (or the system's store)."""
        c = self.config
        if c.tls_skip_verify and any(not s.startswith("http://") for s in c.seed_nodes):
            log.warning(
                "tls_skip_verify is on: the certificates of https seeds are NOT checked; anyone"
                " on the path can impersonate a seed (use tls_ca_file instead)"
            )
        tls = tls_client_context(
            str(c.file_path(c.tls_ca_file)) if c.tls_ca_file else None,
            skip_verify=c.tls_skip_verify,
        )
        return http_seed_resolver(
            lambda: self._keyring,
            self.clock.wall_ms,
            default_scheme="https" if c.tls_cert_file else "http",
            tls=tls,
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
            cluster_secret=self._keyring,
            settings=project(SyncSettings, c),
            rng=self.rng,
            nonce=self._nonce,
            live_peers=live_peers,
            syncing=bootstrap_needed(self.store, bool(c.seed_nodes)),
            chain=self.audit,
        )
        service.rebuild_tree()
        return service

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


class _Cluster:
    """The cluster's state as the API reads it (kvs/api/view.py ClusterView)."""

    def __init__(self, membership: Membership, sync: SyncService) -> None:
        self._membership = membership
        self._sync = sync

    def members_table(self, wall_ms: int) -> list[dict[str, object]]:
        return self._membership.table(wall_ms)

    def membership_stats(self) -> dict[str, Any]:
        return dict(self._membership.stats())

    def sync_stats(self) -> dict[str, Any]:
        return self._sync.stats()

    def alive_count(self) -> int:
        return self._membership.alive_count()

    def self_info(self) -> MemberInfo:
        return self._membership.core.me_info

    def refuse_cluster_info(self) -> None:
        self._membership.refused_cluster_info()

    def audit_witness(self) -> dict[str, Any] | None:
        witness = self._sync.witness
        return None if witness is None else witness.report()
