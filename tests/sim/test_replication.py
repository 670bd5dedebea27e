"""Replication in the deterministic simulator: whole nodes, simulated network, mock time.

A `History` records every ACKNOWLEDGED write and delete -- `store.write` called directly on a
running node, which is what the HTTP API does once a request is valid; a write whose node
crashed before the outcome came back is not acknowledged -- and every version any node ever
created. Once the faults stop and the replicas agree, `History.check` asserts the issue's
properties:

  (a) every live node holds byte-identical records (versions and tombstones included) and
      the same Merkle tree, which equals a tree rebuilt from its store;
  (b) every acknowledged write is the current version on every node or superseded by a
      version `resolve` orders after it;
  (c) no deleted key comes back unless written again after the delete;
  (d) membership converged;
plus: no replica holds a version that no node ever wrote, and none serves an expired value.

Each test is a plain function running its own `trio.run` through `run_simulation`, so a seed
replays exactly: a failure prints its seed, and `KVS_SIM_SEED=<seed>` reruns it. The
property-based test runs a fixed set of 25 schedules; `KVS_SIM_EXAMPLES=<n>` explores n
random ones instead.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kvs.model import Record, RecordCodec, Version, resolve
from kvs.net.messages import State
from kvs.node import Node
from kvs.store import Change, Delete, Put, Written
from kvs.sync.merkle import MerkleTree
from kvs.testing.cluster import SimCluster
from kvs.testing.harness import run_simulation, seeds_from_env
from kvs.testing.network import SimNetwork
from tests.support.api import app_of

SEEDS = seeds_from_env([1, 2, 3])
LAN = {"latency": 0.0005, "jitter": 0.001}
WRITE_TIMEOUT = 5.0  # sim seconds: a write not answered by then was never acknowledged
MAX_SKEW_MS = 5_000
CODEC = RecordCodec()
# Every simulated write is an fsync'd LMDB transaction ("os" durability would flush from a
# worker thread, which breaks replay): on tmpfs an fsync costs nothing, on a disk ~1 ms.
FAST_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Node data directories, on tmpfs when there is one (the fsyncs dominate wall time)."""
    with tempfile.TemporaryDirectory(prefix="kvs-sim-", dir=FAST_DIR) as base:
        yield Path(base)


# --- the checker ------------------------------------------------------------------------------


