"""Real processes in a real cluster: the launcher (scripts/cluster.py), failure detection,
graceful leave, hostile datagrams, a stranger with the wrong secret, and `kvs members`.

One 3-node cluster on loopback serves the whole module (starting one costs seconds); every
test begins by bringing it back to "all running, all alive", so each test stands alone in
any order. Everything started here is stopped in teardown, whatever happened.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio

from kvs.clock import system_wall_ms
from kvs.net.codec import WireError, derive_key
from kvs.net.datagrams import DatagramCodec
from kvs.net.frames import FrameStream
from kvs.net.messages import Alive, Dead, MemberInfo, Ping
from kvs.net.seeds import AUTH_HEADER, auth_header_value
from kvs.testing import launcher
from tests.support.cluster import wait_for
from tests.support.procs import assert_clean_stderr, config_value, init_config, running
from tests.support.wire import StampedCodec, seal_payload

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "scripts" / "cluster.py"
DETECT_TIMEOUT = 30.0  # kill -9 to "dead" everywhere; measured ~2-4 s with the defaults
NAMES = ("node1", "node2", "node3")
DEAD_PROXY = {
    name: "http://127.0.0.1:9"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
}


def run_launcher(*args: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """`python scripts/cluster.py ARGS --dir DIRECTORY`, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args, "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def members(url: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{url}/members/", timeout=5)
    assert response.status_code == 200, response.text
    return {m["node_id"]: m for m in response.json()}


def stats(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/cluster/stats", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def member_of(url: str, node_id: str) -> dict[str, Any]:
    """`node_id`'s row in the table of the node at `url` ({} if absent or no answer)."""
    try:
        return members(url).get(node_id, {})
    except (httpx.HTTPError, AssertionError):
        return {}


def state_of(url: str, node_id: str) -> str:
    return str(member_of(url, node_id).get("state", ""))


class LiveCluster:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lines: list[str] = []
        # A proxy that answers nothing, in the nodes' environment only: cluster traffic
        # (the seed lookup on join) must never go through one (regression: it did).
        self.cluster = launcher.Cluster(directory, out=self.lines.append, env=DEAD_PROXY)
        self.specs: dict[str, Any] = {}

    def url(self, name: str) -> str:
        return str(self.specs[name].url)

    def secret(self) -> str:
        return config_value(self.specs["node1"].config, "cluster_secret")

    def all_alive(self) -> bool:
        for name in NAMES:
            try:
                table = members(self.url(name))
            except (httpx.HTTPError, AssertionError):
                return False
            if any(table.get(n, {}).get("state") != "alive" for n in NAMES):
                return False
        return True

    def ensure_healthy(self) -> None:
        """Bring the cluster back to all running and all alive (after an earlier test)."""
        running = self.cluster.running()
        for name in NAMES:
            if name not in running:
                self.cluster.restart(name, wait_cluster=False)
        wait_for("every node sees every node alive", self.all_alive)

    def assert_clean_logs(self) -> None:
        secret = self.secret()
        for name in NAMES:
            assert_clean_stderr(self.specs[name].log.read_text(errors="replace"), secret)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path_factory.mktemp("cluster"))
    try:
        started = time.monotonic()
        live.specs = {s.name: s for s in live.cluster.start(len(NAMES), base_port=0)}
        print(f"\n3-node cluster up, all alive, in {time.monotonic() - started:.1f} s")
        yield live
    finally:
        live.cluster.stop()
    live.assert_clean_logs()


@pytest.fixture
def cluster(live: LiveCluster) -> LiveCluster:
    live.ensure_healthy()
    return live


# --- (a) kill -9, detection, restart ----------------------------------------------------------


