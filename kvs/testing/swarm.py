"""The swarm: one seed draws a whole scenario -- cluster size, timers, TTLs, a fault mix --
runs it in the deterministic simulator with clients speaking HTTP to each node's app, and
has the independent judge (`kvs.testing.judge`) check it. The same seed replays the same run
(`python scripts/sim.py replay SEED`).

Rule: a plan is drawn from the seed alone (`draw_plan`), before anything runs; the run draws
from the network's seeded generator. Nothing here decides what is right: the judge does.

A run: start the nodes; clients send PUT (some with a TTL, some with If-Match), DELETE,
GET and `_batch` requests at a steady rate to random nodes while the faults play (datagram
loss and duplication, partitions, crashes and restarts); then the faults stop, crashed nodes
come back, the cluster must converge (one Merkle root, everyone `normal`), and the judge
compares every replica with its model, and every key read over HTTP on every node.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from kvs.model import Record
from kvs.node import Node
from kvs.testing.cluster import SimCluster
from kvs.testing.faults import DiskFaults
from kvs.testing.harness import SimulationTimeout, run_simulation
from kvs.testing.judge import Judge
from kvs.testing.network import SimNetwork
from kvs.testing.swarm_requests import SwarmRequests

__all__ = ["Plan", "Outcome", "draw_plan", "run_plan", "run_seed"]

TOKEN_SETTLE = 10.0  # > the widest skew (6 s) plus the largest backward clock jump (4 s)
REQUEST_TIMEOUT = 5.0  # simulated seconds: a request not answered by then was not acknowledged
CONVERGE_TIMEOUT = 180.0
FAST_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


FAULT_KINDS = ("partition", "crash", "loss", "pause", "clock", "drift", "disk", "streams")


@dataclass(frozen=True)
class Fault:
    """One fault of a plan. `amount`: loss or stream-fault probability, a clock jump (ms),
    a drift (0.01 = 10 ms a second fast), the share of commits a disk fails; for a crash, a
    draw that decides whether it lands while the node's disk is failing."""

    kind: str  # one of FAULT_KINDS
    at: float  # seconds after the load starts
    length: float
    nodes: tuple[int, ...] = ()
    amount: float = 0.0


@dataclass(frozen=True)
class Plan:
    seed: int
    nodes: int
    skews_ms: tuple[int, ...]
    settings: dict[str, Any]
    keys: int
    rate: float  # client operations per simulated second, all clients together
    duration: float  # simulated seconds of load
    ttl_share: float  # share of puts with a TTL
    max_ttl: float
    loss: float
    duplicate: float
    faults: tuple[Fault, ...]
    auth: bool = False  # tokens and permission bits on every request (Principal)
    idle_tail: bool = True  # idle past tombstone_ttl at the end (not in the reference: its
    # figure is the speed of the load itself)

    def describe(self) -> str:
        kinds = ",".join(sorted({f.kind for f in self.faults})) or "none"
        return (
            f"{self.nodes} nodes, {self.keys} keys, {self.rate:g} ops/s for {self.duration:g} s,"
            f" loss {self.loss:.2f}, faults {kinds},{' auth,' if self.auth else ''} tombstone_ttl"
            f" {self.settings['tombstone_ttl']:g} s"
        )


