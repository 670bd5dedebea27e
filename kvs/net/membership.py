"""The Trio layer around the SWIM core: sockets in, timers, datagrams and push-pulls out.

Everything protocol-shaped lives in `kvs.net.swim`; this module only moves bytes between a
`Transport` and the core, counts what it drops, runs push-pull exchanges over authenticated
TCP frames, and joins through seeds. Nothing here decides who is alive.

Isolation: one datagram, one push-pull connection (served or started) is a boundary. What
a peer can make fail there -- `PEER_IO_ERRORS`, and anything unexpected besides -- ends
that one datagram or connection: it is counted (`dropped_<reason>`,
`stream_dropped_<reason>`, `push_pull_failures`; `..._error` for the unexpected, which is
also logged with its traceback, at most once a minute) and the node goes on. What stays
fatal, on purpose: the UDP socket or the TCP listener failing (the node could no longer
take part in the cluster, and would only pretend to), and the store failing to persist our
incarnation (a restart could then come back below a rumour of its own death).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import trio

from kvs.logs import LogLimiter
from kvs.net.codec import AEAD_NONCE_BYTES, REASONS, WireError, derive_keys
from kvs.net.datagrams import DatagramCodec, decode_push_pull, encode_push_pull
from kvs.net.frames import FrameStream
from kvs.net.messages import (
    Address,
    IncarnationChanged,
    MemberChanged,
    MemberInfo,
    Message,
    PushPull,
    SendDatagram,
    StartPushPull,
    State,
)
from kvs.net.swim import Swim
from kvs.net.swim_settings import SwimSettings
from kvs.net.transport import (
    PEER_IO_ERRORS,
    DatagramEndpoint,
    Transport,
    expected_error,
)

log = logging.getLogger(__name__)

PUSH_PULL_TIMEOUT = 10.0
MAX_PUSH_PULL_CONNECTIONS = 32  # served at once; more are closed at once, and counted
RECONNECT_INTERVAL = 10.0
SNAPSHOT_INTERVAL = 10.0  # how often the known-peers snapshot is refreshed (when it changed)
SNAPSHOT_PEERS = 32  # how many live peers' addresses it keeps
JOIN_BACKOFF_MAX = 30.0
JOIN_REFRESH_AFTER = 3.0  # one more push-pull this long after joining (see _join_loop)

SeedResolver = Callable[[str], Awaitable[Address]]
MemberListener = Callable[[MemberChanged], None]


class JoinError(Exception):
    pass


class Membership:
    """One node's membership service. Run `run()` in the node's nursery."""

    def __init__(
        self,
        *,
        me: MemberInfo,
        config: SwimSettings,
        transport: Transport,
        bind: Address,
        cluster_secret: str | Sequence[str],
        rng: random.Random,
        nonce: Callable[[], bytes],
        wall_ms: Callable[[], int],
        seeds: Sequence[str] = (),
        resolve_seed: SeedResolver | None = None,
        persist_incarnation: Callable[[int], Awaitable[None]] | None = None,
        known_peers: Sequence[Address] = (),
        persist_peers: Callable[[list[Address]], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.bind = bind
        self.rng = rng
        self._nonce = nonce
        self._wall_ms = wall_ms
        self.codec = DatagramCodec(derive_keys(cluster_secret, "gossip"))
        self._stream_keys = derive_keys(cluster_secret, "pushpull")
        self.core = Swim(me, config, rng, self._pack)
        self.seeds = list(seeds)
        self._resolve_seed = resolve_seed
        self._persist_incarnation = persist_incarnation
        # Gossip addresses of peers seen alive before the last shutdown (serf's "snapshot"): a
        # restarted node without seeds rejoins through them at once, instead of waiting to
        # be found by the others' reconnect loops.
        self.known_peers = list(known_peers)
        self._persist_peers = persist_peers
        self.listeners: list[MemberListener] = []
        self.counters: Counter[str] = Counter()
        self.joined = trio.Event()
        self._endpoint: DatagramEndpoint | None = None
        self._nursery: trio.Nursery | None = None
        self._push_pull_busy = False
        self._started_at: float | None = None  # trio time when the core started
        self._serving = 0  # push-pull connections being served
        self._incarnation_rose = trio.Event()
        self._errors = LogLimiter(log)

    def set_secrets(self, cluster_secret: str | Sequence[str]) -> None:
        """A keyring reload: the first secret seals from now on, every one is accepted."""
        gossip = derive_keys(cluster_secret, "gossip")
        self.codec.set_keys(gossip)
        self._stream_keys = derive_keys(cluster_secret, "pushpull")

    def _pack(self, first: Sequence[Message], more: Sequence[Message]) -> tuple[bytes, int]:
        """The core's packer: seals with our wall clock and a fresh nonce."""
        nonce = self._nonce()[:AEAD_NONCE_BYTES]
        return self.codec.pack(first, more, sent_ms=self._wall_ms(), nonce=nonce)

    # --- running -------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind UDP and TCP on the gossip address, report ready, then serve until cancelled."""
        self._endpoint = await self.transport.bind_datagram(self.bind)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(
                    self.transport.serve_stream, self._endpoint.address, self._serve_push_pull
                )
                self._started_at = trio.current_time()
                self.core.start(self._started_at)
                nursery.start_soon(self._datagram_loop)
                if self._persist_incarnation is not None:
                    nursery.start_soon(self._persist_loop, self._persist_incarnation)
                nursery.start_soon(self._reconnect_loop)
                if self._persist_peers is not None:
                    nursery.start_soon(self._snapshot_loop)
                if self.seeds or self.known_peers:
                    nursery.start_soon(self._join_loop)
                if not self.seeds:
                    self.joined.set()
                task_status.started(self._endpoint.address)
        finally:
            self._endpoint.close()

    async def _datagram_loop(self) -> None:
        assert self._endpoint is not None
        while True:
            with trio.move_on_at(self.core.next_deadline()):
                data, source = await self._endpoint.receive()
                self._on_datagram(data, source)
            self.core.tick(trio.current_time())
            await self._flush()

    def _on_datagram(self, data: bytes, source: Address) -> None:
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(data)
        try:
            messages = self.codec.decode(data, now_ms=self._wall_ms())
        except WireError as exc:
            self.counters[f"dropped_{exc.reason}"] += 1
            return
        try:
            self.core.handle_messages(messages, source, trio.current_time())
        except Exception:  # a bug, but one datagram's: never the node's end
            self.counters["dropped_error"] += 1
            self._errors.log(
                logging.ERROR, "datagram", "handling a datagram failed unexpectedly", exc_info=True
            )

    async def _flush(self) -> None:
        for action in self.core.take_actions():
            match action:
                case SendDatagram(to=to, data=data):
                    assert self._endpoint is not None
                    self.counters["datagrams_out"] += 1
                    self.counters["bytes_out"] += len(data)
                    await self._endpoint.send(data, to)
                case StartPushPull(node_id=node_id, to=to):
                    if not self._push_pull_busy and self._nursery is not None:
                        self._push_pull_busy = True
                        self._nursery.start_soon(self._periodic_push_pull, node_id, to)
                case MemberChanged():
                    self._announce(action)
                case IncarnationChanged(incarnation=incarnation):
                    self._errors.log(
                        logging.INFO,
                        "refuted",
                        "refuted a rumour about this node: incarnation is now %d",
                        incarnation,
                    )
                    self._incarnation_rose.set()

    async def _persist_loop(self, persist: Callable[[int], Awaitable[None]]) -> None:
        """Persist our incarnation each time it rose, the latest value only: a burst of
        refutations costs one write, and no datagram or push-pull waits for the disk. Its
        failure is the store's, and ends the node (see the module doc). A restart between a
        refutation and its write comes back one refutation lower, and refutes again."""
        while True:
            await self._incarnation_rose.wait()
            self._incarnation_rose = trio.Event()
            await persist(self.core.me_info.incarnation)

    def _announce(self, change: MemberChanged) -> None:
        level = logging.INFO if change.state in (State.ALIVE, State.LEFT) else logging.WARNING
        if change.previous is None:
            log.info("member %s joined (%s:%d)", change.member.node_id, *change.member.gossip)
        else:
            log.log(
                level,
                "member %s is %s (was %s)",
                change.member.node_id,
                change.state,
                change.previous,
            )
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:
                log.exception("membership listener failed")

    # --- push-pull -----------------------------------------------------------------------------

    async def exchange(self, address: Address, *, join: bool = False) -> PushPull:
        """One push-pull with the node at `address` (its gossip address): send our table, merge
        theirs. Raises one of PEER_IO_ERRORS when it fails (callers catch more: `_failed`)."""
        with trio.fail_after(PUSH_PULL_TIMEOUT):
            stream = await self.transport.connect_stream(address)
            async with stream:
                frames = await FrameStream.client(
                    stream, self._stream_keys, purpose="pushpull", nonce=self._nonce()
                )
                await frames.send(encode_push_pull(self.core.local_state(join=join)))
                remote = decode_push_pull(await frames.receive())
        self.counters["push_pulls"] += 1
        self.core.merge_remote(remote, trio.current_time())
        await self._flush()
        return remote

    def _failed(self, exc: Exception, counter: str, what: str) -> None:
        """Count a push-pull we started that failed; an unexpected failure is also counted
        in `push_pull_errors` and logged with its traceback (at most once a minute)."""
        self.counters[counter] += 1
        if expected_error(exc, (*PEER_IO_ERRORS, JoinError)) is None:
            self.counters["push_pull_errors"] += 1
            self._errors.log(logging.ERROR, counter, "%s failed unexpectedly", what, exc_info=True)

    async def _periodic_push_pull(self, node_id: str, address: Address) -> None:
        try:
            await self.exchange(address)
        except Exception as exc:
            self._failed(exc, "push_pull_failures", "a push-pull")
            log.debug("push-pull with %s failed: %s", node_id, _describe(exc))
        finally:
            self._push_pull_busy = False

    async def _serve_push_pull(self, stream: trio.abc.Stream, peer: Address) -> None:
        """Serve one push-pull: the boundary of one peer's connection (see the module doc)."""
        if self._serving >= MAX_PUSH_PULL_CONNECTIONS:
            # Closed at once: a flood of (half-open) connections costs no task and no memory.
            self.counters["stream_dropped_refused"] += 1
            return
        self._serving += 1
        try:
            await self._serve_push_pull_now(stream)
        except Exception as exc:
            failure = expected_error(exc, PEER_IO_ERRORS)
            if isinstance(failure, WireError):
                self.counters[f"stream_dropped_{failure.reason}"] += 1
                log.debug("refused a push-pull from %s:%d: %s", peer[0], peer[1], failure.reason)
            elif failure is not None:
                self.counters["stream_dropped_io"] += 1
            else:
                self.counters["stream_dropped_error"] += 1
                self._errors.log(
                    logging.ERROR, "serve", "serving a push-pull failed unexpectedly", exc_info=True
                )
        finally:
            self._serving -= 1

    async def _serve_push_pull_now(self, stream: trio.abc.Stream) -> None:
        with trio.fail_after(PUSH_PULL_TIMEOUT):
            frames = await FrameStream.server(
                stream, self._stream_keys, purpose="pushpull", nonce=self._nonce()
            )
            remote = decode_push_pull(await frames.receive())
            await frames.send(encode_push_pull(self.core.local_state()))
        self.counters["push_pulls_served"] += 1
        self.core.merge_remote(remote, trio.current_time())
        await self._flush()

    async def _reconnect_loop(self) -> None:
        """Try a member we think is dead now and then: after a partition heals, this is how the
        two sides find each other again (each refutes the other's verdict and gossips it)."""
        while True:
            await trio.sleep(RECONNECT_INTERVAL * (0.5 + self.rng.random()))
            dead = [m for _, m in sorted(self.core.members.items()) if m.state is State.DEAD]
            if not dead or self.core.left:
                continue
            member = self.rng.choice(dead)
            try:
                # Twice: the first exchange makes each side refute the other's "dead"; the
                # second carries the refutations (higher incarnations) across.
                await self.exchange(member.info.gossip)
                await self.exchange(member.info.gossip)
                self.counters["reconnects"] += 1
            except Exception as exc:
                self._failed(exc, "reconnect_failures", "a reconnect")

    # --- joining and leaving -------------------------------------------------------------------

    async def join_once(self) -> bool:
        """Push-pull with the first seed that answers, else with the first known peer (from
        the snapshot) that does; True when one did."""
        if await self._join_seeds():
            return True
        for address in self.known_peers:
            if address == self._endpoint_address():
                continue
            try:
                await self.exchange(address, join=True)
            except Exception as exc:
                self._failed(exc, "rejoin_failures", "a rejoin")
                log.debug("could not rejoin through %s:%d: %s", *address, _describe(exc))
                continue
            self.counters["rejoins"] += 1
            log.info(
                "rejoined the cluster through %s:%d, a peer known before the restart "
                "(%d members known)",
                *address,
                len(self.core.members),
            )
            return True
        return False

    async def _join_seeds(self) -> bool:
        for seed in self.seeds:
            try:
                address = (
                    await self._resolve_seed(seed) if self._resolve_seed else _parse_address(seed)
                )
                if address == self._endpoint_address():
                    continue  # we are our own seed
                await self.exchange(address, join=True)
            except Exception as exc:
                self._failed(exc, "join_failures", "a join")
                log.warning("could not join through seed %s: %s", seed, _describe(exc))
                continue
            log.info(
                "joined the cluster through seed %s (%d members known)",
                seed,
                len(self.core.members),
            )
            return True
        return False

    async def _join_loop(self) -> None:
        """Join through the seeds, retrying with backoff; rejoin whenever we end up alone."""
        delay = 1.0
        while True:
            if self.core.live_count() <= 1 and not self.core.left:
                if await self.join_once():
                    self.joined.set()
                    delay = 1.0
                    await self._refresh_after_join()
                else:
                    await trio.sleep(delay * (0.5 + self.rng.random()))
                    delay = min(delay * 2, JOIN_BACKOFF_MAX)
                    continue
            await trio.sleep(JOIN_BACKOFF_MAX)

    def peer_snapshot(self) -> list[Address]:
        """Up to SNAPSHOT_PEERS live peers' gossip addresses, sorted (a stable snapshot)."""
        addresses = sorted(
            m.info.gossip
            for node_id, m in self.core.members.items()
            if node_id != self.core.me and m.state is State.ALIVE
        )
        if len(addresses) > SNAPSHOT_PEERS:
            addresses = sorted(self.rng.sample(addresses, SNAPSHOT_PEERS))
        return addresses

    async def _snapshot_loop(self) -> None:
        """Persist the live peers' addresses now and then, when they changed (and only while
        we know some: a node alone keeps the snapshot of its last cluster)."""
        assert self._persist_peers is not None
        saved = sorted(self.known_peers)
        while True:
            await trio.sleep(SNAPSHOT_INTERVAL)
            current = self.peer_snapshot()
            if current and set(current) != set(saved):
                await self._persist_peers(current)
                saved = current

    async def _refresh_after_join(self) -> None:
        """Push-pull once more with a random member a few seconds after joining. Our first
        table came from one seed at one instant; members that joined just after it reach us
        only as gossip, which a burst of joins can crowd out (measured: in a 50-node start,
        one node went 36 s, until its periodic push-pull, without knowing one member)."""
        await trio.sleep(JOIN_REFRESH_AFTER * (0.5 + self.rng.random()))
        candidates = [
            m.info.gossip
            for node_id, m in sorted(self.core.members.items())
            if node_id != self.core.me and m.state is State.ALIVE
        ]
        if not candidates or self.core.left:
            return
        try:
            await self.exchange(self.rng.choice(candidates))
        except Exception as exc:
            self._failed(exc, "push_pull_failures", "a push-pull after joining")

    async def leave(self) -> None:
        """Tell several members we are leaving (so they mark us left, not failed)."""
        if self.core.left or self._endpoint is None:
            return
        self.core.leave(trio.current_time())
        await self._flush()

    def _endpoint_address(self) -> Address | None:
        return self._endpoint.address if self._endpoint is not None else None

    def refused_cluster_info(self) -> None:
        """Count a request for our gossip address that did not prove the cluster secret."""
        self.counters["cluster_info_refused"] += 1

    # --- views ---------------------------------------------------------------------------------

    def alive_count(self) -> int:
        return sum(1 for m in self.core.members.values() if m.state is State.ALIVE)

    def table(self, wall_ms: int) -> list[dict[str, object]]:
        """The member table as the API shows it (`last_change` in wall-clock ms).

        The core creates our own entry with `last_change` 0.0 on its clock, which is not
        the driver's (Trio's clock starts anywhere): shown as is, this node's row claimed a
        change days in the past. No change happens before the core starts, so clamp there."""
        now = trio.current_time()
        started = self._started_at if self._started_at is not None else now
        rows = []
        for node_id, member in sorted(self.core.members.items()):
            info = member.info
            changed = max(member.last_change, started)
            rows.append(
                {
                    "node_id": node_id,
                    "state": str(member.state),
                    "incarnation": info.incarnation,
                    "joined_timestamp": info.joined_timestamp,
                    "http_address": _format(info.http),
                    "gossip_address": _format(info.gossip),
                    "sync_address": _format(info.sync),
                    "last_change": int(wall_ms - max(0.0, now - changed) * 1000),
                    "self": node_id == self.core.me,
                }
            )
        return rows

    def stats(self) -> dict[str, object]:
        """Counters for `GET /cluster/stats`: traffic, every drop reason (zero included, so
        a dashboard sees the full set), push-pulls, the core's own counters and its local
        health (awareness), and how many members are in each state. No secrets."""
        counters: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        counters.update({f"dropped_{reason}": 0 for reason in DATAGRAM_DROP_REASONS})
        counters.update({f"stream_dropped_{reason}": 0 for reason in sorted(REASONS)})
        counters.update(self.counters)
        states = dict.fromkeys((str(state) for state in State), 0)
        for member in self.core.members.values():
            states[str(member.state)] += 1
        return {
            "node_id": self.core.me,
            "incarnation": self.core.me_info.incarnation,
            "counters": dict(sorted(counters.items())),
            "swim": dict(self.core.stats),
            "awareness": self.core.awareness,
            "members": states,
            "live_members": self.core.live_count(),
        }


