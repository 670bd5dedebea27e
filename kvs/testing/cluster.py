"""Whole KVS nodes on the simulated network: the deterministic cluster harness.

Each node is the production `Node` with its parts swapped for simulated ones -- the
transport comes from `SimNetwork`, the wall clock from the simulated clock (plus a per-node
skew), randomness from the network's seeded generator, and LMDB writes run inline (a worker
thread would let mock time jump). HTTP is not bound; tests drive the API's app (`node.api.app`) in process.

    def test_something():
        async def scenario(net):
            async with SimCluster.open(net, tmp_path) as cluster:
                await cluster.start_many(5)
                await cluster.wait_for(cluster.converged, timeout=60)
        run_simulation(scenario, seed)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from kvs.config import Config
from kvs.net.messages import Address, State
from kvs.node import Node
from kvs.server import ApiServer
from kvs.testing.network import SimNetwork

EPOCH_MS = 1_767_225_600_000  # 2026-01-01: simulated wall clocks start here
HTTP_PORT = 8000
GOSSIP_PORT = 8001
SYNC_PORT = 8002


@dataclass
class SimNode:
    name: str
    host: str
    node: Node | None = None
    skew_ms: int = 0
    stopped: trio.Event | None = None
    drift: float = 0.0  # the wall clock runs this much fast (+) or slow (-): 0.001 = 1 ms/s
    drift_since: float = 0.0  # simulated time the drift took effect
    commit_gate: Any = None  # a kvs.store.CommitGate under its store (disk faults), or None
    failures: list[Exception] = field(default_factory=list)  # see SimCluster.tolerate_failures

    def wall_ms(self) -> int:
        """This host's wall clock: the simulated epoch plus its skew, jumps and drift."""
        now = trio.current_time()
        return (
            EPOCH_MS
            + int(now * 1000)
            + self.skew_ms
            + int((now - self.drift_since) * self.drift * 1000)
        )

    def jump_clock(self, ms: int) -> None:
        """The wall clock jumps by `ms` (back if negative), as after an NTP step."""
        self.skew_ms += ms

    def set_drift(self, drift: float) -> None:
        now = trio.current_time()
        self.skew_ms += int((now - self.drift_since) * self.drift * 1000)
        self.drift, self.drift_since = drift, now

    @property
    def http_address(self) -> str:
        return f"{self.host}:{HTTP_PORT}"


def _resolve_seed(seed: str) -> Address:
    host, _, _ = seed.rpartition(":")
    return host, GOSSIP_PORT