@dataclass
class History:
    """What clients were told, and every version any node created (acknowledged or not)."""

    puts: list[tuple[str, Version, int | None]] = field(default_factory=list)  # + expires_at
    deletes: list[tuple[str, Version]] = field(default_factory=list)
    created: dict[tuple[str, Version], bool] = field(default_factory=dict)  # -> is a delete
    unacknowledged: int = 0  # writes whose node crashed (or stalled) before answering
    refused: int = 0  # deletes of absent keys, writes to a syncing or stopped node

    def watch(self, node: Node) -> None:
        """Record every version `node` creates from now on (call after each (re)start)."""

        def listener(changes: list[Change]) -> None:
            for change in changes:
                if change.local and change.new is not None:
                    self.created[(change.new.key, change.new.version)] = change.new.deleted

        node.store.listeners.append(listener)

    async def _write(self, node: Node | None, op: Put | Delete) -> Record | None:
        if node is None or node.store is None or node.mode != "normal":
            self.refused += 1  # the API answers 503 (or nothing at all): not acknowledged
            return None
        store = node.store
        with trio.move_on_after(WRITE_TIMEOUT):
            [outcome] = await store.write([op])
            if isinstance(outcome, Written):
                return outcome.record
            self.refused += 1
            return None
        self.unacknowledged += 1
        return None

    async def put(
        self, node: Node | None, key: str, value: bytes, expires_at: int | None = None
    ) -> Record | None:
        record = await self._write(node, Put(key, value, expires_at=expires_at))
        if record is not None:
            self.puts.append((key, record.version, expires_at))
        return record

    async def delete(self, node: Node | None, key: str) -> Record | None:
        record = await self._write(node, Delete(key))
        if record is not None:
            self.deletes.append((key, record.version))
        return record

    def check(self, cluster: SimCluster) -> dict[str, Record]:
        """Assert (a)-(d) on the running nodes; returns the agreed records by key."""
        running = cluster.running()
        assert running, "no node is running"
        # (d) membership converged, and nobody is still bootstrapping.
        assert cluster.converged()
        assert all(s.node.mode == "normal" for s in running)  # type: ignore[union-attr]
        # (a) byte-identical records and identical trees, each equal to a rebuilt one.
        raw = {s.name: raw_contents(s.node) for s in running}  # type: ignore[arg-type]
        first, contents = next(iter(raw.items()))
        for name, other in raw.items():
            assert other.keys() == contents.keys(), f"{name} and {first} hold different keys"
            differing = sorted(k for k in contents if other[k] != contents[k])
            assert not differing, f"{name} and {first} differ on {differing[:5]}"
        for sim in running:
            tree = sim.node.sync.tree  # type: ignore[union-attr]
            rebuilt = rebuilt_tree(sim.node)  # type: ignore[arg-type]
            assert tree.levels == rebuilt.levels, f"{sim.name}: incremental tree != rebuilt"
            assert tree.size == rebuilt.size == len(contents)
        records = {key: CODEC.decode(value) for key, value in contents.items()}
        created_versions = {(k, v) for k, v in self.created}
        for key, record in records.items():
            # No invented versions: every stored version was made by some node's write.
            assert (key, record.version) in created_versions, f"{key}: unknown version"
        now = max(s.node.clock.wall_ms() for s in running)  # type: ignore[union-attr]
        # (b) no lost acknowledged write.
        for key, version, _expires_at in self.puts:
            final = records.get(key)
            assert final is not None, f"acknowledged write of {key} vanished"
            assert final.version == version or final.version.newer_than(version), (
                f"acknowledged write of {key} ({version}) lost to an older {final.version}"
            )
        # (c) no deleted key comes back unless written again after the delete.
        for key, version in self.deletes:
            final = records.get(key)
            assert final is not None, f"the tombstone of {key} vanished"
            if final.version == version:
                assert final.deleted
            else:
                assert final.version.newer_than(version), f"{key}: delete lost to older data"
                if final.live(now):
                    assert self.created.get((key, final.version)) is False, (
                        f"{key} came back with a version that no write made after the delete"
                    )
        return records

    async def check_expired_not_served(self, cluster: SimCluster) -> int:
        """No replica serves an acknowledged TTL version once ITS clock has passed the expiry
        the client asked for: judged from the client's own `expires_at` and each node's wall
        clock, through each node's HTTP app (not `Record.live`, the code under test). Returns
        how many expired values it found still stored (not yet swept into tombstones), so a
        test can show that the read path itself was judged."""
        judged = 0
        for key, version, expires_at in self.puts:
            if expires_at is None:
                continue
            for sim in cluster.running():
                node = sim.node
                assert node is not None
                stored = node.store.get(key)
                if stored is None or stored.version != version:
                    continue  # superseded (or collected): check (b) judges that
                if node.clock.wall_ms() < expires_at:
                    continue
                judged += stored.value is not None  # not yet swept into a tombstone
                response = await app_of(node).test_client().get(f"/kv/{key}")
                assert response.status_code == 404, (
                    f"{sim.name} serves {key} after it expired ({response.status_code})"
                )
        return judged


def raw_contents(node: Node) -> dict[str, bytes]:
    """Every stored record (tombstones too) as its encoded bytes, by key."""
    keys = [s.key for s in node.store.iter_summaries()]
    raws = node.store.get_raw_many(keys)
    assert len(raws) == len(keys)
    return dict(zip(keys, raws, strict=True))


def rebuilt_tree(node: Node) -> MerkleTree:
    tree = MerkleTree()
    for s in node.store.iter_summaries():
        tree.toggle(s.key, s.version, s.deleted, adding=True)
    return tree


