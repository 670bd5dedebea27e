"""TCP scenarios of the wire fuzzer, one connection each, to the sync port or gossip's
push-pull port: garbage, half-open connections, stalls in the middle of a frame, frames
announcing 4 GB, a wrong key or purpose, and after a valid handshake, mutated requests and
push-pull tables, raw frames that are not msgpack, snapshots abandoned or stalled midway.

Test tooling (see `kvs.testing`): a seed replays the same inputs in the same order.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from kvs.model import RecordCodec
from kvs.net.codec import WireError, derive_key
from kvs.net.datagrams import encode_push_pull
from kvs.net.frames import MAX_FRAME_BYTES, FrameStream
from kvs.net.messages import (
    MemberState,
    PushPull,
    State,
)
from kvs.sync.snapshot import snapshot_format
from kvs.testing.wire_inputs import (
    FAKE_NODES,
    DatagramFuzzer,
    FakePeers,
    Target,
    fuzzed_record,
    mutate,
)

HOLD_MAX = 12.0  # longest a half-open or stalled connection is held (the node's limit: 10 s)


async def send_raw_frame(frames: FrameStream, payload: bytes) -> None:
    """Send `payload` as the next authenticated frame, whatever it is (test tooling: reaches
    into FrameStream on purpose, to send what its `send` would refuse to encode)."""
    aead = frames._aead
    assert aead is not None
    nonce = frames._send_dir + b"\x00\x00\x00" + struct.pack(">Q", frames._send_seq)
    frames._send_seq += 1
    body = aead.seal(nonce, payload, b"")
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
EXPECTED_ERRORS = (
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
            if not isinstance(exc, EXPECTED_ERRORS):
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
                {"op": "done"},  # the end of an exchange: counts it for the server too
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
