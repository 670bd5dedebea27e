"""The wire codec: round trips, limits, and that hostile bytes only ever raise WireError."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs.net.codec import REASONS, WireError, derive_key
from kvs.net.datagrams import (
    MAX_DATAGRAM_BYTES,
    MAX_HOST_LEN,
    MAX_MESSAGES,
    SEAL_OVERHEAD,
    DatagramCodec,
    decode_push_pull,
    encode_push_pull,
)
from kvs.net.frames import FrameStream
from kvs.net.messages import (
    MAX_INCARNATION,
    MAX_MEMBERS,
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
from tests.support.wire import NOW_MS, StampedCodec, fresh_nonce

SECRET = "correct horse battery staple"
KEY = derive_key(SECRET, "gossip")
OTHER_KEY = derive_key("another secret", "gossip")
STREAM_KEY = derive_key(SECRET, "pushpull")
NONCE_C = bytes(range(16))
NONCE_S = bytes(range(16, 32))

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ---------------------------------------------------------------------------------

_printable = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
node_ids = st.one_of(
    st.sampled_from(["node-1", "a", "x" * 64]),
    st.text(alphabet=_printable, min_size=1, max_size=64),
)
# The longest valid host: four labels of 63 characters (253 with the dots).
LONGEST_HOST = ".".join(["h" * 63] * 3 + ["h" * 61])
_labels = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?\Z")
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "::1", "10.0.0.7", "fe80::1", "localhost", LONGEST_HOST]),
    st.lists(_labels, min_size=1, max_size=5).map(".".join),
    st.ip_addresses().map(str),
).filter(lambda h: len(h) <= MAX_HOST_LEN)
ports = st.integers(0, 65535)
addresses = st.tuples(hosts, ports)
uints = st.one_of(st.sampled_from([0, 1, 2**63 - 1]), st.integers(0, 2**63 - 1))
incarnations = st.one_of(st.sampled_from([0, 1, MAX_INCARNATION]), st.integers(0, MAX_INCARNATION))
member_infos = st.builds(
    MemberInfo,
    node_id=node_ids,
    joined_timestamp=uints,
    incarnation=incarnations,
    gossip=addresses,
    sync=addresses,
    http=addresses,
)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, uints, node_ids, node_ids),
    st.builds(Ack, uints, node_ids),
    st.builds(PingReq, uints, node_ids, node_ids, addresses),
    st.builds(Nack, uints, node_ids),
    st.builds(Alive, member_infos),
    st.builds(Suspect, node_ids, incarnations, node_ids),
    st.builds(Dead, node_ids, incarnations, node_ids),
    st.builds(Leave, node_ids, incarnations),
)
push_pulls = st.builds(
    PushPull,
    source=node_ids,
    members=st.lists(
        st.builds(MemberState, member_infos, st.sampled_from(list(State))),
        max_size=8,
        unique_by=lambda ms: ms.member.node_id,
    ).map(tuple),
    join=st.booleans(),
)
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=25,
)
codecs = st.sampled_from([StampedCodec(None), StampedCodec(KEY)])

ME = MemberInfo(
    "node-1", 1_700_000_000_000, 3, ("10.0.0.1", 7946), ("10.0.0.1", 7947), ("10.0.0.1", 8080)
)


def one_of_each() -> list[Message]:
    return [
        Ping(1, "node-1", "node-2"),
        Ack(1, "node-2"),
        PingReq(2, "node-1", "node-3", ("10.0.0.3", 7946)),
        Nack(2, "node-2"),
        Alive(ME),
        Suspect("node-3", 4, "node-1"),
        Dead("node-3", 4, "node-1"),
        Leave("node-1", 5),
    ]


def seal(payload: bytes, key: bytes | None = KEY, version: int = 2, sent_ms: int = NOW_MS) -> bytes:
    """A datagram around any payload, built from the documented layout (not the codec)."""
    if key is None:
        return b"KV" + bytes([version]) + payload
    header = b"KV" + bytes([version | 0x80])
    nonce = fresh_nonce()
    plain = sent_ms.to_bytes(8, "big") + payload
    return header + nonce + AESGCMSIV(key).encrypt(nonce, plain, header)


def seal_v1(payload: bytes, key: bytes) -> bytes:
    """The version-1 layout (HMAC tag, clear text) that this version refuses."""
    header = b"KV\x81"
    return header + hmac.new(key, header + payload, hashlib.sha256).digest()[:16] + payload


def reason_of(call: Callable[[], Any]) -> str | None:
    """The WireError reason `call` raises, or None if it returns; any other exception fails."""
    try:
        call()
    except WireError as exc:
        assert exc.reason in REASONS
        return exc.reason
    return None


# --- keys ---------------------------------------------------------------------------------------


def test_derive_key_per_purpose_and_secret() -> None:
    assert derive_key("", "gossip") is None
    assert KEY is not None and len(KEY) == 32
    assert derive_key(SECRET, "gossip") == KEY
    assert len({KEY, OTHER_KEY, STREAM_KEY, derive_key(SECRET, "sync")}) == 4
    assert derive_key("\ud800 lone surrogate", "gossip") is not None  # must not raise


def test_derive_key_errors_never_show_the_secret() -> None:
    with pytest.raises(ValueError) as bad_purpose:
        derive_key(SECRET, "Gossip Protocol")
    assert SECRET not in str(bad_purpose.value)
    with pytest.raises(ValueError) as swapped:
        derive_key("gossip", SECRET)
    assert SECRET not in str(swapped.value)
    with pytest.raises(TypeError) as not_str:
        derive_key(SECRET.encode(), "gossip")  # type: ignore[arg-type]
    assert "horse" not in str(not_str.value)


async def test_reprs_and_errors_never_show_keys() -> None:
    assert KEY is not None
    codec = StampedCodec(KEY)
    client, server = await connect(STREAM_KEY, STREAM_KEY)
    texts = [repr(codec), repr(client), repr(server)]
    for data in [b"", b"KV\x81" + b"\x00" * 20, codec.encode([Ping(1, "a", "b")])[:-1]]:
        with pytest.raises(WireError) as err:
            codec.decode(data)
        texts += [str(err.value), repr(err.value)]
    for text in texts:
        assert SECRET not in text and KEY.hex() not in text and repr(KEY) not in text


# --- datagrams: round trips ---------------------------------------------------------------------


@fast
@given(codecs, messages)
def test_every_message_round_trips(codec: DatagramCodec, message: Message) -> None:
    data = codec.encode([message])
    assert len(data) <= MAX_DATAGRAM_BYTES  # any single valid message fits
    assert codec.decode(data) == [message]
    assert codec.datagram_size([message]) == len(data)


@fast
@given(codecs, st.lists(messages, min_size=1, max_size=20))
def test_compound_datagrams_round_trip_or_refuse_to_encode(
    codec: DatagramCodec, batch: list[Message]
) -> None:
    if codec.fits(batch):
        data = codec.encode(batch)
        assert len(data) == codec.datagram_size(batch)
        assert codec.decode(data) == batch
    else:
        with pytest.raises(ValueError):
            codec.encode(batch)


@pytest.mark.parametrize("key", [None, KEY])
def test_one_datagram_with_every_kind(key: bytes | None) -> None:
    codec = StampedCodec(key)
    data = codec.encode(one_of_each())
    assert codec.decode(data) == one_of_each()
    assert data[:2] == b"KV" and data[2] == (0x82 if key else 0x02)
    assert codec.overhead == (3 + SEAL_OVERHEAD if key else 3)
    assert SEAL_OVERHEAD == 12 + 8 + 16  # nonce, sender's time, tag


def test_the_largest_valid_message_fits_a_keyed_datagram() -> None:
    # 64 four-byte characters and three 253-character hosts: the worst case for an Alive.
    big = "\U0001f600" * 64
    host = LONGEST_HOST
    assert len(host) == MAX_HOST_LEN
    info = MemberInfo(big, 2**63 - 1, MAX_INCARNATION, (host, 65535), (host, 65535), (host, 65535))
    for message in [Alive(info), PingReq(2**63 - 1, big, big, (host, 65535))]:
        data = StampedCodec(KEY).encode([message])
        assert len(data) <= MAX_DATAGRAM_BYTES
        assert StampedCodec(KEY).decode(data) == [message]


@pytest.mark.parametrize(
    "message",
    [
        Ping(-1, "a", "b"),
        Ping(2**63, "a", "b"),
        Ping(True, "a", "b"),  # a bool is not an int
        Ping(1, "", "b"),
        Ping(1, "x" * 65, "b"),
        Ping(1, "a\nb", "b"),
        Ack(1.0, "a"),  # type: ignore[arg-type]
        PingReq(1, "a", "b", ("h", 65536)),
        PingReq(1, "a", "b", ("", 1)),
        PingReq(1, "a", "b", ("h" * 254, 1)),
        PingReq(1, "a", "b", ("two words", 1)),
        PingReq(1, "a", "b", ("hôst", 1)),
        # The resolver raised UnicodeError (not OSError) out of sendto for these: a label
        # over 63 characters, an empty label; and a zone names an interface of the sender.
        PingReq(1, "a", "b", ("h" * 64, 1)),
        PingReq(1, "a", "b", ("a..b", 1)),
        PingReq(1, "a", "b", ("a.", 1)),
        PingReq(1, "a", "b", ("-a", 1)),
        PingReq(1, "a", "b", ("a_b", 1)),
        PingReq(1, "a", "b", ("fe80::1%eth0", 1)),
        PingReq(1, "a", "b", ("1::2::3", 1)),
        Dead("a", MAX_INCARNATION + 1, "b"),
        Suspect("a", 2**63 - 1, "b"),
        Leave("a", 2**62 + 7),
        Alive(MemberInfo("a", -5, 0, ("h", 1), ("h", 1), ("h", 1))),
        Leave("a", None),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_a_peer_would_refuse(message: Message) -> None:
    with pytest.raises(ValueError):
        StampedCodec(KEY).encode([message])


def test_encode_limits() -> None:
    codec = StampedCodec(None)
    with pytest.raises(ValueError):
        codec.encode([])
    with pytest.raises(ValueError):
        codec.encode([Ack(1, "a")] * (MAX_MESSAGES + 1))
    assert codec.decode(codec.encode([Ack(1, "a")] * MAX_MESSAGES)) == [Ack(1, "a")] * 64
    too_big = [Alive(ME)] * 30
    assert not codec.fits(too_big)
    with pytest.raises(ValueError):
        codec.encode(too_big)
    with pytest.raises(TypeError):
        codec.encode(["not a message"])  # type: ignore[list-item]


# --- datagrams: pack ----------------------------------------------------------------------------


@fast
@given(codecs, st.lists(messages, max_size=3), st.lists(messages, max_size=40))
def test_pack_keeps_first_then_a_prefix_of_more_under_the_limit(
    codec: DatagramCodec, first: list[Message], more: list[Message]
) -> None:
    if not first and not more:
        with pytest.raises(ValueError):
            codec.pack(first, more)
        return
    if not codec.fits(first) and first:
        with pytest.raises(ValueError):
            codec.pack(first, more)
        return
    data, used = codec.pack(first, more)
    assert len(data) <= codec.max_size
    assert codec.decode(data) == first + more[:used]
    if used < len(more):  # it stopped because the next one would not fit (or 64 reached)
        assert not codec.fits(first + more[: used + 1])
    if not first:
        assert used >= 1


def test_pack_fills_to_the_limit_in_order() -> None:
    codec = StampedCodec(KEY)
    more = [Suspect(f"node-{i}", i, "node-1") for i in range(200)]
    data, used = codec.pack([Ping(7, "node-1", "node-2")], more)
    assert 10 < used < 200
    assert len(data) <= MAX_DATAGRAM_BYTES
    assert len(data) + codec.encoded_size(more[used]) > MAX_DATAGRAM_BYTES or used + 1 == 64
    assert codec.decode(data) == [Ping(7, "node-1", "node-2"), *more[:used]]


def test_pack_stops_at_64_messages() -> None:
    codec = StampedCodec(None)
    data, used = codec.pack([Ack(1, "a")], [Ack(2, "b")] * 100)
    assert used == MAX_MESSAGES - 1
    assert len(codec.decode(data)) == MAX_MESSAGES


def test_pack_with_a_smaller_max_size() -> None:
    codec = StampedCodec(None, max_size=100)
    data, used = codec.pack([], [Leave(f"n{i}", i) for i in range(50)])
    assert len(data) <= 100 and 0 < used < 50


# --- datagrams: hostile input -------------------------------------------------------------------


def test_keyed_and_unkeyed_do_not_mix() -> None:
    unkeyed, keyed = StampedCodec(None), StampedCodec(KEY)
    batch = [Ping(1, "a", "b")]
    assert reason_of(lambda: keyed.decode(unkeyed.encode(batch))) == "auth"
    assert reason_of(lambda: unkeyed.decode(keyed.encode(batch))) == "auth"
    assert reason_of(lambda: StampedCodec(OTHER_KEY).decode(keyed.encode(batch))) == "auth"
    # A gossip-purpose tag is no good for another purpose's key.
    assert reason_of(lambda: StampedCodec(STREAM_KEY).decode(keyed.encode(batch))) == "auth"


def test_every_flipped_bit_is_rejected_when_keyed() -> None:
    codec = StampedCodec(KEY)
    data = codec.encode(one_of_each())
    for i in range(len(data)):
        for bit in range(8):
            corrupt = bytearray(data)
            corrupt[i] ^= 1 << bit
            assert reason_of(lambda c=bytes(corrupt): codec.decode(c)) is not None, (i, bit)


@pytest.mark.parametrize("key", [None, KEY])
def test_every_truncation_is_rejected(key: bytes | None) -> None:
    codec = StampedCodec(key)
    data = codec.encode(one_of_each())
    for n in range(len(data)):
        assert reason_of(lambda n=n: codec.decode(data[:n])) is not None, n


def test_unkeyed_bit_flips_never_raise_anything_but_wire_error() -> None:
    codec = StampedCodec(None)
    data = codec.encode(one_of_each())
    for i in range(len(data)):
        for bit in range(8):
            corrupt = bytearray(data)
            corrupt[i] ^= 1 << bit
            reason_of(lambda c=bytes(corrupt): codec.decode(c))  # may decode; may not crash


@fast
@given(codecs, st.binary(max_size=1500))
def test_random_bytes_only_raise_wire_error(codec: DatagramCodec, data: bytes) -> None:
    assert reason_of(lambda: codec.decode(data)) is not None


@fast
@given(st.sampled_from([None, KEY]), st.binary(max_size=200))
def test_random_payloads_behind_a_valid_header_only_raise_wire_error(
    key: bytes | None, payload: bytes
) -> None:
    reason = reason_of(lambda: StampedCodec(key).decode(seal(payload, key)))
    assert reason in ("short", "malformed", "shape", None)


@fast
@given(st.sampled_from([None, KEY]), msgpack_values)
def test_wrong_shapes_are_shape_or_malformed(key: bytes | None, value: Any) -> None:
    payload = msgpack.packb(value, use_bin_type=True)
    codec = StampedCodec(key)
    try:
        decoded = codec.decode(seal(payload, key))
    except WireError as exc:
        assert exc.reason in ("shape", "malformed", "oversize")
    else:  # hypothesis stumbled on a valid datagram: it must then be real messages
        assert decoded and all(isinstance(m, Message) for m in decoded)


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {},
        None,
        "ping",
        [[]],
        [[1, 1, "a"]],  # too few fields
        [[1, 1, "a", "b", "c"]],  # too many
        [[99, 1, "a", "b"]],  # unknown kind
        [[True, 1, "a", "b"]],  # bool kind
        [["1", 1, "a", "b"]],
        [[1, True, "a", "b"]],  # bool seq
        [[1, -1, "a", "b"]],
        [[1, 2**63, "a", "b"]],
        [[1, 2**64 - 1, "a", "b"]],
        [[1, 1.5, "a", "b"]],
        [[1, 1, "", "b"]],
        [[1, 1, "x" * 65, "b"]],
        [[1, 1, b"a", "b"]],  # bytes are not str
        [[1, 1, "a\x00", "b"]],
        [[3, 1, "a", "b", ["h", 70000]]],
        [[3, 1, "a", "b", ["h", -1]]],
        [[3, 1, "a", "b", ["h", True]]],
        [[3, 1, "a", "b", ["", 1]]],
        [[3, 1, "a", "b", ["h" * 256, 1]]],
        [[3, 1, "a", "b", ["h", 1, 2]]],
        [[3, 1, "a", "b", {"host": "h", "port": 1}]],
        [[5, ["a", 1, 1, ["h", 1], ["h", 1]]]],  # member missing http
        [[5, ["a", 1, 1, ["h", 1], ["h", 1], ["h", None]]]],
        [[8, "a", None]],
        [[2, 1, "a"]] * (MAX_MESSAGES + 1),
        [[2, 1, "a"], "trailing junk element"],
    ],
)
def test_specific_shapes_are_refused(payload: Any) -> None:
    for key in (None, KEY):
        data = seal(msgpack.packb(payload, use_bin_type=True), key)
        assert reason_of(lambda d=data, k=key: StampedCodec(k).decode(d)) == "shape"


def test_header_and_framing_reasons() -> None:
    codec = StampedCodec(KEY)
    good = codec.encode([Ack(1, "a")])
    assert reason_of(lambda: codec.decode(b"")) == "short"
    assert reason_of(lambda: codec.decode(b"KV")) == "short"
    assert reason_of(lambda: codec.decode(good[:10])) == "short"
    assert reason_of(lambda: codec.decode(b"XX" + good[2:])) == "magic"
    assert reason_of(lambda: codec.decode(good[:2] + b"\x83" + good[3:])) == "version"
    assert reason_of(lambda: codec.decode(good[:2] + b"\x02" + good[3:])) == "auth"  # unsealed
    # The previous layout (version 1: HMAC, clear text) is refused cleanly, never parsed.
    assert reason_of(lambda: codec.decode(seal_v1(msgpack.packb([[2, 1, "a"]]), KEY))) == "version"
    assert reason_of(lambda: codec.decode(b"KV\x01" + msgpack.packb([[2, 1, "a"]]))) == "version"
    assert reason_of(lambda: codec.decode(good + b"\x00" * MAX_DATAGRAM_BYTES)) == "oversize"
    payload = msgpack.packb([[2, 1, "a"]])
    assert reason_of(lambda: codec.decode(seal(payload + b"\x00"))) == "malformed"  # trailing
    assert reason_of(lambda: codec.decode(seal(b"\xc1"))) == "malformed"  # never used byte
    assert reason_of(lambda: codec.decode(seal(b"\x91\xd4\x05\x00"))) == "malformed"  # ext
    assert reason_of(lambda: codec.decode(seal(b"\x91\xd6\xff\x00\x00\x00\x01"))) == "malformed"
    assert reason_of(lambda: codec.decode(seal(b"\x91\xa2\xff\xfe"))) == "malformed"  # utf-8
    assert reason_of(lambda: codec.decode(seal(b"\x91" * 1300 + b"\xc0"))) == "malformed"
    assert reason_of(lambda: codec.decode(seal(b"\x81\x01\x02"))) == "malformed"  # int key
    assert reason_of(lambda: codec.decode(seal(b"\xdd\xff\xff\xff\xff"))) == "malformed"


def test_wire_error_reasons_are_a_fixed_set() -> None:
    assert WireError("auth").reason == "auth"
    with pytest.raises(ValueError):
        WireError("something new")


# --- push-pull ----------------------------------------------------------------------------------


@fast
@given(push_pulls)
def test_push_pull_round_trips(pp: PushPull) -> None:
    obj = encode_push_pull(pp)
    wire = msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)
    assert decode_push_pull(wire) == pp


@fast
@given(msgpack_values)
def test_push_pull_of_the_wrong_shape(value: Any) -> None:
    try:
        decode_push_pull(value)
    except WireError as exc:
        assert exc.reason == "shape"


def test_push_pull_limits() -> None:
    member = [["a", 1, 1, ["h", 1], ["h", 1], ["h", 1]], 0]
    good = ["me", False, [member]]
    assert decode_push_pull(good).members[0].state is State.ALIVE
    for bad in [
        ["me", 0, [member]],  # join must be a bool
        ["me", False, [member, member]],  # the same node twice
        ["me", False, [[member[0], 4]]],  # unknown state
        ["me", False, [[member[0], True]]],
        ["", False, [member]],
        ["me", False, [member], "extra"],
        ["me", False, "members"],
    ]:
        assert reason_of(lambda b=bad: decode_push_pull(b)) == "shape"
    too_many = [[[f"n{i}", 1, 1, ["h", 1], ["h", 1], ["h", 1]], 0] for i in range(MAX_MEMBERS + 1)]
    assert reason_of(lambda: decode_push_pull(["me", False, too_many])) == "shape"
    assert len(decode_push_pull(["me", False, too_many[:MAX_MEMBERS]]).members) == MAX_MEMBERS
    with pytest.raises(ValueError):
        encode_push_pull(PushPull("me", (MemberState(ME, State.ALIVE),) * 2))


# --- streams ------------------------------------------------------------------------------------


class Pipe:
    """A one-way byte pipe with the test in the middle: it records every write (one frame
    per write) and may rewrite it, or inject bytes of its own."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.rewrite: Callable[[bytes], bytes] = lambda data: data
        self.inbound = trio.testing.MemoryReceiveStream()
        self.outbound = trio.testing.MemorySendStream(
            send_all_hook=self._pump, close_hook=self.inbound.put_eof
        )

    async def _pump(self) -> None:
        data = bytes(self.outbound.get_data_nowait())
        self.frames.append(data)
        self.inject(self.rewrite(data))

    def inject(self, data: bytes) -> None:
        self.inbound.put_data(data)


