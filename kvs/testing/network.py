"""A simulated network for many nodes inside one `trio.run`, driven by one seeded RNG.

Membership and sync only ever see a `Transport`; here every node gets a `SimTransport` onto one
shared `SimNetwork`, which injects latency, jitter (hence reordering), loss, duplication,
partitions and host crashes. Run it under a `SimClock` (`kvs.testing.simclock`) and with
Trio's scheduler pinned (`kvs.testing.harness.run_simulation` does both): then a seed
replays exactly, and a simulated minute costs milliseconds.

Delivery needs no task: traffic waits in a heap of (arrival time, sequence number, action),
and the run's `SimClock` performs what is due when it moves time forward (`async with
net.running()` attaches the network to it). The sequence number breaks ties, so equal
arrival times deliver in send order and nothing depends on memory addresses or hashes.

What a host binds (its transport, datagram endpoints, stream ends) is in
`kvs.testing.sockets`; the stream semantics are described there.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import trio

from kvs.net.transport import Address
from kvs.testing.simclock import SimClock
from kvs.testing.sockets import (
    LOOPBACK_HOSTS,
    Connection,
    HostCounters,
    HostState,
    SimTransport,
    serve_one,
)

if TYPE_CHECKING:
    from kvs.testing.sockets import SimStream

__all__ = [
    "Captured",
    "HostCounters",
    "LinkFaults",
    "SimNetwork",
    "TraceEvent",
]


@dataclass(frozen=True, slots=True)
class Captured:
    """One datagram, or one chunk of a stream, as a wiretap on the network saw it (sent:
    whether or not it arrived). `conn` is the stream's connection id (None: a datagram);
    `from_client` tells its direction."""

    kind: str  # "datagram" or "stream"
    src: Address
    dst: Address
    data: bytes
    conn: int | None = None
    from_client: bool = True


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """How a directed link treats traffic; the network default applies where no link is set."""

    latency: float = 0.001  # seconds, one way
    jitter: float = 0.0  # extra delay, uniform in [0, jitter), drawn per datagram / stream chunk
    loss: float = 0.0  # probability that a datagram is dropped (streams never lose bytes)
    duplicate: float = 0.0  # probability that a datagram is delivered twice

    def __post_init__(self) -> None:
        if not (self.latency >= 0 and self.jitter >= 0):
            raise ValueError("latency and jitter must be >= 0 seconds")
        if not (0 <= self.loss <= 1 and 0 <= self.duplicate <= 1):
            raise ValueError("loss and duplicate are probabilities in [0, 1]")


_FAULT_FIELDS = tuple(f.name for f in fields(LinkFaults))


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One datagram's fate (or one connect's), for debugging and replay comparison."""

    time: float
    kind: str  # "datagram" or "connect"
    src: Address
    dst: Address
    size: int
    outcome: str  # "delivered", "connected", or the drop / failure reason


