"""Membership in the deterministic simulator: whole nodes, simulated network, mock time.

Each test is a plain (sync) function running its own `trio.run` through `run_simulation`, so
a seed replays exactly: a failure prints its seed, and `KVS_SIM_SEED=<seed>` reruns it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from kvs.net.messages import State
from kvs.testing.cluster import SimCluster
from kvs.testing.harness import run_simulation, seeds_from_env
from kvs.testing.network import SimNetwork

SEEDS = seeds_from_env([1, 2, 3])
LAN = {"latency": 0.0005, "jitter": 0.001}


# One seed (~15 s of wall time): the suite must stay under five minutes on 2 cores; the
# smaller scenarios below run every seed, and KVS_SIM_SEED=<seed> runs this one with others.
@pytest.mark.parametrize("seed", SEEDS[:1])
def test_fifty_nodes_join_through_one_seed_and_agree(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(50)
            elapsed = await cluster.wait_for(cluster.converged, timeout=60)
            assert elapsed < 30
            # Every table names the same 50 members, and each member's incarnation agrees.
            tables = [
                {k: (m.state, m.incarnation) for k, m in s.node.membership.core.members.items()}
                for s in cluster.running()
            ]
            assert all(table == tables[0] for table in tables)
            assert sorted(tables[0]) == sorted(names)

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_killed_node_is_declared_dead_by_every_live_node(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(10)
            await cluster.wait_for(cluster.converged, timeout=30)
            victim = names[4]
            cluster.crash(victim)
            elapsed = await cluster.wait_for(
                lambda: cluster.all_see(victim, State.DEAD), timeout=60
            )
            # Bounded by a probe cycle plus the longest suspicion timeout
            # (suspicion_mult * log10(N) * probe_interval * suspicion_max_timeout_mult = 9 s).
            assert elapsed < 15
            # Nobody else was harmed.
            for sim in cluster.running():
                assert cluster.states_of(sim.name) == {
                    s.name: State.ALIVE for s in cluster.running() if s.name != sim.name
                }

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_node_that_leaves_is_marked_left_not_dead(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(8)
            await cluster.wait_for(cluster.converged, timeout=30)
            await cluster.stop(names[2])
            await cluster.wait_for(lambda: cluster.all_see(names[2], State.LEFT), timeout=10)
            await trio.sleep(30)  # and it stays "left": no later suspicion turns it "dead"
            assert cluster.all_see(names[2], State.LEFT)

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_slow_but_alive_node_refutes_suspicion_and_stays_alive(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(6)
            await cluster.wait_for(cluster.converged, timeout=30)
            slow = cluster.nodes[names[3]]
            # Its answers arrive late (after probe_timeout, and sometimes after the whole
            # probe interval), but nothing is lost: it gets suspected and must refute.
            for other in cluster.running():
                if other is not slow:
                    net.set_link(slow.host, other.host, latency=0.2, jitter=0.2)
                    net.set_link(other.host, slow.host, latency=0.2, jitter=0.2)
            suspected = False
            for _ in range(300):
                await trio.sleep(0.1)
                states = cluster.states_of(slow.name)
                suspected = suspected or State.SUSPECT in states.values()
                assert State.DEAD not in states.values()
            assert suspected, "the slow node was never suspected: the test proves nothing"
            assert slow.node is not None and slow.node.membership is not None
            assert slow.node.membership.core.stats["refutations"] > 0
            for other in cluster.running():
                if other is not slow:
                    net.clear_link(slow.host, other.host)
                    net.clear_link(other.host, slow.host)
            await cluster.wait_for(lambda: cluster.all_see(slow.name, State.ALIVE), timeout=20)

    run_simulation(scenario, seed, **LAN)


# Ten simulated minutes cost ~3 s of wall time per node: one seed by default (set
# KVS_SIM_SEED to try others), six nodes so that every node probes and is probed often.
@pytest.mark.parametrize("seed", SEEDS[:1])
def test_ten_percent_loss_for_ten_minutes_declares_no_one_dead(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            await cluster.start_many(6)
            await cluster.wait_for(cluster.converged, timeout=30)
            net.set_faults(loss=0.10)
            deaths: list[tuple[float, str, str]] = []
            suspicions = 0
            for sim in cluster.running():
                membership = sim.node.membership  # type: ignore[union-attr]

                def record(change, observer=sim.name):  # noqa: ANN001, ANN202
                    nonlocal suspicions
                    if change.state is State.DEAD:
                        deaths.append((trio.current_time(), observer, change.member.node_id))
                    elif change.state is State.SUSPECT:
                        suspicions += 1

                membership.listeners.append(record)
            await trio.sleep(600)
            assert deaths == []
            assert cluster.converged()
            assert suspicions > 0, "10% loss caused no suspicion at all: the test proves nothing"

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_partition_heals_into_one_table(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(10)
            await cluster.wait_for(cluster.converged, timeout=30)
            left = [cluster.nodes[n].host for n in names[:5]]
            right = [cluster.nodes[n].host for n in names[5:]]
            net.partition(left, right)
            # Each side declares the other dead...
            await cluster.wait_for(
                lambda: (
                    all(cluster.all_see(n, State.DEAD) is False for n in names)
                    and all(cluster.view(a)[b] is State.DEAD for a in names[:5] for b in names[5:])
                ),
                timeout=60,
            )
            net.heal()
            # ...and after the heal they find each other again.
            elapsed = await cluster.wait_for(cluster.converged, timeout=120)
            assert elapsed < 60

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_one_way_partition_does_not_kill_a_reachable_node(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(6)
            await cluster.wait_for(cluster.converged, timeout=30)
            a, b = cluster.nodes[names[1]].host, cluster.nodes[names[2]].host
            net.partition([a], [b], one_way=True)  # a cannot reach b; b still reaches a
            await trio.sleep(60)
            # Indirect probes through the others keep b alive in a's eyes, and vice versa.
            assert cluster.converged()
            net.heal()

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_restarted_node_rejoins_with_a_higher_incarnation(tmp_path: Path, seed: int) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(6)
            await cluster.wait_for(cluster.converged, timeout=30)
            victim = names[3]
            before = cluster.nodes[victim].node.membership.core.me_info.incarnation  # type: ignore[union-attr]
            cluster.crash(victim)
            await cluster.wait_for(lambda: cluster.all_see(victim, State.DEAD), timeout=60)
            node = await cluster.start(victim, seeds=[cluster.nodes[names[0]].http_address])
            after = node.membership.core.me_info.incarnation  # type: ignore[union-attr]
            assert after > before
            await cluster.wait_for(cluster.converged, timeout=30)
            for sim in cluster.running():
                if sim.name != victim:
                    member = sim.node.membership.core.members[victim]  # type: ignore[union-attr]
                    assert member.incarnation >= after

    run_simulation(scenario, seed, **LAN)


@pytest.mark.parametrize("seed", SEEDS[:1])
def test_a_restarted_node_without_seeds_rejoins_through_its_known_peers(
    tmp_path: Path, seed: int
) -> None:
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(net, tmp_path) as cluster:
            names = await cluster.start_many(5)  # names[0] is everyone's seed and has none
            await cluster.wait_for(cluster.converged, timeout=30)
            await trio.sleep(15)  # a known-peers snapshot is taken (every 10 s)
            victim = names[0]
            cluster.crash(victim)
            await cluster.wait_for(lambda: cluster.all_see(victim, State.DEAD), timeout=60)
            node = await cluster.start(victim)  # no seeds, as configured
            # Well before the others' reconnect loops (every 5-15 s) would find it.
            elapsed = await cluster.wait_for(cluster.converged, timeout=30)
            assert elapsed < 3, elapsed
            assert node.membership is not None
            assert node.membership.counters["rejoins"] == 1
            assert node.membership.counters["reconnects"] == 0

    run_simulation(scenario, seed, **LAN)


def test_the_same_seed_replays_the_same_history(tmp_path: Path) -> None:
    def history(run: int) -> list[tuple[str, str, str]]:
        events: list[tuple[str, str, str]] = []

        async def scenario(net: SimNetwork) -> None:
            async with SimCluster.open(net, tmp_path / str(run)) as cluster:
                names = await cluster.start_many(8)
                for sim in cluster.nodes.values():
                    sim.node.membership.listeners.append(  # type: ignore[union-attr]
                        lambda c, o=sim.name: events.append(
                            (f"{trio.current_time():.6f}", o, f"{c.member.node_id}:{c.state}")
                        )
                    )
                await cluster.wait_for(cluster.converged, timeout=30)
                net.set_faults(loss=0.05)
                cluster.crash(names[5])
                await trio.sleep(20)

        run_simulation(scenario, 42, **LAN)
        return events

    first, second = history(1), history(2)
    assert first and first == second
