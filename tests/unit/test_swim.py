"""The SWIM core (`kvs.net.swim`) driven by hand: no Trio, no sockets.

Several `Swim` instances talk through `Net`, a tiny in-test router that carries the datagrams
they emit (encoded and decoded by the real wire codec) after a fixed latency, applies drop
rules, seeded loss and "crashes", and runs TCP push-pull exchanges synchronously. Time is a
float that moves only when the test says so; each core is ticked exactly when
`now >= next_deadline()`. A seed replays a run exactly.

"Quiet" peers use a probe interval so long that they never probe anyone: they still answer
pings and ping-reqs and relay gossip, so one core's own decisions can be timed exactly.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import msgpack
import pytest

from kvs.config import Config, project
from kvs.net.codec import WireError
from kvs.net.datagrams import MAX_DATAGRAM_BYTES, DatagramCodec, encode_push_pull
from kvs.net.messages import (
    MAX_INCARNATION,
    MAX_SEQ,
    Ack,
    Address,
    Alive,
    Dead,
    IncarnationChanged,
    Leave,
    MemberChanged,
    MemberInfo,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    SendDatagram,
    StartPushPull,
    State,
    Suspect,
)
from kvs.net.swim import Swim, incarnation_at_start
from kvs.net.swim_settings import SwimSettings

CODEC = DatagramCodec(None)
# The tests' own preset: the shipped defaults, with the slower probe these tests were written
# for (their timings are worked out from it).
DEFAULT = project(SwimSettings, Config(), probe_interval=1.0, probe_timeout=0.5, suspicion_mult=4)
# A suspicion's timeout is followed by one last direct ping of the suspect (answered within
# one probe timeout at awareness 0) before the death is declared.
LAST_CALL = DEFAULT.probe_timeout
QUIET = replace(DEFAULT, probe_interval=1e6, push_pull_interval=1e6)
LATENCY = 0.001
EPS = 1e-9


def info(name: str, incarnation: int = 0, *, host: str | None = None) -> MemberInfo:
    """A member called "nNN" lives at 10.0.x.y; the address follows from the name."""
    n = int(name[1:])
    host = host or f"10.0.{n // 200}.{n % 200 + 1}"
    return MemberInfo(
        node_id=name,
        joined_timestamp=1_700_000_000_000 + n,
        incarnation=incarnation,
        gossip=(host, 7946),
        sync=(host, 7947),
        http=(host, 8080),
    )


def names(n: int) -> list[str]:
    return [f"n{i:02d}" for i in range(n)]


def min_timeout(config: SwimSettings, n: int) -> float:
    return config.suspicion_mult * max(1.0, math.log10(n)) * config.probe_interval


def max_timeout(config: SwimSettings, n: int) -> float:
    return config.suspicion_max_timeout_mult * min_timeout(config, n)


def retransmit_limit(config: SwimSettings, n: int) -> int:
    return config.retransmit_mult * math.ceil(math.log10(n + 1))


@dataclass
class Packet:
    at: float
    src: str
    dst: str | None  # None: nobody lives at `to`
    to: Address
    messages: list[Message]
    size: int
    dropped: str | None = None  # why: "crash", "nowhere", "rule", "loss"

    def has(self, kind: type) -> bool:
        return any(isinstance(m, kind) for m in self.messages)

    def of(self, kind: type) -> list:
        return [m for m in self.messages if isinstance(m, kind)]


Event = tuple[float, str, MemberChanged | IncarnationChanged]


class Net:
    """Cores, a clock, and datagrams in flight between them."""

    def __init__(
        self,
        *,
        config: SwimSettings = DEFAULT,
        seed: int = 1,
        latency: float = LATENCY,
        loss: float = 0.0,
        record: bool = True,
        push_pull: bool = True,
    ) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(f"net/{seed}")
        self.latency = latency
        self.loss = loss
        self.record = record
        self.push_pull_enabled = push_pull
        self.now = 0.0
        self.cores: dict[str, Swim] = {}
        self.addresses: dict[Address, str] = {}
        self.crashed: set[str] = set()
        self.rules: list[Callable[[Packet], bool]] = []  # any True: drop the datagram
        self.log: list[Packet] = []
        self.events: list[Event] = []
        self.counts: Counter[str] = Counter()
        self._queue: list[tuple[float, int, Packet]] = []
        self._seq = 0
        self._deadlines: dict[str, float] = {}  # each running core's next_deadline()
        self._timers: list[tuple[float, str]] = []  # the same, as a heap with stale entries

    # --- building ---

    def add(self, name: str, *, config: SwimSettings | None = None, incarnation: int = 0) -> Swim:
        core = Swim(
            info(name, incarnation),
            config or self.config,
            random.Random(f"{name}/{self.seed}"),
            CODEC.pack,
        )
        self.cores[name] = core
        self.addresses[core.me_info.gossip] = name
        core.start(self.now)
        self._flush(name)
        return core

    def cluster(self, n: int, *, config: dict[str, SwimSettings] | None = None) -> list[Swim]:
        """n nodes; each joins by push-pull with every earlier one, so all know all at once."""
        cores = [self.add(name, config=(config or {}).get(name)) for name in names(n)]
        for i, name in enumerate(names(n)):
            for other in names(i):
                self.push_pull(name, other, join=True)
        return cores

    def push_pull(self, a: str, b: str, *, join: bool = False) -> bool:
        """A TCP exchange of whole tables (reliable, but not with a crashed node)."""
        if a in self.crashed or b in self.crashed:
            self.counts["push_pull_failed"] += 1
            return False
        self.counts["push_pulls"] += 1
        ca, cb = self.cores[a], self.cores[b]
        table_a, table_b = ca.local_state(join=join), cb.local_state()
        cb.merge_remote(table_a, self.now)
        ca.merge_remote(table_b, self.now)
        for name, core in ((b, cb), (a, ca)):
            core.tick(self.now)
            self._flush(name)
        return True

    def merge(self, name: str, members: Iterable[MemberState], *, source: str = "n99") -> None:
        """Feed `name` a synthetic push-pull table."""
        core = self.cores[name]
        core.merge_remote(PushPull(source, tuple(members)), self.now)
        core.tick(self.now)
        self._flush(name)

    def inject(self, name: str, messages: list[Message], *, source: str) -> None:
        """Deliver a hand-made datagram to `name` as if `source` had sent it, now."""
        core = self.cores[name]
        core.handle_messages(messages, info(source).gossip, self.now)
        core.tick(self.now)
        self._flush(name)

    def leave(self, name: str) -> None:
        self.cores[name].leave(self.now)
        self._flush(name)

    def crash(self, name: str) -> None:
        """From now on nothing reaches `name` and nothing leaves it; it no longer runs."""
        self.crashed.add(name)
        self._deadlines.pop(name, None)

    # --- running ---

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Deliver datagrams and tick cores in time order up to `t`; True if `stop` fired."""
        while True:
            queued = self._queue[0][0] if self._queue else math.inf
            while self._timers and self._deadlines.get(self._timers[0][1]) != self._timers[0][0]:
                heapq.heappop(self._timers)  # superseded, or the core crashed
            deadline, name = self._timers[0] if self._timers else (math.inf, "")
            if min(queued, deadline) > t:
                break
            if queued <= deadline:
                self.now = max(self.now, queued)
                _, _, packet = heapq.heappop(self._queue)
                self._deliver(packet)
            else:
                self.now = max(self.now, deadline)
                self.cores[name].tick(self.now)
                self._flush(name)
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return False

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_sent(self, match: Callable[[Packet], bool], *, within: float = 60.0) -> Packet:
        """Run until a datagram matching `match` is sent (dropped or not); return it."""
        start = len(self.log)
        found: list[Packet] = []

        def stop() -> bool:
            nonlocal start
            found.extend(p for p in self.log[start:] if match(p))
            start = len(self.log)
            return bool(found)

        assert self.record
        if not self.run_until(self.now + within, stop):
            raise AssertionError(f"no matching datagram within {within} s")
        return found[0]

    def run_until_event(self, match: Callable[[Event], bool], *, within: float = 120.0) -> Event:
        start = len(self.events)
        found: list[Event] = []

        def stop() -> bool:
            nonlocal start
            found.extend(e for e in self.events[start:] if match(e))
            start = len(self.events)
            return bool(found)

        if not self.run_until(self.now + within, stop):
            raise AssertionError(f"no matching event within {within} s")
        return found[0]

    # --- looking ---

    def state(self, observer: str, node: str) -> State | None:
        member = self.cores[observer].members.get(node)
        return None if member is None else member.state

    def view(self, observer: str) -> dict[str, State]:
        return {k: m.state for k, m in self.cores[observer].members.items()}

    def changes(
        self, *, observer: str | None = None, node: str | None = None, state: State | None = None
    ) -> list[tuple[float, str, MemberChanged]]:
        return [
            (t, who, e)
            for t, who, e in self.events
            if isinstance(e, MemberChanged)
            and (observer is None or who == observer)
            and (node is None or e.member.node_id == node)
            and (state is None or e.state is state)
        ]

    def sent(self, *, src: str | None = None, dst: str | None = None) -> list[Packet]:
        return [
            p for p in self.log if (src is None or p.src == src) and (dst is None or p.dst == dst)
        ]

    # --- plumbing ---

    def _flush(self, name: str) -> None:
        core = self.cores[name]
        for action in core.take_actions():
            match action:
                case SendDatagram(to=to, data=data):
                    self._send(name, to, data)
                case StartPushPull(to=to):
                    peer = self.addresses.get(to)
                    if self.push_pull_enabled and peer is not None:
                        self.push_pull(name, peer)
                case MemberChanged() | IncarnationChanged():
                    self.events.append((self.now, name, action))
        if name in self.crashed:
            return
        deadline = core.next_deadline()
        # A driver sleeps until next_deadline(): one in the past would make it spin.
        assert deadline > self.now, f"{name}: next_deadline {deadline} <= now {self.now}"
        if self._deadlines.get(name) != deadline:
            self._deadlines[name] = deadline
            if deadline < math.inf:
                heapq.heappush(self._timers, (deadline, name))

    def _send(self, src: str, to: Address, data: bytes) -> None:
        assert len(data) <= MAX_DATAGRAM_BYTES, f"{len(data)}-byte datagram from {src}"
        packet = Packet(self.now, src, self.addresses.get(to), to, CODEC.decode(data), len(data))
        self.counts["datagrams"] += 1
        self.counts["bytes"] += len(data)
        if src in self.crashed or packet.dst in self.crashed:
            packet.dropped = "crash"
        elif packet.dst is None:
            packet.dropped = "nowhere"
        elif any(rule(packet) for rule in self.rules):
            packet.dropped = "rule"
        elif self.loss and self.rng.random() < self.loss:
            packet.dropped = "loss"
        if self.record:
            self.log.append(packet)
        if packet.dropped:
            self.counts[f"dropped_{packet.dropped}"] += 1
            return
        self._seq += 1
        heapq.heappush(self._queue, (self.now + self.latency, self._seq, packet))

    def _deliver(self, packet: Packet) -> None:
        assert packet.dst is not None
        if packet.dst in self.crashed:
            self.counts["dropped_crash"] += 1
            return
        core = self.cores[packet.dst]
        core.handle_messages(packet.messages, info(packet.src).gossip, self.now)
        core.tick(self.now)
        self._flush(packet.dst)


