"""kvs.config: loading, validation with one-line errors, defaults and generation."""

from __future__ import annotations

import dataclasses
import os
import stat
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvs.backup_service import BackupSettings
from kvs.config import (
    Config,
    ConfigError,
    declared,
    default_config_text,
    from_mapping,
    load,
    parse_size,
    project,
    settings_table,
    write_default,
)
from kvs.net.swim_settings import SwimSettings
from kvs.store import StoreSettings
from kvs.sync import SyncSettings

BASE = {"node_id": "node-1"}


def config_with(**values: Any) -> Config:
    return from_mapping({**BASE, **values})


def error_for(data: Any, path: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return info.value


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults -----------------------------------------------------------------------------------


def test_minimal_mapping_gets_the_documented_defaults() -> None:
    config = from_mapping(BASE)
    assert config == Config(node_id="node-1")
    assert config.bind_address == "127.0.0.1"
    assert config.port == 8080
    assert (config.effective_gossip_port, config.effective_sync_port) == (8081, 8082)
    assert config.data_dir == "./data"
    assert config.seed_nodes == []
    assert config.read_only is False
    assert config.log_level == "info"
    assert config.max_json_size == 1024 * 1024
    assert config.compression_level == 3
    assert config.revision_history_enabled is True
    assert config.revision_history_depth == 3
    assert config.tombstone_ttl == 7 * 86400.0
    assert config.lmdb_map_size == 1 << 30
    assert config.durability == "fsync"
    assert config.sync_interval == 5.0
    assert config.clustering_enabled is True
    assert config.auth_enabled is True
    assert config.rate_limiting_enabled is False
    assert config.tamper_logging_enabled is False
    assert (config.rate_limit_requests, config.rate_limit_window) == (1000, 1.0)
    assert config.source is None


def test_every_key_is_accepted_with_a_good_value() -> None:
    config = from_mapping(
        {
            "node_id": "n.1_a-B",
            "bind_address": "0.0.0.0",
            "port": 9000,
            "gossip_port": 9100,
            "sync_port": 9200,
            "data_dir": "/var/lib/kvs",
            "seed_nodes": ["10.0.0.1:9000", "db.example:8080", "[::1]:9000"],
            "read_only": True,
            "log_level": "debug",
            "cluster_secret": "s3cret",
            "max_json_size": "2MiB",
            "compression_level": 19,
            "revision_history_enabled": False,
            "revision_history_depth": 0,
            "tombstone_ttl": "1d",
            "lmdb_map_size": "4GiB",
            "durability": "os",
            "sync_interval": "500ms",
            "clustering_enabled": False,
            "auth_enabled": False,
            "tamper_logging_enabled": False,
            "rate_limiting_enabled": False,
            "allow_anonymous_read": True,
            "allow_anonymous_write": True,
        }
    )
    assert config.node_id == "n.1_a-B"
    assert (config.port, config.effective_gossip_port, config.effective_sync_port) == (
        9000,
        9100,
        9200,
    )
    assert config.seed_nodes == ["10.0.0.1:9000", "db.example:8080", "[::1]:9000"]
    assert config.max_json_size == 2 * 1024 * 1024
    assert config.tombstone_ttl == 86400.0
    assert config.lmdb_map_size == 4 * 1024**3
    assert config.sync_interval == 0.5
    assert config.allow_anonymous_read is True and config.allow_anonymous_write is True
    assert config.read_only is True and config.durability == "os"


def test_empty_yaml_values_mean_defaults_where_sensible() -> None:
    assert config_with(seed_nodes=None).seed_nodes == []
    assert config_with(bind_address="").bind_address == "127.0.0.1"
    assert config_with(bind_address="localhost").bind_address == "localhost"
    assert config_with(bind_address="::").bind_address == "::"
    assert config_with(data_dir="").data_dir == "."


# --- type checks: every key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("node_id", 123),
        ("node_id", ""),
        ("node_id", "has space"),
        ("node_id", "-leading-dash"),
        ("node_id", "x" * 65),
        ("node_id", "a/b"),
        ("bind_address", 127001),
        ("bind_address", "my-host"),
        ("bind_address", "256.0.0.1"),
        ("port", "8080"),
        ("port", 0),
        ("port", 65536),
        ("port", True),
        ("port", 80.5),
        ("gossip_port", -1),
        ("gossip_port", "x"),
        ("gossip_port", 70000),
        ("sync_port", 65536),
        ("sync_port", [1]),
        ("data_dir", 5),
        ("data_dir", ["a"]),
        ("seed_nodes", "10.0.0.1:9000"),
        ("seed_nodes", ["10.0.0.1"]),
        ("seed_nodes", [9000]),
        ("seed_nodes", ["host :1"]),
        ("seed_nodes", {"a": 1}),
        ("read_only", "yes"),
        ("read_only", 1),
        ("log_level", "verbose"),
        ("log_level", 1),
        ("log_level", "INFO"),
        ("cluster_secret", 5),
        ("cluster_secret", None),
        ("max_json_size", "big"),
        ("max_json_size", -1),
        ("max_json_size", 1),
        ("max_json_size", True),
        ("max_json_size", 1.5),
        ("max_json_size", "1 parsec"),
        ("compression_level", 0),
        ("compression_level", 23),
        ("compression_level", "3"),
        ("revision_history_enabled", "true"),
        ("revision_history_depth", -1),
        ("revision_history_depth", 1001),
        ("revision_history_depth", "3"),
        ("tombstone_ttl", 0),
        ("tombstone_ttl", "0s"),
        ("tombstone_ttl", "-1s"),
        ("tombstone_ttl", "a week"),
        ("tombstone_ttl", True),
        ("tombstone_ttl", [1]),
        ("tombstone_ttl", float("inf")),
        pytest.param("tombstone_ttl", 10**400, id="tombstone_ttl-huge-int"),
        ("lmdb_map_size", 1000),
        ("lmdb_map_size", "1KB"),
        ("lmdb_map_size", "lots"),
        ("durability", "always"),
        ("durability", True),
        ("sync_interval", 0),
        ("sync_interval", "soon"),
        ("clustering_enabled", "no"),
        ("auth_enabled", "false"),
        ("tamper_logging_enabled", 0),
        ("rate_limiting_enabled", None),
        ("allow_anonymous_read", 1),
        ("allow_anonymous_write", "true"),
    ],
)
def test_a_bad_value_is_a_one_line_error_naming_the_key(key: str, value: Any) -> None:
    error = error_for({**BASE, key: value}, "/etc/kvs/config.yaml")
    assert error.key == key
    assert str(error).startswith(f"/etc/kvs/config.yaml: {key}: ")
    assert error.path == "/etc/kvs/config.yaml"


