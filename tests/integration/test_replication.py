"""Replication with real processes (scripts/cluster.py): writes spread to every node, a node
killed with kill -9 in the middle of a write load catches up, a fourth node bootstraps an
existing data set, same-timestamp conflicts made offline (`kvs conflict`) resolve to the
rule's winner everywhere, and hostile bytes on the sync port are dropped, counted, and
change nothing.

One 3-node cluster on loopback serves most of the module; every test begins by bringing it
back to "all running, all alive", so each stands alone in any order. Everything started
here is stopped in teardown, whatever happened. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio

from kvs.net.codec import WireError, derive_key
from kvs.net.frames import FrameStream
from tests.support.cluster import CONVERGE_TIMEOUT, LiveCluster, client, wait_for
from tests.support.procs import assert_clean_stderr, init_config, running

ROOT = Path(__file__).resolve().parents[2]
CONFLICT = ROOT / "scripts" / "conflict.py"
HANDSHAKE_TIMEOUT = 10.0  # kvs.sync.limits.REQUEST_TIMEOUT / kvs.net.frames.FRAME_TIMEOUT


def get_json(url: str) -> Any:
    with client() as c:
        response = c.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.json()


def root_of(url: str) -> dict[str, Any] | None:
    """`{"root", "keys"}` from GET /merkle_tree/root, or None if the node does not answer."""
    try:
        with client() as c:
            response = c.get(f"{url}/merkle_tree/root")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def sync_counters(url: str) -> dict[str, int]:
    return dict(get_json(f"{url}/cluster/stats")["sync"]["counters"])


def same_root(urls: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        roots = [root_of(u) for u in urls]
        return all(r is not None for r in roots) and len({json.dumps(r) for r in roots}) == 1

    return check


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    # Every node runs an HTTP worker besides itself (`http_workers: 2`, issue 18): the
    # replication properties below hold whichever process answers a client.
    live = LiveCluster(tmp_path_factory.mktemp("replication"), settings={"http_workers": "2"})
    try:
        started = time.monotonic()
        live.start()
        print(f"\n3-node cluster up, all alive, in {time.monotonic() - started:.1f} s")
        yield live
    finally:
        live.cluster.stop()
    live.assert_clean_logs()


@pytest.fixture
def cluster(live: LiveCluster) -> LiveCluster:
    live.ensure_healthy()
    return live


# --- writes spread ----------------------------------------------------------------------------


def test_writes_on_node1_are_read_back_on_nodes_2_and_3(cluster: LiveCluster) -> None:
    url1 = cluster.url("node1")
    written: dict[str, str] = {}
    with client() as c:
        for i in range(20):
            key = f"spread/doc{i}"
            response = c.put(f"{url1}/kv/{key}", json={"i": i, "text": "x" * (i * 50)})
            assert response.status_code == 200, response.text
            written[key] = response.json()["uuid"]
        assert c.delete(f"{url1}/kv/spread/doc0").status_code == 204
    t0 = time.monotonic()

    def everywhere() -> bool:
        with client() as c:
            for name in ("node2", "node3"):
                url = cluster.url(name)
                if c.get(f"{url}/kv/spread/doc0").status_code != 404:
                    return False
                for key, uid in written.items():
                    if key == "spread/doc0":
                        continue
                    response = c.get(f"{url}/kv/{key}")
                    if response.status_code != 200 or response.json()["uuid"] != uid:
                        return False
        return True

    wait_for("node2 and node3 hold every write (and the delete)", everywhere)
    print(
        f"\n20 writes + 1 delete on node1 readable on nodes 2 and 3 after {time.monotonic() - t0:.2f} s"
    )
    with client() as c:
        doc = c.get(f"{cluster.url('node3')}/kv/spread/doc7").json()
    assert doc["data"] == {"i": 7, "text": "x" * 350}
    wait_for("equal Merkle roots", same_root(cluster.urls()))


# --- kill -9 during a write load --------------------------------------------------------------


class Writer(threading.Thread):
    """Writes fresh keys to one node as fast as it answers -- PUTs, DELETEs of its own earlier
    keys and two-key `_batch`es -- remembering each key's acknowledged state (its uuid, or
    None once deleted); a key whose last request got no answer may be either, and is left
    out of the checks."""

    LIMIT = 4000  # bounded: also what one `_tree` listing (limit 5000) can show

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.prefix = prefix
        self.acked: dict[str, str | None] = {}
        self.unknown: set[str] = set()
        self.by_worker = 0
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        for start in range(0, self.LIMIT, 10):
            # A new connection every ten requests: the kernel picks the process anew.
            with client() as c:
                for i in range(start, start + 10):
                    if self.halt.is_set():
                        return
                    self._one(c, i)

    def _one(self, c: httpx.Client, i: int) -> None:
        key = f"{self.prefix}/{i:05d}"
        if i % 5 == 4:  # delete a key written a moment ago
            keys, request = (
                [f"{self.prefix}/{i - 3:05d}"],
                ("DELETE", f"/kv/{self.prefix}/{i - 3:05d}", None),
            )
        elif i % 7 == 6:
            keys = [key, f"{key}b"]
            ops = [{"op": "put", "key": k, "data": {"i": i}} for k in keys]
            request = ("POST", "/kv/_batch", {"ops": ops})
        else:
            keys, request = [key], ("PUT", f"/kv/{key}", {"i": i})
        method, path, body = request
        try:
            response = c.request(method, f"{self.url}{path}", json=body)
        except httpx.HTTPError:
            self.errors += 1
            self.unknown.update(keys)
            return
        self.by_worker += "kvs-worker" in response.headers
        if response.status_code == 204:
            self.acked[keys[0]] = None
        elif response.status_code == 200 and method == "POST":
            for result in response.json()["results"]:
                self.acked[result["key"]] = result["uuid"]
        elif response.status_code == 200:
            self.acked[key] = response.json()["uuid"]
        else:
            self.errors += 1
            self.unknown.update(keys)

    def expected(self) -> dict[str, str]:
        """What every replica must hold under the prefix: the acknowledged, undeleted keys
        with their uuids (keys of unanswered requests left out)."""
        return {k: u for k, u in self.acked.items() if u is not None and k not in self.unknown}

    def wait_acked(self, count: int, timeout: float = CONVERGE_TIMEOUT) -> None:
        wait_for(f"{count} writes acknowledged", lambda: len(self.acked) >= count, timeout)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        assert not self.is_alive()


def test_a_node_killed_during_a_write_load_catches_up(cluster: LiveCluster) -> None:
    """SIGKILL a node (and so its worker) in the middle of a load of puts, deletes and
    batches through both processes of node 1: nothing acknowledged is lost, nothing deleted
    comes back, and all three replicas converge on exactly what was acknowledged."""
    writer = Writer(cluster.url("node1"), "load")
    writer.start()
    try:
        writer.wait_acked(50)
        cluster.cluster.kill("node3")  # SIGKILL: no leave, no clean close of LMDB
        killed_at = len(writer.acked)
        writer.wait_acked(killed_at + 150)  # writes node3 misses entirely
        cluster.cluster.restart("node3")  # waits until all three see each other alive
        restarted_at = len(writer.acked)
        writer.wait_acked(restarted_at + 150)
    finally:
        writer.stop()
    assert writer.errors == 0  # node1 kept answering throughout
    assert writer.by_worker > 0  # its worker answered some of them
    assert len(writer.acked) < Writer.LIMIT
    deleted = [k for k, u in writer.acked.items() if u is None]
    assert deleted, "the load deletes keys"
    t0 = time.monotonic()
    wait_for("all three nodes reach the same Merkle root", same_root(cluster.urls()))
    print(
        f"\n{len(writer.acked)} keys acknowledged ({killed_at} before the kill, {restarted_at}"
        f" before the restart, {len(deleted)} deleted, {writer.by_worker} answers by a worker);"
        f" same root everywhere {time.monotonic() - t0:.2f} s after the load stopped"
    )
    # Every replica holds exactly the acknowledged versions (no one else wrote them).
    for url in cluster.urls():
        listing = get_json(f"{url}/kv/load/_tree?limit=5000")
        held = {entry["key"]: entry["uuid"] for entry in listing["keys"]}
        assert {k: u for k, u in held.items() if k not in writer.unknown} == writer.expected()


# --- a fourth node bootstraps an existing data set --------------------------------------------


@pytest.mark.parametrize("by", ["records", "snapshot"])
def test_a_fourth_node_joins_an_existing_data_set(
    cluster: LiveCluster, tmp_path: Path, by: str
) -> None:
    """Once taking the records one by one, once by a copy of node1's store (a snapshot)."""
    url1 = cluster.url("node1")
    with client() as c:
        for start in range(0, 2000, 1000):
            ops = [
                {"op": "put", "key": f"dataset/{i:05d}", "data": {"i": i, "pad": "y" * 40}}
                for i in range(start, start + 1000)
            ]
            response = c.post(f"{url1}/kv/_batch", json={"ops": ops})
            assert response.status_code == 200, response.text
    wait_for("the three nodes agree", same_root(cluster.urls()))
    expected = root_of(url1)
    assert expected is not None and expected["keys"] >= 2000

    seed = cluster.specs["node1"].http_address
    name = f"node4-{by}"
    config = init_config(tmp_path / name, cluster_secret=cluster.secret(), node_id=name)
    text = config.read_text()
    assert "seed_nodes: []" in text
    text = text.replace("seed_nodes: []", f'seed_nodes: ["{seed}"]')
    min_keys = 1000 if by == "snapshot" else 0
    config.write_text(text + f"sync_snapshot_min_keys: {min_keys}\n")

    samples: list[tuple[float, bool, str, int]] = []  # (t, syncing, root, keys)
    with running(config, log_dir=tmp_path / "logs") as node4:
        t0 = time.monotonic()

        def converged() -> bool:
            try:
                sync = get_json(f"{node4.base_url}/cluster/stats")["sync"]
            except (httpx.HTTPError, AssertionError):
                return False
            samples.append((time.monotonic() - t0, sync["syncing"], sync["root"], sync["keys"]))
            return not sync["syncing"] and sync["root"] == expected["root"]

        wait_for("node4 reaches the cluster's Merkle root", converged)
        counters = get_json(f"{node4.base_url}/cluster/stats")["sync"]["counters"]
        if by == "snapshot":
            assert counters.get("snapshots") == 1, counters
            assert counters.get("records_merged", 0) < expected["keys"], counters
        else:
            assert "snapshots" not in counters and counters["records_merged"] >= 2000, counters
        health = get_json(f"{node4.base_url}/health")
        assert health["mode"] == "normal"
        assert health["keys"] == get_json(f"{url1}/health")["keys"]  # tombstones aside
        # "syncing" only until then: once it says it is done, it holds everything.
        for t, syncing, root, keys in samples:
            if not syncing:
                assert root == expected["root"], (t, keys, expected)
        seen_syncing = [s for s in samples if s[1]]
        print(
            f"\nnode4 converged on {expected['keys']} keys {samples[-1][0]:.2f} s after /health"
            f" answered; syncing seen in {len(seen_syncing)} of {len(samples)} polls"
        )
        # It now serves reads and takes writes like any member, and its writes spread.
        with client() as c:
            assert c.get(f"{node4.base_url}/kv/dataset/01234").json()["data"]["i"] == 1234
            response = c.put(f"{node4.base_url}/kv/joined/{name}", json={"hello": 4})
            assert response.status_code == 200, response.text
        uid = response.json()["uuid"]
        wait_for(
            "node4's write reaches node1",
            lambda: (
                (root_of(url1) or {}).get("keys") == expected["keys"] + 1
                and get_json(f"{url1}/kv/joined/{name}")["uuid"] == uid
            ),
        )
        assert_clean_stderr(node4.stderr(), cluster.secret())