def replicas_agree(cluster: SimCluster) -> bool:
    """Membership converged, nobody bootstrapping, one Merkle root (cheap: polled)."""
    running = cluster.running()
    if not running or not cluster.converged():
        return False
    if any(s.node.sync is None or s.node.sync.syncing for s in running):  # type: ignore[union-attr]
        return False
    return len({s.node.sync.tree.root for s in running}) == 1  # type: ignore[union-attr]


async def start_skewed(
    cluster: SimCluster, skews: list[int], history: History, spacing: float = 0.0
) -> list[str]:
    """Start one node per skew (ms), `spacing` seconds apart, the first being every other
    node's seed."""
    names = [f"n{i:03d}" for i in range(len(skews))]
    for name, skew in zip(names, skews, strict=True):
        seeds = [cluster.nodes[names[0]].http_address] if name != names[0] else []
        history.watch(await cluster.start(name, seeds=seeds, skew_ms=skew))
        await trio.sleep(spacing)
    return names


async def restart(cluster: SimCluster, name: str, history: History) -> Node:
    """Restart a crashed node with a running node as its seed."""
    sim = cluster.nodes[name]
    assert sim.stopped is not None
    await sim.stopped.wait()  # its LMDB environment is closed
    seeds = [s.http_address for s in cluster.running()][:1]
    node = await cluster.start(name, seeds=seeds)
    history.watch(node)
    return node


def skews_for(rng: random.Random, count: int) -> list[int]:
    """Clock offsets within ±5 s that always include both extremes."""
    skews = [-MAX_SKEW_MS, MAX_SKEW_MS] + [
        rng.randint(-MAX_SKEW_MS, MAX_SKEW_MS) for _ in range(count - 2)
    ]
    rng.shuffle(skews)
    return skews


def value(n: int) -> bytes:
    return b'{"w":%d}' % n


async def client(
    cluster: SimCluster,
    history: History,
    rng: random.Random,
    keys: list[str],
    until: float,
    counter: list[int],
) -> None:
    """Random puts and deletes on random running nodes until sim time `until`."""
    while trio.current_time() < until:
        await trio.sleep(rng.expovariate(1 / 0.06))
        running = [s for s in cluster.running() if s.node.mode == "normal"]  # type: ignore[union-attr]
        if not running:
            continue
        node = rng.choice(running).node
        key = rng.choice(keys)
        counter[0] += 1
        if rng.random() < 0.3:
            await history.delete(node, key)
        else:
            await history.put(node, key, value(counter[0]))


