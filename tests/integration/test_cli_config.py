"""The `kvs` command line as a user meets it: init, bare `kvs`, and bad configuration.

Bad configuration must end in exactly one line on stderr naming the key (or the file),
exit status 2, and no traceback.
"""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from kvs.config import default_config_text
from tests.support.procs import (
    READY_TIMEOUT,
    KvsProcess,
    assert_clean_stderr,
    config_value,
    free_ports,
    run_kvs,
    running,
    set_keys,
)

EXIT_BAD_CONFIG = 2
DEFAULT_PORT = 8080


def assert_config_file(path: Path) -> None:
    """A generated config: mode 0600 (it holds the secret), commented, valid, complete."""
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.lstrip().startswith("#")
    data = yaml.safe_load(text)
    assert data["node_id"]
    assert len(data["cluster_secret"]) >= 32
    assert data["durability"] == "fsync"
    assert data["data_dir"] == "./data"
    assert data["auth_enabled"] is True  # as in the Go KVS: secure by default


def assert_one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 2, and stderr is one line that names every one of `names`."""
    assert result.returncode == EXIT_BAD_CONFIG, (result.returncode, result.stderr)
    assert_clean_stderr(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def test_init_in_empty_dir_then_bare_kvs_serves(tmp_path: Path) -> None:
    cwd = tmp_path / "empty"
    cwd.mkdir()
    result = run_kvs("init", cwd=cwd, console_script=True)
    assert result.returncode == 0, result.stderr
    config = cwd / "config.yaml"
    assert_config_file(config)
    assert yaml.safe_load(config.read_text())["port"] == DEFAULT_PORT
    assert [p.name for p in cwd.iterdir()] == ["config.yaml"]  # nothing else yet

    port, gossip_port, sync_port = free_ports(3)
    set_keys(config, port=port, gossip_port=gossip_port, sync_port=sync_port)
    # bare `kvs`: ./config.yaml
    with running(None, cwd=cwd, port=port, log_dir=tmp_path / "logs") as node:
        health = node.health()
        assert health is not None
        assert health.json()["node_id"] == config_value(config, "node_id")
        assert (cwd / "data").is_dir()  # data_dir ./data, beside the config
        # Auth is on by default: the first start made a root token, in a 0600 file only.
        token_file = cwd / "data" / "root.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        url = f"{node.base_url}/kv/readme/socks"
        assert httpx.put(url, content=b'{"pairs": 3}').status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.put(url, content=b'{"pairs": 3}', headers=headers).status_code == 200
        assert httpx.get(url, headers=headers).json()["data"] == {"pairs": 3}
        assert node.stop(signal.SIGTERM) == 0
        assert_clean_stderr(node.stderr(), config_value(config, "cluster_secret"))
        assert token not in node.stderr()
        assert token not in node.stdout_path.read_text()  # not a terminal: the file only
    # A later start never makes another root token.
    token_file.unlink()
    with running(None, cwd=cwd, port=port, log_dir=tmp_path / "logs") as node:
        assert node.stop(signal.SIGTERM) == 0
    assert not token_file.exists()


def test_bare_kvs_creates_config_yaml_then_serves_or_reports_busy_port(tmp_path: Path) -> None:
    """`kvs` with no config.yaml creates one and starts on port 8080.

    Port 8080 (or 8081, 8082) may be taken on a test machine; then the node must stop with
    status 2 and one line naming the port's key. Either way config.yaml must have been created first."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    node = KvsProcess([], cwd=cwd, port=DEFAULT_PORT, log_dir=tmp_path / "logs")
    try:
        config = cwd / "config.yaml"
        deadline = time.monotonic() + READY_TIMEOUT
        started = False
        while time.monotonic() < deadline:
            if node.popen.poll() is not None:
                break
            if config.exists():
                response = node.health()
                # Something else may answer on 8080: only our node_id means we started.
                if response is not None and response.status_code == 200:
                    node_id = response.json().get("node_id")
                    if node_id == config_value(config, "node_id"):
                        started = True
                        break
            time.sleep(0.02)
        else:
            raise AssertionError(f"bare kvs neither served nor exited:\n{node.stderr()}")

        assert_config_file(config)
        stderr = node.stderr()
        assert "created config.yaml" in stderr
        if started:
            assert node.stop(signal.SIGTERM) == 0
            assert_clean_stderr(node.stderr(), config_value(config, "cluster_secret"))
        else:
            assert node.popen.returncode == EXIT_BAD_CONFIG, stderr
            assert_clean_stderr(stderr, config_value(config, "cluster_secret"))
            errors = [line for line in stderr.splitlines() if "created config.yaml" not in line]
            assert len(errors) == 1, stderr
            # whichever of the three default ports (HTTP, gossip, sync) was the busy one
            busy = [str(DEFAULT_PORT + offset) for offset in range(3)]
            assert "port" in errors[0] and any(p in errors[0] for p in busy), errors
    finally:
        node.kill()