def tapped_pair() -> tuple[trio.StapledStream, trio.StapledStream, Pipe, Pipe]:
    up, down = Pipe(), Pipe()  # client -> server, server -> client
    client = trio.StapledStream(up.outbound, down.inbound)
    server = trio.StapledStream(down.outbound, up.inbound)
    return client, server, up, down


async def handshake(
    client_stream: trio.abc.Stream,
    server_stream: trio.abc.Stream,
    client_key: bytes | None,
    server_key: bytes | None,
    *,
    client_purpose: str = "pushpull",
    server_purpose: str = "pushpull",
    client_nonce: bytes = NONCE_C,
    server_nonce: bytes = NONCE_S,
    **kwargs: Any,
) -> tuple[FrameStream | WireError, FrameStream | WireError]:
    """Run both sides of the handshake; each result is the stream or the WireError raised."""
    results: dict[str, FrameStream | WireError] = {}

    async def side(name: str, opener: Any, stream: trio.abc.Stream, key: Any, **kw: Any) -> None:
        try:
            results[name] = await opener(stream, key, **kw, **kwargs)
        except WireError as exc:
            results[name] = exc
            await stream.aclose()  # what a real caller does: drop the connection

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: side(
                "server",
                FrameStream.server,
                server_stream,
                server_key,
                purpose=server_purpose,
                nonce=server_nonce,
            )
        )
        nursery.start_soon(
            lambda: side(
                "client",
                FrameStream.client,
                client_stream,
                client_key,
                purpose=client_purpose,
                nonce=client_nonce,
            )
        )
    return results["client"], results["server"]