def test_every_config_field_has_a_check() -> None:
    """A field added to Config without a validator could not be set from YAML at all."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(Config)} - {"source"}
    for name in fields:
        default = getattr(Config(), name)
        if name == "node_id":
            default = "node-1"
        from_mapping({**BASE, name: default})  # no "unknown key"


def test_unknown_key_is_an_error_naming_it() -> None:
    error = error_for({**BASE, "replication_factor": 3})
    assert error.key == "replication_factor"
    assert "replication_factor" in str(error)
    assert "unknown" in str(error)


def test_a_misspelt_key_is_not_silently_ignored() -> None:
    assert error_for({**BASE, "tombstone_tll": "1d"}).key == "tombstone_tll"


def test_a_non_string_key_is_an_error() -> None:
    error = error_for({**BASE, 42: "x"})
    assert error.key == "42"


def test_a_key_with_a_line_break_still_gives_a_one_line_error() -> None:
    error = error_for({**BASE, "bad\nkey": 1})
    assert "bad" in str(error)


@pytest.mark.parametrize(
    "key",
    [
        "catchup_interval",
        "bootstrap_max_age_hours",
        "fetch_delay_ms",
        "compression_enabled",
        "default_ttl",
        "tamper_log_actions",
    ],
)
def test_go_kvs_compatibility_keys_are_accepted_and_ignored(key: str) -> None:
    assert config_with(**{key: "anything"}) == Config(node_id="node-1")


def test_go_kvs_gossip_intervals_map_to_push_pull_interval() -> None:
    # The Go KVS exchanged whole member lists every 60-120 s: our push-pull.
    assert config_with(gossip_interval_min=60, gossip_interval_max=120).push_pull_interval == 90.0
    assert config_with(gossip_interval_min="1m").push_pull_interval == 60.0
    explicit = config_with(gossip_interval_min=60, push_pull_interval="10s")
    assert explicit.push_pull_interval == 10.0
    error = error_for({**BASE, "gossip_interval_max": "soon"})
    assert "gossip_interval_max" in str(error)


def test_go_kvs_throttle_delay_ms_maps_to_sync_throttle_delay() -> None:
    assert config_with(throttle_delay_ms=100).sync_throttle_delay == 0.1
    assert config_with(throttle_delay_ms=0).sync_throttle_delay == 0.0
    explicit = config_with(throttle_delay_ms=100, sync_throttle_delay="20ms")
    assert explicit.sync_throttle_delay == 0.02
    for bad in ("soon", -1, 1.5, True):
        error = error_for({**BASE, "throttle_delay_ms": bad})
        assert "throttle_delay_ms" in str(error)


def test_probe_timeout_must_be_shorter_than_probe_interval() -> None:
    error = error_for({**BASE, "probe_interval": "1s", "probe_timeout": "2s"})
    assert "probe_timeout" in str(error)


def test_a_go_kvs_config_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
node_id: go-node-1
bind_address: 127.0.0.1
port: 8090
data_dir: ./data
seed_nodes: []
read_only: false
log_level: info
gossip_interval_min: 60
gossip_interval_max: 120
sync_interval: 300
catchup_interval: 120
bootstrap_max_age_hours: 720
throttle_delay_ms: 100
fetch_delay_ms: 50
compression_enabled: true
compression_level: 3
default_ttl: "0"
max_json_size: 1048576
rate_limit_requests: 100
rate_limit_window: "1m"
tamper_log_actions: ["data_write", "user_create"]
backup_enabled: true
backup_schedule: "0 0 * * *"
backup_path: ./backups
backup_retention: 7
auth_enabled: false
tamper_logging_enabled: false
clustering_enabled: true
rate_limiting_enabled: false
revision_history_enabled: true
allow_anonymous_read: false
allow_anonymous_write: false
cluster_secret: ""
""",
    )
    config = load(path)
    assert config.node_id == "go-node-1"
    assert config.port == 8090
    assert config.sync_interval == 300.0
    assert config.sync_throttle_delay == 0.1  # throttle_delay_ms: 100
    assert config.backup_enabled is True
    assert config.backup_schedule == "0 0 * * *"
    assert config.backup_retention == 7


