"""Files only the owner can read (issue 14): a real node started under umask 022, through
`kvs start` (its log and PID file), with the audit log and a backup, then restored: every
directory it wrote is 0700 and every file 0600, and the restore keeps the audit log and
root token file (with their modes).

Every node started here is stopped (or killed) when its test ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx

from kvs import daemon
from tests.support.procs import init_config, run_kvs

TIMEOUT = 90.0


def kvs(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"KVS_HOME": str(home), "KVS_URL": None, "KVS_TOKEN": None}
    return run_kvs(*args, cwd=cwd, timeout=TIMEOUT, env=env)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def daemon_cleanup(home: Path, config: Path) -> Iterator[None]:
    """Whatever happens, the node started with `kvs start` does not outlive the test."""
    try:
        yield
    finally:
        pid_file = daemon.instance_for(config, home).pid_file
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            if daemon.is_node_of(pid, config.resolve()):
                os.kill(pid, signal.SIGKILL)


def modes(root: Path) -> dict[str, int]:
    """The permission bits of `root` and everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(root: Path) -> dict[str, int]:
    found = modes(root)
    wrong = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert not wrong, f"not 0700/0600 under {root}: {wrong}"
    return found


def test_everything_a_node_writes_is_its_owners_only_and_restore_keeps_the_audit_log(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    with umask(0o022), daemon_cleanup(home, tmp_path / "n" / "config.yaml"):
        config = init_config(
            tmp_path / "n", auth_enabled=True, tamper_logging_enabled=True, backup_path="./bk"
        )
        base = config.parent
        data_dir = base / "data"
        # What an older version left readable by others: narrowed at start, with a log line.
        data_dir.mkdir(mode=0o755)
        (data_dir / "left-over").write_text("x")
        assert stat.S_IMODE((data_dir / "left-over").stat().st_mode) == 0o644

        started = kvs("start", str(config), home=home, cwd=base)
        assert started.returncode == 0, started.stderr
        token = (data_dir / "root.token").read_text().strip()
        url = f"http://127.0.0.1:{_port(config)}"
        with httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            assert client.put("/kv/secret", json={"pin": 1234}).status_code == 200
            taken = client.post("/api/backup/run")
            assert taken.status_code == 200, taken.text
            backup = Path(taken.json()["path"])
            assert client.put("/kv/after-backup", json=1).status_code == 200
        stopped = kvs("stop", str(config), home=home, cwd=base)
        assert stopped.returncode == 0, stopped.stderr

        log_text = daemon.instance_for(config, home).log_file.read_text()
        assert "were readable by other users" in log_text
        before = assert_private(data_dir)
        assert {"root.token", "audit", "audit/data.mdb", "data.mdb"} <= before.keys()
        assert_private(base / "bk")
        assert_private(home)  # the daemon's log and PID files, and their directories
        token_before = (data_dir / "root.token").read_bytes()
        verified = kvs("audit", "verify", str(config), home=home, cwd=base)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        entries = verified.stdout.split("audit log OK: ")[1].split(" entries")[0]

        restored = kvs(
            "restore", str(backup), "--data-dir", str(data_dir), "--force", home=home, cwd=base
        )
        assert restored.returncode == 0, restored.stderr
        assert "kept the target's audit and root.token" in restored.stdout
        after = assert_private(data_dir)
        assert (data_dir / "root.token").read_bytes() == token_before
        assert after["root.token"] == 0o600 and after["audit/data.mdb"] == 0o600
        # The audit log kept all of its entries, those after the backup too, and verifies.
        verified = kvs("audit", "verify", str(config), home=home, cwd=base)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert f"audit log OK: {entries} entries" in verified.stdout

        # The restored node starts, its root token works, and the data is the backup's.
        started = kvs("start", str(config), home=home, cwd=base)
        assert started.returncode == 0, started.stderr
        with httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            assert client.get("/kv/secret").json()["data"] == {"pin": 1234}
            assert client.get("/kv/after-backup").status_code == 404
        assert kvs("stop", str(config), home=home, cwd=base).returncode == 0
        assert_private(data_dir)


def _port(config: Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("port:"):
            return int(line.split(":", 1)[1].split("#")[0])
    raise AssertionError("no port in the config")