# --- same-timestamp conflicts written offline -------------------------------------------------


def test_conflict_tool_writes_a_conflict_that_resolves_to_the_rules_winner(
    tmp_path: Path,
) -> None:
    pair = LiveCluster(tmp_path / "pair", names=("node1", "node2"))
    try:
        pair.start()  # once, so each data dir has its node's identity
        pair.cluster.stop()
        data = [str(pair.specs[n].data_dir) for n in pair.names]
        keys = ["conflict/a", "conflict/b/c", "conflict/d"]
        args = [sys.executable, str(CONFLICT), *data, "--json"]
        for key in keys:
            args += ["--key", key]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert [k["key"] for k in report["keys"]] == keys
        sides = {s["label"]: s for s in report["sides"]}
        older = min(sides.values(), key=lambda s: s["joined_timestamp"])
        for entry in report["keys"]:
            uuids = {v["uuid"] for v in entry["versions"]}
            assert len(uuids) == 2  # distinct writes, the same HLC
            assert entry["winner_node"] == older["node_id"]  # the oldest-node rule
            assert "joined the cluster earlier" in entry["reason"]
        # The human-readable form names the winner too, and a running node is refused.
        pair.start()
        refused = subprocess.run(
            [sys.executable, str(CONFLICT), *data], capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == 1 and "in use" in refused.stderr

        t0 = time.monotonic()

        def both_hold_the_winner() -> bool:
            with client() as c:
                for url in pair.urls():
                    for entry in report["keys"]:
                        response = c.get(f"{url}/kv/{entry['key']}")
                        if response.status_code != 200:
                            return False
                        body = response.json()
                        if body["uuid"] != entry["winner_uuid"]:
                            return False
                        assert body["data"] == entry["winner_data"]
                        assert body["timestamp"] == report["timestamp"]
            return True

        wait_for("both nodes hold every key's winning version", both_hold_the_winner)
        wait_for("equal Merkle roots", same_root(pair.urls()))
        print(
            f"\nconflicts resolved to {older['node_id']}'s writes in {time.monotonic() - t0:.2f} s"
        )
    finally:
        pair.cluster.stop()
    pair.assert_clean_logs()


def test_kvs_conflict_subcommand_refuses_bad_input(tmp_path: Path) -> None:
    kvs = [sys.executable, "-m", "kvs", "conflict"]
    empty = tmp_path / "empty"
    empty.mkdir()
    not_a_store = subprocess.run(
        [*kvs, str(empty), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert not_a_store.returncode == 1 and "no data.mdb" in not_a_store.stderr
    same = subprocess.run(
        [*kvs, str(empty), str(empty)], capture_output=True, text=True, timeout=60
    )
    assert same.returncode == 1 and "same directory" in same.stderr
    bad_key = subprocess.run(
        [*kvs, str(empty), str(tmp_path), "--key", "a//b"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_key.returncode == 2 and "empty segment" in bad_key.stderr
    assert not list(empty.iterdir())  # nothing was created


# --- hostile bytes on the sync port -----------------------------------------------------------


async def _closed_by_peer(stream: trio.SocketStream, within: float) -> float:
    """Seconds until the node closes the connection (EOF or reset), reading what it sends."""
    started = trio.current_time()
    with trio.fail_after(within):
        while True:
            try:
                if not await stream.receive_some(65536):
                    break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
    return trio.current_time() - started


async def _raw(address: tuple[str, int], data: bytes, *, eof: bool = False) -> float:
    stream = await trio.open_tcp_stream(*address)
    async with stream:
        await stream.send_all(data)
        if eof:
            await stream.send_eof()
        return await _closed_by_peer(stream, 5)


async def _keyed(
    address: tuple[str, int], key: bytes | None
) -> tuple[trio.SocketStream, FrameStream]:
    stream = await trio.open_tcp_stream(*address)
    frames = await FrameStream.client(stream, key, purpose="sync", nonce=os.urandom(16))
    return stream, frames


async def hostile_session(address: tuple[str, int], secret: str) -> dict[str, Any]:
    """Every kind of bad input at once; returns what each connection saw."""
    right = derive_key(secret, "sync")
    seen: dict[str, Any] = {}

    async def garbage() -> None:
        seen["http"] = await _raw(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # huge length
        seen["noise"] = await _raw(address, b"\x00\x00\x00\x08" + b"\xc1" * 8)  # not msgpack
        hello_like = msgpack.packb(["not-kvs", 1])
        seen["stranger"] = await _raw(address, len(hello_like).to_bytes(4, "big") + hello_like)

    async def four_gigabytes() -> None:
        seen["4gb"] = await _raw(address, b"\xff\xff\xff\xff" + b"x" * 1000)

    async def truncated() -> None:
        seen["truncated"] = await _raw(address, b"\x00\x00\x00\x40" + b"\x93" * 10, eof=True)

    async def wrong_key(name: str, key: bytes | None) -> None:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            try:
                await FrameStream.client(stream, key, purpose="sync", nonce=os.urandom(16))
                seen[name] = "accepted"
            except WireError as exc:
                seen[name] = exc.reason

    async def keyed_then(name: str, send: Callable[[trio.SocketStream, FrameStream], Any]) -> None:
        stream, frames = await _keyed(address, right)
        async with stream:
            await send(stream, frames)
            seen[name] = await _closed_by_peer(stream, 5)

    async def big_frame(stream: trio.SocketStream, frames: FrameStream) -> None:
        await stream.send_all(b"\xff\xff\xff\xff" + b"x" * 100)  # 4 GB, after a good handshake

    async def short_frame(stream: trio.SocketStream, frames: FrameStream) -> None:
        await stream.send_all(b"\x00\x00\x01\x00" + b"y" * 40)
        await stream.send_eof()

    async def forged_tag(stream: trio.SocketStream, frames: FrameStream) -> None:
        payload = msgpack.packb({"op": "root"})
        body = os.urandom(16) + payload
        await stream.send_all(len(body).to_bytes(4, "big") + body)

    async def bad_record(stream: trio.SocketStream, frames: FrameStream) -> None:
        await frames.send({"op": "push", "records": [b"\x93garbage"]})

    async def hostile_key(stream: trio.SocketStream, frames: FrameStream) -> None:
        record = msgpack.packb(
            [1, "../etc", b'{"x":1}', False, 1 << 40, 1, "evil", "u", None, "", "", 0, 0],
            use_bin_type=True,
        )
        await frames.send({"op": "push", "records": [record]})

    async def unknown_op(stream: trio.SocketStream, frames: FrameStream) -> None:
        await frames.send({"op": "drop_all_tables"})

    async def silent() -> None:
        stream = await trio.open_tcp_stream(*address)
        async with stream:
            seen["silent"] = await _closed_by_peer(stream, HANDSHAKE_TIMEOUT + 8)

    async def drip() -> None:
        hello = msgpack.packb(
            ["kvs-hello", 1, "sync", os.urandom(16), True, None], use_bin_type=True
        )
        data = len(hello).to_bytes(4, "big") + hello
        seen["drip_bytes"] = len(data)
        seen["drip_closed"] = False
        stream = await trio.open_tcp_stream(*address)
        started = trio.current_time()
        async with stream:
            with trio.move_on_after(HANDSHAKE_TIMEOUT + 8):
                for byte in data:  # one byte a second: ~40 s for the whole hello
                    try:
                        await stream.send_all(bytes([byte]))
                        with trio.move_on_after(1.0):
                            if not await stream.receive_some(100):
                                seen["drip_closed"] = True
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        seen["drip_closed"] = True
                    if seen["drip_closed"]:
                        break
            seen["drip"] = trio.current_time() - started

    async with trio.open_nursery() as nursery:
        nursery.start_soon(garbage)
        nursery.start_soon(four_gigabytes)
        nursery.start_soon(truncated)
        nursery.start_soon(wrong_key, "wrong_key", derive_key("wrong", "sync"))
        nursery.start_soon(wrong_key, "no_key", None)
        for name, send in (
            ("keyed_4gb", big_frame),
            ("keyed_truncated", short_frame),
            ("forged_tag", forged_tag),
            ("bad_record", bad_record),
            ("hostile_key", hostile_key),
            ("unknown_op", unknown_op),
        ):
            nursery.start_soon(keyed_then, name, send)
        nursery.start_soon(silent)
        nursery.start_soon(drip)
    return seen


def test_hostile_input_on_the_sync_port_is_dropped_counted_and_changes_nothing(
    cluster: LiveCluster,
) -> None:
    url = cluster.url("node2")
    address = ("127.0.0.1", cluster.specs["node2"].sync_port)
    wait_for("equal Merkle roots", same_root(cluster.urls()))
    root_before = root_of(url)
    before = sync_counters(url)
    t0 = time.monotonic()
    seen = trio.run(hostile_session, address, cluster.secret())
    took = time.monotonic() - t0
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in seen.items()}
    print(f"\nhostile session: {took:.1f} s; {shown}")

    assert seen["wrong_key"] == "auth" and seen["no_key"] == "auth"
    # The silent and the drip-feeding peer were cut off at the handshake deadline, the drip
    # long before it could finish its hello.
    assert HANDSHAKE_TIMEOUT - 1 <= seen["silent"] <= HANDSHAKE_TIMEOUT + 5
    assert seen["drip_closed"]
    assert seen["drip"] <= HANDSHAKE_TIMEOUT + 5 < seen["drip_bytes"]

    expected_drops = 15  # one per hostile connection
    wait_for(
        "every dropped connection counted",
        lambda: drops(sync_counters(url)) - drops(before) >= expected_drops,
        10,
    )
    after = sync_counters(url)
    delta = {
        k: after[k] - before.get(k, 0)
        for k in after
        if k.startswith("dropped_") and after[k] != before.get(k, 0)
    }
    print(f"sync drop counters: {delta}")
    assert delta.get("dropped_oversize", 0) >= 3  # HTTP, 4 GB before and after the handshake
    assert delta.get("dropped_malformed", 0) >= 1
    assert delta.get("dropped_magic", 0) >= 1
    assert delta.get("dropped_short", 0) >= 2  # truncated before and after the handshake
    assert delta.get("dropped_auth", 0) >= 3  # wrong key, no key, forged frame tag
    assert delta.get("dropped_bad_record", 0) >= 2
    assert delta.get("dropped_shape", 0) >= 1
    assert delta.get("dropped_timeout", 0) >= 2  # the silent and the drip-feeding peer
    assert delta.get("dropped_io", 0) == 0  # a slow peer is told apart from a broken one
    assert sum(delta.values()) == expected_drops
    assert after.get("records_merged", 0) == before.get("records_merged", 0)

    # Still serving, nothing written, and replication still works.
    with client() as c:
        assert c.get(f"{url}/health").status_code == 200
        assert c.get(f"{url}/kv/etc").status_code == 404
    assert root_before is not None and root_of(url) == root_before
    with client() as c:
        uid = c.put(f"{cluster.url('node1')}/kv/after/hostile", json=1).json()["uuid"]

    def replicated() -> bool:
        with client() as c:
            response = c.get(f"{url}/kv/after/hostile")
        return response.status_code == 200 and response.json()["uuid"] == uid

    wait_for("a write on node1 still reaches node2", replicated)


def drops(counters: dict[str, int]) -> int:
    """Connections the sync server dropped, whatever the reason."""
    return sum(v for k, v in counters.items() if k.startswith("dropped_"))
