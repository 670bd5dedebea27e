"""What an eavesdropper on the wire between real node processes sees, and what replaying it
does (issue 14's "done when"; tests/sim/test_transit.py is the same in the simulator).

Three node processes with auth on replicate while a raw-socket capture on the loopback
interface records every gossip datagram, gossip stream and sync connection. Keys, values,
a user's name and a token carry unique markers: none of them, nor the cluster secret, is in
any node-to-node byte, while the same tap reads them in the clients' plain HTTP (the
control: the tap works). Then every captured datagram is sent again to its node and every
captured connection's client bytes are replayed on a fresh connection: the stores and the
members stay as they were, and each replay is refused and counted in /cluster/stats.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from kvs.testing import launcher
from tests.support.auth import bearer
from tests.support.capture import Connection, LoopbackCapture, can_capture
from tests.support.cluster import client, wait_for
from tests.support.procs import assert_clean_stderr, config_value

pytestmark = pytest.mark.skipif(bool(can_capture()), reason=can_capture() or "")

TAP_SECONDS = 4.0  # of gossip, probes and anti-entropy on the tap after the writes replicated


def stats(url: str, token: str) -> dict[str, Any]:
    with client() as c:
        response = c.get(f"{url}/cluster/stats", headers=bearer(token))
        assert response.status_code == 200, response.text
        return response.json()


def refusals(url: str, token: str) -> dict[str, int]:
    """Every drop counter of a node: gossip datagrams, gossip streams and sync sessions."""
    body = stats(url, token)
    out = {f"gossip.{k}": v for k, v in body["counters"].items() if "dropped_" in k}
    sync = body["sync"]["counters"]
    out.update({f"sync.{k}": v for k, v in sync.items() if k.startswith("dropped_")})
    return out


def grown(before: list[dict[str, int]], after: list[dict[str, int]], name: str) -> int:
    return sum(a.get(name, 0) - b.get(name, 0) for b, a in zip(before, after, strict=True))


def fingerprint(urls: list[str], token: str) -> list[tuple[str, int]]:
    with client() as c:
        roots = [c.get(f"{url}/merkle_tree/root", headers=bearer(token)).json() for url in urls]
    return [(r["root"], r["keys"]) for r in roots]


def members(urls: list[str], token: str) -> list[list[tuple[str, str, int]]]:
    with client() as c:
        tables = [c.get(f"{url}/members/", headers=bearer(token)).json() for url in urls]
    return [sorted((m["node_id"], m["state"], m["incarnation"]) for m in t) for t in tables]


def replay(conn: Connection) -> None:
    """Connect to the server of `conn` and send what its client once sent, then read to EOF."""
    with socket.create_connection(conn.server, timeout=10) as sock:
        try:
            sock.sendall(conn.client_bytes())
            while sock.recv(65536):
                pass
        except OSError:
            pass  # a reset is one way to be refused


def test_a_wiretap_between_real_nodes_reads_nothing_and_its_replays_are_refused(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    cluster = launcher.Cluster(tmp_path / "cluster", out=lines.append, auth=True)
    specs = cluster.start(3, base_port=0)
    try:
        urls = [str(s.url) for s in specs]
        secret = config_value(specs[0].config, "cluster_secret")
        root = cluster.root_token()
        assert root and secret
        node_ports = {p for s in specs for p in (s.gossip_port, s.sync_port)}
        http_ports = {s.http_port for s in specs}
        mark = secrets.token_hex(4)
        markers = [secret, root]
        with LoopbackCapture(node_ports | http_ports) as tap:
            with client() as c:
                nick = f"usermarker{mark}"
                user = c.post(f"{urls[0]}/api/users", json={"nickname": nick}, headers=bearer(root))
                assert user.status_code == 201, user.text
                made = c.post(
                    f"{urls[0]}/api/tokens",
                    json={"user_uuid": user.json()["uuid"], "scopes": ["read", "write"]},
                    headers=bearer(root),
                )
                assert made.status_code == 201, made.text
                token = made.json()["token"]
                markers += [nick, token]
                for i, url in enumerate(urls):
                    key, value = f"keymarker{mark}/n{i}", f"valuemarker{mark}-{i}"
                    markers += [key, value]
                    auth = bearer(root if i else token)
                    response = c.put(f"{url}/kv/{key}", json={"v": value}, headers=auth)
                    assert response.status_code == 200, response.text

            def replicated() -> bool:
                with client() as c:
                    for url in urls:
                        for i in range(3):
                            got = c.get(f"{url}/kv/keymarker{mark}/n{i}", headers=bearer(root))
                            if got.status_code != 200:
                                return False
                return len(set(fingerprint(urls, root))) == 1

            wait_for("the markers replicate to every node", replicated, 60)
            time.sleep(TAP_SECONDS)
            # Anti-entropy opens a sync connection every sync_interval (5 s): have one whole.
            sync_ports = {s.sync_port for s in specs}
            wait_for(
                "a sync connection captured from its first byte",
                lambda: any(c.server[1] in sync_ports for c in tap.whole_connections()),
                60,
            )
        datagrams = [d for d in tap.datagrams if d.dst[1] in node_ports]
        conns = [c for c in tap.connections.values() if c.server[1] in node_ports]
        assert len(datagrams) > 20 and conns, (len(datagrams), len(conns))
        # The control: the clients' plain HTTP carries the markers, so the tap reads them.
        http = b"".join(
            c.all_bytes() for c in tap.connections.values() if c.server[1] in http_ports
        )
        assert all(m.encode() in http for m in markers[2:]), "the tap misses the HTTP traffic"
        for payload in [d.data for d in datagrams] + [c.all_bytes() for c in conns]:
            for marker in markers:
                assert marker.encode() not in payload, f"a marker crossed in clear: {marker[:12]}"

        # --- replay everything -------------------------------------------------------------
        state, table = fingerprint(urls, root), members(urls, root)
        before = [refusals(u, root) for u in urls]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for d in datagrams:
                sock.sendto(d.data, d.dst)
                time.sleep(0.0005)  # pace: a full receive buffer would drop, not refuse
        sessions = [c for c in tap.whole_connections() if c.server[1] in node_ports]
        for conn in sessions:
            replay(conn)

        def all_counted() -> bool:
            after = [refusals(u, root) for u in urls]
            dgrams = grown(before, after, "gossip.dropped_replay")
            dgrams += grown(before, after, "gossip.dropped_stale")
            streams = grown(before, after, "gossip.stream_dropped_auth")
            streams += grown(before, after, "sync.dropped_auth")
            return dgrams >= len(datagrams) and streams >= len(sessions)

        try:
            wait_for("every replayed datagram and connection is counted", all_counted, 30)
        finally:
            after = [refusals(u, root) for u in urls]
            names = {k for counters in before + after for k in counters}
            diff = {k: grown(before, after, k) for k in sorted(names)}
            diff = {k: v for k, v in diff.items() if v}
            print("replayed", len(datagrams), "datagrams,", len(sessions), "sessions:", diff)
        replays = grown(before, after, "gossip.dropped_replay")
        assert replays + grown(before, after, "gossip.dropped_stale") == len(datagrams) > 0
        assert replays > 0 and any(c.server[1] in sync_ports for c in sessions)
        streams = grown(before, after, "gossip.stream_dropped_auth")
        assert streams + grown(before, after, "sync.dropped_auth") == len(sessions)
        assert fingerprint(urls, root) == state
        assert members(urls, root) == table
    finally:
        cluster.stop()
    for spec in specs:
        assert_clean_stderr(spec.log.read_text(errors="replace"), secret)