def draw_plan(seed: int, *, nodes: int | None = None, reference: bool = False) -> Plan:
    """The scenario of `seed`. `reference`: 5 nodes, shipped timers, 20 ops/s, faults on."""
    rng = random.Random(f"kvs-swarm-plan/{seed}")
    count = 5 if reference else (nodes or rng.choice([1, 2, 3, 3, 4, 5, 5]))
    settings: dict[str, Any] = {"tombstone_ttl": rng.uniform(25.0, 60.0)}
    if not reference:
        probe = rng.choice([0.2, 0.5, 1.0])
        settings.update(
            probe_interval=probe,
            probe_timeout=probe / 2,
            gossip_interval=rng.choice([0.1, 0.2, 0.5]),
            push_pull_interval=rng.choice([5.0, 15.0, 30.0]),
            sync_interval=rng.choice([0.5, 2.0, 5.0, 10.0]),
            revision_history_depth=rng.choice([0, 1, 3]),
        )
    # The reference runs 90 s of load: its figure is the speed of the load, with the fixed
    # cost of a seed (starting five nodes, building their apps: ~0.7 s) spread thinner.
    duration = 90.0 if reference else rng.uniform(15.0, 40.0)
    auth = not reference and rng.random() < 0.35
    if auth:
        settings["auth_enabled"] = True
    longest = min(8.0, settings["tombstone_ttl"] / 4)
    faults: list[Fault] = []
    kinds = list(FAULT_KINDS) if count > 1 else ["crash", "clock", "drift", "disk", "pause"]
    for _ in range(rng.randint(1, 6)):
        kind = rng.choice(kinds)
        at = rng.uniform(1.0, duration - 2.0)
        length = rng.uniform(0.5, longest)
        if kind == "partition":
            side = rng.sample(range(count), rng.randint(1, count - 1))
            faults.append(Fault(kind, at, length, tuple(sorted(side))))
        elif kind in ("loss", "streams"):
            faults.append(Fault(kind, at, length, amount=rng.uniform(0.05, 0.5)))
        elif kind == "clock":
            jump = rng.choice([-1, 1]) * rng.uniform(0.2, 4.0) * 1000
            faults.append(Fault(kind, at, 0.0, (rng.randrange(count),), amount=jump))
        elif kind == "drift":
            drift = rng.uniform(-0.02, 0.02)
            faults.append(Fault(kind, at, length, (rng.randrange(count),), amount=drift))
        else:  # crash, pause, disk
            amount = rng.uniform(0.2, 1.0) if kind == "disk" else rng.random()
            faults.append(Fault(kind, at, length, (rng.randrange(count),), amount=amount))
    if reference:
        faults = [  # one of each kind, twice over
            fault
            for base in (0.0, 45.0)
            for fault in (
                Fault("partition", base + 5.0, 4.0, (0, 1)),
                Fault("crash", base + 10.0, 3.0, (2,)),
                Fault("loss", base + 14.0, 3.0, amount=0.3),
                Fault("pause", base + 18.0, 2.0, (3,)),
                Fault("clock", base + 20.0, 0.0, (4,), amount=-2000),
                Fault("drift", base + 22.0, 10.0, (0,), amount=0.01),
                Fault("disk", base + 24.0, 3.0, (1,), amount=0.5),
                Fault("streams", base + 28.0, 3.0, amount=0.05),
            )
        ]
    return Plan(
        seed=seed,
        nodes=count,
        skews_ms=tuple(rng.randint(-3000, 3000) for _ in range(count)),
        settings=settings,
        keys=rng.randint(3, 25),
        rate=20.0 if reference else rng.uniform(5.0, 30.0),
        duration=duration,
        ttl_share=rng.uniform(0.0, 0.4),
        max_ttl=rng.uniform(0.5, 8.0),
        loss=0.05 if reference else rng.choice([0.0, 0.0, 0.02, 0.1]),
        duplicate=0.0 if reference else rng.choice([0.0, 0.0, 0.05]),
        faults=tuple(sorted(faults, key=lambda f: f.at)),
        auth=auth,
        idle_tail=not reference,
    )


@dataclass
class Outcome:
    seed: int
    plan: Plan
    violations: list[str] = field(default_factory=list)
    simulated: float = 0.0
    wall: float = 0.0
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations


def run_seed(seed: int, *, nodes: int | None = None, reference: bool = False) -> Outcome:
    return run_plan(draw_plan(seed, nodes=nodes, reference=reference))


def run_plan(plan: Plan, *, wall_limit: float = 240.0) -> Outcome:
    """Run `plan` in a fresh simulation in a temporary directory; never raises for a failure
    of the system under test (it is in `violations`)."""
    outcome = Outcome(plan.seed, plan)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvs-swarm-", dir=FAST_DIR) as base:
        run = _Run(plan, Path(base))
        try:
            outcome.simulated = run_simulation(
                run.main, plan.seed, wall_limit=wall_limit, latency=0.0005, jitter=0.001
            )
        except SimulationTimeout as exc:
            run.judge.fail(f"timeout: {exc}")
        except Exception as exc:  # a crash of the run itself is a finding too
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                leaf = leaf.exceptions[0]
            run.judge.fail(f"the run raised {type(leaf).__name__}: {leaf}")
    outcome.wall = time.monotonic() - started
    outcome.violations = list(run.judge.violations)
    outcome.summary = run.judge.summary()
    return outcome


