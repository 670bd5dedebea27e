"""`bench.py gossip`, simulator half: whole KVS nodes on the deterministic simulated network.

Each job is one `run_simulation` (one seed, one `trio.run` under a MockClock), so a job's
figures depend only on its settings and seed, never on the machine; jobs run in parallel
worker processes. The nodes run the SHIPPED DEFAULT membership config (`kvs.config.Config`
defaults; `SimCluster` only sets addresses, data dirs and the cluster secret).

Two kinds of job:
- `run_size_job(n)`: form a cluster of n nodes through one seed (time until every node knows
  every node alive), measure steady-state traffic from the network's per-host counters, time
  one more node's join, then kill -9 (`SimCluster.crash`) a few nodes one after another and
  time until every live node holds each one dead.
- `run_fp_job(n, loss)`: form a cluster, then drop `loss` of all datagrams for a few simulated
  minutes; every "dead" verdict about a node is then a false positive (nothing is killed).
  Suspicions and refutations are counted too.

Times are simulated seconds, polled every `POLL_STEP`; "rounds" are seconds / probe_interval.
"""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from kvs.config import Config, project
from kvs.net.messages import MemberChanged, State
from kvs.net.swim_settings import SwimSettings
from kvs.testing.cluster import SimCluster
from kvs.testing.harness import run_simulation
from kvs.testing.network import SimNetwork

POLL_STEP = 0.05  # simulated seconds between checks of a condition (the timing resolution)
SETTLE_S = 5.0  # quiet time after a join or a kill, so the next step starts from a calm cluster
FIRST_PUSH_PULL_SPREAD = 1.5  # nodes push-pull first within 0.5..1.5 x push_pull_interval
JOB_WALL_LIMIT = 3600.0  # real seconds one job may take (large clusters take minutes, not hours)


MEMBERSHIP_KEYS = (
    "probe_interval",
    "probe_timeout",
    "indirect_checks",
    "suspicion_mult",
    "suspicion_max_timeout_mult",
    "gossip_interval",
    "gossip_nodes",
    "retransmit_mult",
    "push_pull_interval",
    "dead_member_retention",
)


def shipped_membership_config() -> dict[str, float]:
    """The membership keys of a default `Config`: what the benchmark runs, and what it prints."""
    defaults = Config()
    return {key: getattr(defaults, key) for key in MEMBERSHIP_KEYS}


def suspicion_timeouts(n: int) -> tuple[float, float]:
    """(min, max) suspicion timeout at cluster size n under the shipped config, in seconds."""
    return project(SwimSettings, Config()).suspicion_timeouts(n)


@dataclass(frozen=True)
class SimSettings:
    seed: int
    latency: float  # seconds, one way
    jitter: float  # seconds, extra uniform delay
    traffic_seconds: float  # length of the steady-state traffic window
    kills: int  # nodes killed one after another per cluster size
    fp_seconds: float  # how long the loss lasts in a false-positive job
    timeout: float  # simulated seconds any single wait may take before it counts as failed


@dataclass
class Detection:
    victim: str
    live: int  # live nodes that had to notice
    first_suspect_s: float | None
    first_dead_s: float | None
    all_dead_s: float | None  # None: not every live node had it dead within the timeout


@dataclass
class Traffic:
    """Sent per node per second over the window (payload bytes; no IP/UDP/TCP headers)."""

    seconds: float
    nodes: int
    datagrams: list[float]  # per node
    udp_bytes: list[float]
    tcp_bytes: list[float]  # membership push-pull streams: what this node sent on them
    other_tcp_bytes: list[float]  # every other stream (replication sync): not gossip
    push_pulls: int  # push-pulls completed in the window, whole cluster

    @property
    def total_bytes(self) -> list[float]:
        return [u + t for u, t in zip(self.udp_bytes, self.tcp_bytes, strict=True)]


@dataclass
class SizeResult:
    n: int
    seed: int
    formation_s: float | None = None
    join_one_s: float | None = None
    traffic: Traffic | None = None
    detections: list[Detection] = field(default_factory=list)
    false_dead: int = 0  # "dead" verdicts about nodes that were running (any time in the job)
    false_dead_nodes: list[str] = field(default_factory=list)
    suspicions_of_live: int = 0
    sim_seconds: float = 0.0
    wall_s: float = 0.0
    error: str = ""

    @property
    def all_dead_times(self) -> list[float]:
        return [d.all_dead_s for d in self.detections if d.all_dead_s is not None]