def write_config(directory: Path, **overrides: object) -> Path:
    """A valid generated config on free ports (what `kvs init` writes), then `overrides`."""
    port, gossip_port, sync_port = free_ports(3)
    path = directory / "config.yaml"
    path.write_text(default_config_text(port=port))
    set_keys(path, gossip_port=gossip_port, sync_port=sync_port, **overrides)
    return path


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"bogus_key": 1}, "bogus_key"),
        ({"port": "abc"}, "port"),
        ({"rate_limit_requests": 0}, "rate_limit_requests"),
        ({"durability": "sometimes"}, "durability"),
    ],
    ids=["unknown-key", "wrong-type", "rate-limit", "bad-choice"],
)
def test_bad_config_value_is_one_line_naming_the_key(
    tmp_path: Path, overrides: dict[str, object], named: str
) -> None:
    config = write_config(tmp_path, **overrides)
    result = run_kvs(str(config), cwd=tmp_path)
    line = assert_one_line_error(result, named, str(config))
    assert config_value(config, "cluster_secret") not in line
    assert not (tmp_path / "data").exists()  # refused before touching the disk


def test_invalid_yaml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("node_id: n1\nport: [8080\n")
    assert_one_line_error(run_kvs(str(config), cwd=tmp_path), str(config), "YAML")


def test_missing_config_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.yaml"
    assert_one_line_error(run_kvs(str(missing), cwd=tmp_path), str(missing), "not found")
    assert not missing.exists()  # an explicit path is never auto-created


def test_port_in_use_is_one_line_naming_port(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = int(config_value(config, "port"))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = run_kvs(str(config), cwd=tmp_path)
    assert_one_line_error(result, "port", str(port), "in use")


def test_address_not_on_this_machine_is_one_line_naming_bind_address(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real interface. A
    # non-local address also draws a no-authentication warning, but only once listening.
    config = write_config(tmp_path, bind_address="192.0.2.1")
    result = run_kvs(str(config), cwd=tmp_path)
    assert_one_line_error(result, "bind_address", "192.0.2.1")


def test_unwritable_data_dir_is_one_line_naming_data_dir(tmp_path: Path) -> None:
    # Tests may run as root, which chmod does not stop: a path under a regular file is
    # unusable for anyone.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(tmp_path, data_dir="./a-file/data")
    result = run_kvs(str(config), cwd=tmp_path)
    assert_one_line_error(result, "data_dir", "a-file")
    assert blocker.read_text() == "not a directory"


def test_init_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    existing = tmp_path / "config.yaml"
    existing.write_text("# mine, hands off\n")
    for args in (("init",), ("init", str(existing)), ("init", str(existing), "--port", "9000")):
        result = run_kvs(*args, cwd=tmp_path)
        assert_one_line_error(result, "config.yaml", "exists")
        assert existing.read_text() == "# mine, hands off\n"


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "node1.yaml"
    result = run_kvs("init", str(target), "--port", "9100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_config_file(target)
    data = yaml.safe_load(target.read_text())
    assert (data["port"], data["gossip_port"], data["sync_port"]) == (9100, 9101, 9102)
    assert data["cluster_secret"] not in result.stdout + result.stderr
    other = tmp_path / "node2.yaml"
    assert run_kvs("init", str(other), cwd=tmp_path).returncode == 0
    assert config_value(other, "node_id") != data["node_id"]
    assert config_value(other, "cluster_secret") != data["cluster_secret"]