def quiet_cluster(n: int, *, seed: int = 1, push_pull: bool = True) -> Net:
    """n00 with default settings; n01.. never probe (but answer, help and gossip)."""
    net = Net(seed=seed, push_pull=push_pull)
    net.cluster(n, config={name: QUIET for name in names(n)[1:]})
    return net


def ping_to(target: str, src: str | None = None) -> Callable[[Packet], bool]:
    return lambda p: (
        (src is None or p.src == src)
        and any(isinstance(m, Ping) and m.target == target for m in p.messages)
    )


# --- learning about each other -----------------------------------------------------------------


def test_two_nodes_learn_each_other_by_push_pull() -> None:
    net = Net()
    net.add("n00")
    net.add("n01")
    assert net.view("n00") == {"n00": State.ALIVE}

    net.push_pull("n01", "n00", join=True)

    for me, other in (("n00", "n01"), ("n01", "n00")):
        assert net.view(me) == {"n00": State.ALIVE, "n01": State.ALIVE}
        [(_, _, event)] = net.changes(observer=me)
        assert event == MemberChanged(info(other), State.ALIVE, None)
    net.run_for(10)
    assert all(
        c.stats["probes"] >= 9 and c.stats["probe_failures"] == 0 for c in net.cores.values()
    )
    assert not any(p.has(Suspect) or p.has(PingReq) for p in net.log)
    assert not any(p.dropped for p in net.log)


def test_five_nodes_learn_each_other_by_push_pull_alone() -> None:
    net = Net()
    for name in names(5):
        net.add(name)
    for name in names(5)[1:]:
        net.push_pull(name, "n00", join=True)  # the seed learns everyone...
    for name in names(5)[1:]:
        net.push_pull(name, "n00")  # ...and hands its table back
    assert not net.log  # no datagram was needed
    for name in names(5):
        assert net.view(name) == dict.fromkeys(names(5), State.ALIVE)


