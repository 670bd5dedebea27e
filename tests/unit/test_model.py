"""kvs.model: key rules, the version order (resolve), the record codec, durations, HLC packing."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs.model import (
    COMPRESS_THRESHOLD,
    DEFAULT_PERMISSIONS,
    HLC_LOGICAL_BITS,
    HLC_LOGICAL_MASK,
    MAX_KEY_BYTES,
    InvalidKey,
    Record,
    RecordCodec,
    Version,
    canonical_json,
    hlc_ms,
    hlc_pack,
    parse_duration,
    parse_json_value,
    resolve,
    validate_key,
)

# --- validate_key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "home/room/closet/socks",
        "a.b/c..d/...",  # dots inside a segment, or three of them, are fine
        "a_b/c_",  # '_' is reserved only at the start of a segment
        "x" * MAX_KEY_BYTES,
        "é" * (MAX_KEY_BYTES // 2),  # 2 bytes each: exactly the limit
        "日本/語/🧦",
        "with space/and-dash/under_score/tilde~/bang!",
        "a\u00a0b",  # no-break space is not a control character
    ],
)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) is key


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("x" * (MAX_KEY_BYTES + 1), "1025 bytes"),
        ("é" * (MAX_KEY_BYTES // 2) + "x", "1025 bytes"),  # 1024 chars' worth + 1 byte
        ("é" * (MAX_KEY_BYTES // 2 + 1), "1026 bytes"),
        ("🧦" * 256 + "x", "1025 bytes"),  # 4-byte characters: 257 characters, 1025 bytes
        ("a//b", "empty segment at position 1"),
        ("/a", "empty segment at position 0"),
        ("a/", "empty segment at position 1"),
        ("/", "empty segment"),
        ("a/./b", "'.'"),
        ("a/../b", "'..'"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a/..", "'..'"),
        ("a\x00b", "U+0000"),
        ("a\nb", "U+000A"),
        ("a\tb", "U+0009"),
        ("a\rb", "U+000D"),
        ("a\x1fb", "U+001F"),
        ("a\x7fb", "U+007F"),
        ("a\x85b", "U+0085"),  # C1 control (NEL)
        ("a\x9fb", "U+009F"),
        ("_ls", "reserved"),
        ("a/_tree", "reserved"),
        ("a/_b/c", "reserved"),
        ("a\ud800b", "UTF-8"),  # a lone surrogate cannot be encoded
    ],
)
def test_invalid_keys_say_why(key: str, fragment: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)  # callers may catch ValueError


def test_key_length_boundary_is_counted_in_utf8_bytes() -> None:
    # 1023 ASCII bytes + a 2-byte character = 1025 bytes, though only 1024 characters.
    key = "x" * 1023 + "é"
    assert len(key) == MAX_KEY_BYTES
    with pytest.raises(InvalidKey, match="1025 bytes"):
        validate_key(key)
    assert validate_key("x" * 1022 + "é") == "x" * 1022 + "é"


def test_reserved_segments_allowed_on_request() -> None:
    assert validate_key("_system/users/alice", allow_reserved=True) == "_system/users/alice"
    assert validate_key("a/_b", allow_reserved=True) == "a/_b"
    # allow_reserved does not relax any other rule
    for bad in ("_a//b", "_a/..", "_a\x00"):
        with pytest.raises(InvalidKey):
            validate_key(bad, allow_reserved=True)


segment_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and not s.startswith("_"))


@settings(max_examples=100, deadline=None)
@given(st.lists(segment_text, min_size=1, max_size=6))
def test_any_well_formed_unicode_key_is_valid(segments: list[str]) -> None:
    key = "/".join(segments)
    if len(key.encode()) <= MAX_KEY_BYTES:
        assert validate_key(key) == key


# --- HLC packing -----------------------------------------------------------------------------


@given(st.integers(0, 2**47), st.integers(0, HLC_LOGICAL_MASK))
def test_hlc_pack_round_trip(ms: int, logical: int) -> None:
    packed = hlc_pack(ms, logical)
    assert hlc_ms(packed) == ms
    assert packed & HLC_LOGICAL_MASK == logical
    assert hlc_pack(ms) == ms << HLC_LOGICAL_BITS


@given(
    st.tuples(st.integers(0, 2**47), st.integers(0, HLC_LOGICAL_MASK)),
    st.tuples(st.integers(0, 2**47), st.integers(0, HLC_LOGICAL_MASK)),
)
def test_hlc_pack_sorts_like_ms_then_logical(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (hlc_pack(*a) < hlc_pack(*b)) == (a < b)


def test_hlc_packed_reading_fits_the_u64_index_for_millennia() -> None:
    year_3000_ms = 32_503_680_000_000
    assert hlc_pack(year_3000_ms, HLC_LOGICAL_MASK) < 2**64


# --- Version order and resolve ---------------------------------------------------------------


def make_version(hlc: int, joined: int = 1, uid: str = "u", origin: str | None = None) -> Version:
    return Version(hlc=hlc, origin_joined=joined, origin=origin or f"node-{joined}", uuid=uid)


def record_for(version: Version, key: str = "k") -> Record:
    """A record whose content is a function of its version: one write, one record."""
    value = None if version.uuid.endswith("0") else canonical_json({"w": version.uuid})
    return Record(key=key, value=value, version=version)


# Small ranges force plenty of ties on hlc and origin_joined. A node's id is a function of its
# joined timestamp (a node has one of each), and a uuid is unique per write.
versions = st.builds(
    make_version,
    hlc=st.integers(0, 3),
    joined=st.integers(0, 3),
    uid=st.sampled_from(["u0", "u1", "u2", "u3", "ua", "uf"]),
)
records = versions.map(record_for)


def le(a: Record, b: Record) -> bool:
    """a <= b in resolve's order: b wins (or they are the same write)."""
    return resolve(a, b) == b


