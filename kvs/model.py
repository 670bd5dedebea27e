"""The data model: keys, versions, records and the conflict rule.

Pure functions and immutable dataclasses only -- no I/O, no clocks, no randomness -- so that
every replica (and every test) computes exactly the same answers from the same inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol

import msgpack
import orjson
import zstandard

MAX_KEY_BYTES = 1024

# A hybrid-logical-clock reading packs wall milliseconds and a logical counter into one
# integer, so it sorts as a number and fits a fixed-width big-endian index key.
HLC_LOGICAL_BITS = 16
HLC_LOGICAL_MASK = (1 << HLC_LOGICAL_BITS) - 1

DEFAULT_PERMISSIONS = 0xF31  # owner: all, group: write+read, others: read (issue 5)

# Users, groups and token records live under this reserved prefix (a `_` segment no client
# key may have), so sync replicates them like any record; listings and counts hide them.
SYSTEM_PREFIX = "_sys/"

# Values at or below this many bytes are stored raw: zstd's frame header would eat the gain.
COMPRESS_THRESHOLD = 256


class InvalidKey(ValueError):
    """A key that cannot be stored; the message says why, for the client."""


# C0 controls, DEL and the C1 controls (U+0080-U+009F): Unicode category Cc.
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f-\x9f]")


def hlc_pack(ms: int, logical: int = 0) -> int:
    return (ms << HLC_LOGICAL_BITS) | logical


def hlc_ms(hlc: int) -> int:
    return hlc >> HLC_LOGICAL_BITS


def validate_key(key: str, *, allow_reserved: bool = False) -> str:
    """Return the key unchanged if it is storable, else raise InvalidKey saying why.

    Rules: 1..1024 UTF-8 bytes, `/`-separated non-empty segments, no `.`/`..` segments,
    no NUL or control characters, and no segment starting with `_` (reserved for endpoints
    such as `_ls` and for system data) unless `allow_reserved`.
    """
    if not key:
        raise InvalidKey("key is empty")
    if key.isascii():
        # Most keys (measured: half the time of the general checks): an ASCII key's size is
        # its length, and `isprintable` refuses exactly its control characters (C0 and DEL).
        size, printable = len(key), key.isprintable()
    else:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidKey("key is not valid UTF-8") from None
        printable = False  # not decided: the search below decides
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {size} bytes long; the limit is {MAX_KEY_BYTES} UTF-8 bytes")
    control = None if printable else _CONTROL_CHAR.search(key)
    if control is not None:
        raise InvalidKey(f"key contains control character U+{ord(control.group()):04X}")
    if not _may_break_segment_rules(key, allow_reserved):
        return key  # the common case, checked in ~5% of the time the loop below takes
    for index, segment in enumerate(key.split("/")):
        if segment == "":
            raise InvalidKey(
                f"key has an empty segment at position {index} ('a//b', or a leading or trailing '/')"
            )
        if segment in (".", ".."):
            raise InvalidKey(f"key segment {segment!r} is not allowed")
        if segment.startswith("_") and not allow_reserved:
            raise InvalidKey(
                f"key segment {segment!r} is reserved: segments starting with '_' name endpoints and system data"
            )
    return key


def _may_break_segment_rules(key: str, allow_reserved: bool) -> bool:
    """False only if no segment is empty, `.`, `..` or (unless allowed) starts with `_`."""
    if "//" in key or key[0] == "/" or key[-1] == "/" or key[0] == "." or "/." in key:
        return True
    return not allow_reserved and (key[0] == "_" or "/_" in key)


def parse_json_value(body: bytes) -> Any:
    """Parse a client's JSON document; raise ValueError with a client-facing message."""
    if not body or not body.strip():
        raise ValueError("request body is empty; send a JSON document")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ValueError("request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


# Digits as `0`, and `e` and `E` as `.`: the shapes of numbers become short byte patterns,
# which bytes searches find far faster than a regex would.
_NUMBER_SHAPES = bytes.maketrans(b"123456789eE", b"000000000..")
# Types the stdlib cannot serialise (dataclasses, datetimes) must fail as they did, and str, int,
# dict and list subclasses be written as the stdlib writes them: hand all of those to it.
_STDLIB_TYPES_ONLY = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def json_number_shapes(text: bytes) -> tuple[bool, bool]:
    """Whether JSON text may hold a float, and whether it may hold an integer of 19 digits or
    more (one that may not fit in 64 bits). Never falsely False; text inside strings can make
    either True, which only sends the caller down a slower path."""
    shaped = text.translate(_NUMBER_SHAPES)
    # A float has a `.` or an exponent right after a digit; an integer is a run of digits.
    return b"0." in shaped, b"0" * 19 in shaped


def canonical_json(value: Any, *, may_hold_floats: bool = True) -> bytes:
    """The bytes we store for a JSON value: compact, so equal documents cost the same.

    Always the stdlib's `json.dumps(value, separators=(",", ":"), ensure_ascii=False)`, UTF-8
    encoded. orjson writes exactly those bytes ~30x faster, except that it spells some floats
    differently (`1e-7` for `1e-07`) and refuses integers beyond 64 bits, nesting deeper than
    254 and lone surrogates; all of those go to the stdlib. `may_hold_floats=False` (the
    caller knows, say from the JSON text it parsed) spares looking for floats."""
    try:
        fast = orjson.dumps(value, option=_STDLIB_TYPES_ONLY)
    except TypeError:  # orjson.JSONEncodeError
        fast = None
    if fast is not None and not (may_hold_floats and json_number_shapes(fast)[0]):
        # orjson's bytes keep the whole buffer it grew while writing (measured: 260 KB of
        # allocation for a 29 KB string, 66 MB for 1 MB of floats); a value that outlives
        # this call (a batch holds up to 1,000) is copied to its exact size.
        return fast if len(fast) < 1024 else memoryview(fast).tobytes()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Filed(Protocol):
    """What the read rule needs of a record: a Record, or a RecordHead of a listing."""

    @property
    def key(self) -> str: ...

    @property
    def owner(self) -> str: ...

    @property
    def group(self) -> str: ...

    @property
    def permissions(self) -> int: ...


# Version and Record are immutable by convention, not `frozen`: a frozen dataclass costs
# ~0.5 µs more to construct (measured: 730 vs 206 ns for Version), and every read decodes a
# Record and every write builds both. `unsafe_hash` keeps them hashable by value.
@dataclass(slots=True, unsafe_hash=True)
class Version:
    """Identifies one write. Ordered by `resolve`'s rule (see `Version.order_key`)."""

    hlc: int
    origin_joined: int  # joined_timestamp (ms) of the node that made the write
    origin: str  # that node's id: informational, not part of the order
    uuid: str

    @property
    def timestamp(self) -> int:
        """Milliseconds since the epoch, as the API reports it."""
        return hlc_ms(self.hlc)

    def order_key(self) -> tuple[int, int, str, str]:
        # Newer HLC wins; on equal HLC the earliest-joined node wins; then the larger UUID;
        # then the origin's id, so that even a duplicated UUID cannot make the order partial.
        return (self.hlc, -self.origin_joined, self.uuid, self.origin)

    def newer_than(self, other: Version) -> bool:
        return self.order_key() > other.order_key()


@dataclass(slots=True, unsafe_hash=True)
class Record:
    """One key's current (or historic) state; `value is None` means a tombstone."""

    key: str
    value: bytes | None  # the JSON document's bytes, uncompressed
    version: Version
    expires_at: int | None = None  # absolute ms since the epoch
    owner: str = ""
    group: str = ""
    permissions: int = DEFAULT_PERMISSIONS
    created_at: int = 0  # ms; when the key was first written (survives updates)

    @property
    def deleted(self) -> bool:
        return self.value is None

    def expired(self, now_ms: int) -> bool:
        return self.expires_at is not None and self.expires_at <= now_ms

    def live(self, now_ms: int) -> bool:
        """True when a read should see this record."""
        return self.value is not None and not self.expired(now_ms)

    def data(self) -> Any:
        assert self.value is not None
        return json.loads(self.value)

    def with_version(self, version: Version) -> Record:
        return replace(self, version=version)

    def expired_tombstone(self) -> Record:
        """The tombstone an expired record becomes, with the same version. Every replica
        turns it into exactly this (the sweep, or `accept` for one that arrives expired), so
        the expiry keeps beating the older versions a lagging replica may still hold, until
        it is collected after `tombstone_ttl` like a delete."""
        return replace(self, value=None, expires_at=None)


def resolve(a: Record, b: Record) -> Record:
    """The winner of two versions of the same key: a total order, so merge order never matters."""
    return a if a.version.order_key() >= b.version.order_key() else b


# --- encoding -------------------------------------------------------------------------------
# A record is stored as a msgpack array; the value is zstd-compressed when that pays off.
# Field 0 is a format number so the layout can evolve without a migration of old data.

_FORMAT = 1
_FIELD_TYPES: tuple[type | tuple[type, ...], ...] = (
    int,  # format
    str,  # key
    (bytes, type(None)),  # value
    bool,  # compressed
    int,  # hlc
    int,  # origin_joined
    str,  # origin
    str,  # uuid
    (int, type(None)),  # expires_at
    str,  # owner
    str,  # group
    int,  # permissions
    int,  # created_at
)


class RecordCodec:
    """Encodes and decodes records. zstd contexts are not thread-safe: one codec per thread."""

    def __init__(self, compression_level: int = 3) -> None:
        self._compressor = zstandard.ZstdCompressor(level=compression_level)
        self._decompressor = zstandard.ZstdDecompressor()
        # msgpack.packb builds a Packer per call; reusing one halves the cost of an encode.
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, record: Record) -> bytes:
        value = record.value
        compressed = False
        if value is not None and len(value) > COMPRESS_THRESHOLD:
            packed = self._compressor.compress(value)
            if len(packed) < len(value):
                value, compressed = packed, True
        v = record.version
        return self._packer.pack(
            [
                _FORMAT,
                record.key,
                value,
                compressed,
                v.hlc,
                v.origin_joined,
                v.origin,
                v.uuid,
                record.expires_at,
                record.owner,
                record.group,
                record.permissions,
                record.created_at,
            ]
        )

    def decode(self, raw: bytes, *, max_value_size: int | None = None) -> Record:
        """Raises ValueError for anything that is not a record we encoded (corrupt or foreign
        bytes), never a record with fields of the wrong type. `max_value_size` bounds what a
        compressed value may expand to (records from peers: no decompression bombs)."""
        try:
            fields = msgpack.unpackb(raw, raw=False)
        except ValueError as exc:  # msgpack's errors (and UnicodeDecodeError) are ValueErrors
            raise ValueError(f"record is not valid msgpack: {exc}") from None
        if not isinstance(fields, list) or len(fields) != 13 or fields[0] != _FORMAT:
            raise ValueError("unknown record format")
        if not all(map(isinstance, fields, _FIELD_TYPES)):  # both of length 13
            raise ValueError("record has a field of the wrong type")
        (
            _,
            key,
            value,
            compressed,
            hlc,
            joined,
            origin,
            uid,
            expires_at,
            owner,
            group,
            perms,
            created,
        ) = fields
        if compressed and value is not None:
            if max_value_size is not None:
                try:
                    declared = zstandard.frame_content_size(value)
                except zstandard.ZstdError:
                    declared = -1
                if declared < 0 or declared > max_value_size:
                    raise ValueError("record value is too large or of unknown size")
            try:
                value = self._decompressor.decompress(value)
            except zstandard.ZstdError as exc:
                raise ValueError(f"record value does not decompress: {exc}") from None
        if max_value_size is not None and value is not None and len(value) > max_value_size:
            raise ValueError("record value is too large")
        # Positional: keyword arguments cost a quarter more, and this runs for every read.
        version = Version(hlc, joined, origin, uid)
        return Record(key, value, version, expires_at, owner, group, perms, created)

    @staticmethod
    def decode_head(raw: bytes) -> RecordHead:
        """What a listing filters on (key, liveness, owner, group, bits), without the value
        or the version: a third of `decode`'s cost (a 99,000-child `_ls` decodes each child
        to count it). Raises ValueError as `decode` does for the fields it reads."""
        try:
            fields = msgpack.unpackb(raw, raw=False)
        except ValueError as exc:
            raise ValueError(f"record is not valid msgpack: {exc}") from None
        if not isinstance(fields, list) or len(fields) != 13 or fields[0] != _FORMAT:
            raise ValueError("unknown record format")
        head = RecordHead(
            fields[1], fields[2] is None, fields[8], fields[9], fields[10], fields[11]
        )
        if not all(map(isinstance, head, _HEAD_TYPES)):
            raise ValueError("record has a field of the wrong type")
        return head


