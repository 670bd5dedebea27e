"""The swarm's faults, each doing what it says: a paused host's traffic waits (held, not
lost), stream resets and corruption, clock jumps and drift, and disk faults under a node's
store -- what a node does on each (docs/architecture.md, "Disk faults")."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import trio

from kvs.net.transport import Address
from kvs.store import Put, Written
from kvs.testing import asgi
from kvs.testing.cluster import EPOCH_MS, SimCluster
from kvs.testing.faults import DiskFaults
from kvs.testing.harness import run_simulation
from kvs.testing.network import SimNetwork

A, B = "10.0.0.1", "10.0.0.2"
PORT = 7000


def test_a_paused_host_gets_its_datagrams_late_not_never_and_sends_nothing_meanwhile() -> None:
    async def main(net: SimNetwork) -> tuple[list[float], list[float]]:
        a = await net.transport(A).bind_datagram((A, PORT))
        b = await net.transport(B).bind_datagram((B, PORT))
        net.pause(B, 2.0)
        for _ in range(3):
            await a.send(b"to b", (B, PORT))
            await b.send(b"to a", (A, PORT))
        at_b, at_a = [], []
        for _ in range(3):
            await b.receive()
            at_b.append(trio.current_time())
            await a.receive()
            at_a.append(trio.current_time())
        return at_b, at_a

    at_b, at_a = run_simulation(main, seed=1, latency=0.01)
    assert all(t >= 2.0 for t in at_b + at_a)  # held until it resumed, none lost


async def _pair(net: SimNetwork, nursery: trio.Nursery) -> tuple[trio.abc.Stream, list[bytes]]:
    received: list[bytes] = []

    async def handler(stream: trio.abc.Stream, peer: Address) -> None:
        try:
            while data := await stream.receive_some():
                received.append(data)
        except trio.BrokenResourceError:
            received.append(b"<reset>")

    address = await nursery.start(net.transport(B).serve_stream, (B, PORT), handler)
    return await net.transport(A).connect_stream(address), received


def test_stream_faults_flip_bytes_or_reset_both_ends() -> None:
    async def main(net: SimNetwork) -> tuple[list[bytes], list[bytes], dict[str, int]]:
        async with trio.open_nursery() as nursery:
            stream, flipped = await _pair(net, nursery)
            net.set_stream_faults(corrupt=1.0)
            await stream.send_all(b"hello world")
            await trio.sleep(1)
            net.set_stream_faults(reset=1.0)
            await stream.send_all(b"gone")
            await trio.sleep(1)
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"after the reset")
            net.set_stream_faults()
            nursery.cancel_scope.cancel()
        return flipped, [], dict(net.stream_faults_done)

    received, _, done = run_simulation(main, seed=2, latency=0.01)
    assert len(received[0]) == 11 and received[0] != b"hello world"
    assert sum(x != y for x, y in zip(received[0], b"hello world", strict=True)) == 1
    assert received[-1] == b"<reset>" and done == {"reset": 1, "corrupted": 1}


def test_clock_jumps_and_drift_move_one_nodes_wall_clock(tmp_path: Path) -> None:
    async def scenario(net: SimNetwork) -> list[int]:
        async with SimCluster.open(net, tmp_path) as cluster:
            node = await cluster.start("n000")
            sim = cluster.nodes["n000"]
            readings = [node.clock.wall_ms() - EPOCH_MS]
            sim.jump_clock(-3_000)
            readings.append(node.clock.wall_ms() - EPOCH_MS)
            sim.set_drift(0.5)  # 500 ms fast every second
            await trio.sleep(10)
            readings.append(node.clock.wall_ms() - EPOCH_MS)
            sim.set_drift(0.0)
            await trio.sleep(10)
            readings.append(node.clock.wall_ms() - EPOCH_MS)
            return readings

    start, jumped, drifted, steady = run_simulation(scenario, 3)
    assert jumped == start - 3_000
    assert drifted == jumped + 15_000  # 10 s of time, 5 s of drift
    assert steady == drifted + 10_000


def test_a_failing_disk_refuses_writes_never_acknowledges_them_and_keeps_serving_reads(
    tmp_path: Path,
) -> None:
    """EIO or ENOSPC at commit: the request is answered with an error, nothing of it is
    stored (after a restart either), reads go on; once the disk works, writes do."""

    async def scenario(net: SimNetwork) -> dict[str, object]:
        disk = DiskFaults(random.Random(4), kinds=(errno.EIO, errno.ENOSPC))
        async with SimCluster.open(net, tmp_path) as cluster:
            node = await cluster.start("n000", commit_gate=disk)
            app = node.api.app  # type: ignore[attr-defined]
            ok = await asgi.request(app, "PUT", "/kv/kept", body=b'{"v":1}')
            disk.rate = 1.0
            statuses = []
            for i in range(6):
                answer = await asgi.request(app, "PUT", f"/kv/lost/{i}", body=b"1")
                statuses.append(answer.status)
            read = await asgi.request(app, "GET", "/kv/kept")
            stored_during = node.store.get("lost/0")
            disk.rate = 0.0
            after = await asgi.request(app, "PUT", "/kv/after", body=b"2")
            cluster.crash("n000")
            await cluster.nodes["n000"].stopped.wait()  # type: ignore[union-attr]
            node = await cluster.start("n000")
            return {
                "ok": ok.status,
                "statuses": statuses,
                "read": read.status,
                "stored_during": stored_during,
                "after": after.status,
                "lost_after_restart": [node.store.get(f"lost/{i}") for i in range(6)],
                "kept": node.store.get("kept") is not None and node.store.get("after") is not None,
                "failed": dict(disk.failed),
            }

    result = run_simulation(scenario, 4)
    assert result["ok"] == 200 and result["read"] == 200 and result["after"] == 200
    assert result["statuses"] == [503] * 6  # refused, never acknowledged, never a 500
    assert result["stored_during"] is None and result["lost_after_restart"] == [None] * 6
    assert result["kept"] is True
    assert set(result["failed"]) == {"EIO", "ENOSPC"}  # type: ignore[arg-type]


def test_a_store_write_under_a_failing_disk_raises_and_is_not_kept(tmp_path: Path) -> None:
    async def scenario(net: SimNetwork) -> tuple[object, object]:
        disk = DiskFaults(random.Random(5), rate=1.0)
        async with SimCluster.open(net, tmp_path) as cluster:
            cluster.tolerate_failures = True
            node = await cluster.start("n000")
            node.store._commit_gate = disk  # the gate of a running store, for this unit
            with pytest.raises(Exception, match="simulated disk fault"):
                await node.store.write([Put("k", b"1")])
            disk.rate = 0.0
            [outcome] = await node.store.write([Put("k", b"2")])
            return isinstance(outcome, Written), node.store.get("k").value  # type: ignore[union-attr]

    assert run_simulation(scenario, 5) == (True, b"2")
