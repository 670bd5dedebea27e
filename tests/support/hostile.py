"""Helpers for the hostile HTTP tests: one real node, raw sockets with deadlines, and the
checks every test ends with (the node is up, answers /health quickly, logged no traceback)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kvs.testing.http_cluster import NodeCluster
from kvs.testing.http_wire import AnswerReader
from kvs.testing.procs import HOST, NodeProcess, http_get

SOCKET_TIMEOUT = 10.0  # no single socket operation in these tests may take longer


@dataclass
class LiveNode:
    cluster: NodeCluster
    node: NodeProcess
    root: str

    @property
    def port(self) -> int:
        return self.node.port


@contextlib.contextmanager
def one_node(directory: Path, **settings: object) -> Iterator[LiveNode]:
    """One real node (auth on, its root token at hand); killed on the way out."""
    cluster = NodeCluster(directory, 1, settings=settings)
    with cluster:
        cluster.start()
        yield LiveNode(cluster, cluster.nodes[0], cluster.root_token())


def connect(port: int, timeout: float = SOCKET_TIMEOUT) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_closed(
    sock: socket.socket, timeout: float, answers: int | None = None
) -> tuple[bytes, bool]:
    """What the server sends within `timeout`, or until `answers` complete HTTP/1.1 answers
    have arrived; (data, closed_by_server)."""
    deadline = time.monotonic() + timeout
    reader = AnswerReader()
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if answers is not None:
            reader.feed(chunk)
            if len(reader.answers) >= answers:
                return data, False


def exchange(
    port: int, data: bytes, timeout: float = 5.0, answers: int | None = None
) -> tuple[bytes, bool]:
    """Send `data` on a new connection; read until the server closes, `answers` answers
    are in, or `timeout`."""
    with connect(port) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout, answers)


def status_of(answer: bytes) -> int | None:
    """The status code of the first HTTP/1.x answer in `answer`, or None."""
    if not answer.startswith(b"HTTP/1."):
        return None
    parts = answer.split(b"\r\n", 1)[0].split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_node_healthy(live: LiveNode, health_limit: float = 1.0) -> None:
    """The process is up, /health answers 200 within `health_limit`, stderr has no traceback."""
    node = live.node
    time.sleep(0.3)  # a node ended by the last request takes a moment to exit
    assert node.alive(), f"the node exited (status {node.returncode()}):\n{node.stderr_tail(60)}"
    started = time.monotonic()
    status, _ = http_get(node.port, "/health", timeout=5.0)
    took = time.monotonic() - started
    assert status == 200, status
    assert took < health_limit, f"/health took {took:.2f} s"
    log = node.stderr_bytes().decode("utf-8", "replace")
    assert "Traceback" not in log and "Exception Group" not in log, log[-6000:]