def test_newer_hlc_wins_regardless_of_origin_and_uuid() -> None:
    old = record_for(make_version(hlc_pack(100, 5), joined=1, uid="zzzz"))
    new = record_for(make_version(hlc_pack(100, 6), joined=999, uid="aaaa"))
    assert resolve(old, new) is new
    assert resolve(new, old) is new
    assert new.version.newer_than(old.version)
    assert not old.version.newer_than(new.version)


def test_equal_hlc_earliest_joined_node_wins() -> None:
    early = record_for(make_version(500, joined=10, uid="aaaa"))
    late = record_for(make_version(500, joined=20, uid="zzzz"))
    assert resolve(early, late) is early
    assert resolve(late, early) is early


def test_equal_hlc_and_joined_larger_uuid_wins() -> None:
    small = record_for(make_version(500, joined=10, uid="0a"))
    large = record_for(make_version(500, joined=10, uid="0b"))
    assert resolve(small, large) is large
    assert resolve(large, small) is large


def test_origin_breaks_a_tie_of_everything_else() -> None:
    # Even a duplicated UUID (two nodes seeded alike) cannot make the order partial.
    a = make_version(500, joined=10, uid="u", origin="zzz")
    b = make_version(500, joined=10, uid="u", origin="aaa")
    assert a.newer_than(b) and not b.newer_than(a)
    assert resolve(record_for(a), record_for(b)).version is a


def test_tombstones_take_part_in_the_same_order() -> None:
    write = Record("k", b"1", make_version(10, uid="a"))
    delete = Record("k", None, make_version(11, uid="b"))
    assert resolve(write, delete) is delete
    assert resolve(delete, write) is delete
    assert resolve(delete, write).deleted
    rewrite = Record("k", b"2", make_version(12, uid="c"))
    assert resolve(delete, rewrite) is rewrite


def test_version_timestamp_is_the_hlc_milliseconds() -> None:
    assert make_version(hlc_pack(1_700_000_000_123, 42)).timestamp == 1_700_000_000_123


@settings(max_examples=150)
@given(records, records)
def test_resolve_is_total_and_commutative(a: Record, b: Record) -> None:
    winner = resolve(a, b)
    assert winner in (a, b)
    assert resolve(b, a) == winner
    assert le(a, b) or le(b, a)
    assert winner.version.order_key() == max(a.version.order_key(), b.version.order_key())


@settings(max_examples=150)
@given(records, records)
def test_resolve_order_is_antisymmetric(a: Record, b: Record) -> None:
    if le(a, b) and le(b, a):
        assert a == b


@settings(max_examples=150)
@given(records, records, records)
def test_resolve_order_is_transitive(a: Record, b: Record, c: Record) -> None:
    if le(a, b) and le(b, c):
        assert le(a, c)


@settings(max_examples=150)
@given(records, records, records)
def test_resolve_is_associative(a: Record, b: Record, c: Record) -> None:
    assert resolve(resolve(a, b), c) == resolve(a, resolve(b, c))