class SimNetwork:
    """Many hosts, one wire. Hosts are plain strings ("10.0.0.7") and appear on first use.

    Every random choice (delays, loss, duplication) comes from `rng`, and always draws the same
    number of values per event, so changing a fault setting does not shift unrelated draws.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        latency: float = 0.001,
        jitter: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        queue_size: int = 256,
        connect_timeout: float = 2.0,
        trace: bool = False,
        capture: bool = False,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if connect_timeout < 0:
            raise ValueError("connect_timeout must be >= 0")
        self._rng = rng
        self._defaults = LinkFaults(latency, jitter, loss, duplicate)
        self._links: dict[tuple[str, str], dict[str, float]] = {}
        self._blocked: set[tuple[str, str]] = set()  # membership tests only, never iterated
        self._hosts: dict[str, HostState] = {}
        self._connections: dict[int, Connection] = {}
        self._ids = itertools.count()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._running = False
        self._stopped = False
        self._stream_faults = (0.0, 0.0)  # (reset, corrupt) per stream chunk
        self.stream_faults_done = {"reset": 0, "corrupted": 0}
        self.queue_size = queue_size
        self.connect_timeout = connect_timeout
        self.drops: dict[str, int] = {}  # datagram drops by reason, network-wide
        self.trace: list[TraceEvent] | None = [] if trace else None
        # A wiretap: every datagram and stream chunk sent, bytes included (tests of what an
        # eavesdropper sees, and of replaying it: `inject_datagram`).
        self.captured: list[Captured] | None = [] if capture else None

    # --- running the wire ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SimNetwork]:
        """`async with net.running():` — the wire runs for the body, and stops after it. The
        run's clock must be a `SimClock` (`run_simulation` makes one): it performs arrivals."""
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, SimClock):
            raise RuntimeError("SimNetwork runs under a SimClock: use run_simulation")
        if self._running or clock.wire is not None:
            raise RuntimeError("this SimNetwork, or another, is already running")
        self._running = True
        clock.wire = self
        try:
            yield self
        finally:
            clock.wire = None
            self._running = False
            self._stopped = True
            self._queue.clear()

    def next_arrival(self) -> float:
        return self._queue[0][0] if self._queue else math.inf

    def deliver_due(self, now: float) -> None:
        """Called by the `SimClock` when no task can run."""
        queue = self._queue
        while queue and queue[0][0] <= now:
            heapq.heappop(queue)[2]()

    def _schedule(self, at: float, action: Callable[[], None]) -> None:
        if not self._running:
            if self._stopped:
                return  # the simulation is over; late traffic goes nowhere
            raise RuntimeError("SimNetwork is not running: use `async with net.running()`")
        heapq.heappush(self._queue, (at, next(self._ids), action))

    def fork_rng(self) -> random.Random:
        """A new RNG seeded from the network's, for a node: its draws then cannot shift ours."""
        return random.Random(self._rng.getrandbits(64))

    # --- hosts --------------------------------------------------------------------------------

    def _host(self, name: str) -> HostState:
        host = self._hosts.get(name)
        if host is None:
            host = self._hosts[name] = HostState(name)
        return host

    def transport(self, host: str) -> SimTransport:
        """The transport of the current boot of `host` (which must be up)."""
        state = self._host(host)
        if not state.up:
            raise RuntimeError(f"host {host} is crashed; restart() it first")
        return SimTransport(self, state, state.boot)

    @contextmanager
    def host_scope(self, host: str) -> Iterator[trio.CancelScope]:
        """A cancel scope that `crash(host)` cancels: run a node's tasks inside it, so that a
        crash stops the node before its sockets close and it never sees the closed sockets."""
        state = self._host(host)
        if not state.up:
            raise RuntimeError(f"host {host} is crashed; restart() it first")
        scope = trio.CancelScope()
        state.scopes.append(scope)
        try:
            with scope:
                yield scope
        finally:
            if scope in state.scopes:
                state.scopes.remove(scope)

    def is_up(self, host: str) -> bool:
        return self._host(host).up

    def counters(self, host: str) -> HostCounters:
        return self._host(host).counters

    @property
    def hosts(self) -> list[str]:
        """Every host seen so far, in order of first appearance."""
        return list(self._hosts)

    def crash(self, host: str) -> None:
        """Kill `host` at once: cancel its `host_scope`s, close its datagram endpoints and
        listeners, sever its connections. Traffic to it vanishes until `restart(host)`."""
        state = self._host(host)
        if not state.up:
            raise RuntimeError(f"host {host} is already crashed")
        for scope in list(state.scopes):
            scope.cancel()
        state.scopes.clear()
        state.up = False
        endpoints = list(state.datagrams.values())
        state.datagrams.clear()
        state.listeners.clear()
        for endpoint in endpoints:
            endpoint._crash()
        for conn in list(self._connections.values()):
            if host in (conn.a.host, conn.b.host):
                conn.sever(crashed=host)

    def restart(self, host: str) -> None:
        """Bring a crashed host back with nothing bound; get its new transport from
        `transport(host)` (a transport from before the crash stays dead)."""
        state = self._host(host)
        if state.up:
            raise RuntimeError(f"host {host} is not crashed")
        state.up = True
        state.boot += 1

    # --- faults -------------------------------------------------------------------------------

    @property
    def defaults(self) -> LinkFaults:
        return self._defaults

    def set_faults(self, **faults: float) -> None:
        """Change the default faults (`latency`, `jitter`, `loss`, `duplicate`) of every link."""
        self._defaults = replace(self._defaults, **self._check_faults(faults))

    def set_link(self, a: str, b: str, **faults: float) -> None:
        """Override some faults on the directed link a → b; the rest follow the defaults."""
        merged = {**self._links.get((a, b), {}), **self._check_faults(faults)}
        replace(self._defaults, **merged)  # validate now, not at the next send
        self._links[(a, b)] = merged

    def clear_link(self, a: str, b: str) -> None:
        self._links.pop((a, b), None)

    def link_faults(self, a: str, b: str) -> LinkFaults:
        override = self._links.get((a, b))
        return self._defaults if override is None else replace(self._defaults, **override)

    @staticmethod
    def _check_faults(faults: dict[str, float]) -> dict[str, float]:
        unknown = [name for name in faults if name not in _FAULT_FIELDS]
        if unknown:
            raise TypeError(f"unknown fault setting(s): {', '.join(unknown)}")
        return {name: float(value) for name, value in faults.items()}

    def partition(
        self, group_a: Iterable[str], group_b: Iterable[str], one_way: bool = False
    ) -> None:
        """Block traffic a → b (and b → a unless `one_way`) for every a in A, b in B.
        Partitions add up until `heal()`. Datagrams in flight across it are lost, and
        connections between the groups are severed (in both directions, even if one_way)."""
        side_a, side_b = list(group_a), list(group_b)
        for a in side_a:
            for b in side_b:
                if a == b:
                    raise ValueError(f"host {a} is on both sides of the partition")
                self._blocked.add((a, b))
                if not one_way:
                    self._blocked.add((b, a))
        for conn in list(self._connections.values()):
            if not self._path_open(conn.a.host, conn.b.host):
                conn.sever()

    def heal(self) -> None:
        """Remove every partition (severed connections stay severed)."""
        self._blocked.clear()

    def _blocked_path(self, src: str, dst: str) -> bool:
        return (src, dst) in self._blocked

    def _path_open(self, a: str, b: str) -> bool:
        """Both directions, as a TCP connection needs."""
        return (a, b) not in self._blocked and (b, a) not in self._blocked

    def _sample_delay(self, faults: LinkFaults) -> float:
        return faults.latency + faults.jitter * self._rng.random()

    def pause(self, host: str, seconds: float) -> None:
        """The process on `host` stops for `seconds` (a GC pause, SIGSTOP, a VM migration),
        as its peers see it: nothing it sends leaves, and nothing sent to it is read, until
        then -- held, not lost, and delivered late in a burst. (Its own timers keep running:
        a Trio task cannot be frozen from outside; the harness holds HTTP requests to it.)"""
        state = self._host(host)
        state.held_until = max(state.held_until, trio.current_time() + seconds)

    def held_until(self, host: str) -> float:
        return self._host(host).held_until

    def set_stream_faults(self, *, reset: float = 0.0, corrupt: float = 0.0) -> None:
        """Each stream chunk sent from now on resets its connection (both ends break, as on
        a TCP RST) with probability `reset`, or arrives with one byte flipped with
        probability `corrupt`. Zero draws nothing (replays of older seeds are unchanged)."""
        if not (0 <= reset <= 1 and 0 <= corrupt <= 1):
            raise ValueError("reset and corrupt are probabilities in [0, 1]")
        self._stream_faults = (float(reset), float(corrupt))

    def _stream_fault(self, end: SimStream, data: bytes) -> bytes | None:
        """The chunk as it will arrive, or None if the connection was reset instead."""
        reset, corrupt = self._stream_faults
        if not (reset or corrupt) or not data:
            return data
        roll, where = self._rng.random(), self._rng.randrange(len(data))
        if roll < reset:
            self.stream_faults_done["reset"] += 1
            conn = end._conn
            conn.sever()
            for side in (conn.a, conn.b):
                side._broken = True
                side._lot.unpark_all()
            return None
        if roll < reset + corrupt:
            self.stream_faults_done["corrupted"] += 1
            return data[:where] + bytes([data[where] ^ 0x40]) + data[where + 1 :]
        return data

    # --- datagrams ----------------------------------------------------------------------------

    def _record(self, kind: str, src: Address, dst: Address, size: int, outcome: str) -> None:
        if self.trace is not None:
            self.trace.append(TraceEvent(trio.current_time(), kind, src, dst, size, outcome))

    def _drop(self, sender: HostState, src: Address, dst: Address, size: int, reason: str) -> None:
        sender.counters.datagrams_dropped += 1
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self._record("datagram", src, dst, size, reason)

    def _send_datagram(self, sender: HostState, port: int, data: bytes, to: Address) -> None:
        src: Address = (sender.name, port)
        dst_name = sender.name if to[0] in LOOPBACK_HOSTS else to[0]
        dst: Address = (dst_name, to[1])
        counters = sender.counters
        if self.captured is not None:
            self.captured.append(Captured("datagram", src, dst, bytes(data)))
        counters.datagrams_sent += 1
        counters.bytes_sent += len(data)
        faults = self.link_faults(sender.name, dst_name)
        lost = self._rng.random() < faults.loss
        doubled = self._rng.random() < faults.duplicate
        delays = (self._sample_delay(faults), self._sample_delay(faults))
        if self._blocked_path(sender.name, dst_name):
            self._drop(sender, src, dst, len(data), "partition")
        elif lost:
            self._drop(sender, src, dst, len(data), "loss")
        else:
            now = max(trio.current_time(), sender.held_until)
            copies = 2 if doubled else 1
            counters.datagrams_duplicated += copies - 1
            for delay in delays[:copies]:
                self._schedule(now + delay, lambda: self._deliver_datagram(sender, src, dst, data))

    def inject_datagram(self, src: Address, dst: Address, data: bytes) -> None:
        """Put `data` on the wire as if `src` had sent it to `dst` (an attacker replaying a
        capture): delivered after the link's latency, faults and partitions included."""
        sender = self._host(src[0])
        delay = self._sample_delay(self.link_faults(src[0], dst[0]))
        self._schedule(
            trio.current_time() + delay, lambda: self._deliver_datagram(sender, src, dst, data)
        )

    def _deliver_datagram(self, sender: HostState, src: Address, dst: Address, data: bytes) -> None:
        if self._blocked_path(src[0], dst[0]):
            self._drop(sender, src, dst, len(data), "partition")
            return
        receiver = self._hosts.get(dst[0])
        if receiver is None or not receiver.up:
            self._drop(sender, src, dst, len(data), "host-down")
            return
        if receiver.held_until > trio.current_time():  # paused: read when it resumes
            self._schedule(
                receiver.held_until, lambda: self._deliver_datagram(sender, src, dst, data)
            )
            return
        endpoint = receiver.datagrams.get(dst[1])
        if endpoint is None:
            self._drop(sender, src, dst, len(data), "no-endpoint")
            return
        try:
            endpoint._inbox_send.send_nowait((data, src))
        except trio.WouldBlock:
            receiver.counters.receive_overflows += 1
            self._drop(sender, src, dst, len(data), "overflow")
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop(sender, src, dst, len(data), "no-endpoint")
            return
        receiver.counters.datagrams_delivered += 1
        receiver.counters.bytes_delivered += len(data)
        self._record("datagram", src, dst, len(data), "delivered")

    # --- streams ------------------------------------------------------------------------------

    async def _connect(self, client: HostState, boot: int, to: Address) -> SimStream:
        dst_name = client.name if to[0] in LOOPBACK_HOSTS else to[0]
        src_port = client.allocate_port(())
        src: Address = (client.name, src_port)
        dst: Address = (dst_name, to[1])
        there = self.link_faults(client.name, dst_name)
        back = self.link_faults(dst_name, client.name)
        rtt = self._sample_delay(there) + self._sample_delay(back)
        target = self._hosts.get(dst_name)
        reachable = target is not None and target.up and self._path_open(client.name, dst_name)
        waited = 0.0
        if reachable:
            await trio.sleep(rtt)
            waited = rtt
        if not (client.up and client.boot == boot):
            raise OSError(errno.ENETDOWN, f"host {client.name} is down")
        target = self._hosts.get(dst_name)
        if target is None or not target.up or not self._path_open(client.name, dst_name):
            client.counters.stream_connect_failures += 1
            self._record("connect", src, dst, 0, "timeout")
            await trio.sleep(max(0.0, self.connect_timeout - waited))
            raise OSError(errno.ETIMEDOUT, f"connect to {dst_name}:{to[1]} timed out")
        listener = target.listeners.get(to[1])
        if listener is None:
            client.counters.stream_connect_failures += 1
            self._record("connect", src, dst, 0, "refused")
            raise OSError(errno.ECONNREFUSED, f"nothing listens on {dst_name}:{to[1]}")
        conn = Connection(self, next(self._ids), src, dst)
        self._connections[conn.id] = conn
        client.counters.streams_opened += 1
        self._record("connect", src, dst, 0, "connected")
        listener.nursery.start_soon(serve_one, listener.handler, conn.b, src)
        return conn.a

    def _send_stream(self, end: SimStream, data: bytes) -> None:
        conn = end._conn
        peer = end._peer
        if self.captured is not None:
            from_client = end is conn.a
            src, dst = (
                (conn.a_address, conn.b_address)
                if from_client
                else (conn.b_address, conn.a_address)
            )
            self.captured.append(Captured("stream", src, dst, bytes(data), conn.id, from_client))
        self._host(end.host).counters.stream_bytes_sent += len(data)
        if conn.severed:
            return  # a silent peer: the bytes vanish, the sender's read timeout will tell
        arriving = self._stream_fault(end, data)
        if arriving is None:
            return
        self._schedule(self._stream_arrival(end), lambda: peer._arrive(arriving))

    def _stream_arrival(self, end: SimStream) -> float:
        """When bytes sent now from `end` arrive: after the link delay, and never before bytes
        sent earlier (TCP delivers in order, so jitter must not reorder a stream)."""
        delay = self._sample_delay(self.link_faults(end.host, end._peer.host))
        held = max(self._host(end.host).held_until, self._host(end._peer.host).held_until)
        end._last_arrival = max(trio.current_time() + delay, end._last_arrival, held)
        return end._last_arrival
