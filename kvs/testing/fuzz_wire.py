"""A seeded fuzzer of gossip datagrams and sync frames, fired at a real node process.

    python -m kvs.testing.fuzz_wire --seconds 60 [--seed N] [--rate 1000] [--workers 4]

It starts `python -m kvs CONFIG` (clustering on, a fresh data directory, some data to make
snapshots worth taking), then for `--seconds` sends, from one `random.Random(seed)`:

- to the UDP gossip port: random bytes; valid datagrams truncated, bit-flipped, oversized,
  replayed, sealed with another key or none; and datagrams with a valid HMAC (the real
  codec's messages, with the real key) whose fields are mutated into negative, huge,
  wrong-typed, missing or extra values, including the claims of issue 12 ("you are dead"
  at the largest incarnation, hosts the resolver chokes on);
- to the TCP sync port and the gossip port's TCP push-pull: garbage, half-open connections,
  stalls in the middle of a frame, frames announcing 4 GB, a wrong key or purpose, and,
  after a valid handshake, mutated requests and push-pull tables, raw frames that are not
  msgpack, records that fail validation, snapshot requests abandoned or stalled midway.

Meanwhile it checks that the process stays up, `/health` answers within a second, RSS stays
under 4x its idle RSS, and nothing reaches stderr as a traceback; at the end, that the
node's drop counters rose and that it still shuts down cleanly. It prints the seed first and
a report last; exit status 0 when every check held.

Replay: each stream of inputs (datagrams, each TCP worker) draws from its own generator
seeded from the one seed in a fixed order, so a seed replays the same inputs in the same
order; how many of them fit in the time depends on the machine.

Test tooling (see `kvs.testing`): it reaches into `FrameStream` to send frames the real
encoder would refuse to build.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import trio

from kvs.model import Record, RecordCodec, Version, hlc_pack
from kvs.net.codec import TAG_BYTES, WireError, derive_key
from kvs.net.datagrams import MAX_DATAGRAM_BYTES, DatagramCodec, encode_push_pull
from kvs.net.frames import MAX_FRAME_BYTES, FrameStream
from kvs.net.messages import (
    MAX_INCARNATION,
    MAX_UINT,
    Ack,
    Alive,
    Dead,
    Leave,
    MemberInfo,
    MemberState,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    State,
    Suspect,
)
from kvs.sync.snapshot import snapshot_format
from kvs.testing.ports import free_port

HEALTH_TIMEOUT = 1.0  # /health must answer within this, every time it is asked
RSS_FACTOR = 4.0  # RSS must stay under this many times the idle RSS
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CHECK_INTERVAL = 0.5
HOLD_MAX = 12.0  # longest a half-open or stalled connection is held (the node's limit: 10 s)
HOLDERS = 8  # connections held open at once, at most
SEED_VALUES = 48  # values of SEED_VALUE_BYTES put in before fuzzing: a snapshot of several chunks
SEED_VALUE_BYTES = 64 * 1024
FAKE_NODES = 8  # node ids the fuzzer's valid messages speak of (bounds the member table)

_INTS = [
    0,
    1,
    -1,
    2,
    255,
    65535,
    65536,
    2**31 - 1,
    2**32,
    2**47,
    MAX_INCARNATION - 1,
    MAX_INCARNATION,
    MAX_INCARNATION + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
]
_STRINGS = [
    "",
    "a",
    "a" * 64,
    "a" * 65,
    "a..b",
    "b.",
    "-a",
    "fe80::1%lo",
    "999.1.1.1",
    "localhost",
    "a\x00b",
    "a\nb",
    "é" * 300,
    "\U0001f600" * 64,
    "../x",
    "a//b",
    "_sys/users/x",
    "x" * 2000,
]


# --- the node under test ---------------------------------------------------------------------


@dataclass
class Target:
    """The node's addresses and its cluster secret (never printed)."""

    node_id: str
    secret: str
    http: tuple[str, int]
    gossip: tuple[str, int]
    sync: tuple[str, int]


@dataclass(frozen=True)
class FakePeers:
    """Where the fake members the fuzzer speaks of live: the fuzzer's own sockets, so the
    node's outbound traffic (probes, push-pulls, sync exchanges) reaches `HostilePeer`."""

    gossip: tuple[str, int]  # UDP (answers pings) and TCP (serves push-pulls)
    sync: tuple[str, int]  # TCP (serves sync exchanges)


def write_config(directory: Path, target: Target) -> Path:
    values = {
        "node_id": target.node_id,
        "bind_address": "127.0.0.1",
        "port": target.http[1],
        "gossip_port": target.gossip[1],
        "sync_port": target.sync[1],
        "data_dir": str(directory / "data"),
        "cluster_secret": target.secret,
        "clustering_enabled": True,
        "auth_enabled": False,  # the fuzzer reads /cluster/stats and writes seed data
        "backup_path": str(directory / "backups"),
        "log_level": "info",
    }
    path = directory / "config.yaml"
    # JSON values are YAML flow scalars: no quoting rules to get wrong.
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# --- datagrams -----------------------------------------------------------------------------------