# --- the main scenario ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_five_skewed_nodes_converge_under_loss_partition_and_crash(
    tmp_path: Path, seed: int
) -> None:
    history = History()

    async def scenario(net: SimNetwork) -> None:
        rng = net.fork_rng()
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await start_skewed(cluster, skews_for(rng, 5), history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            net.set_faults(loss=rng.uniform(0.05, 0.10))
            keys = [f"k/{i}" for i in range(40)]
            start = trio.current_time()
            hosts = [cluster.nodes[n].host for n in names]
            shuffled = rng.sample(names, len(names))
            victim, other_victim = shuffled[0], shuffled[1]

            counter = [0]

            async def crash_mid_write(nursery: trio.Nursery, name: str) -> None:
                """Crash `name` while writes are on their way to its writer: those it has not
                taken yet are never acknowledged (a write the writer took commits and is
                answered before the crash takes effect, so some seeds have none)."""
                node = cluster.nodes[name].node
                for _ in range(4):
                    counter[0] += 1
                    nursery.start_soon(history.put, node, rng.choice(keys), value(counter[0]))
                await trio.sleep(0)
                cluster.crash(name)

            async def faults(nursery: trio.Nursery) -> None:
                await trio.sleep_until(start + 4)
                net.partition(hosts[:2], hosts[2:])
                await trio.sleep_until(start + 8)
                await crash_mid_write(nursery, victim)
                await trio.sleep_until(start + 14)
                net.heal()
                await trio.sleep_until(start + 17)
                await restart(cluster, victim, history)
                await trio.sleep_until(start + 19)
                await crash_mid_write(nursery, other_victim)
                await trio.sleep_until(start + 22)
                await restart(cluster, other_victim, history)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(faults, nursery)
                for _ in range(3):
                    nursery.start_soon(
                        client,
                        cluster,
                        history,
                        random.Random(rng.random()),
                        keys,
                        start + 25,
                        counter,
                    )
            net.heal()
            net.set_faults(loss=0.0)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=120)
            history.check(cluster)
            # The run exercised what it claims to: conflicting writes and deletes on every key,
            # and anti-entropy repairing what push on write could not deliver.
            assert len(history.puts) > 200 and len(history.deletes) > 30
            assert len({k for k, _, _ in history.puts}) == len(keys)
            fetched = sum(
                s.node.sync.counters["records_fetched"]  # type: ignore[union-attr]
                for s in cluster.running()
            )
            assert fetched > 0, "anti-entropy never had to repair anything: the test is too weak"

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_writes_with_the_same_hlc_resolve_to_the_earliest_joined_node_everywhere(
    tmp_path: Path, seed: int
) -> None:
    history = History()

    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await start_skewed(cluster, [0, 0, 0], history, spacing=0.5)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            hosts = [cluster.nodes[n].host for n in names]
            net.partition([hosts[0]], hosts[1:])
            net.partition([hosts[1]], [hosts[2]])
            await trio.sleep(1.0)  # nothing observed is ahead of the wall clocks now
            older, younger = cluster.nodes[names[0]].node, cluster.nodes[names[1]].node
            assert older.store.identity.joined_timestamp < younger.store.identity.joined_timestamp  # type: ignore[union-attr]
            a = await history.put(younger, "contested", b'"younger"')
            b = await history.put(older, "contested", b'"older"')
            assert a is not None and b is not None
            assert a.version.hlc == b.version.hlc  # same millisecond, same counter
            assert resolve(a, b) is b  # the node that joined first wins the tie
            net.heal()
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            records = history.check(cluster)
            assert records["contested"] == b

    run_simulation(scenario, seed, **LAN)