def test_five_nodes_learn_each_other_by_alive_gossip() -> None:
    net = Net(push_pull=False)  # only the joins: the rest must travel as Alive gossip
    for name in names(5):
        net.add(name)
    for name in names(5)[1:]:
        net.push_pull(name, "n00", join=True)
    assert net.view("n01") == {"n00": State.ALIVE, "n01": State.ALIVE}

    net.run_for(3)

    assert net.counts["push_pulls"] == 4
    for name in names(5):
        assert net.view(name) == dict.fromkeys(names(5), State.ALIVE)
    # n01 heard of n04 from an Alive datagram, never from a table.
    [(t, _, event)] = net.changes(observer="n01", node="n04")
    assert event.previous is None
    assert any(
        p.dst == "n01" and p.at + LATENCY == t and Alive(info("n04")) in p.messages for p in net.log
    )


# --- probing -----------------------------------------------------------------------------------


def test_probe_is_a_ping_answered_by_an_ack() -> None:
    net = Net()
    net.cluster(2)
    sent = net.run_until_sent(ping_to("n01", src="n00"))
    [ping] = sent.of(Ping)
    assert ping == Ping(ping.seq, "n00", "n01") and sent.to == info("n01").gossip

    net.run_for(DEFAULT.probe_interval)

    [ack_packet] = [p for p in net.sent(src="n01", dst="n00") if p.has(Ack)][:1]
    assert ack_packet.of(Ack) == [Ack(ping.seq, "n01")]
    assert ack_packet.at == pytest.approx(sent.at + LATENCY)
    assert not any(p.has(PingReq) for p in net.log)
    assert net.cores["n00"].stats["probe_failures"] == 0


def test_failed_probe_asks_helpers_who_nack_then_suspects_at_end_of_interval() -> None:
    net = quiet_cluster(5)
    n00 = net.cores["n00"]
    net.run_for(5)
    net.crash("n04")
    sent = net.run_until_sent(ping_to("n04", src="n00"))
    t0, [ping] = sent.at, sent.of(Ping)
    failures = n00.stats["probe_failures"]

    net.run_until(t0 + DEFAULT.probe_timeout - 1e-6)
    assert not any(p.has(PingReq) for p in net.sent(src="n00"))
    net.run_until(t0 + DEFAULT.probe_timeout)

    reqs = [p for p in net.sent(src="n00") if p.has(PingReq)]
    assert len(reqs) == DEFAULT.indirect_checks
    assert {p.dst for p in reqs} == {"n01", "n02", "n03"}  # never the target itself
    assert all(p.at == t0 + DEFAULT.probe_timeout for p in reqs)
    for p in reqs:
        assert p.of(PingReq) == [PingReq(ping.seq, "n00", "n04", info("n04").gossip)]

    net.run_until(t0 + DEFAULT.probe_interval - EPS)
    assert net.state("n00", "n04") is State.ALIVE
    for helper in ("n01", "n02", "n03"):
        [helper_ping] = [p for p in net.sent(src=helper, dst="n04") if p.has(Ping)]
        assert helper_ping.of(Ping)[0].target == "n04"
        [nack] = [p for p in net.sent(src=helper, dst="n00") if p.has(Nack)]
        assert nack.of(Nack) == [Nack(ping.seq, helper)]
        # The helper nacks soon enough for the nack to count (swim.py fix: it used to
        # nack after a full probe_timeout, which arrived just after the requester gave up).
        assert nack.at + LATENCY < t0 + DEFAULT.probe_interval

    net.run_until(t0 + DEFAULT.probe_interval)
    [(t, _, event)] = net.changes(observer="n00", node="n04", state=State.SUSPECT)
    assert t == t0 + DEFAULT.probe_interval
    assert (event.state, event.previous) == (State.SUSPECT, State.ALIVE)
    assert n00.stats["probe_failures"] == failures + 1
    assert n00.awareness == 0  # every helper nacked: the fault is not ours


def test_helper_forwards_the_targets_ack() -> None:
    net = quiet_cluster(5)
    n00 = net.cores["n00"]
    net.run_for(5)
    # n00 and n04 cannot hear each other; everyone else can.
    net.rules.append(lambda p: {p.src, p.dst} == {"n00", "n04"})
    sent = net.run_until_sent(ping_to("n04", src="n00"))
    [ping] = sent.of(Ping)
    failures = n00.stats["probe_failures"]

    net.run_for(DEFAULT.probe_interval + 0.5)

    forwarded = [p for p in net.log if p.dst == "n00" and Ack(ping.seq, "n04") in p.messages]
    assert {p.src for p in forwarded} == {"n01", "n02", "n03"}
    assert not any(p.has(Nack) for p in net.sent(dst="n00"))
    assert net.state("n00", "n04") is State.ALIVE
    assert n00.stats["probe_failures"] == failures


def test_helper_without_an_answer_nacks_the_requester() -> None:
    net = Net()
    net.add("n00")
    net.merge("n00", [MemberState(info("n01"), State.ALIVE), MemberState(info("n02"), State.ALIVE)])
    net.inject("n00", [PingReq(41, "n01", "n02", info("n02").gossip)], source="n01")
    t0 = net.now
    [forward] = [p for p in net.sent(src="n00") if p.has(Ping)]
    assert forward.dst is None and forward.to == info("n02").gossip  # n02: nobody there
    helper_ping = forward.of(Ping)[0]
    assert helper_ping.target == "n02" and helper_ping.source == "n00"

    net.run_until(t0 + DEFAULT.probe_timeout)

    [nack] = [p for p in net.sent(src="n00") if p.has(Nack)]
    assert nack.to == info("n01").gossip and nack.of(Nack) == [Nack(41, "n00")]
    assert nack.at - t0 < DEFAULT.probe_interval - DEFAULT.probe_timeout
    # A late ack from the target is not forwarded after the nack.
    net.inject("n00", [Ack(helper_ping.seq, "n02")], source="n02")
    assert not any(Ack(41, "n02") in p.messages for p in net.log)


def test_ping_for_another_node_id_is_not_acked() -> None:
    net = Net()
    n00 = net.add("n00")
    net.merge("n00", [MemberState(info("n01"), State.ALIVE)])
    before = len(net.log)
    net.inject("n00", [Ping(5, "n01", "n77")], source="n01")
    assert len(net.log) == before
    assert n00.stats["misdirected"] == 1
    net.inject("n00", [Ping(6, "n01", "n00")], source="n01")
    assert net.log[-1].of(Ack) == [Ack(6, "n00")]