def seal(key: bytes | None, payload: bytes) -> bytes:
    """A datagram around any payload, by the layout documented in kvs.net.datagrams (not the codec)."""
    if key is None:
        return b"KV\x01" + payload
    header = b"KV\x81"
    return header + hmac.new(key, header + payload, hashlib.sha256).digest()[:TAG_BYTES] + payload


def interesting(rng: random.Random) -> Any:
    """A value likely to break a validator: a boundary integer, a nasty string, a wrong type."""
    pick = rng.random()
    if pick < 0.45:
        return rng.choice(_INTS) + rng.choice([0, 0, 0, 1, -1])
    if pick < 0.7:
        return rng.choice(_STRINGS)
    return rng.choice(
        [
            None,
            True,
            False,
            0.5,
            float("nan"),
            b"",
            b"\x00" * 16,
            [],
            {},
            [0] * rng.randint(1, 2000),
            {"op": "root"},
            [[[[[]]]]],
        ]
    )


def mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """`value` (a msgpack-able structure) with one random part replaced, dropped or doubled."""
    if isinstance(value, list) and value and depth < 8 and rng.random() < 0.75:
        index = rng.randrange(len(value))
        out = list(value)
        action = rng.random()
        if action < 0.7:
            out[index] = mutate(out[index], rng, depth + 1)
        elif action < 0.8:
            del out[index]
        elif action < 0.9:
            out.insert(index, interesting(rng))
        else:
            out = out * rng.randint(2, 80)  # a long list of the same
        return out
    if isinstance(value, dict) and value and depth < 8 and rng.random() < 0.75:
        out_map = dict(value)
        key = rng.choice(sorted(out_map, key=repr))
        action = rng.random()
        if action < 0.7:
            out_map[key] = mutate(out_map[key], rng, depth + 1)
        elif action < 0.85:
            del out_map[key]
        else:
            out_map[rng.choice(["op", "x", "records", "leaves", "keys", "nodes"])] = interesting(
                rng
            )
        return out_map
    return interesting(rng)


class DatagramFuzzer:
    """Gossip datagrams, every one drawn from `rng`."""

    def __init__(self, rng: random.Random, target: Target, peers: FakePeers) -> None:
        self.rng = rng
        self.target = target
        self.peers = peers
        self.key = derive_key(target.secret, "gossip")
        self.codec = DatagramCodec(self.key)
        self.other = DatagramCodec(derive_key("not-" + target.secret[:4], "gossip"))
        self.recent: deque[bytes] = deque(maxlen=64)
        self.kinds: Counter[str] = Counter()
        self._kinds: list[tuple[str, Callable[[], bytes]]] = [
            ("random", self.random_bytes),
            ("truncated", self.truncated),
            ("oversized", self.oversized),
            ("bitflip", self.bitflip),
            ("valid", self.valid),
            ("mutated", self.mutated),
            ("mutated", self.mutated),
            ("mutated", self.mutated),
            ("replay", self.replay),
            ("crafted", self.crafted),
            ("wrong_key", self.wrong_key),
            ("deep", self.deep),
        ]

    def next(self) -> bytes:
        kind, make = self.rng.choice(self._kinds)
        self.kinds[kind] += 1
        return make()

    # valid material

    def node_id(self) -> str:
        if self.rng.random() < 0.25:
            return self.target.node_id
        return f"fz-{self.rng.randrange(FAKE_NODES)}"

    def incarnation(self) -> int:
        return self.rng.choice(
            [0, 1, self.rng.randrange(1000), MAX_INCARNATION - 1, MAX_INCARNATION]
        )

    def member(self, node_id: str | None = None) -> MemberInfo:
        return MemberInfo(
            node_id=node_id or self.node_id(),
            joined_timestamp=self.rng.choice([0, 1_700_000_000_000, MAX_UINT]),
            incarnation=self.incarnation(),
            gossip=self.peers.gossip,
            sync=self.peers.sync,
            http=self.peers.gossip,
        )

    def message(self) -> Message:
        rng = self.rng
        seq = rng.choice([0, 1, rng.randrange(1 << 20), MAX_UINT])
        me, target = f"fz-{rng.randrange(FAKE_NODES)}", self.node_id()
        return rng.choice(
            [
                lambda: Ping(seq, me, target),
                lambda: Ack(seq, me),
                lambda: PingReq(seq, me, self.node_id(), self.peers.gossip),
                lambda: Nack(seq, me),
                lambda: Alive(self.member()),
                lambda: Suspect(target, self.incarnation(), me),
                lambda: Dead(target, self.incarnation(), me),
                lambda: Leave(target, self.incarnation()),
            ]
        )()

    def valid(self) -> bytes:
        messages = [self.message() for _ in range(self.rng.randint(1, 8))]
        data = self.codec.encode(messages)
        self.recent.append(data)
        return data

    # broken material

    def random_bytes(self) -> bytes:
        data = self.rng.randbytes(self.rng.randint(0, MAX_DATAGRAM_BYTES))
        if self.rng.random() < 0.5:
            data = b"KV" + bytes([self.rng.choice([0x01, 0x81, 0x02, 0x7F, 0xFF])]) + data
        return data

    def truncated(self) -> bytes:
        data = self.valid()
        return data[: self.rng.randrange(len(data))]

    def oversized(self) -> bytes:
        size = self.rng.randint(MAX_DATAGRAM_BYTES + 1, 9000)
        return seal(self.key, self.rng.randbytes(size))

    def bitflip(self) -> bytes:
        data = bytearray(self.valid())
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def mutated(self) -> bytes:
        """A valid datagram's messages, one field changed, sealed again with the real key:
        this is what reaches the node's validators."""
        payload = self.valid()[len(b"KV\x81") + TAG_BYTES :]
        value = msgpack.unpackb(payload)
        for _ in range(self.rng.randint(1, 3)):
            value = mutate(value, self.rng)
        try:
            packed = msgpack.packb(value, use_bin_type=True)
        except (ValueError, OverflowError, TypeError):  # 2**64 and beyond: not msgpack
            packed = payload
        return seal(self.key, packed[: MAX_DATAGRAM_BYTES * 2])

    def replay(self) -> bytes:
        if not self.recent:
            return self.valid()
        return self.rng.choice(self.recent)

    def wrong_key(self) -> bytes:
        messages = [self.message()]
        return self.other.encode(messages) if self.rng.random() < 0.5 else seal(None, b"\x91\xc0")

    def deep(self) -> bytes:
        depth = self.rng.choice([100, 1000, 1380])
        return seal(self.key, b"\x91" * depth + b"\xc0")

    def crafted(self) -> bytes:
        """Issue 12's own: claims about the node at the top of the range, and hosts the
        resolver chokes on (packed by hand: the encoder refuses them)."""
        rng, me = self.rng, self.target.node_id
        host = rng.choice(["a" * 64, "a..b", "b.", "fe80::1%lo", "x" * 300])
        port = self.peers.gossip[1]
        messages = rng.choice(
            [
                [[7, me, 2**63 - 1, "fz-0"]],  # "you are dead" at the largest integer
                [[7, me, MAX_INCARNATION, "fz-0"]],  # ... at the ceiling: unrefutable
                [[6, me, MAX_INCARNATION - 1, "fz-0"]],  # refuted to exactly the ceiling
                [[8, me, 2**64 - 1]],
                [[3, 1, "fz-0", "fz-1", [host, port]]],
                [[5, ["fz-2", 1, 1, [host, port], [host, port], [host, port]]]],
                [[1, 2**64 - 1, "fz-0", me]],
                [[1, -1, "fz-0", me]],
            ]
        )
        return seal(self.key, msgpack.packb(messages))