async def connect(
    client_key: bytes | None, server_key: bytes | None, **kwargs: Any
) -> tuple[FrameStream, FrameStream]:
    a, b = trio.testing.memory_stream_pair()
    client, server = await handshake(a, b, client_key, server_key, **kwargs)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    return client, server


VALUES: list[Any] = [
    {"kind": "records", "items": [["home/a", b"\x00\xff", 1.5, None, True]]},
    [1, -1, 2**64 - 1, -(2**63)],
    "text",
    b"",
    {},
]


@pytest.mark.parametrize("key", [None, STREAM_KEY])
async def test_frames_both_ways(key: bytes | None) -> None:
    client, server = await connect(key, key)
    assert client.keyed == server.keyed == (key is not None)
    for value in VALUES:
        await client.send(value)
        await server.send([value])
    for value in VALUES:
        assert await server.receive() == value
        assert await client.receive() == [value]


async def test_push_pull_over_a_stream() -> None:
    client, server = await connect(STREAM_KEY, STREAM_KEY)
    pp = PushPull("node-1", (MemberState(ME, State.SUSPECT),), join=True)
    await client.send(encode_push_pull(pp))
    assert decode_push_pull(await server.receive()) == pp


async def test_concurrent_senders_are_serialized() -> None:
    client, server = await connect(STREAM_KEY, STREAM_KEY)
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(client.send, i)
    assert sorted([await server.receive() for _ in range(10)]) == list(range(10))


