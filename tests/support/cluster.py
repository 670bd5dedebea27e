"""A real local cluster for the integration tests: the launcher's `Cluster`
(kvs/testing/launcher.py, as `python scripts/cluster.py` runs it) in a test's directory,
brought back to "all running, all alive" before each test, and a bounded wait."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kvs.testing import launcher
from tests.support.procs import assert_clean_stderr, config_value

CONVERGE_TIMEOUT = 30.0  # measured well under 2 s; generous for a loaded 2-core machine
POLL = 0.05
NAMES = ("node1", "node2", "node3")


def client() -> httpx.Client:
    return httpx.Client(timeout=5.0, trust_env=False)  # loopback only, never via a proxy


def wait_for(what: str, check: Callable[[], bool], timeout: float = CONVERGE_TIMEOUT) -> float:
    """Poll `check` until true; return the seconds it took (fail with `what` on timeout)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(POLL)
    return time.monotonic() - started


class LiveCluster:
    def __init__(
        self,
        directory: Path,
        names: tuple[str, ...] = NAMES,
        *,
        auth: bool = False,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.names = names
        self.lines: list[str] = []
        self.cluster = launcher.Cluster(
            directory, out=self.lines.append, auth=auth, settings=settings
        )
        self.specs: dict[str, Any] = {}

    def start(self) -> None:
        if self.cluster.exists():
            self.specs = {s.name: s for s in self.cluster.start()}
        else:
            self.specs = {s.name: s for s in self.cluster.start(len(self.names), base_port=0)}

    def url(self, name: str) -> str:
        return str(self.specs[name].url)

    def urls(self) -> list[str]:
        return [self.url(n) for n in self.names]

    def secret(self) -> str:
        return config_value(self.specs[self.names[0]].config, "cluster_secret")

    def root_token(self) -> str:
        token = self.cluster.root_token()
        assert token, "an auth cluster's node 1 writes its root token on its first start"
        return token

    def all_alive(self) -> bool:
        token = self.cluster.root_token()
        with client() as c:
            if token:
                c.headers["Authorization"] = f"Bearer {token}"
            for name in self.names:
                alive = launcher.alive_members(c, self.url(name))
                if alive is None or not set(self.names) <= alive:
                    return False
        return True

    def ensure_healthy(self) -> None:
        """Bring the cluster back to all running and all alive (after an earlier test)."""
        up = self.cluster.running()
        for name in self.names:
            if name not in up:
                self.cluster.restart(name, wait_cluster=False)
        wait_for("every node sees every node alive", self.all_alive)

    def assert_clean_logs(self) -> None:
        secret = self.secret()
        for name in self.names:
            assert_clean_stderr(self.specs[name].log.read_text(errors="replace"), secret)