class RecordHead(NamedTuple):
    """A record's key, whether it is a tombstone, its expiry and its owner, group and
    permission bits: what `live` and the read rule (kvs/auth/permissions.py) look at."""

    key: str
    deleted: bool
    expires_at: int | None
    owner: str
    group: str
    permissions: int

    def live(self, now_ms: int) -> bool:
        return not self.deleted and (self.expires_at is None or self.expires_at > now_ms)


_HEAD_TYPES = (str, bool, (int, type(None)), str, str, int)


def parse_duration(value: Any, *, what: str = "duration") -> float:
    """Seconds from a number of seconds or a string like `500ms`, `30s`, `5m`, `24h`, `7d`.

    Raises ValueError with a message naming the accepted forms. Negative values are refused.
    """
    if isinstance(value, bool):
        raise ValueError(
            f"{what} must be a number of seconds or a string like '30s', not a boolean"
        )
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float: not finite either
            seconds = float("inf")
    elif isinstance(value, str):
        text = value.strip().lower()
        units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0))
        seconds = None
        for suffix, scale in units:
            if text.endswith(suffix):
                number = text[: -len(suffix)].strip()
                # "5m" must not be read as "5" + "m" when the text is "5ms": ms is tried first.
                try:
                    seconds = float(number) * scale
                except ValueError:
                    seconds = None
                break
        if seconds is None:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(
                    f"{what} {value!r} is not a duration: use seconds (30) or a number with a unit ms, s, m, h or d (500ms, 30s, 5m, 24h)"
                ) from None
    else:
        raise ValueError(f"{what} must be a number of seconds or a string like '30s'")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{what} {value!r} is not a finite duration")
    if seconds < 0:
        raise ValueError(f"{what} {value!r} is negative")
    return seconds
