"""A rolling key rotation on 3 real node processes under continuous writes (issue 14).

The procedure of docs/operations.md, node by node, each step a config edit and a SIGHUP:
add the new secret (`[old, new]`), make it first (`[new, old]`), remove the old (`[new]`).
Meanwhile a writer PUTs unique keys round-robin and a watcher polls every node's
/members/. At the end every acknowledged write is on every node, no node was ever
reported dead (or even suspect) by a peer, and the old secret no longer opens the door.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from pathlib import Path

import httpx

from kvs.net.seeds import AUTH_HEADER, auth_header_value
from kvs.testing import launcher
from tests.support.cluster import LiveCluster, client, wait_for
from tests.support.procs import assert_clean_stderr, set_keys

RELOAD_TIMEOUT = 30.0
SETTLE = 1.5  # seconds of gossip, probes and pushes between steps


def reloads(spec: launcher.NodeSpec) -> int:
    return spec.log.read_text(errors="replace").count("keyring reloaded")


def info_status(url: str, secret: str) -> int:
    header = auth_header_value(secret, time.time_ns() // 1_000_000) or ""
    with client() as c:
        return c.get(f"{url}/cluster/info", headers={AUTH_HEADER: header}).status_code


class Writer(threading.Thread):
    """PUTs unique keys round-robin over the nodes; remembers what was acknowledged."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.acked: dict[str, int] = {}
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        with client() as c:
            while not self.stop.is_set():
                key = f"rot/k{i}"
                try:
                    response = c.put(f"{self.urls[i % len(self.urls)]}/kv/{key}", json={"i": i})
                except httpx.HTTPError:
                    self.failed += 1
                else:
                    if response.status_code == 200:
                        self.acked[key] = i
                    else:
                        self.failed += 1
                i += 1
                time.sleep(0.01)


class Watcher(threading.Thread):
    """Polls /members/ on every node; records any peer it ever saw not alive."""

    def __init__(self, urls: list[str], names: tuple[str, ...]) -> None:
        super().__init__(daemon=True)
        self.urls, self.names = urls, set(names)
        self.bad: list[tuple[str, str, str]] = []  # (observer, member, state)
        self.polls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with client() as c:
            while not self.stop.is_set():
                for url in self.urls:
                    try:
                        members = c.get(f"{url}/members/").json()
                    except (httpx.HTTPError, ValueError):
                        continue
                    self.polls += 1
                    for m in members:
                        if m.get("node_id") in self.names and m.get("state") != "alive":
                            self.bad.append((url, m.get("node_id"), m.get("state")))
                time.sleep(0.1)


def test_a_rolling_rotation_under_writes_loses_nothing_and_kills_nobody(tmp_path: Path) -> None:
    live = LiveCluster(tmp_path / "cluster")
    live.start()
    try:
        old, new = live.secret(), secrets.token_urlsafe(32)
        specs = [live.specs[n] for n in live.names]
        urls = live.urls()
        writer, watcher = Writer(urls), Watcher(urls, live.names)
        writer.start()
        watcher.start()
        time.sleep(SETTLE)
        for step, keyring in enumerate(([old, new], [new, old], [new]), start=1):
            for spec in specs:
                set_keys(spec.config, cluster_secret=keyring)
                pid = live.cluster.pid(spec)
                assert pid is not None, spec.name
                os.kill(pid, signal.SIGHUP)
                wait_for(
                    f"{spec.name} reloads its keyring (step {step})",
                    lambda s=spec, n=step: reloads(s) >= n,
                    RELOAD_TIMEOUT,
                )
                time.sleep(SETTLE)
        time.sleep(SETTLE)
        writer.stop.set()
        writer.join()
        watcher.stop.set()
        watcher.join()

        assert len(writer.acked) > 100, (len(writer.acked), writer.failed)
        assert watcher.polls > 30
        assert watcher.bad == [], watcher.bad[:10]

        def everywhere() -> bool:
            with client() as c:
                for url in urls:
                    for key, i in writer.acked.items():
                        response = c.get(f"{url}/kv/{key}")
                        if response.status_code != 200 or response.json()["data"] != {"i": i}:
                            return False
            return True

        wait_for("every acknowledged write is on every node", everywhere, 60)
        # The new secret is the only one now: the old one no longer proves membership.
        for spec, url in zip(specs, urls, strict=True):
            assert old not in spec.config.read_text()
            assert info_status(url, new) == 200
            assert info_status(url, old) == 401
        # And gossip still flows between the nodes on the new key.
        time.sleep(SETTLE)
        assert live.all_alive()
    finally:
        live.cluster.stop()
    for spec in specs:
        for secret in (old, new):
            assert_clean_stderr(spec.log.read_text(errors="replace"), secret)
