"""Node configuration: one dataclass, loaded from YAML, validated with one-line errors.

Key names and meanings follow the Go KVS where it has them, so its config files keep
working; keys for features still being built are accepted and documented as such.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kvs.model import parse_duration

DEFAULT_CONFIG_NAME = "config.yaml"


class ConfigError(Exception):
    """A bad config value. `str()` is one line naming the file and key."""

    def __init__(self, key: str, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.key = key
        self.path = str(path) if path else None
        where = f"{self.path}: " if self.path else ""
        shown = key if key.isprintable() else repr(key)  # a key with a line break stays one line
        super().__init__(f"{where}{shown}: {message}")


@dataclass
class Config:
    node_id: str = ""
    bind_address: str = "127.0.0.1"
    port: int = 8080
    gossip_port: int = 0  # 0: port + 1
    sync_port: int = 0  # 0: port + 2
    data_dir: str = "./data"
    seed_nodes: list[str] = field(default_factory=list)
    read_only: bool = False
    log_level: str = "info"
    cluster_secret: str = ""
    http_stall_timeout: float = 20.0  # a client that stops reading is dropped after this long
    http_header_timeout: float = 10.0  # a request's line and headers must arrive within this
    http_body_timeout: float = 60.0  # a request's body must arrive within this after its head
    http_body_budget: int = 32 * 1024 * 1024  # request bodies held in memory at once, all told
    http_max_connections: int = 1024  # open HTTP connections; more wait in the kernel's backlog

    # storage
    max_json_size: int = 1024 * 1024
    compression_level: int = 3
    revision_history_enabled: bool = True
    revision_history_depth: int = 3
    tombstone_ttl: float = 7 * 86400.0
    lmdb_map_size: int = 1 << 30
    durability: str = "fsync"  # fsync: survives power loss; os: survives a process crash

    # cluster membership (SWIM over UDP on gossip_port; push-pull over TCP on the same port)
    clustering_enabled: bool = True
    advertise_address: str = ""  # what peers use to reach us; default: bind_address
    probe_interval: float = 0.5
    probe_timeout: float = 0.25
    indirect_checks: int = 3
    suspicion_mult: int = 3
    suspicion_max_timeout_mult: int = 6
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    retransmit_mult: int = 4
    push_pull_interval: float = 30.0
    dead_member_retention: float = 600.0

    # replication
    sync_interval: float = 5.0
    max_clock_offset: float = 60.0  # a peer's records further ahead than this are logged
    sync_throttle_delay: float = 0.0  # pause between batches of an exchange (bootstrap pacing)
    sync_max_connections: int = 64  # inbound sync connections at once; more are refused
    sync_snapshot_min_keys: int = 10_000  # bootstrap by snapshot from this many keys (0: never)

    # watch streams (issue 6, client/watch): a watcher further behind than this many
    # events is disconnected (it resumes with since=) instead of buffering without bound
    watch_buffer: int = 4096

    # security (issue 5: auth, rate limits, tamper-evident log, TLS; README "Security")
    auth_enabled: bool = True
    allow_anonymous_read: bool = False
    allow_anonymous_write: bool = False
    rate_limiting_enabled: bool = False
    rate_limit_requests: int = 1000
    rate_limit_window: float = 1.0
    tamper_logging_enabled: bool = False
    tls_cert_file: str = ""
    tls_key_file: str = ""

    # operations (issue 6): backups (kvs/backup.py) and log output
    backup_enabled: bool = False
    backup_schedule: str = "0 0 * * *"  # cron, UTC: daily at midnight
    backup_path: str = "./backups"  # relative to the config file's directory
    backup_retention: int = 7  # days; 0 keeps every backup
    log_format: str = "text"  # text: for people; json: one object per line

    # where the config came from: data_dir is resolved relative to it
    source: str | None = field(default=None, compare=False, repr=False)

    @property
    def data_path(self) -> Path:
        base = Path(self.source).resolve().parent if self.source else Path.cwd()
        return (base / self.data_dir).resolve()

    def file_path(self, name: str) -> Path:
        """A file named in the config (TLS), relative to the config's directory."""
        base = Path(self.source).resolve().parent if self.source else Path.cwd()
        return (base / name).resolve()

    @property
    def backup_dir(self) -> Path:
        base = Path(self.source).resolve().parent if self.source else Path.cwd()
        return (base / self.backup_path).resolve()

    @property
    def effective_advertise_address(self) -> str:
        if self.advertise_address:
            return self.advertise_address
        if self.bind_address in ("0.0.0.0", "::"):
            return _guess_reachable_address()
        return "127.0.0.1" if self.bind_address == "localhost" else self.bind_address

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


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string like `1MiB`, `512KB`, `64GiB`."""
    if isinstance(value, bool):
        raise ValueError("must be a size in bytes (1048576) or a string like '1MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(
        f"{value!r} is not a size: use bytes (1048576) or a number with a unit (1MiB, 512KB, 64GiB)"
    )


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _check_int(lo: int, hi: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return check


def _check_port(allow_zero: bool) -> Any:
    return _check_int(0 if allow_zero else 1, 65535)


def _check_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _check_node_id(value: Any) -> str:
    value = _check_str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value):
        raise ValueError(f"{value!r} is not a node id: use 1-64 letters, digits, '.', '_' or '-'")
    return value


def _check_address(value: Any) -> str:
    value = _check_str(value)
    if value in ("localhost", ""):
        return value or "127.0.0.1"
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address (for example 127.0.0.1 or 0.0.0.0)"
        ) from None
    return value


def _check_advertise(value: Any) -> str:
    value = _check_address(value)
    if value in ("0.0.0.0", "::"):
        raise ValueError("must be an address peers can reach, not a wildcard")
    return value


def _check_seeds(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("must be a list of host:port entries")
    for entry in value:
        if not isinstance(entry, str) or not re.fullmatch(
            r"[^\s:]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", entry
        ):
            raise ValueError(f"{entry!r} is not host:port")
    return list(value)


def _check_duration(value: Any) -> float:
    return parse_duration(value, what="value")


def _check_positive_duration(value: Any) -> float:
    seconds = parse_duration(value, what="value")
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _check_choice(*choices: str) -> Any:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _check_size(lo: int) -> Any:
    def check(value: Any) -> int:
        size = parse_size(value)
        if size < lo:
            raise ValueError(f"must be at least {lo} bytes")
        return size

    return check


_CHECKS: dict[str, Any] = {
    "node_id": _check_node_id,
    "bind_address": _check_address,
    "port": _check_port(False),
    "gossip_port": _check_port(True),
    "sync_port": _check_port(True),
    "data_dir": lambda v: _check_str(v) or ".",
    "seed_nodes": _check_seeds,
    "read_only": _check_bool,
    "log_level": _check_choice("debug", "info", "warning", "error"),
    "cluster_secret": _check_str,
    "max_json_size": _check_size(2),
    "compression_level": _check_int(1, 22),
    "revision_history_enabled": _check_bool,
    "revision_history_depth": _check_int(0, 1000),
    "tombstone_ttl": _check_positive_duration,
    "lmdb_map_size": _check_size(1 << 20),
    "durability": _check_choice("fsync", "os"),
    "http_stall_timeout": _check_positive_duration,
    "http_header_timeout": _check_positive_duration,
    "http_body_timeout": _check_positive_duration,
    "http_body_budget": _check_size(1024 * 1024),
    "http_max_connections": _check_int(1, 1_000_000),
    "sync_interval": _check_positive_duration,
    "max_clock_offset": _check_positive_duration,
    "sync_throttle_delay": _check_duration,
    "sync_max_connections": _check_int(1, 100_000),
    "sync_snapshot_min_keys": _check_int(0, 2**62),
    "clustering_enabled": _check_bool,
    "advertise_address": _check_advertise,
    "probe_interval": _check_positive_duration,
    "probe_timeout": _check_positive_duration,
    "indirect_checks": _check_int(0, 16),
    "suspicion_mult": _check_int(1, 100),
    "suspicion_max_timeout_mult": _check_int(1, 100),
    "gossip_interval": _check_positive_duration,
    "gossip_nodes": _check_int(1, 64),
    "retransmit_mult": _check_int(1, 100),
    "push_pull_interval": _check_positive_duration,
    "dead_member_retention": _check_positive_duration,
    "watch_buffer": _check_int(1, 10_000_000),  # watch streams (issue 6, client/watch)
    # security
    "auth_enabled": _check_bool,
    "allow_anonymous_read": _check_bool,
    "allow_anonymous_write": _check_bool,
    # operations (issue 6)
    "backup_enabled": _check_bool,
    "backup_schedule": lambda v: _check_cron(v),
    "backup_path": lambda v: _check_str(v) or ".",
    "backup_retention": _check_int(0, 36500),
    "log_format": _check_choice("text", "json"),
    "rate_limiting_enabled": _check_bool,
    "rate_limit_requests": _check_int(1, 10**9),
    "rate_limit_window": _check_positive_duration,
    "tamper_logging_enabled": _check_bool,
    "tls_cert_file": _check_str,
    "tls_key_file": _check_str,
}


def _check_cron(value: Any) -> str:
    from croniter import croniter

    value = _check_str(value).strip()
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a cron expression: five fields, minute hour day-of-month month"
            " day-of-week, in UTC (for example '0 0 * * *', daily at midnight)"
        )
    return value


# Go KVS keys whose feature does not exist here yet: accepted so old files load, then ignored.
_ACCEPTED_FOR_COMPATIBILITY = {
    "catchup_interval",
    "bootstrap_max_age_hours",
    "fetch_delay_ms",
    "compression_enabled",
    "default_ttl",
    "tamper_log_actions",
}

# The Go KVS's gossip period keys map onto push_pull_interval (see from_mapping).
_GO_GOSSIP_INTERVALS = ("gossip_interval_min", "gossip_interval_max")


def from_mapping(data: Any, path: str | os.PathLike[str] | None = None) -> Config:
    """Validate a parsed YAML mapping into a Config; raise ConfigError on the first problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "the config file must be a mapping of key: value", path)
    values: dict[str, Any] = {}
    go_intervals: dict[str, float] = {}
    go_throttle_ms: int | None = None
    for key, raw in data.items():
        if not isinstance(key, str):
            raise ConfigError(str(key), "config keys must be strings", path)
        if key in _ACCEPTED_FOR_COMPATIBILITY:
            continue
        if key == "throttle_delay_ms":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise ConfigError(key, "must be a whole number of milliseconds, 0 or more", path)
            go_throttle_ms = raw
            continue
        if key in _GO_GOSSIP_INTERVALS:
            try:
                go_intervals[key] = _check_positive_duration(raw)
            except ValueError as exc:
                raise ConfigError(key, str(exc), path) from None
            continue
        check = _CHECKS.get(key)
        if check is None:
            raise ConfigError(
                key, "unknown config key (see the README's configuration table)", path
            )
        try:
            values[key] = check(raw)
        except ValueError as exc:
            raise ConfigError(key, str(exc), path) from None
    _check_security(values, path)
    if go_intervals and "push_pull_interval" not in values:
        # The Go KVS gossiped whole member lists every gossip_interval_min..max seconds: that
        # is our push-pull. (Failure detection is SWIM's probe_interval, far shorter.)
        values["push_pull_interval"] = sum(go_intervals.values()) / len(go_intervals)
    if go_throttle_ms is not None and "sync_throttle_delay" not in values:
        # The Go KVS paused throttle_delay_ms between the requests of a bootstrap: our pause
        # between the batches of an exchange.
        values["sync_throttle_delay"] = go_throttle_ms / 1000
    if values.get("probe_timeout", Config.probe_timeout) >= values.get(
        "probe_interval", Config.probe_interval
    ):
        raise ConfigError("probe_timeout", "must be shorter than probe_interval", path)
    config = Config(**values, source=str(path) if path else None)
    if not config.node_id:
        raise ConfigError("node_id", "is required (run `kvs init` to generate a config)", path)
    ports = {
        "port": config.port,
        "gossip_port": config.effective_gossip_port,
        "sync_port": config.effective_sync_port,
    }
    for name, value in ports.items():
        if value > 65535:
            raise ConfigError(name, f"derived port {value} is above 65535; set it explicitly", path)
    seen: dict[int, str] = {}
    for name, value in ports.items():
        if value in seen:
            # Blame the key the user set: not `port`, and not a port derived from it (0).
            blamed = seen[value] if getattr(config, name) == 0 else name
            raise ConfigError(
                blamed, f"port, gossip_port and sync_port must differ, got {ports}", path
            )
        seen[value] = name
    return config