def fuzzed_record(rng: random.Random, codec: RecordCodec) -> bytes:
    """An encoded record: valid, or with one field out of range or of the wrong type. Times
    are drawn relative to the wall clock (now, an hour ahead, ten days ahead...)."""
    now = int(time.time() * 1000)
    key = rng.choice(["fuzz/k", f"fuzz/{rng.randrange(100)}", "_sys/x", *_STRINGS[:6]])
    value: bytes | None = rng.choice([b'"v"', b"{}", b"[1,2]", None, b"{", b"\xff", b""])
    if rng.random() < 0.05:
        value = b'"' + b"x" * rng.choice([1 << 20, (1 << 20) + 10]) + b'"'
    ms = rng.choice([now, now - 10**9, now + 3_600_000, now + 10 * 86_400_000, 2**46])
    record = Record(
        key,
        value,
        Version(hlc_pack(ms, rng.randrange(16)), 1, "fz-0", f"u-{rng.randrange(1 << 30)}"),
        rng.choice([None, None, now - 1, now + 60_000]),
    )
    try:
        raw = codec.encode(record)
    except (ValueError, OverflowError, TypeError):
        return rng.randbytes(20)
    if rng.random() < 0.5:
        fields = msgpack.unpackb(raw)
        fields = mutate(fields, rng)
        with contextlib.suppress(ValueError, OverflowError, TypeError):
            raw = msgpack.packb(fields, use_bin_type=True)
    return raw


# --- streams -------------------------------------------------------------------------------------


async def send_raw_frame(frames: FrameStream, payload: bytes) -> None:
    """Send `payload` as the next authenticated frame, whatever it is (test tooling: reaches
    into FrameStream on purpose, to send what its `send` would refuse to encode)."""
    session = frames._session
    assert session is not None
    seq = struct.pack(">Q", frames._send_seq)
    frames._send_seq += 1
    tag = hmac.new(session, frames._send_dir + seq + payload, hashlib.sha256).digest()
    body = tag[:TAG_BYTES] + payload
    await frames.stream.send_all(struct.pack(">I", len(body)) + body)


@dataclass
class Tally:
    datagrams: int = 0
    frames: int = 0
    connections: int = 0
    scenarios: Counter[str] = field(default_factory=Counter)
    fuzzer_errors: Counter[str] = field(default_factory=Counter)
    answered: int = 0  # the node's pings the fake members answered
    served: Counter[str] = field(default_factory=Counter)  # the node's connections to them


# What a fuzzing connection is expected to run into: the node closing it, or refusing it.
_EXPECTED = (
    OSError,
    WireError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.EndOfChannel,
    trio.TooSlowError,
)