@dataclass
class FpResult:
    n: int
    loss: float
    seconds: float
    seed: int
    false_dead: int = 0  # (observer, subject) "dead" verdicts; every one is false here
    false_dead_nodes: list[str] = field(default_factory=list)
    suspicions: int = 0  # (observer, subject) suspect verdicts
    refutations: int = 0  # times a node raised its incarnation to refute a rumour
    reconverged_s: float | None = None  # after the loss stopped; 0.0: never diverged
    sim_seconds: float = 0.0
    wall_s: float = 0.0
    error: str = ""


# ---------------------------------------------------------------- scenario helpers


class _CountingStream(trio.abc.Stream):
    """A push-pull connection whose bytes are tallied per sending host (both directions)."""

    def __init__(self, inner: trio.abc.Stream, tally: Counter[str], me: str, peer: str) -> None:
        self.inner, self.tally, self.me, self.peer = inner, tally, me, peer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.tally[self.me] += len(data)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.tally[self.peer] += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingTransport:
    """Wraps a node's membership transport: every push-pull starts with `connect_stream`
    (the other side only answers), so wrapping the connecting side counts every push-pull
    byte, and tells them apart from the replication worker's streams on the same host."""

    def __init__(self, inner: Any, tally: Counter[str], host: str) -> None:
        self.inner, self.tally, self.host = inner, tally, host

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def connect_stream(self, address: tuple[str, int]) -> trio.abc.Stream:
        stream = await self.inner.connect_stream(address)
        return _CountingStream(stream, self.tally, self.host, address[0])


@dataclass(frozen=True)
class Event:
    time: float
    observer: str
    subject: str
    state: State