class _Run(SwarmRequests):
    def __init__(self, plan: Plan, base: Path) -> None:
        self.plan = plan
        self.base = base
        self.judge = Judge(
            tombstone_ttl_ms=int(plan.settings["tombstone_ttl"] * 1000), max_clock=self._max_clock
        )
        self.names = [f"n{i:03d}" for i in range(plan.nodes)]
        self.counter = 0
        self.etags: dict[str, str] = {}  # key -> a uuid some read or write returned
        self.persisted: dict[str, int] = {}  # node -> its persisted incarnation at its crash
        self.high_clock = 0
        self.disk_errors = 0  # requests answered 500 because the disk failed their commit
        self.disks: dict[str, DiskFaults] = {}
        self.principals = []
        self.watch_events = 0
        self.weights = []

    async def main(self, net: SimNetwork) -> float:
        self.net = net
        rng = net.fork_rng()
        async with SimCluster.open(net, self.base, **self.plan.settings) as cluster:
            self.cluster = cluster
            cluster.tolerate_failures = True  # a node whose store failed stops: restarted
            for name in self.names:
                self.disks[name] = DiskFaults(net.fork_rng())
            for i, name in enumerate(self.names):
                seeds = [cluster.nodes[self.names[0]].http_address] if i else []
                await self._start(name, seeds, self.plan.skews_ms[i])
            try:
                await cluster.wait_for(self._agree, timeout=60)
            except trio.TooSlowError:
                self.judge.fail("the cluster never formed")
                return trio.current_time()
            if self.plan.auth:
                first = cluster.nodes[self.names[0]].node
                assert first is not None
                await self.setup_auth(first, self.names[0])
                await cluster.wait_for(self._agree, timeout=60)  # the tokens are everywhere
                # A token is "not valid yet" on a node whose clock is behind the issuer's
                # (kvs/auth/tokens.py allows no skew): wait out the plan's clock spread.
                await trio.sleep(TOKEN_SETTLE)
            net.set_faults(loss=self.plan.loss, duplicate=self.plan.duplicate)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._faults, net, start)
                for name in self.names:
                    nursery.start_soon(self.watch, name, start + self.plan.duration)
                for i in range(4):
                    nursery.start_soon(self._client, random.Random(rng.random()), start, i)
            await self._settle(net)
            return trio.current_time()

    def _note_clock(self) -> int:
        """The most advanced wall clock any node has had so far (a clock that jumped back
        may already have swept what a slower one still serves)."""
        now = max(sim.wall_ms() for sim in self.cluster.nodes.values())
        self.high_clock = max(self.high_clock, now)
        return self.high_clock

    def _max_clock(self) -> int:
        return self._note_clock()

    # --- nodes ------------------------------------------------------------------------------

    async def _start(self, name: str, seeds: list[str], skew_ms: int = 0) -> Node:
        node = await self.cluster.start(
            name, seeds=seeds, skew_ms=skew_ms, commit_gate=self.disks[name]
        )
        node.store.listeners.append(
            self.judge.listener(name, trio.current_time, node.clock.wall_ms)
        )
        return node

    async def _restart(self, name: str) -> None:
        sim = self.cluster.nodes[name]
        if sim.node is not None or sim.stopped is None:
            return
        await sim.stopped.wait()
        disk = self.disks[name]
        while True:
            seeds = [s.http_address for s in self.cluster.running()][:1]
            failed_before = sum(disk.failed.values())
            try:
                node = await self._start(name, seeds)
                break
            except Exception as exc:
                # A node that cannot persist its state at start refuses to start (its disk
                # is failing): try again, as an operator's supervisor would.
                if sum(disk.failed.values()) == failed_before:
                    self.judge.fail(f"t={trio.current_time():.3f} {name} failed to start: {exc!r}")
                    return
                await trio.sleep(1.0)
        # A restarted node must out-rank its previous life at once: its incarnation rises
        # above the one it had persisted (one it had not persisted yet it refutes again).
        assert node.membership is not None
        own = node.membership.core.members[name].incarnation
        if own <= self.persisted.get(name, 0):
            self.judge.fail(
                f"t={trio.current_time():.3f} {name} restarted with incarnation {own}, not"
                f" above the {self.persisted[name]} it had persisted"
            )

    def _crash(self, name: str) -> None:
        """kill -9, remembering the incarnation it had persisted."""
        node = self.cluster.nodes[name].node
        assert node is not None
        stored = node.store.get_system("incarnation")
        self.persisted[name] = stored if isinstance(stored, int) else 0
        self.cluster.crash(name)

    def _agree(self) -> bool:
        running = self.cluster.running()
        if len(running) != self.plan.nodes or not self.cluster.converged():
            return False
        if any(s.node.sync is None or s.node.mode != "normal" for s in running):  # type: ignore[union-attr]
            return False
        return len({s.node.sync.tree.root for s in running}) == 1  # type: ignore[union-attr]

    # --- faults -----------------------------------------------------------------------------

    async def _faults(self, net: SimNetwork, start: float) -> None:
        async with trio.open_nursery() as nursery:
            for fault in self.plan.faults:
                nursery.start_soon(self._fault, net, start, fault)

    async def _fault(self, net: SimNetwork, start: float, fault: Fault) -> None:
        await trio.sleep_until(start + fault.at)
        hosts = [self.cluster.nodes[n].host for n in self.names]
        if fault.kind == "partition":
            side = [hosts[i] for i in fault.nodes]
            net.partition(side, [h for h in hosts if h not in side])
            await trio.sleep(fault.length)
            net.heal()
        elif fault.kind == "crash":
            name = self.names[fault.nodes[0]]
            if self.cluster.nodes[name].node is None:
                return
            self._crash(name)
            await trio.sleep(fault.length)
            await self._restart(name)
        elif fault.kind == "loss":
            net.set_faults(loss=fault.amount)
            await trio.sleep(fault.length)
            net.set_faults(loss=self.plan.loss)
        else:
            await self._node_fault(net, fault)

    async def _node_fault(self, net: SimNetwork, fault: Fault) -> None:
        sim = self.cluster.nodes[self.names[fault.nodes[0]]] if fault.nodes else None
        if fault.kind == "streams":
            net.set_stream_faults(reset=fault.amount / 4, corrupt=fault.amount / 4)
            await trio.sleep(fault.length)
            net.set_stream_faults()
        elif fault.kind == "pause" and sim is not None:
            net.pause(sim.host, fault.length)
        elif fault.kind == "clock" and sim is not None:
            sim.jump_clock(int(fault.amount))
            self._note_clock()
        elif fault.kind == "drift" and sim is not None:
            sim.set_drift(fault.amount)
            await trio.sleep(fault.length)
            self._note_clock()
            sim.set_drift(0.0)
        elif fault.kind == "disk" and sim is not None:
            self.disks[sim.name].rate = fault.amount
            await trio.sleep(fault.length)
            self.disks[sim.name].rate = 0.0
            # A node its store failure ended is started again by its supervisor (systemd)
            # once the disk is back, not only when the run settles: a downtime longer than
            # tombstone_ttl would rightly leave it stale.
            await self._restart(sim.name)

    async def _settle(self, net: SimNetwork) -> None:
        net.heal()
        net.set_faults(loss=0.0, duplicate=0.0)
        for name in self.names:
            await self._restart(name)
        try:
            await self.cluster.wait_for(self._agree, timeout=CONVERGE_TIMEOUT)
        except trio.TooSlowError:
            modes = {s.name: s.node.mode for s in self.cluster.running()}  # type: ignore[union-attr]
            self.judge.fail(
                f"no convergence within {CONVERGE_TIMEOUT:g} s after the faults: {modes}"
            )
            return
        await self._final_check()
        if not self.plan.idle_tail:
            return
        # Then idle past tombstone_ttl: every tombstone of the run comes due, replicas collect
        # them at their own clocks' pace while anti-entropy goes on between them (a replica
        # must not take back what another collected), and the end is judged once more.
        await trio.sleep(self.plan.settings["tombstone_ttl"] + 8.0)
        try:
            await self.cluster.wait_for(self._agree, timeout=CONVERGE_TIMEOUT)
        except trio.TooSlowError:
            self.judge.fail("replicas disagree after the tombstones were collected")
            return
        await self._final_check()

    async def _final_check(self) -> None:
        running = self.cluster.running()
        max_now = max(s.node.clock.wall_ms() for s in running)  # type: ignore[union-attr]
        for sim in running:
            node = sim.node
            assert node is not None
            keys = [s.key for s in node.store.iter_summaries() if not s.key.startswith("_")]
            records: dict[str, Record] = {r.key: r for r in node.store.get_many(keys)}
            self.judge.check_replica(sim.name, records, node.clock.wall_ms(), max_now)
            who = self.principals[0] if self.principals else None  # may read every key
            for key in sorted(set(self.judge.model) | set(records)):
                await self._get(node, sim.name, key, who)

    # --- clients ----------------------------------------------------------------------------

    async def _client(self, rng: random.Random, start: float, index: int) -> None:
        plan = self.plan
        per_client = plan.rate / 4
        while trio.current_time() < start + plan.duration:
            await trio.sleep(rng.expovariate(per_client))
            running = self.cluster.running()
            if not running:
                continue
            sim = rng.choice(running)
            node = sim.node
            assert node is not None
            key = f"k/{rng.randrange(plan.keys)}"
            roll = rng.random()
            who = self._principal(rng)
            with trio.move_on_after(REQUEST_TIMEOUT):
                if roll < 0.35:
                    await self._get(node, sim.name, key, who)
                elif roll < 0.75:
                    await self._put(node, sim.name, key, rng, who)
                elif roll < 0.9:
                    await self._delete(node, sim.name, key, who)
                else:
                    await self._batch(node, sim.name, rng, who)