def test_kill_9_is_declared_dead_then_restart_rejoins_with_a_higher_incarnation(
    cluster: LiveCluster,
) -> None:
    before = members(cluster.url("node1"))["node2"]["incarnation"]
    observers = ("node1", "node3")

    killed = run_launcher("kill", "2", directory=cluster.directory)
    assert killed.returncode == 0, killed.stderr
    assert "node2 killed" in killed.stdout
    t0 = time.monotonic()
    detected: dict[str, float] = {}

    def all_dead() -> bool:
        for name in observers:
            if name not in detected and state_of(cluster.url(name), "node2") == "dead":
                detected[name] = time.monotonic() - t0
        return len(detected) == len(observers)

    wait_for("node1 and node3 report node2 dead", all_dead, DETECT_TIMEOUT)
    print("\nkill -9 -> dead: " + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(detected.items())))
    health = httpx.get(f"{cluster.url('node1')}/health", timeout=5).json()
    assert health["members_alive"] == 2

    status = run_launcher("status", directory=cluster.directory)
    assert status.returncode == 3, status.stdout + status.stderr  # not all up
    assert "2 of 3 nodes up" in status.stdout

    t1 = time.monotonic()
    restarted = run_launcher("restart", "node2", directory=cluster.directory)
    assert restarted.returncode == 0, restarted.stderr
    for name in NAMES:
        row = member_of(cluster.url(name), "node2")
        assert row.get("state") == "alive", (name, row)
        assert row["incarnation"] > before, (name, row, before)
    print(f"restart -> alive everywhere: {time.monotonic() - t1:.2f} s")
    assert run_launcher("status", directory=cluster.directory).returncode == 0


# --- (b) graceful leave -----------------------------------------------------------------------


def test_sigterm_is_reported_left_not_dead(cluster: LiveCluster) -> None:
    t0 = time.monotonic()
    result = cluster.cluster.stop("node3")
    assert result["node3"].startswith("stopped"), result  # exited within the grace period
    took = wait_for(
        "node1 and node2 report node3 left",
        lambda: all(state_of(cluster.url(n), "node3") == "left" for n in ("node1", "node2")),
    )
    print(f"\nSIGTERM -> left: {time.monotonic() - t0:.2f} s (after exit: {took:.2f} s)")
    log = cluster.specs["node3"].log.read_text(errors="replace")
    assert "shutting down" in log
    # Left stays left (a leave is not a failure): nobody turns it into dead meanwhile.
    time.sleep(1.0)
    for name in ("node1", "node2"):
        assert state_of(cluster.url(name), "node3") == "left"
    # And a node that left can come back (restart waits until all see each other alive).
    cluster.cluster.restart("node3")
    assert all(state_of(cluster.url(n), "node3") == "alive" for n in NAMES)


# --- (c) hostile datagrams --------------------------------------------------------------------


def seal(key: bytes, payload: bytes, age_ms: int = 0) -> bytes:
    """A datagram sealed with the cluster's key around any payload, sent `age_ms` ago
    (layout: kvs.net.datagrams)."""
    return seal_payload(payload, key, system_wall_ms() - age_ms)