# --- bootstrap --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_a_fresh_node_is_syncing_until_its_first_exchange_then_has_the_same_root(
    tmp_path: Path, seed: int
) -> None:
    history = History()

    async def scenario(net: SimNetwork) -> None:
        rng = net.fork_rng()
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await start_skewed(cluster, skews_for(rng, 3), history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            for i in range(400):
                node = cluster.nodes[rng.choice(names)].node
                if i % 7 == 3:
                    await history.delete(node, f"data/{rng.randrange(i)}")
                else:
                    await history.put(node, f"data/{i}", value(i))
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            expected = cluster.nodes[names[0]].node.sync.tree.root  # type: ignore[union-attr]
            pushed_before = {
                name: cluster.nodes[name].node.sync.counters["records_pushed"]  # type: ignore[union-attr]
                for name in names
            }

            fresh = await cluster.start(
                "fresh", seeds=[cluster.nodes[names[1]].http_address], skew_ms=-MAX_SKEW_MS
            )
            history.watch(fresh)
            sync = fresh.sync
            assert sync is not None
            assert fresh.mode == "syncing" and fresh.store.count() == 0
            # Writes are refused while syncing (the API's 503), reads are served.
            client = app_of(fresh).test_client()
            response = await client.put("/kv/during/bootstrap", json={"x": 1})
            assert response.status_code == 503
            assert "syncing" in (await response.get_json())["error"]
            assert (await client.get("/kv/data/1")).status_code in (200, 404)
            assert await history.put(fresh, "during/bootstrap", b"1") is None
            # It stays syncing until its first exchange has completed, and not a moment longer.
            while fresh.mode == "syncing":
                assert sync.counters["exchanges"] + sync.counters["exchanges_equal"] == 0
                await trio.sleep(0.001)
            assert sync.counters["exchanges"] >= 1
            assert sync.tree.root == expected
            assert sync.tree.size == rebuilt_tree(fresh).size
            # The data was copied once, by the joiner: no older node pushed it too.
            for name in names:
                counters = cluster.nodes[name].node.sync.counters  # type: ignore[union-attr]
                assert counters["records_pushed"] == pushed_before[name], name
            assert sync.counters["records_fetched"] == sync.tree.size
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            history.check(cluster)
            assert await history.put(fresh, "after/bootstrap", b"2") is not None

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_a_node_restarted_mid_bootstrap_resumes_it_and_one_that_finished_does_not(
    tmp_path: Path, seed: int
) -> None:
    history = History()

    async def scenario(net: SimNetwork) -> None:
        # Paced (sync_throttle_delay) so that the crash lands in the middle of the bootstrap.
        async with SimCluster.open(net, tmp_path, sync_throttle_delay=2.0) as cluster:
            first = await cluster.start("n000")
            history.watch(first)
            await first.store.write([Put(f"data/{i}", value(i)) for i in range(3000)])
            expected = first.sync.tree.root  # type: ignore[union-attr]
            fresh = await cluster.start("fresh", seeds=[cluster.nodes["n000"].http_address])
            await cluster.wait_for(lambda: 0 < fresh.sync.tree.size < 3000, timeout=30)  # type: ignore[union-attr]
            assert fresh.mode == "syncing"
            cluster.crash("fresh")
            fresh = await restart(cluster, "fresh", history)
            assert fresh.store.count() > 0 and fresh.mode == "syncing"  # not taken as done
            await cluster.wait_for(lambda: fresh.mode == "normal", timeout=60)
            assert fresh.sync.tree.root == expected  # type: ignore[union-attr]
            cluster.crash("fresh")
            fresh = await restart(cluster, "fresh", history)
            assert fresh.mode == "normal"
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            history.check(cluster)

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_a_node_partitioned_longer_than_tombstone_ttl_goes_stale_until_re_bootstrapped(
    tmp_path: Path, seed: int
) -> None:
    history = History()

    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path, tombstone_ttl=60.0) as cluster:
            names = await start_skewed(cluster, [0, 0, 0], history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            node0, cut = cluster.nodes[names[0]].node, names[2]
            await history.put(node0, "doomed", value(1))
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            hosts = [cluster.nodes[name].host for name in names]
            net.partition(hosts[:2], hosts[2:])
            await history.delete(node0, "doomed")  # n002 never hears of it
            await trio.sleep(130)  # the tombstone is collected on n000 and n001
            assert node0.store.get("doomed") is None
            net.heal()
            await cluster.wait_for(lambda: cluster.converged(), timeout=120)
            await trio.sleep(15)
            stale = cluster.nodes[cut].node
            assert stale.mode == "stale"
            assert all(cluster.nodes[n].node.mode == "normal" for n in names[:2])
            # The deleted key did not come back, and the stale node takes no writes.
            assert node0.store.get("doomed") is None
            client = app_of(stale).test_client()
            assert (await (await client.get("/health")).get_json())["mode"] == "stale"
            response = await client.put("/kv/x", json=1)
            assert response.status_code == 503
            assert "re-bootstrapped" in (await response.get_json())["error"]
            # The README's procedure: stop it, move its data_dir away, start it with seeds.
            cluster.crash(cut)
            await cluster.nodes[cut].stopped.wait()  # type: ignore[union-attr]
            (tmp_path / cut).rename(tmp_path / f"{cut}.stale")
            fresh = await restart(cluster, cut, history)
            assert fresh.mode == "syncing"
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            assert fresh.store.get("doomed") is None
            history.deletes.clear()  # its tombstone was collected, as it should be
            history.puts = [x for x in history.puts if x[0] != "doomed"]
            history.check(cluster)

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_two_nodes_joining_together_both_bootstrap_from_the_data(tmp_path: Path, seed: int) -> None:
    """The second joins through the first while the first is still empty and syncing: it
    must not take that empty store for the cluster's data."""
    history = History()

    async def scenario(net: SimNetwork) -> None:
        rng = net.fork_rng()
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await start_skewed(cluster, skews_for(rng, 3), history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            node = cluster.nodes[names[0]].node
            await node.store.write([Put(f"data/{i}", value(i)) for i in range(1000)])
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            expected = node.sync.tree.root  # type: ignore[union-attr]
            first = await cluster.start("fresh1", seeds=[cluster.nodes[names[0]].http_address])
            second = await cluster.start("fresh2", seeds=[cluster.nodes["fresh1"].http_address])
            pending = {"fresh1": first, "fresh2": second}
            while pending:
                for name, fresh in list(pending.items()):
                    if fresh.mode != "syncing":
                        assert fresh.sync.tree.root == expected, f"{name} left syncing early"  # type: ignore[union-attr]
                        del pending[name]
                await trio.sleep(0.001)
            # fresh2 joined through a node that knew nobody yet: it may learn of the others
            # only at its next membership push-pull (push_pull_interval, 30 s).
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=90)

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_a_new_cluster_whose_nodes_all_start_syncing_starts_taking_writes(
    tmp_path: Path, seed: int
) -> None:
    """Every node lists a seed and starts empty, so every node starts syncing: once they
    find that nobody has data, they take writes."""

    async def scenario(net: SimNetwork) -> None:
        history = History()
        async with SimCluster.open(net, tmp_path) as cluster:
            # SimCluster gives the i-th node host 10.0.0.(i+1).
            seeds = [["10.0.0.2:8000"], ["10.0.0.1:8000"], ["10.0.0.1:8000"]]
            nodes = []
            for i, node_seeds in enumerate(seeds):
                node = await cluster.start(f"n{i:03d}", seeds=node_seeds)
                history.watch(node)
                nodes.append(node)
            assert all(node.mode == "syncing" for node in nodes)
            elapsed = await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            assert elapsed < 15
            assert await history.put(nodes[2], "first", value(1)) is not None
            await cluster.wait_for(
                lambda: all(n.store.get_live("first") is not None for n in nodes), timeout=5
            )
            history.check(cluster)

    run_simulation(scenario, seed, **LAN)


# --- TTL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ttl_records_expire_on_every_replica_and_sync_never_resurrects_them(
    tmp_path: Path, seed: int
) -> None:
    history = History()

    async def scenario(net: SimNetwork) -> None:
        rng = net.fork_rng()
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await start_skewed(cluster, skews_for(rng, 4), history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            nodes = {n: cluster.nodes[n].node for n in names}
            # An older version without TTL that every replica holds...
            for i in range(20):
                await history.put(nodes[names[0]], f"old/{i}", value(i))
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            # ...then one replica is cut off while the others overwrite it with a TTL.
            cut = names[3]
            net.partition([cluster.nodes[cut].host], [cluster.nodes[n].host for n in names[:3]])
            deadlines: dict[str, int] = {}
            holders: dict[str, list[str]] = {}  # the replicas the TTL version can reach
            for i in range(20):
                writer = nodes[names[i % 3]]
                expires_at = writer.clock.wall_ms() + 3_000
                await history.put(writer, f"old/{i}", value(100 + i), expires_at=expires_at)
                deadlines[f"old/{i}"] = expires_at
                holders[f"old/{i}"] = names[:3]
            for i in range(20):  # new keys with a TTL, written on every side
                writer_name = names[i % 4]
                writer = nodes[writer_name]
                expires_at = writer.clock.wall_ms() + 2_000 + 300 * i
                await history.put(writer, f"new/{i}", value(200 + i), expires_at=expires_at)
                deadlines[f"new/{i}"] = expires_at
                holders[f"new/{i}"] = [cut] if writer_name == cut else names[:3]
            # Every replica the TTL version reached serves the key exactly until its own clock
            # reaches expires_at (the skews make that up to 10 s apart in simulated time),
            # even one whose clock is so far ahead that the version arrived expired.
            await trio.sleep(0.5)  # push on write has delivered
            judged = 0
            for step in range(150):
                await trio.sleep(0.1)
                if step % 5 == 0:
                    judged += await history.check_expired_not_served(cluster)
                for key, deadline in deadlines.items():
                    for name in holders[key]:
                        node = nodes[name]
                        live = node.store.get_live(key) is not None
                        assert live == (node.clock.wall_ms() < deadline), (
                            f"{name} {'serves' if live else 'lost'} {key}"
                        )
            net.heal()
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            assert judged > 0, "no expired value was ever read before the sweep took it"
            records = history.check(cluster)
            await history.check_expired_not_served(cluster)
            for key in deadlines:
                assert records[key].deleted, f"{key} came back after it expired"
            # ...and stays gone through many more anti-entropy rounds.
            await trio.sleep(30)
            for name, node in nodes.items():
                for key in deadlines:
                    assert node.store.get_live(key) is None, f"{name} resurrected {key}"
            history.check(cluster)

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_old_tombstones_are_collected_everywhere_and_not_brought_back(
    tmp_path: Path, seed: int
) -> None:
    async def scenario(net: SimNetwork) -> None:
        history = History()
        rng = net.fork_rng()
        async with SimCluster.open(net, tmp_path, tombstone_ttl=20.0) as cluster:
            names = await start_skewed(cluster, skews_for(rng, 3), history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            node = cluster.nodes[names[0]].node
            for i in range(30):
                await history.put(node, f"gone/{i}", value(i))
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            for i in range(30):
                await history.delete(cluster.nodes[names[i % 3]].node, f"gone/{i}")
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            # Past tombstone_ttl (+ the clock skew) every replica has collected them, and
            # sync never copies them back (each side refuses tombstones that old).
            await trio.sleep(20 + 2 * MAX_SKEW_MS / 1000 + 5)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            for sim in cluster.running():
                assert sim.node.store.get_many([f"gone/{i}" for i in range(30)]) == []  # type: ignore[union-attr]
                assert sim.node.sync.tree.size == 0  # type: ignore[union-attr]

    run_simulation(scenario, seed, **LAN)


# --- large values -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_values_near_the_size_limit_replicate_in_frames_below_the_frame_limit(
    tmp_path: Path, seed: int
) -> None:
    """Sixty ~700 kB values are far more than one 16 MiB frame: push and bootstrap must
    split them by bytes, not by count (a frame over the limit used to crash the node)."""
    history = History()

    async def scenario(net: SimNetwork) -> None:
        rng = net.fork_rng()
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await start_skewed(cluster, [0, 0], history)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
            node = cluster.nodes[names[0]].node
            assert node is not None
            big = [
                b'"' + rng.randbytes(350_000).hex().encode() + b'"' for _ in range(60)
            ]  # hex: compresses to about half, so ~350 kB stored, ~21 MB in all
            outcomes = await node.store.write([Put(f"big/{i}", v) for i, v in enumerate(big)])
            for outcome in outcomes:
                assert isinstance(outcome, Written)
                history.puts.append((outcome.record.key, outcome.record.version, None))
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            fresh = await cluster.start("fresh", seeds=[cluster.nodes[names[1]].http_address])
            history.watch(fresh)
            await cluster.wait_for(lambda: replicas_agree(cluster), timeout=60)
            history.check(cluster)
            assert fresh.store.get("big/7").value == big[7]

    run_simulation(scenario, seed, **LAN)


# --- property-based schedules -----------------------------------------------------------------

NODES = 3
KEYS = 4


@dataclass(frozen=True)
class Step:
    kind: str  # put, ttl_put, delete, partition, heal, crash, restart, sleep
    node: int = 0
    key: int = 0
    amount: float = 0.0


steps = st.one_of(
    st.builds(Step, st.just("put"), st.integers(0, NODES - 1), st.integers(0, KEYS - 1)),
    st.builds(
        Step,
        st.just("ttl_put"),
        st.integers(0, NODES - 1),
        st.integers(0, KEYS - 1),
        st.sampled_from([0.5, 3.0, 8.0]),
    ),
    st.builds(Step, st.just("delete"), st.integers(0, NODES - 1), st.integers(0, KEYS - 1)),
    st.builds(Step, st.just("partition"), st.integers(0, NODES - 1)),
    st.builds(Step, st.just("heal")),
    st.builds(Step, st.just("crash"), st.integers(0, NODES - 1)),
    st.builds(Step, st.just("restart"), st.integers(0, NODES - 1)),
    st.builds(Step, st.just("sleep"), amount=st.sampled_from([0.01, 0.5, 2.0, 6.0])),
)


async def run_schedule(
    net: SimNetwork, base: Path, schedule: list[Step], skews: list[int], loss: float
) -> None:
    history = History()
    async with SimCluster.open(net, base) as cluster:
        names = await start_skewed(cluster, skews, history)
        await cluster.wait_for(lambda: replicas_agree(cluster), timeout=30)
        net.set_faults(loss=loss)
        hosts = [cluster.nodes[n].host for n in names]
        for n, step in enumerate(schedule):
            sim = cluster.nodes[names[step.node]]
            key = f"key/{step.key}"
            if step.kind == "put":
                await history.put(sim.node, key, value(n))
            elif step.kind == "ttl_put":
                node = sim.node
                if node is not None and node.store is not None:
                    expires = node.clock.wall_ms() + int(step.amount * 1000)
                    await history.put(node, key, value(n), expires_at=expires)
            elif step.kind == "delete":
                await history.delete(sim.node, key)
            elif step.kind == "partition":
                net.partition([hosts[step.node]], [h for h in hosts if h != hosts[step.node]])
            elif step.kind == "heal":
                net.heal()
            elif step.kind == "crash" and sim.node is not None:
                cluster.crash(sim.name)
            elif step.kind == "restart" and sim.node is None:
                await restart(cluster, sim.name, history)
            elif step.kind == "sleep":
                await trio.sleep(step.amount)
            await trio.sleep(0.01)
        net.heal()
        net.set_faults(loss=0.0)
        for name in names:
            if cluster.nodes[name].node is None:
                await restart(cluster, name, history)
        await cluster.wait_for(lambda: replicas_agree(cluster), timeout=120)
        history.check(cluster)
        await history.check_expired_not_served(cluster)
        for sim in cluster.running():
            assert sim.node.membership is not None  # type: ignore[union-attr]
            assert all(
                m.state is State.ALIVE
                for m in sim.node.membership.core.members.values()  # type: ignore[union-attr]
            )


@settings(
    max_examples=int(os.environ.get("KVS_SIM_EXAMPLES", "25")),
    derandomize=os.environ.get("KVS_SIM_EXAMPLES") is None,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    # No shrinking: each example is a whole simulation, so shrinking takes many minutes. A
    # failure prints its schedule, skews, loss and seed, which replay it exactly.
    phases=[Phase.explicit, Phase.generate],
)
@given(
    schedule=st.lists(steps, min_size=3, max_size=20),
    skews=st.lists(st.sampled_from([-MAX_SKEW_MS, 0, MAX_SKEW_MS]), min_size=3, max_size=3),
    loss=st.sampled_from([0.0, 0.05, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_any_schedule_of_writes_and_faults_converges(
    schedule: list[Step], skews: list[int], loss: float, seed: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="kvs-sim-", dir=FAST_DIR) as base:

        async def scenario(net: SimNetwork) -> None:
            await run_schedule(net, Path(base), schedule, skews, loss)

        run_simulation(scenario, seed, **LAN)