async def test_wrong_secret_fails_both_sides_with_auth() -> None:
    wrong = derive_key("not the cluster secret", "pushpull")
    a, b = trio.testing.memory_stream_pair()
    client, server = await handshake(a, b, wrong, STREAM_KEY)
    assert isinstance(client, WireError) and client.reason == "auth"
    assert isinstance(server, WireError) and server.reason == "auth"


@pytest.mark.parametrize("keys", [(None, STREAM_KEY), (STREAM_KEY, None)])
async def test_keyed_and_unkeyed_peers_fail_with_auth(keys: tuple[Any, Any]) -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await handshake(a, b, *keys)
    assert isinstance(client, WireError) and client.reason == "auth"
    assert isinstance(server, WireError) and server.reason == "auth"


async def test_another_purpose_is_refused() -> None:
    a, b = trio.testing.memory_stream_pair()
    client, server = await handshake(
        a, b, derive_key(SECRET, "sync"), STREAM_KEY, client_purpose="sync"
    )
    assert isinstance(client, WireError) and client.reason == "purpose"
    assert isinstance(server, WireError) and server.reason == "purpose"


async def test_a_stranger_gets_no_answer() -> None:
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(WireError) as err:
        await FrameStream.server(b, STREAM_KEY, purpose="pushpull", nonce=NONCE_S)
    assert err.value.reason == "oversize"  # b"GET " is a 1.1 GB length
    a, b = trio.testing.memory_stream_pair()
    await a.send_all(b"\x00\x00\x00\x03abc")
    with pytest.raises(WireError) as err:
        await FrameStream.server(b, STREAM_KEY, purpose="pushpull", nonce=NONCE_S)
    assert err.value.reason == "malformed"
    a, b = trio.testing.memory_stream_pair()
    payload = msgpack.packb(["kvs-hello", 1, "pushpull", NONCE_C])
    await a.send_all(len(payload).to_bytes(4, "big") + payload)
    with pytest.raises(WireError) as err:
        await FrameStream.server(b, STREAM_KEY, purpose="pushpull", nonce=NONCE_S)
    assert err.value.reason == "magic"


def flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


async def test_tampered_frame_is_refused() -> None:
    c, s, up, _ = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    up.rewrite = flip_last_bit
    await client.send({"value": 1})
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "auth"
    with pytest.raises(WireError):  # the stream is out of step for good
        await server.receive()


async def test_replayed_reordered_and_reflected_frames_are_refused() -> None:
    c, s, up, down = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    await client.send("first")
    assert await server.receive() == "first"
    up.inject(up.frames[-1])  # replay
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "auth"

    c, s, up, down = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    up.rewrite = lambda data: b""  # hold frames back, then deliver them swapped
    await client.send("one")
    await client.send("two")
    up.inject(up.frames[-1] + up.frames[-2])
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "auth"

    c, s, up, down = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    await client.send("to the server")
    down.inject(up.frames[-1])  # reflect the client's own frame back to it
    with pytest.raises(WireError) as err:
        await client.receive()
    assert err.value.reason == "auth"


async def test_a_frame_from_another_session_is_refused() -> None:
    c, s, up, _ = tapped_pair()
    old_client, _old_server = await handshake(c, s, STREAM_KEY, STREAM_KEY)
    assert isinstance(old_client, FrameStream)
    await old_client.send("old")
    recorded = up.frames[-1]
    c, s, up, _ = tapped_pair()
    _, server = await handshake(
        c, s, STREAM_KEY, STREAM_KEY, client_nonce=NONCE_S, server_nonce=NONCE_C
    )
    assert isinstance(server, FrameStream)
    up.inject(recorded)
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "auth"


