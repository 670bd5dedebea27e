"""What the HTTP API sees of a node: the parts it reads and the few operations it calls.

The API never holds the `Node` itself (kvs/node.py composes the parts and owns the nursery;
it does not know the API exists): every endpoint module is typed against `NodeView`, and
the cluster's state reaches it through `ClusterView`, so a reader can see at a glance all
the API can touch, and a test can hand it a narrower stand-in."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

    from kvs.audit import AuditLog
    from kvs.auth.service import AuthService, IssuedToken
    from kvs.backup_service import BackupService
    from kvs.clock import HybridLogicalClock
    from kvs.config import Config
    from kvs.net.messages import MemberInfo
    from kvs.store import Delete, Outcome, Put, Store


class ClusterView(Protocol):
    """Membership and replication as the API shows them (absent with clustering off)."""

    def members_table(self, wall_ms: int) -> list[dict[str, object]]:
        """The member table of `GET /members/`."""

    def membership_stats(self) -> dict[str, Any]:
        """Gossip counters, drop reasons, local health (`GET /cluster/stats`, /metrics)."""

    def sync_stats(self) -> dict[str, Any]:
        """Replication: Merkle root and size, mode, push queues, counters."""

    def alive_count(self) -> int: ...

    def self_info(self) -> MemberInfo:
        """This node as its peers know it (addresses for `GET /cluster/info`)."""

    def refuse_cluster_info(self) -> None:
        """Count a `/cluster/info` asked without proof of the cluster secret."""

    def audit_witness(self) -> dict[str, Any] | None:
        """What peers reported of their audit chains and of ours (kvs/sync/witness.py),
        or None with the audit log off."""


class NodeView(Protocol):
    """A node, as far as the HTTP API is concerned."""

    config: Config
    store: Store
    auth: AuthService
    clock: HybridLogicalClock
    backups: BackupService

    @property
    def node_id(self) -> str: ...

    @property
    def keyring(self) -> tuple[str, ...]:
        """The cluster secrets in force (reloadable): the first sends, all are accepted."""

    @property
    def audit(self) -> AuditLog | None:
        """The tamper-evident log, when it is on."""

    @property
    def cluster(self) -> ClusterView | None:
        """Membership and replication, or None with clustering off."""

    @property
    def mode(self) -> str:
        """normal, read-only, syncing or stale."""

    @property
    def stopping(self) -> trio.Event:
        """Set once a graceful shutdown begins (long-lived streams end on it)."""

    def uptime_s(self) -> float: ...

    def new_uuid(self) -> str: ...

    async def audit_event(self, action: str, user: str, target: str, detail: str = "") -> None:
        """Append to the tamper-evident log (when it is on); returns once durable."""

    async def client_write(
        self, ops: list[Put | Delete], user: str, detail: str = ""
    ) -> list[Outcome]:
        """A client's puts and deletes in one transaction, each that took effect audited;
        returns once durable (raises StoreError when the disk refused)."""

    async def recover_root(self, via: str) -> IssuedToken:
        """Admin recovery: a fresh root token, audited (kvs/api/admin.py checks the proof)."""