def test_garbage_datagrams_are_dropped_and_counted_and_change_nothing(
    cluster: LiveCluster,
) -> None:
    url = cluster.url("node1")
    target = ("127.0.0.1", cluster.specs["node1"].gossip_port)
    key = derive_key(cluster.secret(), "gossip")
    assert key is not None
    wrong = StampedCodec(derive_key("wrong-secret", "gossip"), clock=system_wall_ms)
    intruder = MemberInfo(
        node_id="intruder",
        joined_timestamp=1,
        incarnation=99,
        gossip=("127.0.0.1", 9),
        sync=("127.0.0.1", 9),
        http=("127.0.0.1", 9),
    )
    rng = random.Random(7)
    noise = [b"\x00" + rng.randbytes(rng.randint(1, 1200)) for _ in range(5)]
    valid_payload = msgpack.packb([[1, 5, "x", "node1"]])  # a well-formed ping, as msgpack
    sent: dict[str, list[bytes]] = {
        "magic": [*noise, valid_payload[:-3]],  # random bytes; bare truncated msgpack
        "short": [b"K", b"KV"],
        "version": [b"KV\x05" + bytes(20), b"KV\x81" + bytes(16) + valid_payload],  # v1
        "stale": [seal(key, valid_payload, age_ms=120_000), seal(key, valid_payload, -90_000)],
        "malformed": [
            seal(key, valid_payload[:-3]),
            seal(key, b"\xc1"),
        ],  # truncated; never-used byte
        "shape": [
            seal(key, msgpack.packb({"not": "a list"})),
            seal(key, msgpack.packb([[99, 1, 2]])),  # unknown kind
            seal(key, msgpack.packb([[1, -5, "x", "node1"]])),  # negative seq
            seal(key, msgpack.packb([])),  # no messages
        ],
        "auth": [
            wrong.encode([Ping(1, "intruder", "node1")]),
            wrong.encode([Alive(intruder), Dead("node2", 99, "intruder")]),
            DatagramCodec(None).encode([Alive(intruder)]),  # no tag at all
            seal(key, valid_payload)[:-1] + b"\x00",  # right key, payload altered after tagging
        ],
        "oversize": [b"KV" + bytes([0x81]) + os.urandom(1997)],  # 2000 bytes
    }
    before_table = {k: (m["state"], m["incarnation"]) for k, m in members(url).items()}
    before = stats(url)["counters"]

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagrams in sent.values():
            for data in datagrams:
                sock.sendto(data, target)

    def counted() -> bool:
        now = stats(url)["counters"]
        return all(
            now[f"dropped_{reason}"] - before[f"dropped_{reason}"] >= len(datagrams)
            for reason, datagrams in sent.items()
        )

    # The same port's TCP side (push-pull) takes garbage just as calmly.
    with socket.create_connection(target, timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " as a frame length
        conn.settimeout(5)
        assert conn.recv(100) == b""  # closed without a word
    wait_for("every bad datagram counted", counted, 10)
    after = stats(url)["counters"]
    for reason, datagrams in sent.items():
        assert after[f"dropped_{reason}"] - before[f"dropped_{reason}"] == len(datagrams), reason
    assert after["stream_dropped_oversize"] == before["stream_dropped_oversize"] + 1
    total = sum(map(len, sent.values()))
    assert after["datagrams_in"] - before["datagrams_in"] >= total
    assert after["bytes_in"] - before["bytes_in"] >= sum(len(d) for v in sent.values() for d in v)

    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    after_table = {k: (m["state"], m["incarnation"]) for k, m in members(url).items()}
    assert after_table == before_table
    time.sleep(1.0)  # two probe rounds: nothing was smuggled into the protocol either
    for name in NAMES:
        table = members(cluster.url(name))
        assert "intruder" not in table
        assert all(table[n]["state"] == "alive" for n in NAMES), (name, table)


# --- (d) the wrong cluster secret -------------------------------------------------------------


async def wrong_key_push_pull(address: tuple[str, int]) -> str:
    """Open a push-pull session with the wrong key; return the reason it failed."""
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        try:
            await FrameStream.client(
                stream,
                derive_key("wrong-secret", "pushpull"),
                purpose="pushpull",
                nonce=os.urandom(16),
            )
        except WireError as exc:
            return exc.reason
    return "accepted"


def test_a_node_with_the_wrong_secret_cannot_join(cluster: LiveCluster, tmp_path: Path) -> None:
    seed = cluster.specs["node1"]
    stranger_secret = "wrong-secret-" + os.urandom(8).hex()
    config = init_config(tmp_path / "stranger", cluster_secret=stranger_secret, node_id="stranger")
    text = config.read_text()
    assert "seed_nodes: []" in text
    config.write_text(text.replace("seed_nodes: []", f'seed_nodes: ["{seed.http_address}"]'))
    # The seed's /cluster/info answers only proof of its own secret.
    info = f"{seed.url}/cluster/info"
    now_ms = time.time_ns() // 1_000_000
    assert httpx.get(info, timeout=5).status_code == 401
    refused = httpx.get(
        info, headers={AUTH_HEADER: auth_header_value(stranger_secret, now_ms) or ""}, timeout=5
    )
    assert refused.status_code == 401
    accepted = httpx.get(
        info, headers={AUTH_HEADER: auth_header_value(cluster.secret(), now_ms) or ""}, timeout=5
    )
    assert accepted.status_code == 200
    assert accepted.json()["gossip_address"] == f"127.0.0.1:{seed.gossip_port}"

    refused_before = stats(seed.url)["counters"]["cluster_info_refused"]
    with running(config, log_dir=tmp_path / "logs") as stranger:
        # Several join attempts (backoff 1 s, 2 s, ...), each refused at /cluster/info.
        wait_for(
            "the stranger fails to join twice",
            lambda: stats(stranger.base_url)["counters"]["join_failures"] >= 2,
            20,
        )
        own = members(stranger.base_url)
        assert list(own) == ["stranger"], own
        assert httpx.get(f"{stranger.base_url}/health", timeout=5).json()["members_alive"] == 1
        for name in NAMES:
            assert "stranger" not in members(cluster.url(name))
        # The seed counted the stranger's refused lookups (at least the two seen above).
        assert stats(seed.url)["counters"]["cluster_info_refused"] >= refused_before + 2
        stderr = stranger.stderr()
        assert "refused our cluster secret" in stderr
        assert_clean_stderr(stderr, stranger_secret)
        assert cluster.secret() not in stderr

    # Even knowing the gossip address, the wrong key cannot open a push-pull session: the
    # seed refuses it at the handshake and counts it.
    before = stats(seed.url)["counters"]["stream_dropped_auth"]
    reason = trio.run(wrong_key_push_pull, ("127.0.0.1", seed.gossip_port))
    assert reason == "auth"
    wait_for(
        "the seed counts the refused push-pull",
        lambda: stats(seed.url)["counters"]["stream_dropped_auth"] == before + 1,
        5,
    )
    for name in NAMES:
        assert "stranger" not in members(cluster.url(name))


# --- (e) kvs members, and the stats endpoint's shape ------------------------------------------


def kvs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvs", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def test_kvs_members_prints_the_table_and_json(cluster: LiveCluster) -> None:
    url = cluster.url("node2")
    table = kvs("members", "--url", url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NODE_ID", "STATE", "INC", "HTTP", "GOSSIP", "CHANGED"]
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert set(rows) == set(NAMES)
    assert "node2 *" in rows["node2"]  # the node asked
    for name in NAMES:
        assert re.search(rf"\balive\b.*{cluster.specs[name].http_address}", rows[name])
        assert re.search(r"\d+[smhd] ago$", rows[name])
    assert lines[-1] == "3 members: 3 alive"

    raw = kvs("members", "--json", env={"KVS_URL": url})  # the URL from the environment
    assert raw.returncode == 0, raw.stderr
    parsed = json.loads(raw.stdout)
    assert {m["node_id"] for m in parsed} == set(NAMES)
    for member in parsed:
        assert {
            "node_id",
            "state",
            "incarnation",
            "joined_timestamp",
            "http_address",
            "gossip_address",
            "sync_address",
            "last_change",
        } <= set(member)

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    unreachable = kvs("members", "--url", f"http://127.0.0.1:{dead_port}", "--timeout", "2")
    assert unreachable.returncode == 1
    assert "cannot reach" in unreachable.stderr and not unreachable.stdout
    not_kvs = kvs("members", "--url", f"{url}/elsewhere")
    assert not_kvs.returncode == 1 and "404" in not_kvs.stderr
    assert kvs("members", "--url", "ftp://example").returncode == 2
    assert kvs("members", "--bogus").returncode == 2

    body = stats(url)
    assert body["node_id"] == "node2"
    assert body["members"] == {"alive": 3, "suspect": 0, "dead": 0, "left": 0}
    assert body["counters"]["datagrams_in"] > 0 and body["counters"]["datagrams_out"] > 0
    assert {"probes", "probe_failures", "refutations"} <= set(body["swim"])
    assert isinstance(body["awareness"], int)
    assert cluster.secret() not in json.dumps(body)


def test_launcher_refuses_a_second_start_and_reports_status(cluster: LiveCluster) -> None:
    again = run_launcher("start", "-n", "3", directory=cluster.directory)
    assert again.returncode == 1
    assert "already running" in again.stderr
    wrong_size = run_launcher("start", "-n", "5", directory=cluster.directory)
    assert wrong_size.returncode == 2
    status = run_launcher("status", directory=cluster.directory)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "3 of 3 nodes up" in status.stdout
    unknown = run_launcher("kill", "node9", directory=cluster.directory)
    assert unknown.returncode == 2 and "no node" in unknown.stderr
    for spec in cluster.specs.values():
        assert spec.config.stat().st_mode & 0o077 == 0  # the configs hold the secret