async def test_oversize_length_is_refused_before_the_body(autojump_clock: Any) -> None:
    c, s, up, _ = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY, max_frame=1024)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    start = trio.current_time()
    up.inject((1025).to_bytes(4, "big"))  # a header only: waiting for the body would time out
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "oversize"
    assert trio.current_time() == start
    with pytest.raises(ValueError):
        await client.send(b"x" * 1024)  # our own oversize frame is a bug, not a wire error


async def test_a_stalled_peer_times_out(autojump_clock: Any) -> None:
    a, b = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(WireError) as err:  # the server never answers the hello
        await FrameStream.client(a, STREAM_KEY, purpose="pushpull", nonce=NONCE_C)
    assert err.value.reason == "timeout"
    assert trio.current_time() - start == pytest.approx(10.0)

    c, s, up, _ = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY, timeout=2.0)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    up.rewrite = lambda data: data[:7]  # half a frame, then silence
    await client.send("slow")
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "timeout"
    up.inject(up.frames[-1][7:])  # the rest arrives: a timed-out receive consumed nothing
    assert await server.receive() == "slow"
    with pytest.raises(WireError) as err:
        await server.receive(timeout=30.0)
    assert err.value.reason == "timeout"
    with trio.move_on_after(1000.0) as scope:
        await server.receive(timeout=math.inf)
    assert scope.cancelled_caught


