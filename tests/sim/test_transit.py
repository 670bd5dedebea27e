"""What an eavesdropper on node-to-node links sees, and what replaying it does (issue 14).

Three whole nodes on the simulated network with a wiretap (`SimNetwork(capture=True)`)
replicate keys, values and a token-authenticated write that carry unique markers; no
captured datagram or stream chunk holds any of them, nor the token or the cluster secret.
Then every captured datagram is re-injected from its original source, and every captured
client side of a connection is replayed on a fresh connection: no store changes, membership
stays the same, and each replay is refused and counted.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kvs.node import Node
from kvs.store import Put, Written
from kvs.testing.cluster import SimCluster
from kvs.testing.harness import run_simulation, seeds_from_env
from kvs.testing.network import Captured, SimNetwork
from tests.support.api import client_of, put

SEEDS = seeds_from_env([1, 2])
LAN = {"latency": 0.0005, "jitter": 0.001}
SECRET = "simulated-cluster-secret"  # SimCluster's
FAST_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
ATTACKER = "10.66.0.1"


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kvs-sim-", dir=FAST_DIR) as base:
        yield Path(base)


def contents(node: Node) -> dict[str, bytes]:
    keys = [s.key for s in node.store.iter_summaries()]
    return dict(zip(keys, node.store.get_raw_many(keys), strict=True))


def drops(node: Node) -> dict[str, int]:
    """The node's refusals, by where and why (membership datagrams, its streams, sync)."""
    assert node.membership is not None and node.sync is not None
    out = {f"gossip.{k}": v for k, v in node.membership.counters.items() if "dropped_" in k}
    out.update({f"sync.{k}": v for k, v in node.sync.counters.items() if k.startswith("dropped_")})
    return out


def total(before: list[dict[str, int]], after: list[dict[str, int]], name: str) -> int:
    return sum(a.get(name, 0) - b.get(name, 0) for b, a in zip(before, after, strict=True))


async def replay_connection(net: SimNetwork, dst: tuple[str, int], data: bytes) -> None:
    """Open a connection of our own to `dst` and send what a client once sent there."""
    with trio.move_on_after(15):
        stream = await net.transport(ATTACKER).connect_stream(dst)
        async with stream:
            try:
                await stream.send_all(data)
                while await stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