@settings(max_examples=100)
@given(records, records)
def test_resolve_is_idempotent(a: Record, b: Record) -> None:
    assert resolve(a, a) == a
    winner = resolve(a, b)
    assert resolve(winner, a) == winner
    assert resolve(winner, b) == winner
    assert resolve(winner, winner) == winner


@settings(max_examples=100)
@given(st.lists(records, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_merging_in_any_order_picks_the_same_winner(
    history: list[Record], rnd: random.Random
) -> None:
    expected = functools.reduce(resolve, history)
    for _ in range(4):
        shuffled = history[:]
        rnd.shuffle(shuffled)
        assert functools.reduce(resolve, shuffled) == expected
        # and merging a replica's state into another in halves converges too
        cut = rnd.randrange(len(shuffled) + 1)
        left, right = shuffled[:cut], shuffled[cut:]
        if left and right:
            merged = resolve(functools.reduce(resolve, left), functools.reduce(resolve, right))
            assert merged == expected
    assert expected.version.order_key() == max(r.version.order_key() for r in history)


@settings(max_examples=100)
@given(versions, versions)
def test_newer_than_matches_resolve(a: Version, b: Version) -> None:
    ra, rb = record_for(a), record_for(b)
    if a.newer_than(b):
        assert resolve(ra, rb) == ra and resolve(rb, ra) == ra
    if not a.newer_than(b) and not b.newer_than(a):
        assert a == b


# --- Record ------------------------------------------------------------------------------------


def test_record_liveness_and_expiry() -> None:
    v = make_version(1)
    assert Record("k", b"1", v).live(0)
    assert not Record("k", None, v).live(0)
    assert Record("k", None, v).deleted
    ttl = Record("k", b"1", v, expires_at=1000)
    assert ttl.live(999) and not ttl.expired(999)
    assert not ttl.live(1000) and ttl.expired(1000)  # expires_at is the first dead millisecond
    assert Record("k", b'{"a": [1, 2]}', v).data() == {"a": [1, 2]}
    assert Record("k", b"1", v).with_version(make_version(2)).version.hlc == 2


def test_parse_json_value_errors_are_client_facing() -> None:
    assert parse_json_value(b' {"a": 1} ') == {"a": 1}
    assert parse_json_value(b"null") is None
    for body, fragment in ((b"", "empty"), (b"  \n", "empty"), (b"{", "not valid JSON")):
        with pytest.raises(ValueError, match=fragment):
            parse_json_value(body)
    with pytest.raises(ValueError, match="UTF-8"):
        parse_json_value(b'"\xff"')


def test_canonical_json_is_compact_and_keeps_unicode() -> None:
    assert canonical_json({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'.encode()


# --- RecordCodec -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
).map(canonical_json)
compressible = st.builds(
    lambda unit, times: unit * times,
    st.binary(min_size=1, max_size=16),
    st.integers(COMPRESS_THRESHOLD + 1, 4000),
)
values = st.none() | st.binary(max_size=600) | json_values | compressible
codec_records = st.builds(
    Record,
    key=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    value=values,
    version=st.builds(
        Version,
        hlc=st.integers(0, 2**64 - 1),
        origin_joined=st.integers(0, 2**63 - 1),
        origin=st.text(max_size=20),
        uuid=st.text(max_size=40),
    ),
    expires_at=st.none() | st.integers(0, 2**63 - 1),
    owner=st.text(max_size=10),
    group=st.text(max_size=10),
    permissions=st.integers(0, 0xFFF),
    created_at=st.integers(0, 2**63 - 1),
)


@settings(max_examples=150, deadline=None)
@given(codec_records)
def test_codec_round_trip(record: Record) -> None:
    codec = RecordCodec()
    assert codec.decode(codec.encode(record)) == record
    # a second codec (another thread's) reads it too
    assert RecordCodec(compression_level=19).decode(codec.encode(record)) == record


def test_codec_round_trip_defaults_and_tombstone() -> None:
    codec = RecordCodec()
    live = Record("a/b", b'{"x":1}', make_version(hlc_pack(5, 1)))
    assert codec.decode(codec.encode(live)) == live
    assert codec.decode(codec.encode(live)).permissions == DEFAULT_PERMISSIONS
    tomb = Record("a/b", None, make_version(hlc_pack(6)), expires_at=None, created_at=5)
    decoded = codec.decode(codec.encode(tomb))
    assert decoded == tomb and decoded.deleted and decoded.value is None


def test_large_compressible_values_are_stored_smaller() -> None:
    codec = RecordCodec()
    value = canonical_json({"text": "the same sentence again. " * 400})
    assert len(value) > 10_000
    raw = codec.encode(Record("k", value, make_version(1)))
    assert len(raw) < len(value) // 10
    assert codec.decode(raw).value == value


@settings(max_examples=100, deadline=None)
@given(compressible, st.text(min_size=1, max_size=30))
def test_compressible_values_above_the_threshold_are_stored_smaller(value: bytes, key: str) -> None:
    assert len(value) > COMPRESS_THRESHOLD
    codec = RecordCodec()
    raw = codec.encode(Record(key, value, make_version(1)))
    assert len(raw) < len(value)
    assert codec.decode(raw).value == value


def test_small_values_are_stored_raw() -> None:
    codec = RecordCodec()
    value = b'"' + b"a" * (COMPRESS_THRESHOLD - 2) + b'"'
    assert len(value) == COMPRESS_THRESHOLD
    assert value in codec.encode(Record("k", value, make_version(1)))


def test_incompressible_large_values_are_stored_raw_and_round_trip() -> None:
    codec = RecordCodec()
    value = random.Random(7).randbytes(5000)
    raw = codec.encode(Record("k", value, make_version(1)))
    assert value in raw
    assert codec.decode(raw).value == value


def _fields(**changes: object) -> list[object]:
    fields: list[object] = [1, "k", b"v", False, 1, 2, "o", "u", None, "", "", 0, 0]
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
    return fields


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"garbage",
        b"\x92\x01",  # truncated array
        msgpack.packb({"a": 1}),
        msgpack.packb([1, 2, 3]),
        msgpack.packb(_fields(format=2)),
        msgpack.packb(_fields()[:-1]),
        b"\xa3\xff\xfe\xfd",  # a str that is not UTF-8
        msgpack.packb(_fields(compressed=True, value=b"not zstd")),
        msgpack.packb(_fields(key=None)),
        msgpack.packb(_fields(key=b"bytes")),
        msgpack.packb(_fields(value="text")),
        msgpack.packb(_fields(hlc="1")),
        msgpack.packb(_fields(joined=None)),
        msgpack.packb(_fields(uuid=5)),
        msgpack.packb(_fields(expires_at="soon")),
        msgpack.packb(_fields(permissions=None)),
    ],
    ids=lambda raw: raw[:16].hex() or "empty",
)
def test_decode_of_garbage_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        RecordCodec().decode(raw)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_decode_of_random_bytes_raises_only_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        RecordCodec().decode(raw)


# --- parse_duration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("30", 30.0),
        ("0.25", 0.25),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("7d", 7 * 86400.0),
        ("1.5h", 5400.0),
        ("  10s  ", 10.0),
        ("10 s", 10.0),
        ("5MS", 0.005),
        ("2M", 120.0),
        ("0s", 0.0),
        ("1e3ms", 1.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "negative"),
        (-0.5, "negative"),
        ("-5s", "negative"),
        ("-1", "negative"),
        ("", "not a duration"),
        ("   ", "not a duration"),
        ("abc", "not a duration"),
        ("ms", "not a duration"),
        ("s", "not a duration"),
        ("10 minutes", "not a duration"),
        ("5x", "not a duration"),
        ("1h30m", "not a duration"),
        (True, "boolean"),
        (False, "boolean"),
        (None, "number of seconds"),
        ([1], "number of seconds"),
        ({"s": 1}, "number of seconds"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (math.nan, "finite"),
        ("inf", "finite"),
        ("nan", "finite"),
        ("infs", "finite"),
        ("1e400s", "finite"),
        pytest.param(10**400, "finite", id="int-too-large-for-a-float"),
    ],
)
def test_parse_duration_refuses(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_duration(value)


def test_parse_duration_names_what_it_parses() -> None:
    with pytest.raises(ValueError, match="^tombstone_ttl 'soon' is not a duration"):
        parse_duration("soon", what="tombstone_ttl")


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_parse_duration_of_a_number_string_with_units(seconds: float) -> None:
    text = repr(seconds)
    assert parse_duration(text + "s") == pytest.approx(seconds)
    assert parse_duration(text + "ms") == pytest.approx(seconds / 1000)
    assert parse_duration(text + "m") == pytest.approx(seconds * 60)
    assert parse_duration(json.dumps(seconds)) == pytest.approx(seconds)