class SimCluster:
    """Starts, crashes, restarts and inspects nodes on one SimNetwork."""

    def __init__(
        self, net: SimNetwork, nursery: trio.Nursery, base_dir: Path, **config: Any
    ) -> None:
        self.net = net
        self.nursery = nursery
        self.base_dir = Path(base_dir)
        self.config_overrides = config
        self.nodes: dict[str, SimNode] = {}
        # A node whose run raises after it started (its store failed, say) crashes its host
        # and is recorded in `SimNode.failures` instead of ending the simulation.
        self.tolerate_failures = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, net: SimNetwork, base_dir: Path, **config: Any
    ) -> AsyncIterator[SimCluster]:
        async with trio.open_nursery() as nursery:
            cluster = cls(net, nursery, base_dir, **config)
            try:
                yield cluster
            finally:
                nursery.cancel_scope.cancel()

    # --- lifecycle ----------------------------------------------------------------------------

    def _config(self, sim: SimNode, seeds: list[str]) -> Config:
        values: dict[str, Any] = {
            "node_id": sim.name,
            "bind_address": sim.host,
            "port": HTTP_PORT,
            "gossip_port": GOSSIP_PORT,
            "sync_port": SYNC_PORT,
            "data_dir": str(self.base_dir / sim.name),
            "seed_nodes": seeds,
            "cluster_secret": "simulated-cluster-secret",
            "durability": "fsync",  # "os" flushes from a worker thread, which breaks replay
            "lmdb_map_size": 32 << 20,
            "auth_enabled": False,  # the simulated checks are about data; overrides may set it
        }
        values.update(self.config_overrides)
        return Config(**values)

    async def start(
        self,
        name: str,
        *,
        seeds: list[str] | None = None,
        skew_ms: int = 0,
        commit_gate: Any = None,
    ) -> Node:
        """Start (or restart after a crash) node `name`; its host is derived from the name.
        `skew_ms` and `commit_gate` (disk faults under its store) are taken at its first
        start and kept across restarts."""
        sim = self.nodes.get(name)
        if sim is None:
            sim = SimNode(
                name=name,
                host=f"10.0.{len(self.nodes) // 250}.{len(self.nodes) % 250 + 1}",
                skew_ms=skew_ms,
                commit_gate=commit_gate,
            )
            self.nodes[name] = sim
        elif not self.net.is_up(sim.host):
            self.net.restart(sim.host)
        config = self._config(sim, seeds or [])

        async def resolve(seed: str) -> Address:
            return _resolve_seed(seed)

        node = Node(
            config,
            wall_ms=sim.wall_ms,
            rng=self.net.fork_rng(),
            store_in_thread=False,
            transport=self.net.transport(sim.host),
            resolve_seed=resolve,
            api=ApiServer(),
            commit_gate=sim.commit_gate,
        )
        sim.node = node
        sim.stopped = trio.Event()

        live = [False]  # set once it has started: a failure before is the caller's

        async def run(task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            assert sim.stopped is not None
            try:
                with self.net.host_scope(sim.host):
                    await node.run(http=False, task_status=task_status)
            except Exception as exc:
                if not (self.tolerate_failures and live[0]):
                    raise
                # The node ended itself (a store failure is fatal on purpose): as a process
                # that exited, it leaves the network until someone restarts it.
                sim.failures.append(exc)
                if sim.node is node:
                    sim.node = None
                if self.net.is_up(sim.host):
                    self.net.crash(sim.host)
            finally:
                sim.stopped.set()

        await self.nursery.start(run)
        live[0] = True
        return node

    async def start_many(self, count: int, *, seed_index: int = 0, prefix: str = "n") -> list[str]:
        """Start `count` nodes; the first (or `seed_index`) is every other node's seed."""
        names = [f"{prefix}{i:03d}" for i in range(len(self.nodes), len(self.nodes) + count)]
        seed_name = names[seed_index]
        await self.start(seed_name)
        seed = self.nodes[seed_name].http_address
        for name in names:
            if name != seed_name:
                await self.start(name, seeds=[seed])
        return names

    def crash(self, name: str) -> None:
        """kill -9: the host vanishes from the network and the node's tasks are cancelled."""
        sim = self.nodes[name]
        self.net.crash(sim.host)
        sim.node = None

    async def stop(self, name: str) -> None:
        """Graceful shutdown: the node announces it is leaving, then stops."""
        sim = self.nodes[name]
        assert sim.node is not None and sim.stopped is not None
        sim.node.request_shutdown()
        await sim.stopped.wait()
        sim.node = None

    # --- views --------------------------------------------------------------------------------

    def running(self) -> list[SimNode]:
        return [
            s for s in self.nodes.values() if s.node is not None and s.node.membership is not None
        ]

    def view(self, name: str) -> dict[str, State]:
        node = self.nodes[name].node
        assert node is not None and node.membership is not None
        return {k: m.state for k, m in node.membership.core.members.items()}

    def states_of(self, name: str) -> dict[str, State]:
        """What every running node thinks of `name` (absent: never heard of it)."""
        out = {}
        for sim in self.running():
            if sim.name == name:
                continue
            member = sim.node.membership.core.members.get(name)  # type: ignore[union-attr]
            if member is not None:
                out[sim.name] = member.state
        return out

    def converged(self) -> bool:
        """Every running node sees exactly the running nodes, all alive."""
        alive = {s.name for s in self.running()}
        for sim in self.running():
            view = {k for k, state in self.view(sim.name).items() if state is State.ALIVE}
            if view != alive:
                return False
        return True

    def all_see(self, name: str, state: State) -> bool:
        states = self.states_of(name)
        return len(states) == len(self.running()) - (1 if self.nodes[name].node else 0) and all(
            s is state for s in states.values()
        )

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float, step: float = 0.1
    ) -> float:
        """Simulated seconds until `predicate()` holds; raises TooSlowError after `timeout`."""
        start = trio.current_time()
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(step)
        return trio.current_time() - start