@pytest.mark.parametrize(("seed", "secret"), [(s, SECRET) for s in SEEDS] + [(1, "")])
def test_a_wiretap_reads_nothing_and_replaying_it_changes_nothing(
    tmp_path: Path, seed: int, secret: str
) -> None:
    """(With no cluster secret, the control: the same tap reads the markers in clear.)"""

    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(
            net, tmp_path, auth_enabled=True, cluster_secret=secret
        ) as cluster:
            names = await cluster.start_many(3)
            await cluster.wait_for(cluster.converged, timeout=60)
            nodes = [cluster.nodes[n].node for n in names]
            assert all(n is not None for n in nodes)
            markers = [SECRET]
            for i, node in enumerate(nodes):
                key, value = f"keymarker-{seed}-{i}", f"valuemarker-{seed}-{i}"
                markers += [key, value]
                [outcome] = await node.store.write([Put(key, b'{"v":"%s"}' % value.encode())])  # type: ignore[union-attr]
                assert isinstance(outcome, Written)
            token = nodes[0].root_token_path.read_text().strip()  # type: ignore[union-attr]
            markers += [token, "apikeymarker", "apivaluemarker"]
            auth = {"Authorization": f"Bearer {token}"}
            await put(client_of(nodes[0]), "apikeymarker", {"a": "apivaluemarker"}, headers=auth)  # type: ignore[arg-type]

            def replicated() -> bool:
                return all(
                    len(n.store.get_raw_many([f"keymarker-{seed}-{i}" for i in range(3)])) == 3  # type: ignore[union-attr]
                    and n.store.get_raw_many(["apikeymarker"])  # type: ignore[union-attr]
                    and len({n.sync.tree.root for n in nodes}) == 1  # type: ignore[union-attr]
                    for n in nodes
                )

            await cluster.wait_for(replicated, timeout=60)
            await trio.sleep(5)  # some more gossip and anti-entropy on the tap

            captured = list(net.captured or [])
            datagrams = [c for c in captured if c.kind == "datagram"]
            chunks = [c for c in captured if c.kind == "stream"]
            assert len(datagrams) > 50 and len(chunks) > 20
            if not secret:  # the control: the tap works, and clear text is readable
                seen = {m for m in markers for c in captured if m.encode() in c.data}
                assert seen >= {f"keymarker-{seed}-0", f"valuemarker-{seed}-0"}, seen
                return
            for c in captured:
                for marker in markers:
                    assert marker.encode() not in c.data, (marker, c.kind, c.src, c.dst)

            # --- replay everything -------------------------------------------------------------
            states = [contents(n) for n in nodes]  # type: ignore[arg-type]
            incarnations = [n.membership.core.me_info.incarnation for n in nodes]  # type: ignore[union-attr]
            before = [drops(n) for n in nodes]  # type: ignore[arg-type]
            to_nodes = [c for c in datagrams if c.dst[0] in {cluster.nodes[n].host for n in names}]
            for c in to_nodes:
                net.inject_datagram(c.src, c.dst, c.data)
            sessions: dict[int, list[Captured]] = defaultdict(list)
            for c in chunks:
                if c.from_client and c.conn is not None:
                    sessions[c.conn].append(c)
            async with trio.open_nursery() as nursery:
                for parts in sessions.values():
                    data = b"".join(p.data for p in parts)
                    nursery.start_soon(replay_connection, net, parts[0].dst, data)
            await trio.sleep(2)
            after = [drops(n) for n in nodes]  # type: ignore[arg-type]

            assert [contents(n) for n in nodes] == states  # type: ignore[arg-type]
            assert cluster.converged()
            assert [n.membership.core.me_info.incarnation for n in nodes] == incarnations  # type: ignore[union-attr]
            # Every datagram replayed was refused, as a replay or (sent > 60 s ago) as stale.
            refused = total(before, after, "gossip.dropped_replay")
            refused += total(before, after, "gossip.dropped_stale")
            assert refused == len(to_nodes) and total(before, after, "gossip.dropped_replay") > 0
            # Every connection replayed failed its handshake: the server's nonce is new.
            streams = total(before, after, "gossip.stream_dropped_auth")
            streams += total(before, after, "sync.dropped_auth")
            assert streams == len(sessions) > 0

    run_simulation(scenario, seed, capture=True, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_rolling_keyring_change_keeps_everyone_alive_and_a_jump_does_not(
    tmp_path: Path, seed: int
) -> None:
    """The rotation of docs/operations.md, in process (what SIGHUP calls), node by node:
    nobody is ever suspected and writes replicate at every step. Then the control: one node
    jumps straight to a secret the others do not accept, and the others declare it dead."""

    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(3)
            await cluster.wait_for(cluster.converged, timeout=60)
            nodes = [cluster.nodes[n].node for n in names]
            suspected: list[tuple[str, str]] = []

            async def watch() -> None:
                while True:
                    for name in names:
                        for other, state in cluster.view(name).items():
                            if state.value != "alive":
                                suspected.append((name, other))
                    await trio.sleep(0.05)

            old, new = SECRET, "the-new-cluster-secret"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                for step, keyring in enumerate([(old, new), (new, old), (new,)]):
                    for i, node in enumerate(nodes):
                        node.reload_keyring(keyring)  # type: ignore[union-attr]
                        await trio.sleep(2)
                        key = f"step{step}/n{i}"
                        [done] = await node.store.write([Put(key, b"1")])  # type: ignore[union-attr]
                        assert isinstance(done, Written)
                await cluster.wait_for(
                    lambda: all(
                        len(n.store.get_raw_many([f"step2/n{i}" for i in range(3)])) == 3  # type: ignore[union-attr]
                        for n in nodes
                    ),
                    timeout=30,
                )
                await trio.sleep(5)
                nursery.cancel_scope.cancel()
            assert suspected == []
            assert all(n.keyring == (new,) for n in nodes)  # type: ignore[union-attr]
            with pytest.raises(ValueError):
                nodes[0].reload_keyring(())  # type: ignore[union-attr]

            nodes[2].reload_keyring(("yet-another-secret",))  # type: ignore[union-attr]
            await cluster.wait_for(
                lambda: cluster.view(names[0])[names[2]].value == "dead", timeout=60
            )
            assert nodes[0].membership.counters["dropped_auth"] > 0  # type: ignore[union-attr]

    run_simulation(scenario, seed, **LAN)