def test_round_robin_probing_visits_every_member_once_per_cycle() -> None:
    net = quiet_cluster(7)
    others = set(names(7)[1:])
    net.run_for(3 * len(others) * DEFAULT.probe_interval + 0.5)
    targets = [m.target for p in net.sent(src="n00") for m in p.of(Ping)]
    assert len(targets) >= 3 * len(others)
    cycles = [targets[i : i + len(others)] for i in range(0, 3 * len(others), len(others))]
    for cycle in cycles:
        assert sorted(cycle) == sorted(others)
    assert len({tuple(c) for c in cycles}) > 1  # reshuffled between cycles


def test_probing_a_suspect_sends_the_suspicion_with_the_ping() -> None:
    net = quiet_cluster(4)
    net.run_for(2)
    net.crash("n03")
    net.run_until_event(
        lambda e: e[1] == "n00" and e[2] == MemberChanged(info("n03"), State.SUSPECT, State.ALIVE)
    )
    sent = net.run_until_sent(ping_to("n03", src="n00"))
    # First the suspicion, then the ping: the suspect's ack can carry its refutation.
    assert sent.messages[:2] == [Suspect("n03", 0, "n00"), sent.of(Ping)[0]]


# --- suspicion and its timeout ------------------------------------------------------------------


def suspect_by_own_probe(net: Net, victim: str) -> float:
    """Crash `victim`, run until n00 suspects it from its own failed probe; return when."""
    net.crash(victim)
    t, _, event = net.run_until_event(
        lambda e: e[1] == "n00" and isinstance(e[2], MemberChanged) and e[2].state is State.SUSPECT
    )
    assert event.member.node_id == victim
    return t


def dead_at(net: Net, observer: str, node: str) -> float:
    t, _, _ = net.run_until_event(
        lambda e: (
            e[1] == observer
            and isinstance(e[2], MemberChanged)
            and e[2].member.node_id == node
            and e[2].state is State.DEAD
        )
    )
    return t


@pytest.mark.parametrize("n", [5, 20])
def test_unconfirmed_suspicion_becomes_dead_after_the_maximum_timeout(n: int) -> None:
    net = quiet_cluster(n)
    net.run_for(2)
    victim = names(n)[-1]
    ts = suspect_by_own_probe(net, victim)
    # Our own later probes of the suspect are not independent confirmations.
    assert dead_at(net, "n00", victim) == pytest.approx(ts + max_timeout(DEFAULT, n) + LAST_CALL)
    assert max_timeout(DEFAULT, n) == pytest.approx(
        6 * 4 * max(1, math.log10(n)) * DEFAULT.probe_interval
    )
    # ...and the Dead spreads: every live member marks it dead (not left).
    net.run_for(2)
    for name in names(n)[:-1]:
        assert net.state(name, victim) is State.DEAD


def test_confirmations_shrink_the_suspicion_timeout_to_the_minimum() -> None:
    n = 5
    lo, hi = min_timeout(DEFAULT, n), max_timeout(DEFAULT, n)
    assert (lo, hi) == (4.0, 24.0)
    one = hi - (hi - lo) * math.log(2) / math.log(3)  # k = suspicion_mult - 2 = 2

    net = quiet_cluster(n)
    net.run_for(2)
    ts = suspect_by_own_probe(net, "n04")
    net.run_until(ts + 1)
    net.inject("n00", [Suspect("n04", 0, "n01")], source="n01")
    net.inject("n00", [Suspect("n04", 0, "n01")], source="n02")  # the same accuser again
    net.inject("n00", [Suspect("n04", 0, "n00")], source="n03")  # our own, echoed back
    assert dead_at(net, "n00", "n04") == pytest.approx(ts + one + LAST_CALL)

    net = quiet_cluster(n)
    net.run_for(2)
    ts = suspect_by_own_probe(net, "n04")
    net.run_until(ts + 1)
    net.inject("n00", [Suspect("n04", 0, "n01")], source="n01")
    net.inject("n00", [Suspect("n04", 0, "n02"), Suspect("n04", 0, "n03")], source="n02")
    assert dead_at(net, "n00", "n04") == pytest.approx(ts + lo + LAST_CALL)  # never below the min

    net = quiet_cluster(n)
    net.run_for(2)
    ts = suspect_by_own_probe(net, "n04")
    net.run_until(ts + 6)
    net.inject("n00", [Suspect("n04", 0, "n01")], source="n01")
    assert net.state("n00", "n04") is State.SUSPECT
    net.inject("n00", [Suspect("n04", 0, "n02")], source="n02")  # already past the minimum
    assert net.state("n00", "n04") is State.SUSPECT  # one last direct ping first...
    net.run_for(LAST_CALL)
    assert net.state("n00", "n04") is State.DEAD  # ...unanswered


def test_own_failed_probe_of_a_suspect_confirms_and_is_gossiped() -> None:
    n = 5
    lo, hi = min_timeout(DEFAULT, n), max_timeout(DEFAULT, n)
    net = quiet_cluster(n)
    net.run_for(2)
    net.crash("n04")
    net.inject("n00", [Suspect("n04", 0, "n01")], source="n01")  # n01 accuses first
    t0 = net.now

    t_dead = dead_at(net, "n00", "n04")

    [confirm] = [p for p in net.sent(src="n00") if Suspect("n04", 0, "n00") in p.messages][:1]
    assert confirm.at < t_dead
    assert t_dead == pytest.approx(t0 + hi - (hi - lo) * math.log(2) / math.log(3) + LAST_CALL)


def test_suspect_refutes_and_everyone_returns_it_to_alive() -> None:
    net = Net(seed=3)
    net.cluster(5)
    net.run_for(3)
    mute = [True]
    # n03's acks are lost (direct and through helpers) until somebody suspects it.
    net.rules.append(lambda p: mute[0] and p.src == "n03" and p.has(Ack))
    t_s, accuser, _ = net.run_until_event(
        lambda e: (
            isinstance(e[2], MemberChanged)
            and e[2].member.node_id == "n03"
            and e[2].state is State.SUSPECT
        )
    )
    mute[0] = False
    t_r, _, refuted = net.run_until_event(lambda e: e[1] == "n03")
    assert refuted == IncarnationChanged(1)
    assert net.cores["n03"].me_info.incarnation == 1
    assert net.cores["n03"].awareness >= 1  # having to refute hints that we are the slow one

    net.run_for(3)

    for name in names(5):
        if name != "n03":
            member = net.cores[name].members["n03"]
            assert (member.state, member.incarnation) == (State.ALIVE, 1)
    assert net.changes(observer=accuser, node="n03")[-1][2] == MemberChanged(
        info("n03", 1), State.ALIVE, State.SUSPECT
    )
    assert not net.changes(state=State.DEAD)


