"""Operations on real processes: `kvs start/status/stop/restart` (KVS_HOME in a tmp dir),
JSON logs, `kvs backup now` against a running node and `kvs restore` into its data dir.

Every node started here is stopped (or killed) when its test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from kvs import daemon
from tests.support.procs import (
    EXIT_TIMEOUT,
    assert_clean_stderr,
    config_value,
    init_config,
    run_kvs,
    running,
    set_keys,
)


def kvs(
    *args: str, home: Path, cwd: Path, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    """`kvs ARGS` with its own KVS_HOME, and no KVS_URL/KVS_TOKEN from the caller's shell."""
    env = {"KVS_HOME": str(home), "KVS_URL": None, "KVS_TOKEN": None}
    return run_kvs(*args, cwd=cwd, timeout=timeout, env=env)


@contextlib.contextmanager
def cleanup(home: Path, *configs: Path) -> Iterator[None]:
    """Whatever happens, no daemon started by the test outlives it."""
    try:
        yield
    finally:
        for config in configs:
            pid_file = daemon.instance_for(config, home).pid_file
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().split()[0])
                if daemon.is_node_of(pid, config.resolve()):
                    os.kill(pid, signal.SIGKILL)


def test_start_status_stop_restart_with_json_logs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # Two configs with the same file name in different directories.
    one = init_config(tmp_path / "one", log_format="json", auth_enabled=False)
    two = init_config(tmp_path / "two", auth_enabled=False)
    secret = config_value(one, "cluster_secret")
    with cleanup(home, one, two):
        status = kvs("status", str(one), home=home, cwd=tmp_path)
        assert status.returncode == 3, status
        assert "not running" in status.stdout

        started = kvs("start", str(one), home=home, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        assert "started" in started.stdout
        started_two = kvs("start", str(two), home=home, cwd=tmp_path)
        assert started_two.returncode == 0, started_two.stderr

        a, b = daemon.instance_for(one, home), daemon.instance_for(two, home)
        assert a.pid_file != b.pid_file and a.log_file != b.log_file
        pid_a = int(a.pid_file.read_text().split()[0])
        assert daemon.is_node_of(pid_a, one.resolve())

        # The daemon serves; `start` again refuses; `status` says running (0).
        port = config_value(one, "port")
        put = httpx.put(f"http://127.0.0.1:{port}/kv/daemon/test", json={"ok": True}, timeout=10)
        assert put.status_code == 200
        again = kvs("start", str(one), home=home, cwd=tmp_path)
        assert again.returncode == 1 and "already running" in again.stderr
        assert kvs("status", str(one), home=home, cwd=tmp_path).returncode == 0
        listing = kvs("status", home=home, cwd=tmp_path)
        assert listing.returncode == 0
        assert str(one.resolve()) in listing.stdout and str(two.resolve()) in listing.stdout

        restarted = kvs("restart", str(one), home=home, cwd=tmp_path)
        assert restarted.returncode == 0, restarted.stderr
        assert "stopped pid" in restarted.stdout and "started" in restarted.stdout
        new_pid = int(a.pid_file.read_text().split()[0])
        assert new_pid != pid_a and not daemon.is_node_of(pid_a, one.resolve())
        got = httpx.get(f"http://127.0.0.1:{port}/kv/daemon/test", timeout=10)
        assert got.json()["data"] == {"ok": True}

        for config in (one, two):
            stopped = kvs("stop", str(config), home=home, cwd=tmp_path)
            assert stopped.returncode == 0, stopped.stderr
            assert "stopped pid" in stopped.stdout and "kill" not in stopped.stderr
        assert not daemon.is_node_of(new_pid, one.resolve())
        assert not a.pid_file.exists()
        assert kvs("status", str(one), home=home, cwd=tmp_path).returncode == 3
        assert kvs("status", home=home, cwd=tmp_path).returncode == 3
        assert "not running" in kvs("stop", str(one), home=home, cwd=tmp_path).stdout

    # JSON logs: one object per line, with the node id, never the cluster secret.
    log_text = a.log_file.read_text()
    assert_clean_stderr(log_text, secret)
    entries = [json.loads(line) for line in log_text.splitlines()]
    assert entries and all(
        set(e) >= {"time", "level", "node_id", "logger", "message"} for e in entries
    )
    node_id = config_value(one, "node_id")
    assert {e["node_id"] for e in entries} == {node_id}
    assert any("ready" in e["message"] for e in entries)
    assert any("SIGTERM" in e["message"] for e in entries)
    # The text format (the default) names the node on every line too.
    text_lines = b.log_file.read_text().splitlines()
    assert text_lines and all(f"[{config_value(two, 'node_id')}]" in line for line in text_lines)


def test_stale_pid_file_and_a_failed_start_are_reported(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = init_config(tmp_path / "n", auth_enabled=False)
    instance = daemon.instance_for(config, home)
    instance.pid_file.parent.mkdir(parents=True)
    # A PID that is alive but is not a kvs node of this config (this test process).
    instance.pid_file.write_text(f"{os.getpid()}\n{instance.config}\n")
    status = kvs("status", str(config), home=home, cwd=tmp_path)
    assert status.returncode == 3 and "stale" in status.stdout
    assert not instance.pid_file.exists()
    # A PID that is gone (a process that has exited and been reaped).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    instance.pid_file.write_text(f"{gone.pid}\n{instance.config}\n")
    stale_stop = kvs("stop", str(config), home=home, cwd=tmp_path)
    assert stale_stop.returncode == 0 and "stale PID file" in stale_stop.stdout
    assert not instance.pid_file.exists()

    # A node that cannot start (its port is taken): `start` fails with the log's tail.
    with (
        cleanup(home, config),
        running(init_config(tmp_path / "other", auth_enabled=False)) as other,
    ):
        set_keys(config, port=other.port)
        failed = kvs("start", str(config), home=home, cwd=tmp_path)
    assert failed.returncode == 1
    assert "exited during start-up" in failed.stderr and "already in use" in failed.stderr
    assert not instance.pid_file.exists()


def test_stop_kills_a_node_that_ignores_sigterm_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = init_config(tmp_path / "n", auth_enabled=False).resolve()
    instance = daemon.instance_for(config, home)
    # Stands in for a hung node: same command-line shape, ignores SIGTERM.
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    hung = subprocess.Popen([sys.executable, "-c", code, "kvs", "serve", str(config)])
    try:
        instance.pid_file.parent.mkdir(parents=True)
        instance.pid_file.write_text(f"{hung.pid}\n{config}\n")
        time.sleep(0.5)  # let it install its handler
        assert kvs("status", str(config), home=home, cwd=tmp_path).returncode == 0
        stopped = kvs("stop", str(config), "--timeout", "1", home=home, cwd=tmp_path)
        assert stopped.returncode == 0
        assert "SIGKILL" in stopped.stderr
        assert hung.wait(timeout=EXIT_TIMEOUT) == -signal.SIGKILL
        assert not instance.pid_file.exists()
    finally:
        hung.kill()
        hung.wait()


def test_backup_now_then_restore_into_the_stopped_nodes_data_dir(tmp_path: Path) -> None:
    config = init_config(tmp_path / "n", auth_enabled=False, backup_path="./bk")
    data_dir = (config.parent / "data").resolve()
    with running(config) as node:
        with httpx.Client(base_url=node.base_url, timeout=10) as client:
            for i in range(50):
                assert client.put(f"/kv/items/{i}", json={"i": i}).status_code == 200
            assert client.put("/kv/items/0", json={"i": "second"}).status_code == 200
            assert client.delete("/kv/items/1").status_code == 204
            taken = kvs("backup", "now", "--url", node.base_url, home=tmp_path, cwd=tmp_path)
            assert taken.returncode == 0, taken.stderr
            backup = Path(taken.stdout.strip())
            assert backup.is_file() and backup.parent == (config.parent / "bk").resolve()
            # Written after the backup: gone once it is restored.
            assert client.put("/kv/items/late", json=1).status_code == 200
            history_before = client.get("/api/data/items/0/history").json()

        # A running node's data dir is never overwritten.
        refused = kvs(
            "restore",
            str(backup),
            "--data-dir",
            str(data_dir),
            "--force",
            home=tmp_path,
            cwd=tmp_path,
        )
        assert refused.returncode == 1 and "running node" in refused.stderr
        node.stop()

    # A bad URL is a usage error; an unreachable node an error.
    assert kvs("backup", "now", "--url", "ftp://x", home=tmp_path, cwd=tmp_path).returncode == 2
    gone = kvs(
        "backup", "now", "--url", node.base_url, "--timeout", "2", home=tmp_path, cwd=tmp_path
    )
    assert gone.returncode == 1 and "cannot reach" in gone.stderr

    not_empty = kvs(
        "restore", str(backup), "--data-dir", str(data_dir), home=tmp_path, cwd=tmp_path
    )
    assert not_empty.returncode == 1 and "--force" in not_empty.stderr
    truncated = tmp_path / "truncated.kvsbak"
    truncated.write_bytes(backup.read_bytes()[:-100])
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    bad = kvs(
        "restore",
        str(truncated),
        "--data-dir",
        str(data_dir),
        "--force",
        home=tmp_path,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "truncated" in bad.stderr and "Traceback" not in bad.stderr
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before

    done = kvs(
        "restore", str(backup), "--data-dir", str(data_dir), "--force", home=tmp_path, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert config_value(config, "node_id") in done.stdout
    assert "restoring [" not in done.stderr  # no progress bar when stderr is not a terminal

    with running(config) as node, httpx.Client(base_url=node.base_url, timeout=10) as client:
        assert client.get("/kv/items/0").json()["data"] == {"i": "second"}
        assert client.get("/kv/items/49").json()["data"] == {"i": 49}
        assert client.get("/kv/items/1").status_code == 404
        assert client.get("/kv/items/late").status_code == 404
        assert client.get("/api/data/items/0/history").json() == history_before
        status = client.get("/api/backup/status").json()
        assert status["count"] == 1 and status["last_run"] is None  # a fresh process


def test_a_restored_node_catches_up_with_its_cluster_through_sync(tmp_path: Path) -> None:
    """Node b is restored to an older backup while a took more writes; once b is back,
    anti-entropy makes both replicas identical (same Merkle root, same answers)."""
    a_cfg = init_config(tmp_path / "a", auth_enabled=False, sync_interval="500ms")
    secret = config_value(a_cfg, "cluster_secret")
    b_cfg = init_config(
        tmp_path / "b", auth_enabled=False, cluster_secret=secret, sync_interval="500ms"
    )
    seed = f"127.0.0.1:{config_value(a_cfg, 'port')}"
    b_cfg.write_text(b_cfg.read_text().replace("seed_nodes: []", f'seed_nodes: ["{seed}"]'))

    def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    def root(url: str) -> Any:
        return httpx.get(f"{url}/merkle_tree/root", timeout=5).json()

    with running(a_cfg) as a, httpx.Client(base_url=a.base_url, timeout=10) as ca:
        for i in range(20):
            assert ca.put(f"/kv/c/{i}", json=i).status_code == 200
        with running(b_cfg) as b:
            wait_for(lambda: root(b.base_url) == root(a.base_url), "b's first sync")
            taken = httpx.post(f"{b.base_url}/api/backup/run", timeout=60)
            assert taken.status_code == 200, taken.text
            backup = Path(taken.json()["path"])
            assert b.stop() == 0
        # While b is down (and after its backup) a takes more writes.
        assert ca.put("/kv/c/0", json="newer").status_code == 200
        assert ca.delete("/kv/c/1").status_code == 204
        assert ca.put("/kv/c/new", json="new").status_code == 200
        done = kvs(
            "restore",
            str(backup),
            "--data-dir",
            str(b_cfg.parent / "data"),
            "--force",
            home=tmp_path,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        with running(b_cfg) as b, httpx.Client(base_url=b.base_url, timeout=10) as cb:
            wait_for(lambda: root(b.base_url) == root(a.base_url), "the restored node to converge")
            assert cb.get("/kv/c/0").json()["data"] == "newer"
            assert cb.get("/kv/c/1").status_code == 404
            assert cb.get("/kv/c/new").json()["data"] == "new"
            assert cb.get("/kv/c/19").json()["data"] == 19


def test_reload_puts_a_new_keyring_in_force_and_refuses_a_bad_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = init_config(tmp_path / "node", auth_enabled=False)
    old, new = config_value(config, "cluster_secret"), "the-next-cluster-secret"
    with cleanup(home, config):
        assert kvs("reload", str(config), home=home, cwd=tmp_path).returncode == 3
        assert kvs("start", str(config), home=home, cwd=tmp_path).returncode == 0
        log = daemon.instance_for(config, home).log_file
        set_keys(config, cluster_secret=[new, old])
        reloaded = kvs("reload", str(config), home=home, cwd=tmp_path)
        assert reloaded.returncode == 0, reloaded.stderr
        assert "2 secret(s)" in reloaded.stdout
        deadline = time.monotonic() + 30
        while "keyring reloaded (2 secret(s))" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.1)
        set_keys(config, cluster_secret=[new, new])  # a duplicate: refused, nothing sent
        refused = kvs("reload", str(config), home=home, cwd=tmp_path)
        assert refused.returncode == 2 and "cluster_secret" in refused.stderr
        assert new not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
        assert kvs("stop", str(config), home=home, cwd=tmp_path).returncode == 0
        text = log.read_text(errors="replace")
        assert old not in text and new not in text
