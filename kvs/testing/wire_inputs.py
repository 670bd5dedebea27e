"""What the wire fuzzer (kvs.testing.fuzz_wire) sends on gossip's UDP port, drawn from one
generator: random bytes; valid datagrams truncated, bit-flipped, oversized, replayed, sealed
with another key or none; datagrams with a valid HMAC whose fields are mutated into negative,
huge, wrong-typed, missing or extra values; and records for sync frames, valid or not.

Test tooling (see `kvs.testing`): a seed replays the same inputs in the same order.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from kvs.model import Record, RecordCodec, Version, hlc_pack
from kvs.net.codec import AEAD_NONCE_BYTES, derive_key
from kvs.net.datagrams import MAX_DATAGRAM_BYTES, DatagramCodec
from kvs.net.messages import (
    MAX_INCARNATION,
    MAX_UINT,
    Ack,
    Alive,
    Dead,
    Leave,
    MemberInfo,
    Message,
    Nack,
    Ping,
    PingReq,
    Suspect,
)
from kvs.net.replay import WINDOW_MS

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

FAKE_NODES = 8  # node ids the fuzzer's valid messages speak of (bounds the member table)


# --- the node under test and the fake members ------------------------------------------------


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


# --- datagrams -----------------------------------------------------------------------------------


def wall_ms() -> int:
    """The fuzzer's clock: the node under test is a real process on this host."""
    return time.time_ns() // 1_000_000


def seal(key: bytes | None, payload: bytes, *, sent_ms: int = 0, nonce: bytes = b"") -> bytes:
    """A datagram around any payload, by the layout documented in kvs.net.datagrams (not the
    codec): sealed with AES-256-GCM-SIV, stamped `sent_ms` (now by default) under `nonce`."""
    if key is None:
        return b"KV\x02" + payload
    header = b"KV\x82"
    if len(nonce) != AEAD_NONCE_BYTES:
        raise ValueError("a sealed datagram needs a 12-byte nonce (from the fuzzer's rng)")
    plain = (sent_ms or wall_ms()).to_bytes(8, "big") + payload
    return header + nonce + AESGCMSIV(key).encrypt(nonce, plain, header)


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
        self.plain = DatagramCodec(None)  # the payload layout, to mutate before sealing
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
            ("stale", self.stale),
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
        data = self.codec.encode(messages, sent_ms=wall_ms(), nonce=self.nonce())
        self.recent.append(data)
        return data

    def nonce(self) -> bytes:
        return self.rng.randbytes(AEAD_NONCE_BYTES)

    def sealed(self, payload: bytes, sent_ms: int = 0) -> bytes:
        assert self.key is not None
        return seal(self.key, payload, sent_ms=sent_ms, nonce=self.nonce())

    # broken material

    def random_bytes(self) -> bytes:
        data = self.rng.randbytes(self.rng.randint(0, MAX_DATAGRAM_BYTES))
        if self.rng.random() < 0.5:
            data = b"KV" + bytes([self.rng.choice([0x01, 0x81, 0x02, 0x82, 0x7F, 0xFF])]) + data
        return data

    def truncated(self) -> bytes:
        data = self.valid()
        return data[: self.rng.randrange(len(data))]

    def oversized(self) -> bytes:
        size = self.rng.randint(MAX_DATAGRAM_BYTES + 1, 9000)
        return self.sealed(self.rng.randbytes(size))

    def bitflip(self) -> bytes:
        data = bytearray(self.valid())
        for _ in range(self.rng.randint(1, 4)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def mutated(self) -> bytes:
        """A valid datagram's messages, one field changed, sealed again with the real key:
        this is what reaches the node's validators."""
        messages = [self.message() for _ in range(self.rng.randint(1, 8))]
        payload = self.plain.encode(messages)[len(b"KV\x02") :]
        value = msgpack.unpackb(payload)
        for _ in range(self.rng.randint(1, 3)):
            value = mutate(value, self.rng)
        try:
            packed = msgpack.packb(value, use_bin_type=True)
        except (ValueError, OverflowError, TypeError):  # 2**64 and beyond: not msgpack
            packed = payload
        return self.sealed(packed[: MAX_DATAGRAM_BYTES * 2])

    def replay(self) -> bytes:
        """A datagram the node accepted (or will): refused as "replay" from now on."""
        if not self.recent:
            return self.valid()
        return self.rng.choice(self.recent)

    def stale(self) -> bytes:
        """A valid datagram sent too long ago, or too far ahead: refused as "stale"."""
        messages = [self.message() for _ in range(self.rng.randint(1, 4))]
        off = WINDOW_MS + self.rng.choice([1_000, 60_000, 10**9])
        sent = max(1, wall_ms() + (off if self.rng.random() < 0.5 else -off))
        return self.codec.encode(messages, sent_ms=sent, nonce=self.nonce())

    def wrong_key(self) -> bytes:
        messages = [self.message()]
        if self.rng.random() < 0.5:
            return self.other.encode(messages, sent_ms=wall_ms(), nonce=self.nonce())
        return seal(None, b"\x91\xc0")

    def deep(self) -> bytes:
        depth = self.rng.choice([100, 1000, 1350])  # 1350: just fits with the seal
        return self.sealed(b"\x91" * depth + b"\xc0")

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
        return self.sealed(msgpack.packb(messages))


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