def test_suspect_refutes_from_the_suspicion_on_a_probe() -> None:
    net = Net()
    n00 = net.add("n00")
    net.merge("n00", [MemberState(info("n01"), State.ALIVE), MemberState(info("n02"), State.ALIVE)])
    net.inject("n00", [Ping(9, "n01", "n00"), Suspect("n00", 0, "n01")], source="n01")

    assert n00.me_info.incarnation == 1
    assert net.events[-1][2] == IncarnationChanged(1)
    assert n00.stats["refutations"] == 1
    assert net.log[-1].of(Ack) == [Ack(9, "n00")]
    net.run_for(DEFAULT.gossip_interval)
    assert any(Alive(info("n00", 1)) in p.messages for p in net.sent(src="n00"))

    # In a cluster: the suspicion reaches n03 only on probes, and it refutes on the first.
    net = quiet_cluster(4, seed=2)
    net.run_for(2)
    mute = [True]
    net.rules.append(lambda p: mute[0] and p.src == "n03" and p.has(Ack))
    net.rules.append(lambda p: p.dst == "n03" and p.has(Suspect) and not p.has(Ping))
    net.run_until_event(
        lambda e: e[1] == "n00" and isinstance(e[2], MemberChanged) and e[2].state is State.SUSPECT
    )
    mute[0] = False
    t, _, event = net.run_until_event(lambda e: e[1] == "n03")
    assert event == IncarnationChanged(1)
    [carrier] = [p for p in net.log if p.dst == "n03" and p.at + LATENCY == t and not p.dropped]
    assert (
        carrier.src == "n00" and carrier.has(Ping) and Suspect("n03", 0, "n00") in carrier.messages
    )
    net.run_for(2)
    assert net.cores["n00"].members["n03"].incarnation == 1
    assert net.state("n00", "n03") is State.ALIVE


def test_last_call_answered_through_a_helper_restarts_the_suspicion_instead_of_a_death() -> None:
    n = 4
    net = quiet_cluster(n, seed=2)
    net.run_for(2)
    mute = [True]
    net.rules.append(lambda p: mute[0] and p.src == "n03" and p.has(Ack))
    # n03 never hears it is suspected (so it never refutes), and n00 <-> n03 direct datagrams
    # are lost from now on: only pings relayed by helpers reach it.
    net.rules.append(lambda p: p.dst == "n03" and p.has(Suspect))
    net.rules.append(lambda p: {p.src, p.dst} == {"n00", "n03"})
    net.run_until_event(
        lambda e: e[1] == "n00" and isinstance(e[2], MemberChanged) and e[2].state is State.SUSPECT
    )
    mute[0] = False
    net.run_for(3 * max_timeout(DEFAULT, n))

    n00 = net.cores["n00"]
    assert not net.changes(observer="n00", state=State.DEAD)
    assert net.state("n00", "n03") is State.SUSPECT
    assert n00.stats["last_call_answered"] >= 2  # every last call, answered through a helper
    relayed = [p for p in net.sent(src="n00") if p.has(PingReq)]
    assert any(m.target == "n03" for p in relayed for m in p.of(PingReq))
    assert (
        not n00._suspicions.last_calls or len(n00._suspicions.last_calls) <= 1
    )  # answered calls are forgotten


def test_stale_suspicion_about_us_is_answered_with_our_current_alive() -> None:
    net = quiet_cluster(3)
    n00 = net.cores["n00"]
    net.inject("n00", [Suspect("n00", 0, "n01")], source="n01")
    assert n00.me_info.incarnation == 1
    net.run_for(5)  # the refutation's retransmits are spent
    assert not any(Alive(info("n00", 1)) in p.messages for p in net.log if p.at > 1)

    # n02 missed it, still suspects us at 0, and probes us (suspicion first, then the ping).
    awareness = n00.awareness
    net.inject("n00", [Suspect("n00", 0, "n02"), Ping(77, "n02", "n00")], source="n02")
    ack = net.log[-1]
    assert ack.dst == "n02" and Ack(77, "n00") in ack.messages
    assert Alive(info("n00", 1)) in ack.messages  # not refuted again: re-announced
    assert n00.me_info.incarnation == 1 and n00.stats["refutations"] == 1
    assert n00.awareness == awareness  # not a sign that we are the slow one
    # A stale Dead is answered the same way.
    net.run_for(5)
    net.inject("n00", [Dead("n00", 0, "n02")], source="n02")
    net.run_for(DEFAULT.gossip_interval)
    assert any(Alive(info("n00", 1)) in p.messages for p in net.log if p.at > net.now - 0.3)
    assert n00.me_info.incarnation == 1


def test_prober_that_missed_a_refutation_learns_it_from_the_suspect() -> None:
    net = quiet_cluster(4, push_pull=False)
    net.run_for(2)
    # n03 refutes a suspicion while n00 hears nothing about it...
    deaf = [True]
    net.rules.append(lambda p: deaf[0] and p.dst == "n00" and p.has(Alive))
    net.inject("n03", [Suspect("n03", 0, "n01")], source="n01")
    net.run_for(5)
    deaf[0] = False
    assert net.cores["n00"].members["n03"].incarnation == 0
    # ...then hears the old suspicion, which n03 has long refuted.
    net.inject("n00", [Suspect("n03", 0, "n01")], source="n01")
    t0 = net.now

    t, _, event = net.run_until_event(lambda e: e[1] == "n00" and e[2].member.node_id == "n03")
    assert event == MemberChanged(info("n03", 1), State.ALIVE, State.SUSPECT)
    # at the latest from the ack to its next probe of n03 (or sooner, by gossip)
    probes = [p.at for p in net.log if p.at >= t0 and ping_to("n03", src="n00")(p)]
    assert not probes or t <= probes[0] + 2 * LATENCY
    net.run_for(60)
    assert not net.changes(state=State.DEAD)
    assert net.cores["n03"].me_info.incarnation == 1


def test_refutation_of_alive_claims_about_ourselves() -> None:
    net = Net()
    n00 = net.add("n00", incarnation=5)
    net.merge("n00", [MemberState(info("n01"), State.ALIVE)])
    net.inject("n00", [Alive(info("n00", 5))], source="n01")  # just our own news
    assert n00.me_info.incarnation == 5
    net.inject("n00", [Alive(info("n00", 7))], source="n01")  # a rumour from an earlier life
    assert n00.me_info.incarnation == 8
    net.inject("n00", [Alive(info("n00", 8, host="10.9.9.9"))], source="n01")  # an impostor
    assert n00.me_info.incarnation == 9
    net.inject("n00", [Dead("n00", 3, "n01")], source="n01")  # stale: ignored
    assert n00.me_info.incarnation == 9
    net.inject("n00", [Dead("n00", 9, "n01")], source="n01")
    assert n00.me_info.incarnation == 10
    assert [e for _, _, e in net.events if isinstance(e, IncarnationChanged)] == [
        IncarnationChanged(8),
        IncarnationChanged(9),
        IncarnationChanged(10),
    ]
    assert n00.me_info.gossip == info("n00").gossip


