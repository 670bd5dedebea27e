"""Every setting of a node, declared once: its default, its rule (type, unit, bounds) and one
line of documentation. This is the only place a default is written.

The validator (`files.from_mapping`), the generated commented `config.yaml`
(`files.default_config_text`) and the table in `docs/configuration.md` (`files.settings_table`)
are all produced from the fields below; `tests/unit/test_config.py` fails when the table in
the docs drifts from them. Each part takes its own typed settings object (`SwimSettings`,
`SyncSettings`, `BackupSettings`), built by `project` from the fields of the same names.

Key names and meanings follow the Go KVS where it has them, so its config files keep working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kvs.config import rules as r
from kvs.net.messages import MAX_MEMBERS


@dataclass(frozen=True)
class Setting:
    rule: r.Rule
    doc: str  # one line, Markdown
    basic: bool  # written, not commented out, in a generated config file
    shown: str | None  # the default as the documentation names it, when not its value
    example: str | None  # the value a commented-out line suggests, when not the default


def setting(
    default: Any,
    rule: r.Rule,
    doc: str,
    *,
    basic: bool = False,
    shown: str | None = None,
    example: str | None = None,
) -> Any:
    """A Config field carrying its declaration (read back with `declared`)."""
    meta = {"setting": Setting(rule, doc, basic, shown, example)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Where each section of the generated file and the table begins: the key that opens it.
SECTIONS = {
    "node_id": "Identity and network",
    "data_dir": "Storage",
    "http_stall_timeout": "HTTP API",
    "clustering_enabled": "Cluster membership (SWIM)",
    "sync_interval": "Replication",
    "auth_enabled": "Security",
    "backup_enabled": "Backups",
    "log_level": "Logging",
}

_DAY = 86400.0
_MIB = 1024 * 1024


@dataclass
class Config:
    node_id: str = setting(
        "",
        r.NODE_ID,
        "This node's name. Required.",
        basic=True,
        shown="generated",
    )
    bind_address: str = setting(
        "127.0.0.1",
        r.ADDRESS,
        "Address to listen on; `0.0.0.0` for every interface (logs a warning if"
        " `auth_enabled: false`).",
        basic=True,
    )
    port: int = setting(8080, r.port(zero=False), "HTTP API port.", basic=True)
    gossip_port: int = setting(
        0,
        r.port(zero=True),
        "Cluster membership: UDP datagrams, and TCP on the same port for member-table"
        " exchanges. `0`: `port + 1`.",
        basic=True,
        shown="`port + 1`",
    )
    sync_port: int = setting(
        0,
        r.port(zero=True),
        "TCP port for replication. `0`: `port + 2`.",
        basic=True,
        shown="`port + 2`",
    )
    advertise_address: str = setting(
        "",
        r.ADVERTISE,
        "The address other nodes use to reach this one (set it when binding `0.0.0.0`;"
        " otherwise the host's outward address is guessed).",
        shown="`bind_address`",
        example="192.168.1.10",
    )
    seed_nodes: list[str] = setting(
        [],
        r.SEEDS,
        "HTTP API addresses of existing nodes: `https://host:port`, `http://host:port`, or"
        " `host:port` (as in the Go KVS: asked over `http`, or `https` when this node serves"
        " TLS itself). A joining node asks a seed for its gossip address (proving it holds the"
        " cluster secret; an `https` seed's certificate is checked against `tls_ca_file`),"
        " then joins; it retries with backoff until a seed answers, and rejoins through the"
        " seeds if it ever finds itself alone.",
        basic=True,
    )
    cluster_secret: str | list[str] = setting(
        "",
        r.KEYRING,
        "Shared by every node of a cluster; encrypts and authenticates gossip and sync (and"
        " signs tokens). A list is a keyring for rotation without downtime: the first secret"
        " is used to send and sign, all of them are accepted (`kill -HUP` reloads it; see"
        " docs/operations.md). Empty: node-to-node traffic is neither encrypted nor"
        " authenticated. Never logged; keep the file private.",
        basic=True,
        shown="generated",
    )

    data_dir: str = setting(
        "./data", r.PATH, "LMDB directory, relative to the config file's directory.", basic=True
    )
    durability: str = setting(
        "fsync",
        r.choice("fsync", "os"),
        "`fsync`: acknowledge a write once it is on disk (survives power loss). `os`: once it"
        " is in the OS cache (survives a process crash, not a power loss), flushed every"
        " second.",
        basic=True,
    )
    max_json_size: int = setting(
        _MIB,
        r.size(2),
        "Largest value, and largest request body for a single key (a `_batch` body may be up"
        " to 32 MiB).",
        basic=True,
    )
    compression_level: int = setting(
        3, r.integer(1, 22), "zstd level for values over 256 bytes.", basic=True
    )
    revision_history_enabled: bool = setting(
        True, r.BOOL, "Keep previous versions of each key.", basic=True
    )
    revision_history_depth: int = setting(
        3, r.integer(0, 1000), "How many previous versions to keep.", basic=True
    )
    tombstone_ttl: float = setting(
        7 * _DAY,
        r.POSITIVE_DURATION,
        "How long a delete is remembered. Replicas never accept tombstones older than this (so"
        " garbage collection is not undone); a replica away from the cluster for longer than"
        " this may miss deletes and should be re-bootstrapped (wipe its `data_dir` and let it"
        " join).",
        basic=True,
    )
    lmdb_map_size: int = setting(
        1 << 30,
        r.size(1 << 20),
        "Initial LMDB map size; it doubles automatically when full.",
        basic=True,
    )
    read_only: bool = setting(False, r.BOOL, "Refuse writes with `503`; reads work.", basic=True)

    http_stall_timeout: float = setting(
        20.0,
        r.POSITIVE_DURATION,
        "An HTTP client that stops reading a response (or a watch stream) is disconnected after"
        " this long without progress (the kernel's `TCP_USER_TIMEOUT`), so it can neither pin"
        " memory nor hold a graceful shutdown open.",
        basic=True,
    )
    http_header_timeout: float = setting(
        10.0,
        r.POSITIVE_DURATION,
        "A request's line and headers must arrive within this, counted from the connection's"
        " accept (first request) or from the first byte of a later one; a client too slow gets"
        " `408` and is disconnected.",
        basic=True,
    )
    http_body_timeout: float = setting(
        60.0,
        r.POSITIVE_DURATION,
        "A request's body must arrive within this after its headers (else `408`, and nothing"
        " is written).",
        basic=True,
    )
    http_body_budget: int = setting(
        32 * _MIB,
        r.size(_MIB),
        "Request bodies held in memory at once by all requests together. A request that would"
        " pass it gets `503` with `Retry-After: 1` and nothing is written; a body larger than"
        " the whole budget gets `413`.",
        basic=True,
    )
    http_max_connections: int = setting(
        1024,
        r.integer(1, 1_000_000),
        "Open HTTP connections at once (at most half the open-file limit); further ones wait"
        " in the kernel's backlog until one closes.",
        basic=True,
    )
    http_workers: int = setting(
        1,
        r.WORKERS,
        "HTTP processes serving the port (`SO_REUSEPORT`): 1 is the node alone; with more, the"
        " node supervises worker processes that answer reads from the shared LMDB store,"
        " send key writes to the node's writer as store ops, and pass everything else to the"
        " node (see [Operations](operations.md#http-workers)).",
        example="auto",
    )
    watch_buffer: int = setting(
        4096,
        r.integer(1, 10_000_000),
        "Events a watch stream may fall behind before the node disconnects it (see"
        " [Watching changes](reference.md#watching-changes)).",
    )

    clustering_enabled: bool = setting(
        True,
        r.BOOL,
        "Run cluster membership. `false`: a standalone node (no gossip port).",
        basic=True,
    )
    probe_interval: float = setting(
        0.5,
        r.POSITIVE_DURATION,
        "SWIM: each node pings one member this often (round-robin over a shuffled list).",
        basic=True,
    )
    probe_timeout: float = setting(
        0.25,
        r.POSITIVE_DURATION,
        "No ack by then: ask `indirect_checks` other members to ping it. Must be shorter than"
        " `probe_interval`.",
        basic=True,
    )
    indirect_checks: int = setting(
        3, r.integer(0, 16), "Members asked to probe on our behalf when a probe times out."
    )
    suspicion_mult: int = setting(
        3,
        r.integer(1, 100),
        "A suspect is declared dead after `suspicion_mult * max(1, log10(N)) * probe_interval`,"
        " a timeout that starts at `suspicion_max_timeout_mult` times that and shrinks as other"
        " members confirm the suspicion.",
        basic=True,
    )
    suspicion_max_timeout_mult: int = setting(
        6,
        r.integer(1, 100),
        "How many times the minimum a suspicion lasts when nobody else confirms it.",
    )
    gossip_interval: float = setting(
        0.2,
        r.POSITIVE_DURATION,
        "How often pending updates are sent to `gossip_nodes` random members (besides riding"
        " on pings and acks).",
    )
    gossip_nodes: int = setting(3, r.integer(1, 64), "Members each gossip round goes to.")
    retransmit_mult: int = setting(
        4,
        r.integer(1, 100),
        "Each update is sent about `retransmit_mult * log10(N+1)` times.",
    )
    push_pull_interval: float = setting(
        30.0,
        r.POSITIVE_DURATION,
        "Full member-table exchange over TCP with one random member (scaled up above 32"
        " members). The Go KVS keys `gossip_interval_min`/`gossip_interval_max` map onto this"
        " (their mean) when it is not set.",
        basic=True,
    )
    dead_member_retention: float = setting(
        600.0,
        r.POSITIVE_DURATION,
        "How long dead and departed members are remembered (so stale rumours cannot resurrect"
        " them).",
    )
    gossip_to_the_dead: float = setting(
        30.0,
        r.DURATION,
        "How long a member declared dead still receives gossip, so that it can hear the news"
        " and refute it if it is alive.",
    )
    awareness_max: int = setting(
        8,
        r.integer(1, 64),
        "Lifeguard's local health: a node that misses acks it should have had stretches its"
        " own probe interval and timeout up to this many times, instead of accusing peers.",
    )
    max_members: int = setting(
        MAX_MEMBERS,
        r.integer(1, MAX_MEMBERS),
        "Members known at once (dead and departed ones included); news of more is refused and"
        " counted until some are reaped.",
    )

    sync_interval: float = setting(
        5.0,
        r.POSITIVE_DURATION,
        "Anti-entropy: compare Merkle trees with one random live member this often (the Go"
        " KVS used 300 s). A member that (re)appears is synced with at once.",
        basic=True,
    )
    sync_throttle_delay: float = setting(
        0.0,
        r.DURATION,
        "Pause between the batches of an exchange (up to 1,024 Merkle leaves each): paces a"
        " bootstrap or a large repair so it does not swamp the peer serving it, e.g. `50ms`."
        " (The Go KVS's `throttle_delay_ms`, whole milliseconds, is read as this when this key"
        " is not set.)",
    )
    sync_max_connections: int = setting(
        64,
        r.integer(1, 100_000),
        "Inbound sync connections served at once; more are closed at once and counted"
        " (`refused_connections`).",
    )
    sync_snapshot_min_keys: int = setting(
        10_000,
        r.integer(0, 2**62),
        "A joining node copies a peer's whole data file (a *snapshot*, see"
        " [Replication](architecture.md#replication)) when the peer holds at least this many"
        " keys; below it, or with `0`, it takes the records one by one.",
    )
    max_clock_offset: float = setting(
        60.0,
        r.POSITIVE_DURATION,
        "A replicated record stamped further than this in the future is still taken (refusing"
        " it would break convergence) but logged and counted (`clock_offset_exceeded`): check"
        " that node's clock.",
    )

    auth_enabled: bool = setting(
        True,
        r.BOOL,
        "Users, tokens and permissions (see [security.md](security.md)). `false` opens"
        " everything (a loud warning at start-up when bound to a non-loopback address).",
        basic=True,
    )
    allow_anonymous_read: bool = setting(
        False,
        r.BOOL,
        'Requests without a token may read (keys whose "others" read bit is set, listings,'
        " `/members/`).",
        basic=True,
    )
    allow_anonymous_write: bool = setting(
        False,
        r.BOOL,
        'Requests without a token may write (new keys, keys whose "others" write bit is set).'
        " Deleting always needs a token.",
        basic=True,
    )
    rate_limiting_enabled: bool = setting(
        False,
        r.BOOL,
        "Per-user (per client IP when anonymous) sliding-window limit, in memory, per node.",
        basic=True,
    )
    rate_limit_requests: int = setting(
        1000,
        r.integer(1, 10**9),
        "At most this many requests per `rate_limit_window`; over it, `429` with `Retry-After`.",
        basic=True,
    )
    rate_limit_window: float = setting(
        1.0, r.POSITIVE_DURATION, "The rate limit's sliding window.", basic=True
    )
    tamper_logging_enabled: bool = setting(
        False,
        r.BOOL,
        "The tamper-evident audit log (SHA3-512 hash chain) in `<data_dir>/audit`.",
        basic=True,
    )
    tls_cert_file: str = setting(
        "",
        r.FILE,
        "Serve the HTTP API over TLS with this certificate chain (PEM). Needs `tls_key_file`.",
        shown="unset",
        example="cert.pem",
    )
    tls_key_file: str = setting(
        "",
        r.FILE,
        "The TLS private key (PEM). Needs `tls_cert_file`.",
        shown="unset",
        example="key.pem",
    )
    tls_ca_file: str = setting(
        "",
        r.FILE,
        "CA certificates (PEM bundle) this node trusts when it asks an `https://` seed for its"
        " gossip address, and that `kvs start`/`status`/`admin recover` trust when they reach"
        " this node. Unset: the system's CA store.",
        shown="unset",
        example="ca.pem",
    )
    tls_skip_verify: bool = setting(
        False,
        r.BOOL,
        "Do not check an `https://` seed's certificate at all (the Go KVS's"
        " `cluster_tls_skip_verify`). Anyone on the path can then read the cluster-info"
        " exchange: for tests only; logged as a warning at every start.",
    )
    root_token_lifetime: float = setting(
        86400.0,
        r.integer_duration(1, 365 * 86400),
        "Lifetime of a root token: the one made on a new cluster's first start and those"
        " `kvs admin recover` issues (see [Admin recovery](operations.md#admin-recovery)).",
    )

    backup_enabled: bool = setting(
        False,
        r.BOOL,
        "Take scheduled backups (see [Backups and restore](operations.md#backups-and-restore))."
        " `kvs backup now` works either way.",
        basic=True,
    )
    backup_schedule: str = setting(
        "0 0 * * *",
        r.CRON,
        "When, as a five-field cron expression in **UTC** (default: daily at midnight).",
        basic=True,
    )
    backup_path: str = setting(
        "./backups",
        r.PATH,
        "Where backup files go, relative to the config file's directory.",
        basic=True,
    )
    backup_retention: int = setting(
        7, r.integer(0, 36500), "Days to keep this node's backups; `0` keeps them all.", basic=True
    )

    log_level: str = setting(
        "info",
        r.choice("debug", "info", "warning", "error"),
        "Logs go to stderr.",
        basic=True,
    )
    log_format: str = setting(
        "text",
        r.choice("text", "json"),
        "`text`: one line per event for people (time, level, `[node_id]`, logger, message)."
        " `json`: one JSON object per line with `time` (UTC, ISO 8601), `level`, `node_id`,"
        " `logger`, `message` (and `exception` when there is one). Only the message is"
        " written, never a record's arguments, so secrets cannot leak through it.",
        basic=True,
    )

    # where the config came from: relative paths are resolved against it (not a setting)
    source: str | None = field(default=None, compare=False, repr=False)

    @property
    def data_path(self) -> Path:
        return self.file_path(self.data_dir)

    def file_path(self, name: str) -> Path:
        """A path named in the config, relative to the config's directory."""
        base = Path(self.source).resolve().parent if self.source else Path.cwd()
        return (base / name).resolve()

    @property
    def backup_dir(self) -> Path:
        return self.file_path(self.backup_path)

    @property
    def effective_advertise_address(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        if self.bind_address in ("0.0.0.0", "::"):
            return _guess_reachable_address()
        return "127.0.0.1" if self.bind_address == "localhost" else self.bind_address

    @property
    def cluster_secrets(self) -> tuple[str, ...]:
        """The keyring: () without a secret; the first one sends and signs, all receive."""
        secret = self.cluster_secret
        if isinstance(secret, str):
            return (secret,) if secret else ()
        return tuple(secret)

    @property
    def primary_secret(self) -> str:
        """The keyring's first secret ("" without one): what this node sends and signs with,
        and what keys its audit chain and admin recovery."""
        return self.cluster_secrets[0] if self.cluster_secrets else ""

    @property
    def effective_gossip_port(self) -> int:
        return self.gossip_port or self.port + 1

    @property
    def effective_sync_port(self) -> int:
        return self.sync_port or self.port + 2

    def __repr__(self) -> str:  # never let the secret reach a log line through repr()
        shown = {
            f.name: (
                "<hidden>"
                if f.name == "cluster_secret" and getattr(self, f.name)
                else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
            if f.repr
        }
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def declared() -> list[tuple[dataclasses.Field[Any], Setting]]:
    """Every setting, in declaration order, with its declaration."""
    return [
        (f, f.metadata["setting"]) for f in dataclasses.fields(Config) if "setting" in f.metadata
    ]


def default_of(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


T = TypeVar("T")


def project(part: type[T], config: Config, **derived: Any) -> T:
    """A part's settings object, taken from the config's fields of the same names (and
    `derived` values the config computes, such as resolved paths). A part's field with no
    setting of its name is an error here, at start-up, not a silent default."""
    values = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(part)
        if f.name not in derived  # type: ignore[arg-type]
    }
    return part(**values, **derived)


def _guess_reachable_address() -> str:
    """This host's outward-facing address (a UDP "connect" only looks up a route; nothing is
    sent). Falls back to loopback on a machine with no route at all."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