@pytest.mark.parametrize("key", ["auth_enabled", "tamper_logging_enabled", "rate_limiting_enabled"])
def test_security_features_can_be_switched_either_way(key: str) -> None:
    assert getattr(config_with(**{key: True}), key) is True
    assert getattr(config_with(**{key: False}), key) is False


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    config_file = str(tmp_path / "config.yaml")
    error = error_for({**BASE, "tls_cert_file": "cert.pem"}, config_file)
    assert error.key == "tls_key_file"
    error = error_for(
        {**BASE, "tls_cert_file": "cert.pem", "tls_key_file": "nokey.pem"}, config_file
    )
    assert error.key == "tls_key_file" and "does not exist" in str(error)
    (tmp_path / "key.pem").write_text("y")
    config = from_mapping(
        {**BASE, "tls_cert_file": "cert.pem", "tls_key_file": "key.pem"}, config_file
    )
    assert config.file_path(config.tls_cert_file) == cert.resolve()


@pytest.mark.parametrize(
    ("key", "value"),
    [("rate_limit_requests", 0), ("rate_limit_requests", "many"), ("rate_limit_window", 0)],
)
def test_bad_rate_limit_values_name_the_key(key: str, value: Any) -> None:
    assert error_for({**BASE, key: value}).key == key


# --- durations and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (2.5, 2.5), ("30", 30.0), ("500ms", 0.5), ("5m", 300.0), ("24h", 86400.0)],
)
def test_durations_accept_numbers_and_strings(value: Any, seconds: float) -> None:
    assert config_with(sync_interval=value).sync_interval == seconds
    assert config_with(tombstone_ttl=value).tombstone_ttl == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1048576, 1048576),
        ("1MiB", 1024**2),
        ("1mib", 1024**2),
        ("512KB", 512_000),
        ("512KiB", 512 * 1024),
        ("1.5MiB", 1024**2 * 3 // 2),
        ("2GiB", 2 * 1024**3),
        ("1TB", 10**12),
        (" 64 MiB ", 64 * 1024**2),
        ("1048576", 1048576),
        ("1048576b", 1048576),
    ],
)
def test_sizes_accept_units_and_integers(value: Any, size: int) -> None:
    assert parse_size(value) == size
    assert config_with(max_json_size=value).max_json_size == size