# --- the top of the range (issue 12) ------------------------------------------------------------


def test_a_forged_dead_at_the_largest_incarnation_is_refused_not_refuted() -> None:
    """ "n00 is dead" at 2**63 - 1 (the largest integer the wire took) made n00 refute with
    2**63, which its own encoder refused at the next datagram: the node exited, having
    persisted that incarnation, and failed again at every restart."""
    net = Net()
    n00 = net.add("n00", incarnation=5)
    net.merge("n00", [MemberState(info("n01"), State.ALIVE)])
    # The wire carries incarnations up to MAX_INCARNATION only: beyond, the datagram is refused.
    forged = b"KV\x02" + msgpack.packb([[7, "n00", 2**63 - 1, "n01"]])
    with pytest.raises(WireError) as caught:
        CODEC.decode(forged)
    assert caught.value.reason == "shape"
    # At the ceiling (or beyond, should a decoder let it through) no incarnation out-ranks
    # the claim: it is refused and counted, and ours stays as it was.
    claims: list[Message] = [
        Dead("n00", 2**63 - 1, "n01"),
        Dead("n00", MAX_INCARNATION, "n01"),
        Suspect("n00", MAX_INCARNATION, "n01"),
        Leave("n00", MAX_INCARNATION),
        Alive(info("n00", MAX_INCARNATION, host="10.9.9.9")),
    ]
    for claim in claims:
        net.inject("n00", [claim], source="n01")
        assert n00.me_info.incarnation == 5
    assert n00.stats["unrefutable_claims"] == len(claims)
    net.run_for(5)  # every datagram it sends still encodes (Net._send decodes each one)
    # One below the ceiling is refuted, to exactly the ceiling, which still encodes.
    net.inject("n00", [Dead("n00", MAX_INCARNATION - 1, "n01")], source="n01")
    assert n00.me_info.incarnation == MAX_INCARNATION
    assert [e for _, _, e in net.events if isinstance(e, IncarnationChanged)] == [
        IncarnationChanged(MAX_INCARNATION)
    ]
    net.run_for(5)
    assert any(Alive(n00.me_info) in p.messages for p in net.sent(src="n00"))


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (None, (1, False)),  # a first start
        (0, (1, False)),
        (41, (42, False)),
        (MAX_INCARNATION - 1, (MAX_INCARNATION, False)),
        (MAX_INCARNATION, (1, True)),  # no room to rise
        (2**63 - 1, (1, True)),  # what the forged "dead" left behind before the fix
        (2**64, (1, True)),
        (-3, (1, True)),
        (True, (1, True)),
        ("7", (1, True)),
        (7.0, (1, True)),
    ],
)
def test_the_incarnation_at_start_is_always_one_the_wire_accepts(
    stored: object, expected: tuple[int, bool]
) -> None:
    assert incarnation_at_start(stored) == expected
    core = Swim(info("n00", expected[0]), DEFAULT, random.Random(1), CODEC.pack)
    core.start(0.0)
    core.tick(10.0)
    assert CODEC.decode(CODEC.encode([Alive(core.me_info)])) == [Alive(core.me_info)]


def test_an_incarnation_the_wire_refuses_is_refused_by_the_core() -> None:
    with pytest.raises(ValueError):
        Swim(info("n00", MAX_INCARNATION + 1), DEFAULT, random.Random(1), CODEC.pack)


def test_probe_sequence_numbers_wrap_instead_of_growing_past_the_wire() -> None:
    net = Net()
    n00 = net.add("n00")
    net.merge("n00", [MemberState(info("n01"), State.ALIVE)])
    n00._seq = MAX_SEQ - 1  # as after ~2**63 probes
    net.run_for(5)
    seqs = [m.seq for p in net.sent(src="n00") for m in p.of(Ping)]
    assert seqs[:2] == [MAX_SEQ, 1], seqs[:2]


def test_the_member_table_is_bounded_and_stays_sendable() -> None:
    config = replace(DEFAULT, max_members=4)
    net = Net(config=config)
    n00 = net.add("n00")
    others = names(12)[1:]
    net.merge("n00", [MemberState(info(name), State.ALIVE) for name in others[:6]])
    # Unknown members reported suspect or dead are learned first: refused just the same.
    net.merge("n00", [MemberState(info(name), State.DEAD) for name in others[6:]])
    net.inject("n00", [Alive(info("n20"))], source="n01")
    assert len(n00.members) == 4
    assert n00.stats["members_refused"] == 12 - 4 + 1
    encode_push_pull(n00.local_state())
    with pytest.raises(ValueError):
        replace(DEFAULT, max_members=10_001)


# --- Lifeguard awareness -----------------------------------------------------------------------


def probe_gaps(net: Net, src: str) -> list[float]:
    times = [p.at for p in net.sent(src=src) if any(m.source == src for m in p.of(Ping))]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_awareness_rises_on_missing_nacks_and_stretches_the_probe_interval() -> None:
    net = quiet_cluster(5)
    n00 = net.cores["n00"]
    net.run_for(2)
    net.crash("n04")
    net.rules.append(lambda p: p.has(Nack))  # the helpers' nacks never come back
    sent = net.run_until_sent(ping_to("n04", src="n00"))
    assert n00.awareness == 0
    net.run_until(sent.at + DEFAULT.probe_interval)
    assert n00.awareness == 3  # one per missing nack

    # The probe after the next comes 4 probe intervals later (the next one was scheduled
    # before the failure)...
    own_ping = lambda p: p.src == "n00" and any(m.source == "n00" for m in p.of(Ping))  # noqa: E731
    [nxt] = [p for p in net.log if p.at > sent.at and own_ping(p)]
    assert nxt.at == pytest.approx(sent.at + DEFAULT.probe_interval)
    after = net.run_until_sent(own_ping)
    assert after.at - nxt.at == pytest.approx(4 * DEFAULT.probe_interval)
    # ...and a successful probe brings it down by one.
    before = n00.awareness
    net.run_for(0.1)
    assert n00.awareness == before - 1
    # A probe waits probe_timeout x (awareness + 1) before it asks for help.
    sent = net.run_until_sent(ping_to("n04", src="n00"))
    scale = n00.awareness + 1
    req = net.run_until_sent(lambda p: p.src == "n00" and p.has(PingReq))
    assert req.at == pytest.approx(sent.at + DEFAULT.probe_timeout * scale)


