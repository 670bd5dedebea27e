"""A cluster of real `kvs` node processes on loopback for hostile tests: configs sharing
one secret, start (node 1 first: it makes the root token), wait until all see all, stop.
One process, and what a monitor reads of it from outside (liveness, RSS, stderr), is a
`kvs.testing.procs.NodeProcess`.

A rule for this file: everything here is what an operator could see of a node from the
outside (its process, its files, its open endpoints). It never imports the node's code
beyond `kvs.config`, so a fuzzer built on it tests the node as a client would meet it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvs.config import Config, default_config_text, render
from kvs.config import load as load_config
from kvs.testing.ports import free_ports
from kvs.testing.procs import (
    HOST,
    READY_TIMEOUT,
    STOP_TIMEOUT,
    NodeProcess,
    ProcessError,
    http_get,
    set_key,
    write_private,
)


class ClusterError(ProcessError):
    """The nodes would not form a cluster, or a config key is unknown here."""


def supported_config_keys() -> frozenset[str]:
    """The config keys this checkout's node accepts (a newer key makes an older node refuse
    to start, so callers set optional keys only when they are here)."""
    return frozenset(f.name for f in dataclasses.fields(Config) if f.name != "source")


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
                text = set_key(text, key, render(value))
            path = self.directory / f"{name}.yaml"
            write_private(path, text)
            load_config(path)  # a config the node would refuse is our bug: fail here
            self.nodes.append(NodeProcess.for_config(name, path, http))

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
