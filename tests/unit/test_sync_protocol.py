"""The sync protocol's defences: validators reject every malformed shape with ProtocolError
(and nothing else), `SyncService.accept` refuses bad records without writing anything and
merges good ones by `resolve`, and the server drops hostile connections -- garbage, wrong
HMAC, a frame claiming 4 GB, truncated frames, slow peers -- counting why, while it keeps
serving everyone else."""

from __future__ import annotations

import math
import random
import struct
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs.net.codec import WireError
from kvs.net.frames import MAX_FRAME_BYTES, FrameStream
from kvs.store import Delete, Put, Summary
from kvs.sync import protocol as p
from kvs.sync.limits import IDLE_TIMEOUT, REQUEST_TIMEOUT
from kvs.sync.merkle import MerkleTree
from kvs.testing.memory import MemoryTransport
from tests.support.config import ManualWallClock
from tests.support.sync import (
    ADDRESS,
    T0,
    Replica,
    connect,
    encode,
    open_replica,
    raw_fields,
    record,
    session,
    still_serving,
)

MAX_VALUE = 4096

# --- validators ---------------------------------------------------------------------------------

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=5)
    ),
    max_leaves=30,
)


def valid_summary() -> st.SearchStrategy[list[Any]]:
    return st.builds(
        lambda key, hlc, joined, origin, uid, deleted, expires: [
            key,
            hlc,
            joined,
            origin,
            uid,
            deleted,
            expires,
        ],
        st.lists(st.from_regex(r"\A[a-z0-9_][a-z0-9._-]{0,4}\Z"), min_size=1, max_size=3)
        .map("/".join)
        .filter(lambda k: all(s not in (".", "..") for s in k.split("/"))),
        st.integers(0, p.MAX_INT),
        st.integers(0, p.MAX_INT),
        st.text(max_size=8),
        st.text(max_size=8),
        st.booleans(),
        st.none() | st.integers(0, p.MAX_INT),
    )


def mutated(strategy: st.SearchStrategy[list[Any]]) -> st.SearchStrategy[list[Any]]:
    """A valid list with one element replaced by anything."""

    def replace(fields: list[Any], index: int, value: Any) -> list[Any]:
        fields = list(fields)
        fields[index % len(fields)] = value
        return fields

    return st.builds(replace, strategy, st.integers(0, 100), msgpack_values)


