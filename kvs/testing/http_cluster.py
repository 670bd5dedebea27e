"""Real `kvs` node processes on loopback for hostile tests: configs, start, restart, stop,
and what a monitor reads from outside (liveness, RSS, stderr).

A rule for this file: everything here is what an operator could see of a node from the
outside (its process, its files, its open endpoints). It never imports the node's code
beyond `kvs.config`, so a fuzzer built on it tests the node as a client would meet it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvs.config import Config, default_config_text
from kvs.config import load as load_config
from kvs.testing.ports import free_ports

HOST = "127.0.0.1"
READY_TIMEOUT = 60.0  # a loaded 2-core machine can take seconds to import the stack
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


class ClusterError(Exception):
    """A node would not start, join or stop; the message says which and why."""


def supported_config_keys() -> frozenset[str]:
    """The config keys this checkout's node accepts (a newer key makes an older node refuse
    to start, so callers set optional keys only when they are here)."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.name != "source")


def _set_key(text: str, key: str, value: str) -> str:
    pattern = re.compile(rf"^{re.escape(key)}:[^\n#]*", re.MULTILINE)
    if not pattern.search(text):
        return text + f"{key}: {value}\n"
    return pattern.sub(lambda _m: f"{key}: {value} ", text, count=1)


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def http_get(port: int, path: str, timeout: float, token: str | None = None) -> tuple[int, bytes]:
    """A tiny blocking HTTP/1.1 GET (no library: usable from a monitor thread, and honest
    about time: connect, send, read, all within `timeout`). Returns (status, body)."""
    deadline = time.monotonic() + timeout
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Connection: close\r\n\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"GET {path}: no complete answer within {timeout} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"GET {path}: not an HTTP answer: {data[:80]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


class NodeProcess:
    """One `python -m kvs CONFIG` process; stdout and stderr appended to files in its dir."""

    def __init__(self, name: str, config: Path, port: int) -> None:
        self.name = name
        self.config = config
        self.port = port
        self.directory = config.parent
        self.stderr_path = self.directory / f"{name}.err"
        self.stdout_path = self.directory / f"{name}.out"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exit_codes: list[int] = []

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.starts += 1
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "kvs", str(self.config)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C of the fuzzer reaches us, not the node
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ClusterError(
                    f"{self.name} exited with status {self.returncode()} during start-up:\n"
                    + self.stderr_tail()
                )
            with contextlib.suppress(OSError, ConnectionError):
                status, _ = http_get(self.port, "/health", timeout=2.0)
                if status == 200:
                    return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{self.name} not ready after {timeout} s:\n{self.stderr_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def rss_kb(self) -> int | None:
        """Resident memory (VmRSS) in KiB, or None if the process is gone."""
        if self.pid is None:
            return None
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
        return int(match.group(1)) if match else None

    def stderr_bytes(self) -> bytes:
        try:
            return self.stderr_path.read_bytes()
        except FileNotFoundError:
            return b""

    def stderr_tail(self, lines: int = 40) -> str:
        text = self.stderr_bytes().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM, wait; SIGKILL after `timeout`. Returns (exit status or None if it had to
        be killed, seconds taken)."""
        started = time.monotonic()
        if self.popen is None or self.popen.poll() is not None:
            return (self.returncode(), 0.0)
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait(timeout=STOP_TIMEOUT)


class NodeCluster:
    """`count` nodes in `directory` sharing one cluster secret, node 1 the others' seed, auth
    on; node 1 creates the root token. `settings` go into every config, `per_node[i]` into
    node i's only. Use as a context manager: every node is killed on the way out."""

    def __init__(
        self,
        directory: Path,
        count: int,
        *,
        settings: Mapping[str, object] | None = None,
        per_node: Sequence[Mapping[str, object]] = (),
    ) -> None:
        self.directory = directory.resolve()
        self.count = count
        self.settings = dict(settings or {})
        self.per_node = list(per_node)
        self.nodes: list[NodeProcess] = []

    def __enter__(self) -> NodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.kill()

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * self.count)
        import secrets

        secret = secrets.token_urlsafe(32)
        seed = f"{HOST}:{ports[0]}"
        supported = supported_config_keys()
        for i in range(self.count):
            name = f"node{i + 1}"
            http, gossip, sync = ports[3 * i : 3 * i + 3]
            text = default_config_text(node_id=name, port=http, cluster_secret=secret)
            values: dict[str, object] = {
                "gossip_port": gossip,
                "sync_port": sync,
                "data_dir": f"./data/{name}",
                "backup_path": f"./backups/{name}",
                "seed_nodes": [] if i == 0 else [seed],
                "auth_enabled": True,
                "durability": "os",  # a crash of the process loses nothing; power is not tested
                **self.settings,
            }
            if i < len(self.per_node):
                values.update(self.per_node[i])
            unknown = sorted(set(values) - supported)
            if unknown:
                raise ClusterError(f"this node does not support config key(s) {unknown}")
            for key, value in values.items():
                text = _set_key(text, key, _yaml(value))
            path = self.directory / f"{name}.yaml"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            load_config(path)  # a config the node would refuse is our bug: fail here
            self.nodes.append(NodeProcess(name, path, http))

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Create the configs, start node 1 (it makes the root token), then the others; return
        once every node's /health says it sees all `count` members alive."""
        if not self.nodes:
            self.create()
        self.nodes[0].start()
        self.nodes[0].wait_ready(timeout)
        for node in self.nodes[1:]:
            node.start()
        for node in self.nodes[1:]:
            node.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while self.count > 1:
            seen = [self.members_alive(n) for n in self.nodes]
            if all(s == self.count for s in seen):
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"members alive per node after {timeout} s: {seen}")
            time.sleep(0.1)

    def members_alive(self, node: NodeProcess) -> int | None:
        import json

        try:
            status, body = http_get(node.port, "/health", timeout=2.0)
            return int(json.loads(body).get("members_alive", 0)) if status == 200 else None
        except (OSError, ConnectionError, ValueError):
            return None

    def root_token(self) -> str:
        return (self.directory / "data" / "node1" / "root.token").read_text().strip()

    def stop(self, timeout: float = STOP_TIMEOUT) -> dict[str, tuple[int | None, float]]:
        return {node.name: node.stop(timeout) for node in self.nodes}