class Recorder:
    """Every membership change every node reports (through `Membership.listeners`), and the
    bytes each host sent on membership push-pull streams."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.crashed_at: dict[str, float] = {}
        self.push_pull_bytes: Counter[str] = Counter()  # sim host -> bytes it sent

    def listen(self, cluster: SimCluster, name: str) -> None:
        sim = cluster.nodes[name]
        node = sim.node
        assert node is not None and node.membership is not None
        membership = node.membership
        membership.transport = _CountingTransport(  # type: ignore[assignment]
            membership.transport, self.push_pull_bytes, sim.host
        )

        def on_change(change: MemberChanged, observer: str = name) -> None:
            self.events.append(
                Event(trio.current_time(), observer, change.member.node_id, change.state)
            )

        node.membership.listeners.append(on_change)

    def live_at(self, subject: str, at: float) -> bool:
        crashed = self.crashed_at.get(subject)
        return crashed is None or at < crashed

    def about(self, subject: str, state: State, since: float) -> list[Event]:
        return [
            e for e in self.events if e.subject == subject and e.state is state and e.time >= since
        ]

    def false_verdicts(self, state: State, since: float = -math.inf) -> list[Event]:
        """`state` verdicts about nodes that were running when the verdict was reached."""
        return [
            e
            for e in self.events
            if e.state is state and e.time >= since and self.live_at(e.subject, e.time)
        ]


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Simulated seconds until `predicate()` holds (checked every POLL_STEP); None on timeout."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(POLL_STEP)
        return trio.current_time() - start
    return None


async def form_cluster(cluster: SimCluster, recorder: Recorder, n: int) -> list[str]:
    """Start n nodes, every one after the first joining through the first (the seed)."""
    names = [f"n{i:03d}" for i in range(n)]
    await cluster.start(names[0])
    recorder.listen(cluster, names[0])
    seed = cluster.nodes[names[0]].http_address
    for name in names[1:]:
        await cluster.start(name, seeds=[seed])
        recorder.listen(cluster, name)
    return names


def _sent(net: SimNetwork, recorder: Recorder, hosts: list[str]) -> list[tuple[int, ...]]:
    """Per host: datagrams, datagram bytes, push-pull stream bytes, all stream bytes sent."""
    out = []
    for host in hosts:
        c = net.counters(host)
        pp = recorder.push_pull_bytes[host]
        out.append((c.datagrams_sent, c.bytes_sent, pp, c.stream_bytes_sent))
    return out


def _push_pulls(cluster: SimCluster) -> int:
    return sum(
        s.node.membership.counters["push_pulls"]  # type: ignore[union-attr]
        for s in cluster.running()
    )


def _refutations(cluster: SimCluster) -> int:
    return sum(
        s.node.membership.core.stats["refutations"]  # type: ignore[union-attr]
        for s in cluster.running()
    )


def _push_pull_period(cluster: SimCluster, name: str, configured: float) -> float:
    """The push-pull period a node uses at the current cluster size: the SWIM core stretches
    push_pull_interval in clusters above 32 nodes (a private method; the configured value if
    it ever goes away, and the window is then only approximately whole periods)."""
    node = cluster.nodes[name].node
    core = node.membership.core if node is not None and node.membership is not None else None
    period = getattr(core, "_push_pull_interval", None)
    return float(period()) if callable(period) else configured


def _knows_all_alive(cluster: SimCluster, newcomer: str) -> Callable[[], bool]:
    """Every running node holds `newcomer` alive, and `newcomer` holds every running node alive."""

    def check() -> bool:
        running = cluster.running()
        states = cluster.states_of(newcomer)
        if len(states) != len(running) - 1 or any(s is not State.ALIVE for s in states.values()):
            return False
        view = cluster.view(newcomer)
        return all(view.get(s.name) is State.ALIVE for s in running)

    return check


# ---------------------------------------------------------------- size job


async def _size_scenario(
    net: SimNetwork, base: Path, n: int, s: SimSettings, result: SizeResult
) -> None:
    push_pull_interval = shipped_membership_config()["push_pull_interval"]
    async with SimCluster.open(net, base) as cluster:
        recorder = Recorder()
        t0 = trio.current_time()
        try:
            names = await form_cluster(cluster, recorder, n)
            result.formation_s = await wait_until(cluster.converged, s.timeout)
            if result.formation_s is None:
                result.error = f"N={n}: cluster did not converge within {s.timeout:.0f} s"
                return

            # Steady state: after the join's broadcasts have drained and after every node's
            # first push-pull (at a random 0.5..1.5 x push_pull_interval from its start), over
            # a whole number of push-pull periods, so that each node initiates exactly as many
            # push-pulls in the window as its period says, whatever its phase.
            window_start = t0 + push_pull_interval * FIRST_PUSH_PULL_SPREAD
            await trio.sleep_until(max(window_start, trio.current_time() + 2 * SETTLE_S))
            period = _push_pull_period(cluster, names[0], push_pull_interval)
            span = period * max(1, math.ceil(s.traffic_seconds / period - 1e-9))
            hosts = [cluster.nodes[name].host for name in names]
            before, pp_before = _sent(net, recorder, hosts), _push_pulls(cluster)
            await trio.sleep(span)
            after, pp_after = _sent(net, recorder, hosts), _push_pulls(cluster)
            rates = [
                [(b[i] - a[i]) / span for a, b in zip(before, after, strict=True)] for i in range(4)
            ]
            result.traffic = Traffic(
                seconds=span,
                nodes=len(hosts),
                datagrams=rates[0],
                udp_bytes=rates[1],
                tcp_bytes=rates[2],
                other_tcp_bytes=[max(0.0, x - y) for x, y in zip(rates[3], rates[2], strict=True)],
                push_pulls=pp_after - pp_before,
            )

            # One more node joins the converged cluster through the seed.
            newcomer = f"n{n:03d}"
            await cluster.start(newcomer, seeds=[cluster.nodes[names[0]].http_address])
            recorder.listen(cluster, newcomer)
            result.join_one_s = await wait_until(_knows_all_alive(cluster, newcomer), s.timeout)
            await trio.sleep(SETTLE_S)

            # kill -9, one after another; never the seed.
            rng = random.Random(f"gossip-bench-victims/{s.seed}/{n}")
            candidates = [name for name in [*names, newcomer] if name != names[0]]
            for victim in rng.sample(candidates, min(s.kills, len(candidates))):
                live = len(cluster.running()) - 1
                cluster.crash(victim)
                killed = trio.current_time()
                recorder.crashed_at[victim] = killed
                all_dead = await wait_until(
                    lambda v=victim: cluster.all_see(v, State.DEAD), s.timeout
                )
                suspects = recorder.about(victim, State.SUSPECT, killed)
                deads = recorder.about(victim, State.DEAD, killed)
                result.detections.append(
                    Detection(
                        victim,
                        live,
                        min(e.time for e in suspects) - killed if suspects else None,
                        min(e.time for e in deads) - killed if deads else None,
                        all_dead,
                    )
                )
                if all_dead is None:
                    result.error = f"N={n}: {victim} not dead everywhere after {s.timeout:.0f} s"
                    break
                await trio.sleep(SETTLE_S)
        finally:
            false_dead = recorder.false_verdicts(State.DEAD)
            result.false_dead = len(false_dead)
            result.false_dead_nodes = sorted({e.subject for e in false_dead})
            result.suspicions_of_live = len(recorder.false_verdicts(State.SUSPECT))
            result.sim_seconds = trio.current_time() - t0


def run_size_job(n: int, settings: SimSettings) -> SizeResult:
    """Formation, traffic, one join and `kills` failures at cluster size n (a worker process)."""
    result = SizeResult(n, settings.seed)
    _run_job(lambda net, base: _size_scenario(net, base, n, settings, result), settings, result, n)
    return result


# ---------------------------------------------------------------- false-positive job


async def _fp_scenario(
    net: SimNetwork, base: Path, n: int, loss: float, s: SimSettings, result: FpResult
) -> None:
    async with SimCluster.open(net, base) as cluster:
        recorder = Recorder()
        t0 = trio.current_time()
        try:
            await form_cluster(cluster, recorder, n)
            if await wait_until(cluster.converged, s.timeout) is None:
                result.error = f"N={n}: cluster did not converge within {s.timeout:.0f} s"
                return
            await trio.sleep(2 * SETTLE_S)  # let the join's broadcasts drain
            start, refuted = trio.current_time(), _refutations(cluster)
            net.set_faults(loss=loss)
            await trio.sleep(s.fp_seconds)
            net.set_faults(loss=0.0)
            result.reconverged_s = await wait_until(cluster.converged, s.timeout)
            if result.reconverged_s is None:
                result.error = (
                    f"N={n}, loss {loss:.0%}: views did not agree again within"
                    f" {s.timeout:.0f} s after the loss stopped"
                )
            result.refutations = _refutations(cluster) - refuted
            false_dead = recorder.false_verdicts(State.DEAD, start)
            result.false_dead = len(false_dead)
            result.false_dead_nodes = sorted({e.subject for e in false_dead})
            result.suspicions = len(recorder.false_verdicts(State.SUSPECT, start))
        finally:
            result.sim_seconds = trio.current_time() - t0


def run_fp_job(n: int, loss: float, settings: SimSettings) -> FpResult:
    """`fp_seconds` of `loss` random datagram loss on a healthy n-node cluster (a worker)."""
    result = FpResult(n, loss, settings.fp_seconds, settings.seed)
    _run_job(
        lambda net, base: _fp_scenario(net, base, n, loss, settings, result),
        settings,
        result,
        n,
    )
    return result


# ---------------------------------------------------------------- running a job


def _run_job(
    scenario: Callable[[SimNetwork, Path], Awaitable[None]],
    s: SimSettings,
    result: SizeResult | FpResult,
    n: int,
) -> None:
    """One deterministic simulation; a failure is kept in `result.error`, never raised."""
    # Nodes log every suspicion and death at WARNING: the report counts them instead.
    logging.getLogger("kvs").setLevel(logging.ERROR)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"kvs-gossip-sim-{n}-", dir=_scratch_dir()) as tmp:

        async def main(net: SimNetwork) -> None:
            await scenario(net, Path(tmp))

        try:
            run_simulation(
                main, s.seed, wall_limit=JOB_WALL_LIMIT, latency=s.latency, jitter=s.jitter
            )
        except Exception as exc:  # reported in the table; the other jobs go on
            result.error = result.error or f"{type(exc).__name__}: {exc}"
    result.wall_s = time.perf_counter() - began


def _scratch_dir() -> str | None:
    """tmpfs when there is one: the simulated nodes' LMDB fsyncs then cost no wall time (they
    cost no simulated time anyway)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