@pytest.mark.parametrize("value", ["", "MiB", "-1MiB", "1XB", "1.2.3MB", None, 1.0, True, [1], -5])
def test_bad_sizes_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_size_minimums() -> None:
    assert config_with(max_json_size=2).max_json_size == 2
    assert config_with(lmdb_map_size="1MiB").lmdb_map_size == 1 << 20
    assert error_for({**BASE, "lmdb_map_size": (1 << 20) - 1}).key == "lmdb_map_size"


# --- files --------------------------------------------------------------------------------------


def test_load_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id: alpha\nport: 9000\ntombstone_ttl: 2h\n")
    config = load(path)
    assert config.node_id == "alpha"
    assert config.port == 9000
    assert config.tombstone_ttl == 7200.0
    assert config.source == str(path)


def test_invalid_yaml_is_one_line_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id: alpha\nport: [8080\nlog_level: info\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert "not valid YAML" in message
    assert "line" in message


def test_yaml_with_tabs_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "node_id: alpha\n\tport: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load(path)
    assert "\n" not in str(info.value)


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "not found" in message


def test_unreadable_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path)  # a directory
    assert "\n" not in str(info.value)
    assert "cannot read" in str(info.value)


def test_a_binary_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"node_id: \xff\xfe\x00garbage\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_non_mapping_is_an_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert "mapping" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_node_id_is_an_error(tmp_path: Path) -> None:
    assert error_for({"port": 9000}).key == "node_id"
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "# nothing here\n"))  # an empty document
    assert info.value.key == "node_id"
    assert "required" in str(info.value)


# --- ports --------------------------------------------------------------------------------------


def test_derived_ports() -> None:
    config = config_with(port=9000)
    assert (config.gossip_port, config.sync_port) == (0, 0)
    assert (config.effective_gossip_port, config.effective_sync_port) == (9001, 9002)
    config = config_with(port=9000, gossip_port=7000)
    assert (config.effective_gossip_port, config.effective_sync_port) == (7000, 9002)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"port": 9000, "gossip_port": 9000}, "gossip_port"),
        ({"port": 9000, "sync_port": 9000}, "sync_port"),
        ({"port": 9000, "sync_port": 9001}, "sync_port"),  # collides with the derived gossip port
        ({"port": 9000, "gossip_port": 9002}, "gossip_port"),  # collides with derived sync port
        ({"port": 9000, "gossip_port": 7000, "sync_port": 7000}, "sync_port"),
    ],
)
def test_ports_must_differ(values: dict[str, int], key: str) -> None:
    error = error_for({**BASE, **values})
    assert error.key == key
    assert "differ" in str(error)


@pytest.mark.parametrize(("port", "key"), [(65535, "gossip_port"), (65534, "sync_port")])
def test_derived_ports_above_65535_are_an_error(port: int, key: str) -> None:
    error = error_for({**BASE, "port": port})
    assert error.key == key
    assert "65535" in str(error)
    assert config_with(port=port, gossip_port=1000, sync_port=1001).port == port


# --- generation ---------------------------------------------------------------------------------


def test_default_config_text_loads_back(tmp_path: Path) -> None:
    text = default_config_text()
    data = yaml.safe_load(text)
    config = from_mapping(data)
    assert config.node_id.startswith("node-")
    assert len(config.cluster_secret) >= 32
    assert (config.port, config.gossip_port, config.sync_port) == (8080, 8081, 8082)
    assert config.max_json_size == 1024 * 1024
    assert config.tombstone_ttl == 7 * 86400.0
    assert config.lmdb_map_size == 1 << 30
    # and it matches the dataclass defaults everywhere else
    assert dataclass_diff(config, Config(node_id=config.node_id)) == {
        "cluster_secret",
        "gossip_port",
        "sync_port",
    }


def dataclass_diff(a: Config, b: Config) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(Config) if getattr(a, f.name) != getattr(b, f.name)}


def test_default_config_text_is_fresh_each_call() -> None:
    first = from_mapping(yaml.safe_load(default_config_text()))
    second = from_mapping(yaml.safe_load(default_config_text()))
    assert first.node_id != second.node_id
    assert first.cluster_secret != second.cluster_secret