def _check_security(values: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
    """Security keys that only make sense together."""
    cert, key = values.get("tls_cert_file", ""), values.get("tls_key_file", "")
    if bool(cert) != bool(key):
        missing = "tls_key_file" if cert else "tls_cert_file"
        raise ConfigError(missing, "TLS needs both tls_cert_file and tls_key_file", path)
    base = Path(path).resolve().parent if path else Path.cwd()
    for name, value in (("tls_cert_file", cert), ("tls_key_file", key)):
        if value and not (base / value).is_file():
            raise ConfigError(name, f"file {value!r} does not exist", path)


def load(path: str | os.PathLike[str]) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("(file)", "config file not found", path) from None
    except UnicodeDecodeError:
        raise ConfigError("(file)", "is not UTF-8 text", path) from None
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror}", path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("(file)", f"is not valid YAML{where}", path) from None
    return from_mapping(data, path)


def generate_node_id() -> str:
    return "node-" + secrets.token_hex(4)


def default_config_text(
    *, node_id: str | None = None, port: int = 8080, cluster_secret: str | None = None
) -> str:
    """A commented default config, with a fresh node id and cluster secret."""
    node_id = node_id or generate_node_id()
    cluster_secret = cluster_secret or secrets.token_urlsafe(32)
    return f"""\
# KVS node configuration. Every key is documented in the README ("Configuration").
# Durations take seconds (30) or a unit (500ms, 30s, 5m, 24h, 7d); sizes take bytes or a unit (1MiB).

# Identity and network
node_id: {node_id}
bind_address: 127.0.0.1       # 0.0.0.0 to serve other machines
port: {port}                    # HTTP API
gossip_port: {port + 1}             # UDP, cluster membership
sync_port: {port + 2}               # TCP, replication
seed_nodes: []                # HTTP host:port of existing nodes to join
cluster_secret: "{cluster_secret}"   # shared by every node of a cluster; keep it private

# Storage
data_dir: ./data              # relative to this file's directory
durability: fsync             # fsync: a write is acknowledged once on disk; os: once in the OS cache
max_json_size: 1MiB
compression_level: 3          # zstd, 1-22, for values over 256 bytes
revision_history_enabled: true
revision_history_depth: 3
tombstone_ttl: 7d             # how long deletes are remembered for replicas that were away
lmdb_map_size: 1GiB           # initial; grows automatically
read_only: false
http_stall_timeout: 20s       # drop an HTTP client that stops reading (a response, a watch) this long
http_header_timeout: 10s      # a request's headers must arrive within this (else 408)
http_body_timeout: 60s        # a request's body must arrive within this after its headers (else 408)
http_body_budget: 32MiB       # request bodies held in memory at once, all requests together (else 503)
http_max_connections: 1024    # open HTTP connections at once

# Cluster
clustering_enabled: true
# advertise_address: 192.168.1.10   # how peers reach this node (default: bind_address)
probe_interval: 500ms         # SWIM: ping one member this often
probe_timeout: 250ms          # no ack by then: ask others to ping it
suspicion_mult: 3             # suspicion timeout = suspicion_mult * log10(N) * probe_interval (and up to 6x that)
push_pull_interval: 30s       # full member-table exchange with one random member
sync_interval: 5s

# Security (README "Security"). On the first start the node creates a root user and token:
# the token is shown once on the console and written to <data_dir>/root.token (mode 0600).
auth_enabled: true
allow_anonymous_read: false
allow_anonymous_write: false
rate_limiting_enabled: false
rate_limit_requests: 1000     # per user (per client IP when anonymous) ...
rate_limit_window: 1s         # ... in this sliding window
tamper_logging_enabled: false
# tls_cert_file: cert.pem     # serve HTTPS (both files, relative to this file's directory)
# tls_key_file: key.pem

# Backups (see the README, "Backups and restore")
backup_enabled: false         # true: take scheduled backups
backup_schedule: "0 0 * * *"  # cron, UTC (daily at midnight)
backup_path: ./backups        # relative to this file's directory
backup_retention: 7           # days to keep this node's backups (0: keep all)

log_level: info               # debug, info, warning, error
log_format: text              # text, or json: one JSON object per line
"""


def write_default(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Create a default config at `path` (mode 0600: it holds the cluster secret)."""
    return write_text_private(path, default_config_text(**kwargs))


def write_text_private(path: str | os.PathLike[str], text: str) -> Path:
    """Create a config file with mode 0600; never overwrite one."""
    target = Path(path)
    if target.exists():
        raise ConfigError("(file)", "already exists; refusing to overwrite it", path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return target