class StreamFuzzer:
    """One TCP worker: a scenario per connection, to the sync port or the push-pull port."""

    def __init__(
        self,
        rng: random.Random,
        target: Target,
        peers: FakePeers,
        tally: Tally,
        holders: trio.Semaphore,
    ) -> None:
        self.rng = rng
        self.target = target
        self.tally = tally
        self.holders = holders
        self.codec = RecordCodec()
        self.datagrams = DatagramFuzzer(random.Random(rng.getrandbits(64)), target, peers)

    async def run(self, held: trio.Nursery) -> None:
        """Scenarios one after another; those that hold a connection open (up to HOLD_MAX)
        run beside the others in `held`, at most HOLDERS of them at once."""
        scenarios = [
            self.garbage,
            self.huge_length,
            self.hold_open,
            self.stall_mid_frame,
            self.wrong_key,
            self.sync_frames,
            self.sync_frames,
            self.sync_frames,
            self.raw_frames,
            self.snapshot,
            self.push_pull,
            self.push_pull,
        ]
        holding = (self.hold_open, self.stall_mid_frame, self.snapshot)
        while True:
            scenario = self.rng.choice(scenarios)
            if scenario in holding:
                try:
                    self.holders.acquire_nowait()
                except trio.WouldBlock:
                    await trio.lowlevel.checkpoint()
                    continue
                held.start_soon(self._held, scenario)
            else:
                await self._one(scenario)

    async def _held(self, scenario: Callable[[], Any]) -> None:
        try:
            await self._one(scenario)
        finally:
            self.holders.release()

    async def _one(self, scenario: Callable[[], Any]) -> None:
        self.tally.scenarios[scenario.__name__] += 1
        try:
            with trio.move_on_after(HOLD_MAX + 5):
                await scenario()
        except Exception as exc:  # whatever the node does to us, go on
            if not isinstance(exc, _EXPECTED):
                self.tally.fuzzer_errors[type(exc).__name__] += 1
        await trio.lowlevel.checkpoint()

    def port(self) -> tuple[str, int]:
        return self.target.sync if self.rng.random() < 0.6 else self.target.gossip

    async def connect(self, address: tuple[str, int]) -> trio.SocketStream:
        self.tally.connections += 1
        return await trio.open_tcp_stream(*address)

    async def handshake(self, purpose: str, key: bytes | None = None) -> FrameStream:
        address = self.target.sync if purpose == "sync" else self.target.gossip
        stream = await self.connect(address)
        self.tally.frames += 2
        return await FrameStream.client(
            stream,
            key if key is not None else derive_key(self.target.secret, purpose),
            purpose=purpose,
            nonce=self.rng.randbytes(16),
        )

    async def drain(self, stream: trio.abc.Stream, seconds: float = 1.0) -> None:
        with trio.move_on_after(seconds):
            while await stream.receive_some(65536):
                pass

    # --- scenarios ---

    async def garbage(self) -> None:
        async with await self.connect(self.port()) as stream:
            data = self.rng.randbytes(self.rng.randint(0, 5000))
            if self.rng.random() < 0.3:
                data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
            await stream.send_all(data)
            self.tally.frames += 1
            if self.rng.random() < 0.5:
                await stream.send_eof()
            await self.drain(stream)

    async def huge_length(self) -> None:
        async with await self.connect(self.port()) as stream:
            length = self.rng.choice([0xFFFFFFFF, MAX_FRAME_BYTES + 1, 1 << 30, 257])
            await stream.send_all(struct.pack(">I", length) + self.rng.randbytes(100))
            self.tally.frames += 1
            await self.drain(stream)

    async def hold_open(self) -> None:
        """A half-open connection: it says nothing (or only its hello) and stays."""
        if self.rng.random() < 0.5:
            async with await self.connect(self.port()) as stream:
                await self.drain(stream, self.rng.uniform(0.2, HOLD_MAX))
        else:
            purpose = "sync" if self.rng.random() < 0.5 else "pushpull"
            frames = await self.handshake(purpose)
            async with frames:
                await self.drain(frames.stream, self.rng.uniform(0.2, HOLD_MAX))

    async def stall_mid_frame(self) -> None:
        if self.rng.random() < 0.5:
            stream: trio.abc.Stream = await self.connect(self.port())
        else:
            frames = await self.handshake("sync" if self.rng.random() < 0.5 else "pushpull")
            stream = frames.stream
        async with stream:
            length = self.rng.randint(20, 5000)
            await stream.send_all(struct.pack(">I", length) + b"\x00" * (length // 2))
            self.tally.frames += 1
            await self.drain(stream, self.rng.uniform(0.2, HOLD_MAX))

    async def wrong_key(self) -> None:
        purpose = self.rng.choice(["sync", "pushpull"])
        choice = self.rng.random()
        if choice < 0.4:
            key = derive_key("wrong " + self.target.secret[:3], purpose)
            frames = await self.handshake(purpose, key)
        else:
            address = self.target.sync if purpose == "sync" else self.target.gossip
            stream = await self.connect(address)
            other = "pushpull" if purpose == "sync" else "sync"
            self.tally.frames += 2
            frames = await FrameStream.client(
                stream,
                derive_key(self.target.secret, other if choice < 0.7 else purpose)
                if choice < 0.7
                else None,
                purpose=other if choice < 0.7 else purpose,
                nonce=self.rng.randbytes(16),
            )
        async with frames:
            await frames.send({"op": "root"})

    def record(self) -> bytes:
        return fuzzed_record(self.rng, self.codec)

    def sync_request(self) -> Any:
        rng = self.rng
        base = rng.choice(
            [
                {"op": "root"},
                {"op": "children", "nodes": [[0, 0]]},
                {"op": "children", "nodes": [[1, rng.randrange(16)], [2, rng.randrange(256)]]},
                {"op": "leaves", "leaves": [rng.randrange(65536) for _ in range(4)]},
                {"op": "take", "leaves": [rng.randrange(65536)]},
                {"op": "fetch", "keys": ["fuzz/k", "fuzz/big/1"]},
                {
                    "op": "push",
                    "records": [self.record() for _ in range(rng.randint(1, 6))],
                    "durable": rng.random() < 0.5,
                },
            ]
        )
        return mutate(base, rng) if rng.random() < 0.6 else base

    async def exchange_frames(self, frames: FrameStream, make: Callable[[], Any]) -> None:
        async with frames:
            for _ in range(self.rng.randint(1, 12)):
                request = make()
                try:
                    await frames.send(request, timeout=5)
                except (ValueError, TypeError, OverflowError):
                    continue  # not msgpack, or over a frame: not something a peer can send
                self.tally.frames += 1
                with trio.move_on_after(5):
                    await frames.receive(timeout=5)

    async def sync_frames(self) -> None:
        await self.exchange_frames(await self.handshake("sync"), self.sync_request)

    async def raw_frames(self) -> None:
        """Authenticated frames that are not msgpack, or trail bytes, or nest deep."""
        frames = await self.handshake(self.rng.choice(["sync", "pushpull"]))
        async with frames:
            for _ in range(self.rng.randint(1, 4)):
                payload = self.rng.choice(
                    [
                        self.rng.randbytes(self.rng.randint(0, 300)),
                        b"\xc1",
                        msgpack.packb({"op": "root"}) + b"\x00",
                        b"\x91" * 5000 + b"\xc0",
                        b"\x81\xa2op\xa4root" * 3,
                        msgpack.packb({"op": "push", "records": [b"\x93"] * 3000}),
                    ]
                )
                await send_raw_frame(frames, payload)
                self.tally.frames += 1
            await self.drain(frames.stream)

    async def snapshot(self) -> None:
        """Ask for a copy of the store, then leave or stall in the middle of it."""
        frames = await self.handshake("sync")
        async with frames:
            data_format: Any = snapshot_format()
            if self.rng.random() < 0.2:
                data_format = mutate(data_format, self.rng)
            await frames.send({"op": "snapshot", "format": data_format})
            self.tally.frames += 1
            for _ in range(self.rng.randint(0, 3)):
                await frames.receive(timeout=5)
            if self.rng.random() < 0.5:
                await trio.sleep(self.rng.uniform(0.1, HOLD_MAX))  # stall: read nothing

    def table(self) -> Any:
        members = [
            MemberState(self.datagrams.member(f"fz-{i}"), self.rng.choice(list(State)))
            for i in self.rng.sample(range(FAKE_NODES), self.rng.randint(0, FAKE_NODES))
        ]
        if self.rng.random() < 0.2:
            me = self.datagrams.member(self.target.node_id)
            members.append(MemberState(me, self.rng.choice(list(State))))
        try:
            wire = encode_push_pull(PushPull("fz-0", tuple(members), self.rng.random() < 0.3))
        except ValueError:
            wire = ["fz-0", False, []]
        return mutate(wire, self.rng) if self.rng.random() < 0.6 else wire

    async def push_pull(self) -> None:
        frames = await self.handshake("pushpull")
        await self.exchange_frames(frames, self.table)


class HostilePeer:
    """The fake members' side of the node's own traffic: it answers the node's pings (so
    they stay alive, and the node keeps talking to them) and serves the push-pulls and
    sync exchanges the node starts, with replies built from valid ones and then mutated.
    This is how outbound connections meet a hostile peer. Each connection draws from its
    own generator, seeded from `rng` as the node connects: replies replay only as far as
    the node's own timing does."""

    def __init__(self, rng: random.Random, target: Target, peers: FakePeers, tally: Tally):
        self.rng = rng
        self.target = target
        self.peers = peers
        self.tally = tally
        self.codec = DatagramCodec(derive_key(target.secret, "gossip"))
        self.records = RecordCodec()
        self.tables = DatagramFuzzer(random.Random(rng.getrandbits(64)), target, peers)

    async def answer(self, sock: trio.socket.SocketType) -> None:
        """Ack the node's pings to fake members (now and then wrongly, or not at all)."""
        while True:
            try:
                data, source = await sock.recvfrom(65536)
                messages = self.codec.decode(data)
            except OSError:
                continue
            except WireError as exc:  # the node sent what its peers refuse: a bug there
                self.tally.fuzzer_errors[f"the node sent a datagram refused: {exc}"] += 1
                continue
            for message in messages:
                if not isinstance(message, Ping) or not message.target.startswith("fz-"):
                    continue
                roll = self.rng.random()
                if roll < 0.1:
                    continue  # lost
                reply = [Ack(message.seq, message.target)]
                if roll < 0.2:
                    reply.append(self.tables.message())
                with contextlib.suppress(OSError, ValueError):
                    await sock.sendto(self.codec.encode(reply), source)
                self.tally.answered += 1

    async def serve_push_pull(self, stream: trio.SocketStream) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        self.tally.served["push_pull"] += 1
        async with stream:
            with (
                contextlib.suppress(*_EXPECTED, ValueError, TypeError, OverflowError),
                trio.move_on_after(10),
            ):
                frames = await FrameStream.server(
                    stream,
                    derive_key(self.target.secret, "pushpull"),
                    purpose="pushpull",
                    nonce=rng.randbytes(16),
                )
                await frames.receive()
                await frames.send(self._table(rng))

    def _table(self, rng: random.Random) -> Any:
        members = [
            MemberState(self.tables.member(f"fz-{i}"), rng.choice(list(State)))
            for i in rng.sample(range(FAKE_NODES), rng.randint(0, FAKE_NODES))
        ]
        wire = encode_push_pull(PushPull("fz-0", tuple(members), False))
        return mutate(wire, rng) if rng.random() < 0.5 else wire

    async def serve_sync(self, stream: trio.SocketStream) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        self.tally.served["sync"] += 1
        async with stream:
            with (
                contextlib.suppress(*_EXPECTED, ValueError, TypeError, OverflowError),
                trio.move_on_after(30),
            ):
                frames = await FrameStream.server(
                    stream,
                    derive_key(self.target.secret, "sync"),
                    purpose="sync",
                    nonce=rng.randbytes(16),
                )
                while True:
                    request = await frames.receive(timeout=15)
                    await frames.send(self._sync_reply(rng, request))

    def _sync_reply(self, rng: random.Random, request: Any) -> Any:
        op = request.get("op") if isinstance(request, dict) else None
        asked = request.get("nodes") or request.get("leaves") or request.get("keys") or []
        count = len(asked) if isinstance(asked, list) else 1
        if op == "root":
            reply: Any = {
                "root": rng.randbytes(16),
                "size": rng.choice([0, 3, 10**6, 2**63 - 1]),
                "syncing": rng.random() < 0.1,
                "stale": rng.random() < 0.05,
            }
        elif op == "children":
            # Mostly the same few hashes: the node descends into a handful of leaves only.
            same = [rng.randbytes(16) for _ in range(16)]
            reply = {"hashes": [same for _ in range(count)]}
        elif op == "leaves":
            now = int(time.time() * 1000)
            entries = [
                [f"fuzz/{rng.randrange(100)}", hlc_pack(now), 1, "fz-0", "u", False, None]
                for _ in range(rng.randint(0, 5))
            ]
            reply = {"entries": entries, "count": count}
        elif op in ("take", "fetch"):
            records = [fuzzed_record(rng, self.records) for _ in range(rng.randint(0, 4))]
            reply = {"records": records, "count": count}
        elif op == "push":
            reply = {"applied": count}
        else:
            reply = {"refused": "format"}
        return mutate(reply, rng) if rng.random() < 0.3 else reply


# --- the run ------------------------------------------------------------------------------------


@dataclass
class FuzzOptions:
    seconds: float = 60.0
    seed: int | None = None
    rate: int = 1000  # datagrams per second
    workers: int = 4  # TCP connections fuzzing at once (besides those held open)
    workdir: Path | None = None  # default: a temporary directory, removed afterwards
    health_timeout: float = HEALTH_TIMEOUT
    rss_factor: float = RSS_FACTOR


@dataclass
class FuzzReport:
    seed: int
    seconds: float = 0.0
    datagrams: int = 0
    frames: int = 0
    connections: int = 0
    idle_rss_kib: int = 0
    max_rss_kib: int = 0
    max_health_s: float = 0.0
    exit_status: int | None = None
    drops: dict[str, int] = field(default_factory=dict)  # counters that rose, by name
    datagram_kinds: dict[str, int] = field(default_factory=dict)
    scenarios: dict[str, int] = field(default_factory=dict)
    answered: int = 0  # the node's pings to fake members that were answered
    served: dict[str, int] = field(default_factory=dict)  # the node's connections to them
    fuzzer_errors: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"seed: {self.seed}",
            f"seconds: {self.seconds:.1f}",
            f"datagrams sent: {self.datagrams}",
            f"frames sent: {self.frames}",
            f"connections: {self.connections}",
            f"RSS: idle {self.idle_rss_kib / 1024:.1f} MiB, max {self.max_rss_kib / 1024:.1f} MiB",
            f"slowest /health: {self.max_health_s * 1000:.0f} ms",
            f"exit status after SIGTERM: {self.exit_status}",
            "counters that rose: "
            + ", ".join(f"{name}={value}" for name, value in sorted(self.drops.items())),
            "datagram kinds: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.datagram_kinds.items())),
            "stream scenarios: " + ", ".join(f"{k}={v}" for k, v in sorted(self.scenarios.items())),
            f"the node's own traffic to the fake members: {self.answered} pings answered, "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.served.items()))
            + " connections served with hostile replies",
        ]
        if self.fuzzer_errors:
            lines.append(f"fuzzer-side errors (not the node's): {self.fuzzer_errors}")
        lines.append("OK" if self.ok else "PROBLEMS:\n  " + "\n  ".join(self.problems))
        if not self.ok and self.stderr_tail:
            lines.append("node stderr (tail):\n" + self.stderr_tail)
        return "\n".join(lines)