def test_default_config_text_takes_overrides() -> None:
    config = from_mapping(
        yaml.safe_load(default_config_text(node_id="fixed", port=9100, cluster_secret="abc"))
    )
    assert config.node_id == "fixed"
    assert config.cluster_secret == "abc"
    assert (config.port, config.effective_gossip_port, config.effective_sync_port) == (
        9100,
        9101,
        9102,
    )


def test_write_default_creates_a_private_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.yaml"
    assert write_default(path) == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = load(path)
    assert config.node_id.startswith("node-")
    original = path.read_text()
    with pytest.raises(ConfigError) as info:
        write_default(path)
    assert "overwrite" in str(info.value) and "\n" not in str(info.value)
    assert path.read_text() == original


def test_write_default_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_default(tmp_path / "config.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# --- secrets and paths --------------------------------------------------------------------------


def test_repr_never_shows_the_cluster_secret() -> None:
    config = config_with(cluster_secret="hunter2-very-secret")
    for text in (repr(config), str(config), f"{config}", f"{config!r}", repr([config])):
        assert "hunter2" not in text
        assert "<hidden>" in text
    assert "node-1" in repr(config)
    assert "cluster_secret=''" in repr(config_with(cluster_secret=""))


def test_data_path_resolves_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, "node_id: a\ndata_dir: ./data\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load(path).data_path == (conf_dir / "data").resolve()
    # a relative config path is resolved against the cwd at load time
    monkeypatch.chdir(tmp_path)
    assert load(Path("etc/config.yaml")).data_path == (conf_dir / "data").resolve()
    # absolute data_dir is kept
    path2 = write(conf_dir, f"node_id: a\ndata_dir: {tmp_path / 'abs'}\n", "two.yaml")
    assert load(path2).data_path == (tmp_path / "abs").resolve()
    # without a file it is relative to the working directory
    monkeypatch.chdir(elsewhere)
    assert config_with(data_dir="d").data_path == (elsewhere / "d").resolve()


# --- the declaration: one source for the validator, the file, the docs and the parts -----------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_table_in_the_docs_is_the_declarations() -> None:
    text = DOCS.read_text(encoding="utf-8")
    begin, end = "<!-- settings:begin -->\n", "<!-- settings:end -->"
    assert begin in text and end in text
    shown = text.split(begin, 1)[1].split(end, 1)[0]
    assert shown == settings_table(), (
        "docs/configuration.md is out of date: run .venv/bin/python scripts/config_docs.py"
    )


def test_every_setting_has_a_row_a_line_in_the_file_and_a_valid_default() -> None:
    table, text = settings_table(), default_config_text()
    for f, declared_as in declared():
        assert f"| `{f.name}` |" in table
        assert f"\n{f.name}: " in text or f"\n# {f.name}: " in text, f.name
        assert declared_as.doc and declared_as.rule.accepts
        default = getattr(Config(), f.name)
        if f.name not in ("node_id", "advertise_address"):  # required / derived when empty
            assert declared_as.rule(default) == default, f.name


@pytest.mark.parametrize("part", [SwimSettings, SyncSettings, StoreSettings, BackupSettings])
def test_each_part_takes_its_settings_from_the_declaration_with_no_defaults_of_its_own(
    part: type,
) -> None:
    names = {f.name for f, _ in declared()}
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(part):
        assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (
            f"{part.__name__}.{f.name} has a default of its own"
        )
        if f.name == "backup_dir":  # derived: backup_path resolved against the config file
            continue
        assert f.name in names, f"{part.__name__}.{f.name} is not a declared setting"
        assert typing.get_type_hints(part)[f.name] == hints[f.name], f.name
    config = from_mapping({**BASE, "probe_interval": "2s", "sync_interval": "7s"})
    derived = {"backup_dir": config.backup_dir} if part is BackupSettings else {}
    built = project(part, config, **derived)
    for f in dataclasses.fields(part):
        if f.name != "backup_dir":
            assert getattr(built, f.name) == getattr(config, f.name)


def test_the_generated_file_writes_durations_and_sizes_as_people_do() -> None:
    text = default_config_text()
    for line in ("probe_interval: 500ms", "tombstone_ttl: 7d", "lmdb_map_size: 1GiB"):
        assert f"\n{line}\n" in text
    assert '\nbackup_schedule: "0 0 * * *"\n' in text
    # a node id or secret YAML would read as something else is quoted
    assert (
        yaml.safe_load(default_config_text(node_id="123", cluster_secret="true"))["node_id"]
        == "123"
    )
