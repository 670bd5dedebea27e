"""Config files: reading one (`load`, `from_mapping`), writing a commented default one
(`default_config_text`) and the documentation table (`settings_table`), all driven by the
declaration in `kvs.config.declaration`."""

from __future__ import annotations

import os
import re
import secrets
import textwrap
from pathlib import Path
from typing import Any

import yaml

from kvs.config.declaration import SECTIONS, Config, declared, default_of
from kvs.config.rules import BOOL, POSITIVE_DURATION, ConfigError, Rule, render
from kvs.private_files import write_private

DEFAULT_CONFIG_NAME = "config.yaml"
_RULES: dict[str, Rule] = {f.name: s.rule for f, s in declared()}

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

# The Go KVS's TLS keys and ours (see _apply_go_tls).
_GO_TLS = {
    "cluster_tls_enabled": None,
    "cluster_tls_cert_file": "tls_cert_file",
    "cluster_tls_key_file": "tls_key_file",
    "cluster_tls_skip_verify": "tls_skip_verify",
}


def from_mapping(data: Any, path: str | os.PathLike[str] | None = None) -> Config:
    """Validate a parsed YAML mapping into a Config; raise ConfigError on the first problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "the config file must be a mapping of key: value", path)
    values: dict[str, Any] = {}
    go_intervals: dict[str, float] = {}
    go_throttle_ms: int | None = None
    go_tls: dict[str, Any] = {}
    for key, raw in data.items():
        if not isinstance(key, str):
            raise ConfigError(str(key), "config keys must be strings", path)
        if key in _ACCEPTED_FOR_COMPATIBILITY:
            continue
        if key in _GO_TLS:
            go_tls[key] = raw
            continue
        if key == "throttle_delay_ms":
            if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
                raise ConfigError(key, "must be a whole number of milliseconds, 0 or more", path)
            go_throttle_ms = raw
            continue
        if key in _GO_GOSSIP_INTERVALS:
            try:
                go_intervals[key] = POSITIVE_DURATION(raw)
            except ValueError as exc:
                raise ConfigError(key, str(exc), path) from None
            continue
        check = _RULES.get(key)
        if check is None:
            raise ConfigError(key, "unknown config key (see docs/configuration.md)", path)
        try:
            values[key] = check(raw)
        except ValueError as exc:
            raise ConfigError(key, str(exc), path) from None
    _apply_go_tls(go_tls, values, path)
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


def _apply_go_tls(
    go: dict[str, Any], values: dict[str, Any], path: str | os.PathLike[str] | None
) -> None:
    """The Go KVS's `cluster_tls_*` keys onto ours: with `cluster_tls_enabled: true`,
    `cluster_tls_cert_file`/`cluster_tls_key_file` are `tls_cert_file`/`tls_key_file` (the
    HTTP API serves TLS, and bare seeds are asked over https); with it false or absent they
    are ignored, as the Go KVS ignores them. `cluster_tls_skip_verify` is `tls_skip_verify`.
    A key of ours set in the same file wins."""
    if not go:
        return
    enabled = False
    if "cluster_tls_enabled" in go:
        try:
            enabled = BOOL(go["cluster_tls_enabled"])
        except ValueError as exc:
            raise ConfigError("cluster_tls_enabled", str(exc), path) from None
    for go_key, ours in _GO_TLS.items():
        if ours is None or go_key not in go:
            continue
        if ours != "tls_skip_verify" and not enabled:
            continue
        try:
            value = _RULES[ours](go[go_key])
        except ValueError as exc:
            raise ConfigError(go_key, str(exc), path) from None
        values.setdefault(ours, value)
    if enabled and not (values.get("tls_cert_file") and values.get("tls_key_file")):
        raise ConfigError(
            "cluster_tls_enabled", "needs cluster_tls_cert_file and cluster_tls_key_file", path
        )


def _check_security(values: dict[str, Any], path: str | os.PathLike[str] | None) -> None:
    """Security keys that only make sense together."""
    cert, key = values.get("tls_cert_file", ""), values.get("tls_key_file", "")
    if bool(cert) != bool(key):
        missing = "tls_key_file" if cert else "tls_cert_file"
        raise ConfigError(missing, "TLS needs both tls_cert_file and tls_key_file", path)
    base = Path(path).resolve().parent if path else Path.cwd()
    ca = values.get("tls_ca_file", "")
    for name, value in (("tls_cert_file", cert), ("tls_key_file", key), ("tls_ca_file", ca)):
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


def write_text_private(path: str | os.PathLike[str], text: str) -> Path:
    """Create a config file with mode 0600; never overwrite one."""
    try:
        return write_private(path, text, overwrite=False)
    except FileExistsError:
        raise ConfigError("(file)", "already exists; refusing to overwrite it", path) from None


def generate_node_id() -> str:
    return "node-" + secrets.token_hex(4)


_HEADER = """\
# KVS node configuration. Every key is listed below with its default; the keys commented out
# keep their default. Reference: docs/configuration.md.
# Durations take seconds (30) or a unit (500ms, 30s, 5m, 24h, 7d); sizes take bytes or a unit
# (1MiB). On the first start with auth_enabled the node creates a root user and token: the
# token is shown once on the console and written to <data_dir>/root.token (mode 0600)."""


def default_config_text(
    *,
    node_id: str | None = None,
    port: int = 8080,
    cluster_secret: str | list[str] | None = None,
) -> str:
    """A commented config holding every setting, with a fresh node id and cluster secret."""
    chosen = {
        "node_id": node_id or generate_node_id(),
        "port": port,
        "gossip_port": port + 1,
        "sync_port": port + 2,
        "cluster_secret": cluster_secret or secrets.token_urlsafe(32),
    }
    lines = [_HEADER]
    for f, s in declared():
        if f.name in SECTIONS:
            lines.append(f"\n# --- {SECTIONS[f.name]} ---")
        doc = _plain(s.doc)
        lines.extend(textwrap.wrap(doc, 94, initial_indent="# ", subsequent_indent="# "))
        if f.name in chosen:
            lines.append(f"{f.name}: {render(chosen[f.name])}")
        elif s.basic:
            lines.append(f"{f.name}: {render(default_of(f), s.rule.unit)}")
        else:
            lines.append(f"# {f.name}: {s.example or render(default_of(f), s.rule.unit)}")
    return "\n".join(lines) + "\n"


def _plain(markdown: str) -> str:
    """A doc line as a YAML comment: links become their text, code marks go."""
    text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", markdown)
    return text.replace("`", "").replace("**", "").replace("*", "")


def settings_table() -> str:
    """The settings as the Markdown table of docs/configuration.md."""
    rows = ["| key | default | accepts | meaning |", "|---|---|---|---|"]
    for f, s in declared():
        if f.name in SECTIONS:
            rows.append(f"| **{SECTIONS[f.name]}** | | | |")
        default = s.shown or f"`{render(default_of(f), s.rule.unit)}`"
        rows.append(f"| `{f.name}` | {default} | {s.rule.accepts} | {s.doc} |")
    return "\n".join(rows) + "\n"


def write_default(path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Create a default config at `path` (mode 0600: it holds the cluster secret)."""
    return write_text_private(path, default_config_text(**kwargs))