async def test_idle_bounds_the_wait_for_a_frame_and_timeout_the_frame_begun(
    autojump_clock: Any,
) -> None:
    """A quiet connection may wait `idle`; a frame once begun must be whole within `timeout`
    of its first byte (a slow loris is cut off fast however long the idle allowance)."""
    c, s, up, _ = tapped_pair()
    client, server = await handshake(c, s, STREAM_KEY, STREAM_KEY, timeout=2.0)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    start = trio.current_time()
    with pytest.raises(WireError) as err:
        await server.receive(idle=100.0)
    assert err.value.reason == "idle"
    assert trio.current_time() - start == pytest.approx(100.0)
    await client.send("quiet, then on time")
    assert await server.receive(idle=100.0) == "quiet, then on time"
    up.rewrite = lambda data: data[:7]  # the frame begins, then silence
    await client.send("slow")
    start = trio.current_time()
    with pytest.raises(WireError) as err:
        await server.receive(idle=100.0)
    assert err.value.reason == "timeout"
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_a_peer_that_stops_reading_times_out_the_sender(autojump_clock: Any) -> None:
    a, b = trio.testing.lockstep_stream_pair()  # no buffer: send blocks until the peer reads
    with pytest.raises(WireError) as err:
        await FrameStream.client(a, None, purpose="pushpull", nonce=NONCE_C, timeout=1.0)
    assert err.value.reason == "timeout"