def _counters(stats: dict[str, Any]) -> dict[str, int]:
    """Every counter of /cluster/stats under one flat name (membership, swim, sync)."""
    flat = {f"gossip.{k}": v for k, v in stats.get("counters", {}).items()}
    flat.update({f"swim.{k}": v for k, v in stats.get("swim", {}).items()})
    flat.update({f"sync.{k}": v for k, v in stats.get("sync", {}).get("counters", {}).items()})
    return {k: v for k, v in flat.items() if isinstance(v, int)}


def _is_drop(name: str) -> bool:
    """A counter of refused input (or of failed exchanges with a hostile fake member)."""
    last = name.rpartition(".")[2]
    return last.startswith(("dropped_", "stream_dropped_", "refused_")) or last in (
        "unrefutable_claims",
        "members_refused",
        "exchange_failures",
        "push_failures",
        "push_pull_failures",
        "reconnect_failures",
        "merge_failures",
        "errors",
        "push_pull_errors",
    )


class _Node:
    """The node process: started, watched, stopped."""

    def __init__(self, directory: Path, target: Target) -> None:
        self.directory = directory
        self.target = target
        self.stderr_path = directory / "node.err"
        config = write_config(directory, target)
        with open(directory / "node.out", "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "kvs", str(config)],
                cwd=directory,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.base = f"http://{target.http[0]}:{target.http[1]}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None


async def _get(client: Any, url: str, timeout: float) -> Any:
    return await client.get(url, timeout=timeout)


async def _fuzz(options: FuzzOptions, seed: int, directory: Path) -> FuzzReport:
    import httpx  # the node itself never imports it at start-up

    rng = random.Random(seed)
    report = FuzzReport(seed=seed)
    target = Target(
        node_id="fuzz-target",
        secret=rng.randbytes(24).hex(),
        http=("127.0.0.1", free_port()),
        gossip=("127.0.0.1", free_port()),
        sync=("127.0.0.1", free_port()),
    )
    # Every stream's generator, seeded now, in this order: the same seed replays them.
    datagram_rng = random.Random(rng.getrandbits(64))
    worker_rngs = [random.Random(rng.getrandbits(64)) for _ in range(options.workers)]
    values_rng = random.Random(rng.getrandbits(64))
    peer_rng = random.Random(rng.getrandbits(64))

    node = _Node(directory, target)
    tally = Tally()
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            deadline = trio.current_time() + START_TIMEOUT
            while True:
                if not node.alive():
                    report.problems.append(f"the node exited at start-up: {node.popen.poll()}")
                    return report
                with contextlib.suppress(httpx.HTTPError):
                    if (await _get(client, node.base + "/health", 2.0)).status_code == 200:
                        break
                if trio.current_time() > deadline:
                    report.problems.append("the node did not start")
                    return report
                await trio.sleep(0.05)
            for i in range(SEED_VALUES):
                value = json.dumps(values_rng.randbytes(SEED_VALUE_BYTES // 2).hex())
                await client.put(f"{node.base}/kv/fuzz/big/{i}", content=value, timeout=10)
            await trio.sleep(1.0)
            report.idle_rss_kib = max(rss_kib(node.popen.pid) for _ in range(3))
            before = _counters((await _get(client, node.base + "/cluster/stats", 5)).json())

            sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
            gossip_port = free_port()
            await sock.bind(("127.0.0.1", gossip_port))
            peers = FakePeers(gossip=("127.0.0.1", gossip_port), sync=("127.0.0.1", free_port()))
            datagrams = DatagramFuzzer(datagram_rng, target, peers)
            hostile = HostilePeer(peer_rng, target, peers, tally)
            holders = trio.Semaphore(HOLDERS)
            started = trio.current_time()

            async def send_datagrams() -> None:
                burst = max(1, options.rate // 100)
                while True:
                    for _ in range(burst):
                        with contextlib.suppress(OSError):
                            await sock.sendto(datagrams.next(), target.gossip)
                        tally.datagrams += 1
                    await trio.sleep(burst / options.rate)

            async def watch(seconds: float) -> None:
                """Check the node every CHECK_INTERVAL for `seconds`; stop early if it died."""
                end = started + seconds
                while trio.current_time() < end:
                    if not node.alive():
                        report.problems.append(
                            f"the node exited during the run (status {node.popen.poll()}) "
                            f"after {trio.current_time() - started:.1f} s"
                        )
                        return
                    report.max_rss_kib = max(report.max_rss_kib, rss_kib(node.popen.pid))
                    asked = trio.current_time()
                    try:
                        response = await _get(client, node.base + "/health", options.health_timeout)
                        took = trio.current_time() - asked
                        report.max_health_s = max(report.max_health_s, took)
                        if response.status_code != 200:
                            report.problems.append(f"/health answered {response.status_code}")
                    except httpx.HTTPError as exc:
                        report.problems.append(
                            f"/health did not answer within {options.health_timeout} s "
                            f"({type(exc).__name__}) at {asked - started:.1f} s"
                        )
                    await trio.sleep(min(CHECK_INTERVAL, max(0.0, end - trio.current_time())))

            with sock:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_datagrams)
                    nursery.start_soon(hostile.answer, sock)
                    for handler, address in (
                        (hostile.serve_push_pull, peers.gossip),
                        (hostile.serve_sync, peers.sync),
                    ):
                        await nursery.start(
                            functools.partial(trio.serve_tcp, handler, address[1], host=address[0])
                        )
                    for worker_rng in worker_rngs:
                        fuzzer = StreamFuzzer(worker_rng, target, peers, tally, holders)
                        nursery.start_soon(fuzzer.run, nursery)
                    await watch(options.seconds)
                    nursery.cancel_scope.cancel()
            report.seconds = trio.current_time() - started
            await trio.sleep(1.0)  # let the node finish what was in flight
            if node.alive():
                report.max_rss_kib = max(report.max_rss_kib, rss_kib(node.popen.pid))
                try:
                    stats = (await _get(client, node.base + "/cluster/stats", 5)).json()
                    after = _counters(stats)
                    report.drops = {
                        name: after[name] - before.get(name, 0)
                        for name in sorted(after)
                        if _is_drop(name) and after[name] > before.get(name, 0)
                    }
                except (httpx.HTTPError, ValueError) as exc:
                    report.problems.append(f"/cluster/stats failed after the run: {exc!r}")
    finally:
        report.exit_status = node.stop()
        node.kill()
        report.datagrams, report.frames = tally.datagrams, tally.frames
        report.connections = tally.connections
        report.scenarios = dict(tally.scenarios)
        report.answered, report.served = tally.answered, dict(tally.served)
        report.fuzzer_errors = dict(tally.fuzzer_errors)
        with contextlib.suppress(NameError):
            report.datagram_kinds = dict(datagrams.kinds)
    _judge(report, node.stderr(), target, options)
    return report


def _judge(report: FuzzReport, stderr: str, target: Target, options: FuzzOptions) -> None:
    if report.exit_status != 0 and not report.problems:
        report.problems.append(f"the node did not stop cleanly on SIGTERM: {report.exit_status}")
    if report.idle_rss_kib and report.max_rss_kib > options.rss_factor * report.idle_rss_kib:
        report.problems.append(
            f"RSS rose to {report.max_rss_kib} KiB, over {options.rss_factor}x the idle "
            f"{report.idle_rss_kib} KiB"
        )
    for marker in ("Traceback", "Exception Group"):
        if marker in stderr:
            report.problems.append(f"{marker!r} in the node's stderr")
    if target.secret in stderr:
        report.problems.append("the cluster secret appeared in the node's stderr")
    if report.datagrams and not any(k.startswith("gossip.dropped_") for k in report.drops):
        report.problems.append("no datagram drop was counted")
    if report.connections and not any(
        k.startswith(("sync.dropped_", "gossip.stream_dropped_")) for k in report.drops
    ):
        report.problems.append("no stream drop was counted")
    for name in ("gossip.dropped_error", "gossip.stream_dropped_error", "sync.dropped_error"):
        if report.drops.get(name):
            report.problems.append(f"{name}: {report.drops[name]} unexpected errors (a bug)")
    for name in ("sync.errors", "gossip.push_pull_errors"):
        if report.drops.get(name):
            report.problems.append(f"{name}: {report.drops[name]} unexpected errors (a bug)")
    if report.problems:
        report.stderr_tail = "\n".join(stderr.splitlines()[-40:]).replace(target.secret, "***")


def run(options: FuzzOptions) -> FuzzReport:
    """Start a node, fuzz it for `options.seconds`, stop it; the report says what held."""
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    budget = options.seconds + START_TIMEOUT + STOP_TIMEOUT + 60

    async def main(directory: Path) -> FuzzReport:
        with trio.fail_after(budget):
            return await _fuzz(options, seed, directory)

    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        return trio.run(main, options.workdir)
    with tempfile.TemporaryDirectory(prefix="kvs-fuzz-") as directory:
        return trio.run(main, Path(directory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvs.testing.fuzz_wire", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=None, help="replay this seed")
    parser.add_argument("--rate", type=int, default=1000, help="datagrams per second")
    parser.add_argument("--workers", type=int, default=4, help="TCP connections at once")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the node's files here")
    args = parser.parse_args(argv)
    if not math.isfinite(args.seconds) or args.seconds <= 0:
        parser.error("--seconds must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed: {seed}", flush=True)
    options = FuzzOptions(
        seconds=args.seconds,
        seed=seed,
        rate=max(1, args.rate),
        workers=max(0, args.workers),
        workdir=args.workdir,
    )
    report = run(replace(options))
    print(report.text(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