def test_awareness_counts_each_missing_nack_and_is_capped() -> None:
    net = quiet_cluster(5)
    n00 = net.cores["n00"]
    net.run_for(2)
    net.crash("n04")
    net.rules.append(lambda p: p.src == "n01" and p.has(Nack))  # two of three helpers nack
    sent = net.run_until_sent(ping_to("n04", src="n00"))
    net.run_until(sent.at + DEFAULT.probe_interval)
    assert n00.awareness == 1

    # Without helpers, a failed probe costs one.
    net, lone = table_net(2)  # n01: nobody lives there
    sent = net.run_until_sent(ping_to("n01"))
    net.run_until(sent.at + DEFAULT.probe_interval)
    assert lone.awareness == 1

    # With helpers that never answer, three per failure, up to awareness_max - 1; the probe
    # interval stretches to awareness_max probe intervals.
    net, lone = table_net(11)
    net.run_for(30)
    assert lone.awareness == DEFAULT.awareness_max - 1
    gaps = probe_gaps(net, "n00")
    assert gaps[:3] == pytest.approx([1.0, 4.0, 7.0])
    assert max(gaps) == pytest.approx(DEFAULT.awareness_max * DEFAULT.probe_interval)


def test_awareness_rises_on_refutation_and_falls_on_successful_probes() -> None:
    net = quiet_cluster(3)
    n00 = net.cores["n00"]
    net.run_for(1)
    net.inject("n00", [Suspect("n00", 0, "n01")], source="n01")
    net.inject("n00", [Suspect("n00", 1, "n02")], source="n02")
    assert n00.awareness == 2
    assert n00.me_info.incarnation == 2
    net.inject("n00", [Suspect("n00", 0, "n01")], source="n01")  # stale: no refutation
    assert (n00.awareness, n00.stats["refutations"]) == (2, 2)
    failures = n00.stats["probe_failures"]
    net.run_for(10)
    assert n00.awareness == 0
    assert n00.stats["probe_failures"] == failures


# --- the rules of the member table ---------------------------------------------------------------


def table_net(n: int = 4) -> tuple[Net, Swim]:
    """n00 knowing n01..n(n-1) at incarnation 0; nobody lives at their addresses."""
    net = Net()
    core = net.add("n00")
    net.merge("n00", [MemberState(info(name), State.ALIVE) for name in names(n)[1:]])
    return net, core


def test_stale_incarnations_are_ignored() -> None:
    net, core = table_net()
    net.inject("n00", [Alive(info("n01", 2))], source="n02")
    events = len(net.events)
    net.inject(
        "n00", [Suspect("n01", 1, "n02"), Dead("n01", 1, "n02"), Leave("n01", 1)], source="n02"
    )
    member = core.members["n01"]
    assert (member.state, member.incarnation) == (State.ALIVE, 2)
    assert len(net.events) == events
    net.inject("n00", [Alive(info("n01", 1))], source="n02")
    assert core.members["n01"].info == info("n01", 2)


def test_alive_at_the_same_incarnation_does_not_override_suspect_or_dead() -> None:
    net, core = table_net()
    net.inject("n00", [Suspect("n01", 0, "n02"), Alive(info("n01", 0))], source="n02")
    assert net.state("n00", "n01") is State.SUSPECT
    net.inject("n00", [Dead("n01", 0, "n02"), Alive(info("n01", 0))], source="n02")
    assert net.state("n00", "n01") is State.DEAD
    net.inject("n00", [Suspect("n01", 0, "n02")], source="n02")  # no way back by suspicion
    assert net.state("n00", "n01") is State.DEAD


def test_alive_with_a_higher_incarnation_resurrects_a_dead_member() -> None:
    net, core = table_net()
    net.inject("n00", [Dead("n01", 0, "n02")], source="n02")
    assert net.state("n00", "n01") is State.DEAD
    restarted = replace(info("n01", 1), http=("10.0.0.2", 9090))  # restarted, new port
    net.inject("n00", [Alive(restarted)], source="n01")
    assert net.changes(node="n01")[-1][2] == MemberChanged(restarted, State.ALIVE, State.DEAD)
    assert core.members["n01"].info == restarted
    # and it is passed on
    net.run_for(DEFAULT.gossip_interval)
    assert any(Alive(restarted) in p.messages for p in net.sent(src="n00"))


def test_leave_marks_left_not_dead_and_is_disseminated() -> None:
    net, core = table_net()
    net.inject("n00", [Leave("n01", 0)], source="n01")
    assert net.changes(node="n01")[-1][2] == MemberChanged(info("n01"), State.LEFT, State.ALIVE)
    net.inject("n00", [Dead("n01", 0, "n02"), Suspect("n01", 0, "n02")], source="n02")
    assert net.state("n00", "n01") is State.LEFT
    net.run_for(DEFAULT.gossip_interval)
    assert any(Leave("n01", 0) in p.messages for p in net.sent(src="n00"))
    # A dead member that turns out to have left is recorded as left.
    net.inject("n00", [Dead("n02", 0, "n03"), Leave("n02", 0)], source="n03")
    assert net.state("n00", "n02") is State.LEFT


def test_remote_dead_in_push_pull_only_causes_suspicion() -> None:
    net, core = table_net()
    net.merge(
        "n00",
        [
            MemberState(info("n01"), State.DEAD),
            MemberState(info("n02"), State.SUSPECT),
            MemberState(info("n03"), State.LEFT),
        ],
        source="n02",
    )
    assert net.view("n00") == {
        "n00": State.ALIVE,
        "n01": State.SUSPECT,
        "n02": State.SUSPECT,
        "n03": State.LEFT,
    }
    # A table that says we are dead makes us refute, not die.
    net.merge("n00", [MemberState(info("n00"), State.DEAD)], source="n02")
    assert core.me_info.incarnation == 1 and net.state("n00", "n00") is State.ALIVE


def test_dead_and_left_members_are_reaped_after_dead_retention() -> None:
    config = replace(DEFAULT, dead_member_retention=100.0)
    net = Net(config=config)
    core = net.add("n00")
    net.merge("n00", [MemberState(info(name), State.ALIVE) for name in names(4)[1:]])
    net.run_for(10)  # first reap at 25 s, then every 25 s
    net.inject("n00", [Dead("n01", 0, "n03"), Leave("n02", 0)], source="n03")
    t = net.now
    net.run_until(t + config.dead_member_retention - 1)
    assert {"n01", "n02"} <= set(core.members)
    net.run_until(t + config.dead_member_retention * 1.25)
    assert "n01" not in core.members and "n02" not in core.members
    assert "n00" in core.members


# --- dissemination -----------------------------------------------------------------------------