def only_protocol_errors(fn: Any, *args: Any) -> Any:
    """Call fn; a ProtocolError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args)
    except p.ProtocolError as exc:
        assert exc.reason == "shape"
        return None


@settings(max_examples=400, deadline=None)
@given(obj=msgpack_values)
def test_validators_raise_only_protocol_errors_for_anything(obj: Any) -> None:
    as_request = obj if isinstance(obj, dict) else {"x": obj}
    for fn, args in [
        (p.request_op, (obj,)),
        (p.parse_nodes, ({"nodes": obj}, 4)),
        (p.parse_nodes, ({"nodes": [obj]}, 4)),
        (p.parse_nodes, (as_request, 4)),
        (p.parse_leaves, ({"leaves": obj}, 65536)),
        (p.parse_leaves, ({"leaves": [obj]}, 65536)),
        (p.parse_keys, ({"keys": obj},)),
        (p.parse_keys, ({"keys": [obj]},)),
        (p.parse_records, (obj,)),
        (p.parse_records, ([obj],)),
        (p.decode_hashes, (obj, 1)),
        (p.decode_hashes, ({"hashes": obj}, 1)),
        (p.decode_hashes, ({"hashes": [obj]}, 1)),
        (p.decode_hashes, ({"hashes": [[obj] * 16]}, 1)),
        (p.decode_summaries, (obj, 10)),
        (p.decode_summaries, ({"entries": obj}, 10)),
        (p.decode_summaries, ({"entries": [obj]}, 10)),
        (p.decode_count, (obj, 5)),
        (p.decode_count, ({"count": obj}, 5)),
    ]:
        only_protocol_errors(fn, *args)


@settings(max_examples=300, deadline=None)
@given(entry=mutated(valid_summary()))
def test_a_summary_with_one_bad_field_is_refused_or_still_well_typed(entry: list[Any]) -> None:
    out = only_protocol_errors(p.decode_summaries, {"entries": [entry]}, 1)
    if out is not None:
        [s] = out
        assert isinstance(s, Summary) and isinstance(s.key, str) and isinstance(s.deleted, bool)
        assert 0 <= s.version.hlc <= p.MAX_INT and 0 <= s.version.origin_joined <= p.MAX_INT


@given(entry=valid_summary())
def test_summaries_round_trip(entry: list[Any]) -> None:
    [s] = p.decode_summaries({"entries": [entry]}, 1)
    assert p.encode_summary(s) == entry


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (p.request_op, ([],)),
        (p.request_op, ({"op": 1},)),
        (p.parse_nodes, ({"nodes": [[4, 0]]}, 4)),  # the leaves have no children
        (p.parse_nodes, ({"nodes": [[1, 16]]}, 4)),
        (p.parse_nodes, ({"nodes": [[0, 0, 0]]}, 4)),
        (p.parse_nodes, ({"nodes": [[True, 0]]}, 4)),
        (p.parse_nodes, ({"nodes": [[0, 0]] * (p.MAX_NODES_PER_REQUEST + 1)}, 4)),
        (p.parse_leaves, ({"leaves": [65536]}, 65536)),
        (p.parse_leaves, ({"leaves": [-1]}, 65536)),
        (p.parse_leaves, ({"leaves": [0] * (p.MAX_LEAVES_PER_REQUEST + 1)}, 65536)),
        (p.parse_keys, ({"keys": [""]},)),
        (p.parse_keys, ({"keys": ["k" * 1025]},)),
        (p.parse_keys, ({"keys": [b"k"]},)),
        (p.parse_keys, ({"keys": ["k"] * (p.MAX_KEYS_PER_REQUEST + 1)},)),
        (p.parse_records, (["x"],)),
        (p.parse_records, ([b"x"] * (p.MAX_RECORDS_PER_PUSH + 1),)),
        (p.decode_hashes, ({"hashes": [[b"\0" * 16] * 15]}, 1)),
        (p.decode_hashes, ({"hashes": [[b"\0" * 15] * 16]}, 1)),
        (p.decode_hashes, ({"hashes": []}, 1)),  # fewer groups than asked for
        (p.decode_summaries, ({"entries": [["k", -1, 0, "o", "u", False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u", 0, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u", False, "x"]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u", False]]}, 1)),
        # What we would ask for again must be a key we could fetch, in a frame we can send.
        (p.decode_summaries, ({"entries": [["a//b", 1, 0, "o", "u", False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k" * 1025, 1, 0, "o", "u", False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [[b"k", 1, 0, "o", "u", False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o" * 257, "u", False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u" * 257, False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", True, 0, "o", "u", False, None]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u", False, -1]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u", False, 2**63]]}, 1)),
        (p.decode_summaries, ({"entries": [["k", 1, 0, "o", "u", False, True]]}, 1)),
        (p.decode_count, ({"count": 0}, 5)),  # a reply must make progress
        (p.decode_count, ({"count": 6}, 5)),
        (p.decode_count, ({}, 5)),
    ],
)
def test_specific_malformed_shapes_are_refused(fn: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(p.ProtocolError):
        fn(*args)


# --- accept() -------------------------------------------------------------------------------------


def nothing_written(replica: Replica) -> bool:
    return replica.contents() == {} and replica.worker.tree.size == 0


def compressed_value(text_size: int, declared: int | None = None, *, sized: bool = True) -> bytes:
    """A JSON string of `text_size` bytes, zstd-compressed; `declared` overwrites the size
    written in the frame header (a lying header), `sized=False` omits it."""
    value = b'"' + b"a" * (text_size - 2) + b'"'
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=sized).compress(value))
    if declared is not None:
        assert frame[4] == 0b10100000  # single segment, 4-byte content size at bytes 5..8
        frame[5:9] = struct.pack("<I", declared)
    return bytes(frame)


def with_fields(**changes: Any) -> bytes:
    fields = raw_fields(record("k", ms=T0))
    names = [
        "format",
        "key",
        "value",
        "compressed",
        "hlc",
        "joined",
        "origin",
        "uuid",
        "expires_at",
        "owner",
        "group",
        "permissions",
        "created_at",
    ]
    for name, value in changes.items():
        fields[names.index(name)] = value
    return msgpack.packb(fields, use_bin_type=True)


BAD_RECORDS = {
    "empty key": with_fields(key=""),
    "empty segment": with_fields(key="a//b"),
    "leading slash": with_fields(key="/a"),
    "dot segment": with_fields(key="a/../b"),
    "NUL in key": with_fields(key="a\x00b"),
    "control character": with_fields(key="a\x1fb"),
    "key over 1024 bytes": with_fields(key="é" * 513),
    "oversize value": with_fields(value=b'"' + b"x" * MAX_VALUE + b'"'),
    "decompression bomb": with_fields(value=compressed_value(8_000_000), compressed=True),
    "compressed, size unknown": with_fields(
        value=compressed_value(100, sized=False), compressed=True
    ),
    "lying frame header": with_fields(value=compressed_value(100_000, 100), compressed=True),
    "not zstd": with_fields(value=b"\x28\xb5\x2f\xfd garbage", compressed=True),
    "invalid JSON": with_fields(value=b"{not json"),
    "not UTF-8": with_fields(value=b'"\xff\xfe"'),
    "empty value": with_fields(value=b""),
    "garbage bytes": b"\x93garbage",
    "no bytes": b"",
    "msgpack, not a record": msgpack.packb({"key": "k"}),
    "unknown format": with_fields(format=2),
    "12 fields": msgpack.packb(raw_fields(record("k"))[:12]),
    "hlc as a string": with_fields(hlc="1"),
    "negative hlc": with_fields(hlc=-1),
    "hlc over 63 bits": with_fields(hlc=2**64 - 1),
    "negative joined": with_fields(joined=-5),
    "joined over 63 bits": with_fields(joined=2**63),
    "negative expiry": with_fields(expires_at=-1),
    "expiry over 63 bits": with_fields(expires_at=2**64 - 1),
    "permissions over 12 bits": with_fields(permissions=0x1000),
    "negative created_at": with_fields(created_at=-1),
    # A bool passes the codec as an int; stored as sent, it went out in our summaries, which
    # every peer refuses: each exchange of its leaf then failed, for good.
    "hlc as a bool": with_fields(hlc=True),
    "joined as a bool": with_fields(joined=False),
    "expiry as a bool": with_fields(expires_at=True),
    "permissions as a bool": with_fields(permissions=True),
    "created_at as a bool": with_fields(created_at=True),
    "origin over 256 characters": with_fields(origin="o" * 257),
    "uuid over 256 characters": with_fields(uuid="u" * 257),
    "owner over 256 characters": with_fields(owner="x" * 10_000),
    "group over 256 characters": with_fields(group="g" * 257),
}


@pytest.mark.parametrize("raw", BAD_RECORDS.values(), ids=list(BAD_RECORDS))
async def test_accept_refuses_a_bad_record_and_writes_nothing(tmp_path: Path, raw: bytes) -> None:
    async with open_replica(tmp_path, max_json_size=MAX_VALUE) as replica:
        good = encode(record("good"))
        with pytest.raises(p.ProtocolError) as caught:
            await replica.worker.accept([good, raw, good])  # the good ones are not taken either
        assert caught.value.reason == "bad_record"
        assert nothing_written(replica)


async def test_accept_takes_values_up_to_the_size_limit(tmp_path: Path) -> None:
    async with open_replica(tmp_path, max_json_size=MAX_VALUE) as replica:
        at_limit = b'"' + b"x" * (MAX_VALUE - 2) + b'"'
        big = record("big", at_limit)
        packed = with_fields(key="packed", value=compressed_value(MAX_VALUE), compressed=True)
        assert await replica.worker.accept([encode(big), packed]) == 2
        assert replica.store.get("big") == big
        assert replica.store.get("packed").value == compressed_value_text(MAX_VALUE)


def compressed_value_text(size: int) -> bytes:
    return b'"' + b"a" * (size - 2) + b'"'


async def test_accept_merges_winners_and_keeps_local_winners(tmp_path: Path) -> None:
    async with open_replica(tmp_path) as replica:
        mine = [
            record("older-there", ms=T0 + 10, uid="m"),
            record("newer-there", ms=T0, uid="m"),
            record("tie-joined", ms=T0, joined=5, uid="m"),
            record("tie-uuid", ms=T0, joined=5, uid="b"),
            record("deleted-there", ms=T0, uid="m"),
            record("same", ms=T0, uid="same"),
        ]
        await replica.merge(*mine)
        theirs = [
            record("older-there", b'"t"', ms=T0, uid="t"),
            record("newer-there", b'"t"', ms=T0 + 10, uid="t"),
            record("tie-joined", b'"t"', ms=T0, joined=3, uid="a"),  # joined earlier: wins
            record("tie-uuid", b'"t"', ms=T0, joined=5, uid="c"),  # larger uuid: wins
            record("deleted-there", None, ms=T0 + 1, uid="t"),
            record("same", ms=T0, uid="same"),
            record("new", b'"t"', ms=T0 - 10**6, uid="t"),  # absent here: taken however old
        ]
        assert await replica.worker.accept([encode(r) for r in theirs]) == 5
        stored = {key: replica.store.get(key) for key in replica.contents()}
        assert stored["older-there"] == mine[0]
        for r in theirs[1:5] + theirs[6:]:
            assert stored[r.key] == r
        assert stored["deleted-there"].deleted
        assert replica.worker.counters["records_merged"] == 5
        # Idempotent: the same records again change nothing.
        before = replica.contents()
        assert await replica.worker.accept([encode(r) for r in theirs]) == 0
        assert replica.contents() == before
        assert replica.worker.tree.root == rebuilt_root(replica)


def rebuilt_root(replica: Replica) -> int:
    tree = MerkleTree()
    for s in replica.store.iter_summaries():
        tree.toggle(s.key, s.version, s.deleted, adding=True)
    return tree.root


async def test_accept_takes_an_expired_record_as_its_tombstone(tmp_path: Path) -> None:
    """An expired record is never stored live; it still beats older versions (as the tombstone
    every replica turns it into), or a replica that missed it would keep serving an older
    value and sync would spread that back."""
    wall = ManualWallClock(T0 + 60_000)
    async with open_replica(tmp_path, wall=wall) as replica:
        older = record("k", b'"old"', ms=T0, uid="old")
        newer_local = record("kept", b'"newer"', ms=T0 + 50_000, uid="n")
        await replica.merge(older, newer_local)
        expired = record("k", b'"ttl"', ms=T0 + 1000, uid="ttl", expires_at=T0 + 5000)
        expired_new = record("fresh", b'"ttl"', ms=T0 + 1000, uid="f", expires_at=T0 + 5000)
        expired_old = record("kept", b'"ttl"', ms=T0 + 1000, uid="x", expires_at=T0 + 5000)
        assert await replica.worker.accept([encode(expired), encode(expired_new)]) == 2
        assert await replica.worker.accept([encode(expired_old)]) == 0
        assert replica.store.get("k") == expired.expired_tombstone()
        assert replica.store.get("fresh") == expired_new.expired_tombstone()
        assert replica.store.get("kept") == newer_local
        assert replica.store.get_live("k") is None and replica.store.get_live("fresh") is None
        assert replica.worker.counters["expired_as_tombstone"] == 3
        # Not yet expired: stored as it is, and it expires here on time.
        later = record("later", b'"1"', ms=T0 + 59_000, uid="l", expires_at=T0 + 61_000)
        assert await replica.worker.accept([encode(later)]) == 1
        assert replica.store.get_live("later") == later
        wall.advance(1)
        assert replica.store.get_live("later") is None
        assert await replica.store.maintain(tombstone_ttl_ms=10**9) == 1
        assert replica.store.get("later") == later.expired_tombstone()


async def test_accept_skips_tombstones_older_than_tombstone_ttl(tmp_path: Path) -> None:
    wall = ManualWallClock(T0 + 100_000)
    async with open_replica(tmp_path, wall=wall, tombstone_ttl=50.0) as replica:
        old = record("old", None, ms=T0 + 49_000)
        young = record("young", None, ms=T0 + 51_000)
        old_expiry = record("old-ttl", b"1", ms=T0 + 10_000, expires_at=T0 + 20_000)
        assert await replica.worker.accept([encode(old), encode(young), encode(old_expiry)]) == 1
        assert list(replica.contents()) == ["young"]
        assert replica.worker.counters["skipped_old_tombstone"] == 2


async def test_accept_counts_a_peer_far_in_the_future_but_still_takes_its_records(
    tmp_path: Path,
) -> None:
    async with open_replica(tmp_path, max_clock_offset=60.0) as replica:
        future = record("k", b'"future"', ms=T0 + 3_600_000)
        assert await replica.worker.accept([encode(future)]) == 1
        assert replica.worker.counters["clock_offset_exceeded"] == 1
        # The HLC moved past it: a local write afterwards still wins.
        [written] = await replica.store.write([Put("k", b'"local"')])
        assert written.record.version.newer_than(future.version)
        [deleted] = await replica.store.write([Delete("k")])
        assert deleted.record.deleted


# --- arbitrary requests at the server's dispatcher ------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    obj=st.one_of(
        msgpack_values,
        st.fixed_dictionaries(
            {"op": st.sampled_from(["root", "children", "leaves", "fetch", "push", "x"])},
            optional={
                "nodes": msgpack_values,
                "leaves": msgpack_values,
                "keys": msgpack_values,
                "records": st.lists(st.binary(max_size=40) | msgpack_values, max_size=4),
            },
        ),
    )
)
def test_the_dispatcher_answers_or_raises_protocol_error_never_anything_else(obj: Any) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as base:
            async with open_replica(Path(base)) as replica:
                await replica.merge(record("k"))
                before = replica.contents()
                try:
                    reply = await replica.worker.server.answer(obj)
                except p.ProtocolError:
                    return
                assert isinstance(reply, dict)
                msgpack.packb(reply)
                assert replica.contents() == before  # arbitrary bytes never make a record

    trio.run(main)


# --- the server over a stream --------------------------------------------------------------------


async def closed_by_server(stream: trio.abc.Stream) -> float:
    """Read until the server closes; returns when (simulated seconds)."""
    while True:
        try:
            if not await stream.receive_some(65536):
                return trio.current_time()
        except trio.BrokenResourceError:
            return trio.current_time()


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


HANDSHAKE_GARBAGE = {
    "http request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "oversize"),
    "4 GB frame": (b"\xff\xff\xff\xff", "oversize"),
    "not msgpack": (frame(b"\xc1\xc1\xc1"), "malformed"),
    "msgpack, not a hello": (frame(msgpack.packb([1, 2, 3])), "magic"),
    "truncated frame": (struct.pack(">I", 100) + b"x" * 10, "short"),
    "nothing": (b"", "closed"),
}


@pytest.mark.parametrize(
    ("data", "reason"), HANDSHAKE_GARBAGE.values(), ids=list(HANDSHAKE_GARBAGE)
)
async def test_garbage_before_the_handshake_is_dropped_and_counted(
    tmp_path: Path, data: bytes, reason: str, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        await replica.merge(record("k"))
        before = replica.contents()
        stream = await connect(transport)
        await stream.send_all(data)
        await stream.send_eof()  # type: ignore[attr-defined]
        await closed_by_server(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert replica.worker.counters[f"dropped_{reason}"] == 1
        assert replica.contents() == before
        await still_serving(transport, replica)


async def test_a_wrong_or_missing_secret_fails_the_handshake(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        await replica.merge(record("k"))
        with pytest.raises(WireError) as caught:
            await session(transport, secret="not-the-cluster-secret")
        assert caught.value.reason == "auth"
        stream = await connect(transport)
        with pytest.raises(WireError):
            await FrameStream.client(stream, None, purpose="sync", nonce=b"n" * 16)
        await trio.testing.wait_all_tasks_blocked()
        assert replica.worker.counters["dropped_auth"] == 2
        await still_serving(transport, replica)


async def test_a_frame_with_a_forged_tag_is_dropped(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        await replica.merge(record("k"))
        frames = await session(transport)
        push = msgpack.packb({"op": "push", "records": [encode(record("evil"))]})
        await frames.stream.send_all(frame(b"\x00" * 16 + push))
        await closed_by_server(frames.stream)
        await trio.testing.wait_all_tasks_blocked()
        assert replica.worker.counters["dropped_auth"] == 1
        assert list(replica.contents()) == ["k"]
        await still_serving(transport, replica)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff\xff", "oversize"),  # claims 4 GB: refused before reading any of it
        (struct.pack(">I", MAX_FRAME_BYTES + 1), "oversize"),
        (struct.pack(">I", 10) + b"\x00" * 10, "short"),  # shorter than its tag
        (struct.pack(">I", 1000) + b"x" * 50, "short"),  # then EOF inside the frame
    ],
)
async def test_bad_frames_after_the_handshake_are_dropped(
    tmp_path: Path, data: bytes, reason: str, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        await replica.merge(record("k"))
        frames = await session(transport)
        await frames.stream.send_all(data)
        await frames.stream.send_eof()  # type: ignore[attr-defined]
        await closed_by_server(frames.stream)
        await trio.testing.wait_all_tasks_blocked()
        assert replica.worker.counters[f"dropped_{reason}"] == 1
        assert list(replica.contents()) == ["k"]
        await still_serving(transport, replica)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"op": "format-disk"}, "shape"),
        (["op", "root"], "shape"),
        ({"op": "children", "nodes": [[9, 0]]}, "shape"),
        ({"op": "leaves", "leaves": [1 << 20]}, "shape"),
        ({"op": "fetch", "keys": [None]}, "shape"),
        ({"op": "push", "records": [b"\x93garbage"]}, "bad_record"),
        ({"op": "push", "records": [encode(record("a//b"))]}, "bad_record"),
        ({"op": "push", "records": [with_fields(key="ok", hlc=-1)]}, "bad_record"),
        (
            {"op": "push", "records": [encode(record("fine")), with_fields(value=b"{")]},
            "bad_record",
        ),
    ],
)
async def test_authenticated_nonsense_is_dropped_and_writes_nothing(
    tmp_path: Path, request_: Any, reason: str, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        await replica.merge(record("k"))
        root = replica.worker.tree.root
        frames = await session(transport)
        await frames.send(request_)
        with pytest.raises((trio.EndOfChannel, WireError)):
            await frames.receive()
        await trio.testing.wait_all_tasks_blocked()
        assert replica.worker.counters[f"dropped_{reason}"] == 1
        assert list(replica.contents()) == ["k"] and replica.worker.tree.root == root
        await still_serving(transport, replica)


async def test_slow_loris_peers_are_dropped_while_others_are_served(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        await replica.merge(record("k"))
        drops: dict[str, float] = {}

        async def drip(stream: trio.abc.Stream, data: bytes, interval: float) -> None:
            for byte in data:
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                await trio.sleep(interval)

        async def loris(name: str, authenticated: bool) -> None:
            if authenticated:
                frames = await session(transport)
                stream, data = frames.stream, frame(b"\x00" * 40)
            else:
                stream, data = await connect(transport), frame(b"\x00" * 40)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip, stream, data, 5.0)
                drops[name] = await closed_by_server(stream) - start
                nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loris, "handshake", False)
            nursery.start_soon(loris, "frame", True)
            for _ in range(5):  # meanwhile, honest peers are answered at once
                before = trio.current_time()
                await still_serving(transport, replica)
                assert trio.current_time() == before
                await trio.sleep(3)
        # The handshake must finish within REQUEST_TIMEOUT, and so must a frame once begun
        # (its first byte starts the clock), however long a quiet connection may stay open.
        assert drops["handshake"] <= REQUEST_TIMEOUT + 0.01
        assert drops["frame"] <= REQUEST_TIMEOUT + 0.01
        await trio.testing.wait_all_tasks_blocked()
        assert replica.worker.counters["dropped_timeout"] == 2
        assert replica.worker.counters["dropped_io"] == 0
        assert replica.worker.counters["closed_idle"] == 0
        assert list(replica.contents()) == ["k"]


async def test_an_exchange_still_works_after_every_attack(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with (
        open_replica(tmp_path, name="a", transport=transport, serve=True) as a,
        open_replica(tmp_path, name="b", transport=transport) as b,
    ):
        await a.merge(record("k"), record("only-a", uid="a"))
        await b.merge(record("only-b", uid="b"))
        for data, _ in HANDSHAKE_GARBAGE.values():
            stream = await connect(transport)
            await stream.send_all(data)
            await stream.aclose()
        result = await b.worker.exchange(ADDRESS)
        assert (result.fetched, result.pushed) == (2, 1)
        assert a.contents() == b.contents()
        assert a.worker.tree.root == b.worker.tree.root


async def test_an_idle_connection_is_closed_after_the_idle_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with open_replica(tmp_path, transport=transport, serve=True) as replica:
        frames = await session(transport)
        start = trio.current_time()
        assert math.isclose(await closed_by_server(frames.stream) - start, IDLE_TIMEOUT)
        await trio.testing.wait_all_tasks_blocked()
        # Quiet is not an attack: counted apart from the drops.
        assert replica.worker.counters["closed_idle"] == 1
        assert not [k for k, v in replica.worker.counters.items() if k.startswith("dropped_") and v]


async def test_replies_are_cut_to_fit_a_frame_and_say_how_much_they_cover(
    tmp_path: Path,
) -> None:
    """Values up to the size limit: a fetch of many must not build a frame over the limit."""
    async with open_replica(tmp_path, max_json_size=2 << 20) as replica:
        # 40 values of 1 MiB (hex: about 512 kB each once compressed), ~20 MB in all.
        values = [
            b'"' + random.Random(i).randbytes(1 << 19).hex().encode() + b'"' for i in range(40)
        ]
        await replica.merge(*[record(f"big/{i}", v) for i, v in enumerate(values)])
        keys = [f"big/{i}" for i in range(40)] + ["absent"]
        covered = 0
        rounds = 0
        while covered < len(keys):
            reply = await replica.worker.server.answer({"op": "fetch", "keys": keys[covered:]})
            assert len(msgpack.packb(reply)) < MAX_FRAME_BYTES
            covered += p.decode_count(reply, len(keys) - covered)
            rounds += 1
        assert rounds > 1
        summaries = await replica.worker.server.answer(
            {"op": "leaves", "leaves": list(range(1024))}
        )
        assert p.decode_count(summaries, 1024) == 1024  # small summaries: all in one reply
