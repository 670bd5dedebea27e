"""The fake members' side of the node's own traffic in the wire fuzzer: it answers the node's
pings and serves the push-pulls and sync exchanges the node starts, with replies built from
valid ones and then mutated. This is how the node's outbound connections meet a hostile
peer.

Test tooling (see `kvs.testing`): a seed replays the same inputs in the same order.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Any

import trio

from kvs.model import RecordCodec, hlc_pack
from kvs.net.codec import AEAD_NONCE_BYTES, WireError, derive_key
from kvs.net.datagrams import DatagramCodec, encode_push_pull
from kvs.net.frames import FrameStream
from kvs.net.messages import (
    Ack,
    MemberState,
    Ping,
    PushPull,
    State,
)
from kvs.testing.wire_inputs import (
    FAKE_NODES,
    DatagramFuzzer,
    FakePeers,
    Target,
    fuzzed_record,
    mutate,
    wall_ms,
)
from kvs.testing.wire_streams import EXPECTED_ERRORS, Tally


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
                messages = self.codec.decode(data, now_ms=wall_ms())
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
                    nonce = self.rng.randbytes(AEAD_NONCE_BYTES)
                    sealed = self.codec.encode(reply, sent_ms=wall_ms(), nonce=nonce)
                    await sock.sendto(sealed, source)
                self.tally.answered += 1

    async def serve_push_pull(self, stream: trio.SocketStream) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        self.tally.served["push_pull"] += 1
        async with stream:
            with (
                contextlib.suppress(*EXPECTED_ERRORS, ValueError, TypeError, OverflowError),
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
                contextlib.suppress(*EXPECTED_ERRORS, ValueError, TypeError, OverflowError),
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