def test_each_broadcast_is_sent_at_most_retransmit_limit_times() -> None:
    net = Net(push_pull=False)
    net.cluster(5)
    net.run_for(2)
    newcomer = info("n09")
    net.merge("n00", [MemberState(newcomer, State.ALIVE)])  # nobody lives at n09
    net.run_for(20)
    limit = retransmit_limit(DEFAULT, 6)
    assert limit == 4
    carried = Counter(p.src for p in net.log if Alive(newcomer) in p.messages)
    assert carried["n00"] == limit
    assert set(carried) == set(names(5))  # everyone passed it on...
    assert max(carried.values()) <= limit  # ...no more than the limit


def test_datagrams_stay_small_with_a_hundred_alive_broadcasts_pending() -> None:
    net = Net(push_pull=False)
    core = net.add("n00")
    net.add("n01")
    net.push_pull("n01", "n00", join=True)
    crowd = [
        info(f"n{i}", 2**40 + i, host=f"node-{i:03d}.rack-{i % 7}.dc-west.example.internal")
        for i in range(100, 200)
    ]
    net.merge("n00", [MemberState(m, State.ALIVE) for m in crowd])
    assert core.live_count() == 102
    limit = retransmit_limit(DEFAULT, 102)
    assert limit == 12

    net.run_for(30)

    assert net.log and max(p.size for p in net.log) <= MAX_DATAGRAM_BYTES  # (also per send)
    assert max(p.size for p in net.log) > MAX_DATAGRAM_BYTES - 200  # packed, not one by one
    assert max(len(p.messages) for p in net.log) > 5
    by_member = Counter(
        m.member.node_id for p in net.sent(src="n00") for m in p.of(Alive) if m.member in crowd
    )
    assert set(by_member) == {m.node_id for m in crowd}
    assert max(by_member.values()) <= limit
    assert len(net.cores["n01"].members) > 2  # and they decode at the other end


# --- leaving -----------------------------------------------------------------------------------


def test_leave_sends_leave_and_then_ignores_everything() -> None:
    net = Net()
    net.cluster(5)
    net.run_for(3)
    n02 = net.cores["n02"]
    before = len(net.log)
    net.leave("n02")
    leaves = [p for p in net.log[before:] if p.src == "n02"]
    assert {p.dst for p in leaves} == {"n00", "n01", "n03", "n04"}
    assert all(Leave("n02", 0) in p.messages for p in leaves)
    assert n02.next_deadline() == math.inf

    net.run_for(1)
    table = {k: (m.state, m.incarnation) for k, m in n02.members.items()}
    net.inject("n02", [Ping(1, "n00", "n02"), Suspect("n00", 0, "n01")], source="n00")
    n02.tick(net.now + 100)
    n02.merge_remote(net.cores["n00"].local_state(), net.now)
    assert n02.take_actions() == []
    assert {k: (m.state, m.incarnation) for k, m in n02.members.items()} == table
    assert not [p for p in net.log[before:] if p.src == "n02" and p not in leaves]

    net.run_for(60)
    for name in ("n00", "n01", "n03", "n04"):
        assert net.state(name, "n02") is State.LEFT
    assert not net.changes(state=State.DEAD)
    assert not net.changes(state=State.SUSPECT)


# --- end to end --------------------------------------------------------------------------------


def test_next_deadline_is_never_in_the_past() -> None:
    # Net asserts it after every step; this pins the case that used to spin: a probe acked
    # before its probe timeout left `indirect_at` as the deadline until the interval ended.
    net = Net()
    net.cluster(2)
    n00 = net.cores["n00"]
    sent = net.run_until_sent(ping_to("n01", src="n00"))
    net.run_until(sent.at + DEFAULT.probe_timeout + 0.01)
    assert n00.next_deadline() > net.now
    fresh = Swim(info("n05"), DEFAULT, random.Random(1), CODEC.pack)
    assert fresh.next_deadline() == math.inf  # not started


N_E2E = 20


def detection_bound(config: SwimSettings, n: int) -> float:
    """Crash to "dead everywhere": a member's round-robin reaches the victim within two
    cycles of n-1 probes; one interval for that probe; the longest suspicion; a few seconds
    for the Dead to spread by gossip."""
    return 2 * (n - 1) * config.probe_interval + config.probe_interval + max_timeout(config, n) + 3


def test_crashed_node_is_declared_dead_by_every_other_node() -> None:
    net = Net(seed=7, record=False)
    net.cluster(N_E2E)
    net.run_for(10)
    victim = "n07"
    crash_at = net.now
    net.crash(victim)
    others = [n for n in names(N_E2E) if n != victim]

    bound = detection_bound(DEFAULT, N_E2E)
    net.run_until(
        crash_at + bound,
        stop=lambda: all(net.state(o, victim) is State.DEAD for o in others),
    )

    dead_times = [t for t, _, _ in net.changes(node=victim, state=State.DEAD)]
    suspect_times = [t for t, _, _ in net.changes(node=victim, state=State.SUSPECT)]
    assert all(net.state(o, victim) is State.DEAD for o in others)
    assert len(dead_times) == len(others)
    assert max(dead_times) - crash_at <= bound
    assert min(suspect_times) >= crash_at
    # Nobody else was so much as suspected.
    assert not [e for e in net.changes(state=State.SUSPECT) if e[2].member.node_id != victim]
    print(
        f"\ncrash of 1 in {N_E2E}: first suspect +{min(suspect_times) - crash_at:.1f}s, "
        f"first dead +{min(dead_times) - crash_at:.1f}s, all dead +{max(dead_times) - crash_at:.1f}s "
        f"(bound {bound:.1f}s); awareness {[net.cores[o].awareness for o in others]}"
    )


def test_no_false_positives_at_ten_percent_loss() -> None:
    seconds = 600.0
    net = Net(seed=11, loss=0.1, record=False)
    net.cluster(N_E2E)
    net.run_until(seconds)

    suspicions = net.changes(state=State.SUSPECT)
    deaths = net.changes(state=State.DEAD)
    refutations = sum(c.stats["refutations"] for c in net.cores.values())
    failures = sum(c.stats["probe_failures"] for c in net.cores.values())
    probes = sum(c.stats["probes"] for c in net.cores.values())
    print(
        f"\n{N_E2E} nodes, 10% loss, {seconds:.0f}s: {probes} probes, {failures} failed, "
        f"{len(suspicions)} suspect events, {refutations} refutations, {len(deaths)} deaths; "
        f"{net.counts['datagrams'] / N_E2E / seconds:.1f} datagrams and "
        f"{net.counts['bytes'] / N_E2E / seconds:.0f} bytes per node per second; "
        f"max awareness {max(c.awareness for c in net.cores.values())}"
    )
    assert not deaths
    assert not net.changes(state=State.LEFT)
    assert all(len(net.view(name)) == N_E2E for name in names(N_E2E))