# Counters every node shows, even at zero (others, like dropped_<reason>, are added above).
STAT_KEYS = (
    "datagrams_in",
    "bytes_in",
    "datagrams_out",
    "bytes_out",
    "push_pulls",
    "push_pulls_served",
    "push_pull_failures",
    "join_failures",
    "cluster_info_refused",  # GET /cluster/info without proof of our secret (kvs.api.cluster)
    "reconnects",
    "rejoins",  # joins through the known-peers snapshot after a restart
    "rejoin_failures",
    "reconnect_failures",
    "push_pull_errors",  # push-pulls we started that failed unexpectedly (logged)
    "stream_dropped_io",
    "stream_dropped_refused",  # beyond MAX_PUSH_PULL_CONNECTIONS
    "stream_dropped_error",  # a served push-pull that failed unexpectedly (logged)
)
# What DatagramCodec.decode can refuse a datagram for (a stream can fail in more ways), and
# "error": a datagram whose handling failed unexpectedly (logged).
DATAGRAM_DROP_REASONS = (
    "auth",
    "error",
    "magic",
    "malformed",
    "oversize",
    "replay",  # a sealed datagram accepted before (kvs.net.replay)
    "shape",
    "short",
    "stale",  # a sealed datagram sent too long ago, or too far ahead (kvs.net.replay)
    "version",
)


def _format(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise JoinError(f"{text!r} is not host:port")
    return host.strip("[]"), int(port)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WireError):
        return f"protocol error ({exc.reason})"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__