async def test_end_of_stream() -> None:
    client, server = await connect(STREAM_KEY, STREAM_KEY)
    await client.send("last")
    await client.aclose()
    assert await server.receive() == "last"
    with pytest.raises(trio.EndOfChannel):
        await server.receive()
    with pytest.raises(trio.EndOfChannel):
        await server.receive()

    c, s, up, _ = tapped_pair()
    client, server = await handshake(c, s, None, None)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    up.rewrite = lambda data: data[:-1]
    await client.send("cut short")
    await client.aclose()
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "short"


async def test_a_broken_connection_is_closed() -> None:
    client, server = await connect(None, None)
    await server.aclose()
    with pytest.raises(WireError) as err:
        await client.send("anyone there?")
    assert err.value.reason == "closed"
    with pytest.raises(WireError):
        await client.send("again")


async def test_garbage_frames_are_malformed_and_limits_hold() -> None:
    c, s, up, _ = tapped_pair()
    client, server = await handshake(c, s, None, None)
    assert isinstance(client, FrameStream) and isinstance(server, FrameStream)
    up.inject(b"\x00\x00\x00\x02\x01\x02")  # two values: trailing data
    with pytest.raises(WireError) as err:
        await server.receive()
    assert err.value.reason == "malformed"


async def test_bad_arguments() -> None:
    a, _ = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError):
        await FrameStream.client(a, STREAM_KEY, purpose="pushpull", nonce=b"short")
    with pytest.raises(ValueError):
        await FrameStream.client(a, b"tiny", purpose="pushpull", nonce=NONCE_C)
    with pytest.raises(ValueError):
        await FrameStream.client(a, STREAM_KEY, purpose="Push Pull", nonce=NONCE_C)
    with pytest.raises(ValueError):
        StampedCodec(b"tiny")
