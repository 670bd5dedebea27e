"""The wire codec: membership messages as authenticated msgpack datagrams, and framed streams.

Everything a peer sends passes through here before the rest of KVS sees it, so decoding is
strict: sizes are checked before parsing, the HMAC before msgpack, and every field after
it. Anything we refuse raises `WireError` whose `reason` is one short label from `REASONS`,
fit to be a counter name, and whose message never carries peer bytes or key material.

Datagram layout (UDP, at most `MAX_DATAGRAM_BYTES`):

    magic "KV" (2) | version (1; high bit set = tagged) | [tag (16)] | msgpack payload

The payload is a list of 1..64 messages, each a compact array `[kind, fields...]`; the tag is
HMAC-SHA256(key, magic + version + payload) truncated to 16 bytes. The "tagged" bit lets a
receiver tell "no tag" from "bad tag" so that both show up as "auth".

Stream layout (TCP): frames of `length (4, big-endian) | body`. A session starts with a
handshake (see `FrameStream`); once keyed, each body is `tag (16) | msgpack payload` with
tag = HMAC-SHA256(session_key, direction + seq + payload), so a frame cannot be replayed,
reordered, or reflected back to its sender.

Nothing here reads a clock (beyond Trio's deadlines), a socket, or an entropy source: nonces
are passed in, so the deterministic simulator controls every byte.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final, NoReturn

import msgpack
import trio

from kvs.net.messages import (
    MAX_INCARNATION,
    MAX_MEMBERS,
    MAX_UINT,
    Ack,
    Address,
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

__all__ = [
    "FRAME_TIMEOUT",
    "MAX_DATAGRAM_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_MEMBERS",
    "MAX_HOST_LEN",
    "MAX_INCARNATION",
    "MAX_MESSAGES",
    "MAX_NODE_ID_LEN",
    "MAX_UINT",
    "NONCE_BYTES",
    "REASONS",
    "TAG_BYTES",
    "VERSION",
    "DatagramCodec",
    "FrameStream",
    "WireError",
    "decode_push_pull",
    "derive_key",
    "encode_push_pull",
]

VERSION: Final = 1
MAGIC: Final = b"KV"
TAG_BYTES: Final = 16  # truncated HMAC-SHA256: 128 bits is plenty against forgery
NONCE_BYTES: Final = 16
MAX_DATAGRAM_BYTES: Final = 1400  # below any sane path MTU, so datagrams never fragment
MAX_MESSAGES: Final = 64  # per datagram: keeps compound messages far below any limit
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
FRAME_TIMEOUT: Final = 10.0  # seconds to read or write one frame

MAX_NODE_ID_LEN: Final = 64
MAX_HOST_LEN: Final = 253  # the longest DNS name (RFC 1035), and far more than any IP literal
# Bounds of numbers (MAX_UINT, MAX_INCARNATION, MAX_MEMBERS) live in kvs.net.messages, where
# the SWIM core reads them too.

REASONS: Final = frozenset(
    {
        "short",  # fewer bytes than the layout needs (also: EOF in the middle of a frame)
        "magic",  # not ours at all
        "version",  # ours, but a protocol version we do not speak
        "purpose",  # a stream opened for another service (e.g. sync on the gossip port)
        "auth",  # missing or bad HMAC tag, or a peer with another (or no) cluster secret
        "oversize",  # more bytes than allowed, refused before parsing (or reading) them
        "malformed",  # not msgpack, trailing bytes, nesting too deep
        "shape",  # valid msgpack, but wrong structure, types or values
        "timeout",  # a stream peer too slow to send or take a frame (or to finish one begun)
        "idle",  # a stream peer sent nothing for the idle time between frames (not an attack)
        "closed",  # a stream peer went away (or an earlier error closed the stream)
    }
)

_TAGGED: Final = 0x80
_HEADER_BYTES: Final = len(MAGIC) + 1
_LENGTH = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_PURPOSE_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")


class WireError(Exception):
    """Input from a peer that we refuse; `reason` (one of `REASONS`) is a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown wire error reason {reason!r}")
        # `detail` names a field or a limit, never peer bytes or keys: it may reach a log.
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- keys ---------------------------------------------------------------------------------------


def _check_purpose(purpose: str) -> bytes:
    if not isinstance(purpose, str) or not _PURPOSE_RE.fullmatch(purpose):
        # Not echoed: swapped arguments would put the cluster secret here.
        raise ValueError(f"purpose must be a short label matching {_PURPOSE_RE.pattern}")
    return purpose.encode("ascii")


def derive_key(cluster_secret: str, purpose: str) -> bytes | None:
    """A 32-byte key for one purpose ("gossip", "pushpull", "sync", ...), or None for no secret.

    HKDF-SHA256 (extract, then one expand block): each purpose gets an independent key, so a
    tag made for one protocol is never valid in another.
    """
    if not isinstance(cluster_secret, str):
        raise TypeError("cluster_secret must be a str")  # never echo the value
    info = _check_purpose(purpose)
    if not cluster_secret:
        return None
    # surrogatepass: encoding must not fail, or the exception would quote the secret.
    ikm = cluster_secret.encode("utf-8", "surrogatepass")
    prk = hmac.digest(b"kvs cluster secret v1", ikm, "sha256")
    return hmac.digest(prk, b"kvs key " + info + b"\x01", "sha256")


def _check_key(key: bytes | None) -> bytes | None:
    if key is not None and (not isinstance(key, bytes) or len(key) < 16):
        raise ValueError("key must be None or at least 16 bytes (use derive_key)")
    return key


def _tag(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()[:TAG_BYTES]


# --- msgpack with limits ------------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    raise ValueError("msgpack extension types are not accepted")


# Everything msgpack (C or pure-Python) raises on bad input: ExtraData, FormatError, StackError,
# OutOfData and UnicodeDecodeError are ValueErrors or UnpackExceptions.
_UNPACK_ERRORS = (
    msgpack.UnpackException,
    ValueError,
    TypeError,
    OverflowError,
    IndexError,
    KeyError,
    RecursionError,
    struct.error,
)


def _unpack(payload: bytes, limit: int) -> Any:
    """Parse one msgpack value; no container or string may claim more than `limit` items/bytes."""
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except _UNPACK_ERRORS:
        raise WireError("malformed") from None


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# --- field validation ---------------------------------------------------------------------------


def _shape(what: str) -> WireError:
    return WireError("shape", what)


def _uint(value: Any, what: str, limit: int = MAX_UINT) -> int:
    if type(value) is not int or not 0 <= value <= limit:  # `type is`: a bool is no int
        raise _shape(what)
    return value


def _incarnation(value: Any) -> int:
    return _uint(value, "incarnation", MAX_INCARNATION)


def _node_id(value: Any, what: str = "node id") -> str:
    if type(value) is not str or not 1 <= len(value) <= MAX_NODE_ID_LEN or not value.isprintable():
        raise _shape(what)
    return value


_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host(value: Any) -> str:
    """An IP literal or a DNS name of letters, digits and hyphens (RFC 1123). Anything else
    makes the resolver raise what a socket call does not document: a label over 63 bytes or
    an empty one ("a..b") raised UnicodeError out of `sendto` and ended the node. It also
    bounds an Alive message well below one datagram, so any single message always fits."""
    if type(value) is not str or not 1 <= len(value) <= MAX_HOST_LEN:
        raise _shape("host")
    if ":" in value:  # IPv6; no zone ("%eth0"), which names an interface of the sender
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise _shape("host") from None
        if "%" in value:
            raise _shape("host")
        return value
    if not all(_HOST_LABEL.fullmatch(label) for label in value.split(".")):
        raise _shape("host")
    return value


def _address(value: Any) -> Address:
    if type(value) is not list or len(value) != 2:
        raise _shape("address")
    port = value[1]
    if type(port) is not int or not 0 <= port <= 65535:
        raise _shape("port")
    return (_host(value[0]), port)


def _fields(value: Any, count: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != count:
        raise _shape(what)
    return value


def _member_to_wire(m: MemberInfo) -> list[Any]:
    return [
        m.node_id,
        m.joined_timestamp,
        m.incarnation,
        [m.gossip[0], m.gossip[1]],
        [m.sync[0], m.sync[1]],
        [m.http[0], m.http[1]],
    ]


def _member_from_wire(value: Any) -> MemberInfo:
    node_id, joined, incarnation, gossip, sync, http = _fields(value, 6, "member")
    return MemberInfo(
        node_id=_node_id(node_id),
        joined_timestamp=_uint(joined, "joined_timestamp"),
        incarnation=_incarnation(incarnation),
        gossip=_address(gossip),
        sync=_address(sync),
        http=_address(http),
    )


# --- messages -----------------------------------------------------------------------------------

# Kind codes are the protocol: never renumber, only add.
_PING, _ACK, _PING_REQ, _NACK, _ALIVE, _SUSPECT, _DEAD, _LEAVE = range(1, 9)

_STATE_CODES: Final = {State.ALIVE: 0, State.SUSPECT: 1, State.DEAD: 2, State.LEFT: 3}
_STATES_BY_CODE: Final = {code: state for state, code in _STATE_CODES.items()}


def _message_to_wire(m: Message) -> list[Any]:
    match m:
        case Ping(seq, source, target):
            return [_PING, seq, source, target]
        case Ack(seq, source):
            return [_ACK, seq, source]
        case PingReq(seq, source, target, address):
            return [_PING_REQ, seq, source, target, [address[0], address[1]]]
        case Nack(seq, source):
            return [_NACK, seq, source]
        case Alive(member):
            return [_ALIVE, _member_to_wire(member)]
        case Suspect(node_id, incarnation, source):
            return [_SUSPECT, node_id, incarnation, source]
        case Dead(node_id, incarnation, source):
            return [_DEAD, node_id, incarnation, source]
        case Leave(node_id, incarnation):
            return [_LEAVE, node_id, incarnation]
    raise TypeError(f"not a membership message: {type(m).__name__}")


def _message_from_wire(value: Any) -> Message:
    if type(value) is not list or not value:
        raise _shape("message")
    kind, *f = value
    if type(kind) is not int:
        raise _shape("kind")
    if kind == _PING:
        seq, source, target = _fields(f, 3, "ping")
        return Ping(_uint(seq, "seq"), _node_id(source, "source"), _node_id(target, "target"))
    if kind == _ACK:
        seq, source = _fields(f, 2, "ack")
        return Ack(_uint(seq, "seq"), _node_id(source, "source"))
    if kind == _PING_REQ:
        seq, source, target, address = _fields(f, 4, "ping-req")
        return PingReq(
            _uint(seq, "seq"),
            _node_id(source, "source"),
            _node_id(target, "target"),
            _address(address),
        )
    if kind == _NACK:
        seq, source = _fields(f, 2, "nack")
        return Nack(_uint(seq, "seq"), _node_id(source, "source"))
    if kind == _ALIVE:
        (member,) = _fields(f, 1, "alive")
        return Alive(_member_from_wire(member))
    if kind in (_SUSPECT, _DEAD):
        node_id, incarnation, source = _fields(f, 3, "suspect/dead")
        cls = Suspect if kind == _SUSPECT else Dead
        return cls(_node_id(node_id), _incarnation(incarnation), _node_id(source, "source"))
    if kind == _LEAVE:
        node_id, incarnation = _fields(f, 2, "leave")
        return Leave(_node_id(node_id), _incarnation(incarnation))
    raise _shape("kind")


def _encode_message(m: Message) -> bytes:
    """One message's msgpack bytes; ValueError if a peer would refuse it (a bug on our side)."""
    wire = _message_to_wire(m)
    try:
        _message_from_wire(wire)
    except WireError as exc:
        raise ValueError(f"cannot encode {type(m).__name__}: bad {exc.detail}") from None
    return _pack(wire)


def _array_header_bytes(count: int) -> int:
    return 1 if count <= 15 else 3 if count <= 0xFFFF else 5


# --- datagrams ----------------------------------------------------------------------------------


class DatagramCodec:
    """Encodes and decodes membership datagrams; pure functions of the key, no I/O.

    Message bytes concatenate: a datagram's payload is an array header followed by each
    message's own encoding, so sizes add up exactly and `pack` needs no trial encodings.
    """

    __slots__ = ("_key", "max_size")

    def __init__(self, key: bytes | None, max_size: int = MAX_DATAGRAM_BYTES) -> None:
        self._key = _check_key(key)
        if max_size < _HEADER_BYTES + TAG_BYTES + 16:
            raise ValueError(f"max_size {max_size} is too small for any datagram")
        self.max_size = max_size

    def __repr__(self) -> str:  # the key stays out of logs
        return f"DatagramCodec(keyed={self.keyed}, max_size={self.max_size})"

    @property
    def keyed(self) -> bool:
        return self._key is not None

    @property
    def overhead(self) -> int:
        """Bytes before the payload: magic, version and (when keyed) the tag."""
        return _HEADER_BYTES + (TAG_BYTES if self._key is not None else 0)

    def encoded_size(self, message: Message) -> int:
        """The bytes `message` adds to a datagram's payload."""
        return len(_encode_message(message))

    def datagram_size(self, messages: Sequence[Message]) -> int:
        """The exact size `encode(messages)` would produce."""
        body = sum(self.encoded_size(m) for m in messages)
        return self.overhead + _array_header_bytes(len(messages)) + body

    def fits(self, messages: Sequence[Message], extra: int = 0) -> bool:
        """Whether `messages`, plus `extra` bytes of payload, fit in one datagram."""
        return (
            0 < len(messages) <= MAX_MESSAGES
            and self.datagram_size(messages) + extra <= self.max_size
        )

    def encode(self, messages: Sequence[Message]) -> bytes:
        """One datagram carrying `messages`; ValueError if empty, too many, or too big."""
        return self._seal([_encode_message(m) for m in messages])

    def pack(self, first: Sequence[Message], more: Sequence[Message]) -> tuple[bytes, int]:
        """A datagram with all of `first`, then as many of `more`, in order, as fit.

        Returns the datagram and how many of `more` it carries (a prefix: packing stops at
        the first message that does not fit, so the caller's priority order is kept).
        ValueError if `first` alone does not fit, or if the datagram would be empty. Any
        single valid message fits in an empty datagram, so a non-empty `more` always
        contributes at least one message when `first` is empty.
        """
        parts = [_encode_message(m) for m in first]
        size = sum(map(len, parts))
        used = 0
        for m in more:
            if len(parts) >= MAX_MESSAGES:
                break
            part = _encode_message(m)
            total = self.overhead + _array_header_bytes(len(parts) + 1) + size + len(part)
            if total > self.max_size:
                break
            parts.append(part)
            size += len(part)
            used += 1
        return self._seal(parts), used

    def _seal(self, parts: list[bytes]) -> bytes:
        count = len(parts)
        if not 0 < count <= MAX_MESSAGES:
            raise ValueError(f"a datagram carries 1 to {MAX_MESSAGES} messages, not {count}")
        # msgpack array header: fixarray up to 15 items, else array16.
        array = bytes([0x90 | count]) if count <= 15 else b"\xdc" + count.to_bytes(2, "big")
        payload = b"".join([array, *parts])
        if self._key is None:
            data = MAGIC + bytes([VERSION]) + payload
        else:
            header = MAGIC + bytes([VERSION | _TAGGED])
            data = header + _tag(self._key, header, payload) + payload
        if len(data) > self.max_size:
            raise ValueError(f"datagram of {len(data)} bytes exceeds {self.max_size}")
        return data

    def decode(self, data: bytes) -> list[Message]:
        """The messages in one datagram; WireError for anything that is not exactly valid."""
        if len(data) > self.max_size:  # before anything else: no work for a flood of jumbo junk
            raise WireError("oversize")
        data = bytes(data)
        if len(data) < _HEADER_BYTES:
            raise WireError("short")
        if data[:2] != MAGIC:
            raise WireError("magic")
        version = data[2]
        if version & ~_TAGGED != VERSION:
            raise WireError("version")
        tagged = bool(version & _TAGGED)
        if tagged != (self._key is not None):
            raise WireError("auth", "tagged" if tagged else "untagged")
        payload_at = _HEADER_BYTES + (TAG_BYTES if tagged else 0)
        if len(data) <= payload_at:
            raise WireError("short")
        payload = data[payload_at:]
        if self._key is not None:
            expected = _tag(self._key, data[:_HEADER_BYTES], payload)
            if not hmac.compare_digest(expected, data[_HEADER_BYTES:payload_at]):
                raise WireError("auth")
        obj = _unpack(payload, self.max_size)
        if type(obj) is not list or not 0 < len(obj) <= MAX_MESSAGES:
            raise _shape("datagram")
        return [_message_from_wire(item) for item in obj]


# --- push-pull ----------------------------------------------------------------------------------


def encode_push_pull(pp: PushPull) -> list[Any]:
    """A member table as a msgpack-able value for `FrameStream.send`; ValueError if invalid."""
    wire = [
        pp.source,
        pp.join,
        [[_member_to_wire(ms.member), _STATE_CODES[ms.state]] for ms in pp.members],
    ]
    try:
        decode_push_pull(wire)
    except WireError as exc:
        raise ValueError(f"cannot encode PushPull: bad {exc.detail}") from None
    return wire


def decode_push_pull(obj: Any) -> PushPull:
    """Validate a received table: WireError("shape") unless every field (and member) is valid.

    A node id may appear only once: a table is a map, and duplicates would make the merge
    order-dependent.
    """
    source, join, members = _fields(obj, 3, "push-pull")
    if type(join) is not bool:
        raise _shape("join")
    if type(members) is not list or len(members) > MAX_MEMBERS:
        raise _shape("members")
    seen: set[str] = set()
    states = []
    for entry in members:
        info_wire, code = _fields(entry, 2, "member state")
        info = _member_from_wire(info_wire)
        if type(code) is not int or code not in _STATES_BY_CODE:
            raise _shape("state")
        if info.node_id in seen:
            raise _shape("duplicate member")
        seen.add(info.node_id)
        states.append(MemberState(info, _STATES_BY_CODE[code]))
    return PushPull(source=_node_id(source, "source"), members=tuple(states), join=join)


# --- streams ------------------------------------------------------------------------------------

_HELLO: Final = "kvs-hello"
_HANDSHAKE_MAX: Final = 256  # a hello is ~70 bytes; anything bigger is not a KVS peer
_CLIENT_TO_SERVER: Final = b"\x01"
_SERVER_TO_CLIENT: Final = b"\x02"
_FINISHED: Final = b"\x00finished"  # first byte differs from both directions: no confusion


def _session_key(key: bytes, purpose: bytes, nonce_c: bytes, nonce_s: bytes) -> bytes:
    return hmac.digest(
        key, b"session" + bytes([VERSION]) + purpose + b"\x00" + nonce_c + nonce_s, "sha256"
    )


def _check_nonce(nonce: bytes) -> bytes:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes (from the node's seeded rng)")
    return nonce


class FrameStream:
    """Length-prefixed msgpack frames over a byte stream, authenticated when keyed.

    Open one with `client()` or `server()`, which run the handshake:

        client -> server   hello [magic, version, purpose, nonce_c, keyed, None]
        server -> client   hello [magic, version, purpose, nonce_s, keyed, proof_s]
        client -> server   proof_c                              (keyed only)

    session_key = HMAC(key, "session" + version + purpose + 0 + nonce_c + nonce_s) and
    proof_x = HMAC(session_key, 0 "finished" + role); each side checks the other's proof, so
    a wrong secret fails the handshake on BOTH sides with WireError("auth"). Fresh nonces
    make every session's key new, so frames from another session never verify.

    Errors: `receive` raises `trio.EndOfChannel` when the peer closed the stream cleanly
    between frames, and WireError for everything else: "oversize", "short" (EOF inside a
    frame), "auth", "malformed", "timeout", "closed" (the connection broke). After an error
    the direction that failed keeps raising (the stream is out of step): close it. The one
    exception is a receive "timeout" or "idle": no partial frame is ever consumed, so a retry
    is safe.
    A send that times out or is cancelled mid-frame breaks the sending direction ("closed").

    Nonces must be fresh for every connection (`rng.randbytes(16)` from the node's seeded
    rng); they are parameters so that the simulator controls them.

    One frame is read or written within `timeout` seconds (default 10; `math.inf` to wait
    forever, e.g. for an idle replication link: `receive(timeout=math.inf)`). Concurrent
    senders (or receivers) are serialized, one frame at a time.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        is_client: bool,
        max_frame: int,
        timeout: float,
    ) -> None:
        """Internal: use `client()` or `server()`, which also run the handshake."""
        if max_frame < _HANDSHAKE_MAX or max_frame > 0xFFFFFFFF:
            raise ValueError(f"max_frame must be in {_HANDSHAKE_MAX}..{0xFFFFFFFF}")
        if math.isnan(timeout) or timeout <= 0:
            raise ValueError("timeout must be positive")
        self._stream = stream
        self._is_client = is_client
        self.max_frame = max_frame
        self.timeout = timeout
        self._session: bytes | None = None
        self._send_dir = _CLIENT_TO_SERVER if is_client else _SERVER_TO_CLIENT
        self._recv_dir = _SERVER_TO_CLIENT if is_client else _CLIENT_TO_SERVER
        self._send_seq = 0
        self._recv_seq = 0
        self._buffer = bytearray()
        self._send_lock = trio.StrictFIFOLock()
        self._recv_lock = trio.StrictFIFOLock()
        self._send_failed: str | None = None
        self._recv_failed: str | None = None
        self._eof = False

    def __repr__(self) -> str:  # keys stay out of logs
        role = "client" if self._is_client else "server"
        return f"FrameStream({role}, keyed={self.keyed}, max_frame={self.max_frame})"

    @property
    def keyed(self) -> bool:
        return self._session is not None

    @property
    def stream(self) -> trio.abc.Stream:
        return self._stream

    # --- handshake ---

    @classmethod
    async def client(
        cls,
        stream: trio.abc.Stream,
        key: bytes | None,
        *,
        purpose: str,
        nonce: bytes,
        max_frame: int = MAX_FRAME_BYTES,
        timeout: float = FRAME_TIMEOUT,
    ) -> FrameStream:
        """Open the client side: say hello, check the server's, prove we hold the key."""
        key, purpose_b, nonce = _check_key(key), _check_purpose(purpose), _check_nonce(nonce)
        fs = cls(stream, is_client=True, max_frame=max_frame, timeout=timeout)
        with _deadline(fs.timeout):
            await fs._send_plain([_HELLO, VERSION, purpose, nonce, key is not None, None])
            server_nonce, server_proof = _read_hello(
                await fs._receive_plain(), purpose, key is not None
            )
            if key is not None:
                session = _session_key(key, purpose_b, nonce, server_nonce)
                # Send our proof even if the server's is wrong, so that the server also
                # learns "auth" rather than a bare "closed".
                await fs._send_plain(_tag(session, _FINISHED, b"C"))
                if server_proof is None or not hmac.compare_digest(
                    server_proof, _tag(session, _FINISHED, b"S")
                ):
                    raise WireError("auth")
                fs._session = session
        return fs

    @classmethod
    async def server(
        cls,
        stream: trio.abc.Stream,
        key: bytes | None,
        *,
        purpose: str,
        nonce: bytes,
        max_frame: int = MAX_FRAME_BYTES,
        timeout: float = FRAME_TIMEOUT,
    ) -> FrameStream:
        """Open the server side: answer a client's hello, then check its proof."""
        key, purpose_b, nonce = _check_key(key), _check_purpose(purpose), _check_nonce(nonce)
        fs = cls(stream, is_client=False, max_frame=max_frame, timeout=timeout)
        with _deadline(fs.timeout):
            hello = await fs._receive_plain()
            # Reply before judging version/purpose/keying, so the client learns the same
            # reason; a stranger (bad magic or shape) gets nothing.
            client_nonce, client_keyed, mismatch = _parse_hello(hello, purpose)
            session = None
            if key is not None and client_keyed:
                session = _session_key(key, purpose_b, client_nonce, nonce)
            proof = _tag(session, _FINISHED, b"S") if session is not None else None
            await fs._send_plain([_HELLO, VERSION, purpose, nonce, key is not None, proof])
            if mismatch is not None:
                raise WireError(mismatch)
            if client_keyed != (key is not None):
                raise WireError("auth", "keyed" if client_keyed else "unkeyed")
            if session is not None:
                client_proof = await fs._receive_plain()
                if type(client_proof) is not bytes or not hmac.compare_digest(
                    client_proof, _tag(session, _FINISHED, b"C")
                ):
                    raise WireError("auth")
                fs._session = session
        return fs

    async def _send_plain(self, obj: Any) -> None:
        payload = _pack(obj)
        await self._write(_LENGTH.pack(len(payload)) + payload)

    async def _receive_plain(self) -> Any:
        try:
            body = await self._read_frame(_HANDSHAKE_MAX)
        except trio.EndOfChannel:
            raise WireError("closed", "during handshake") from None
        return _unpack(body, len(body))

    # --- frames ---

    async def send(self, obj: Any, *, timeout: float | None = None) -> None:
        """Send one msgpack-able value as a frame.

        TypeError if msgpack cannot encode it and ValueError if it exceeds `max_frame` (both
        are the caller's bugs); WireError "timeout" or "closed" if the peer cannot take it.
        """
        payload = _pack(obj)
        tag_bytes = TAG_BYTES if self._session is not None else 0
        if len(payload) + tag_bytes > self.max_frame:
            raise ValueError(f"frame of {len(payload)} bytes exceeds max_frame {self.max_frame}")
        async with self._send_lock:
            if self._send_failed is not None:
                raise WireError(self._send_failed)
            header = _LENGTH.pack(len(payload) + tag_bytes)
            if self._session is None:
                data = header + payload
            else:
                seq = _SEQ.pack(self._send_seq)
                data = header + _tag(self._session, self._send_dir, seq, payload) + payload
            self._send_seq += 1
            # Until the whole frame is out, the peer is out of step (a cancelled or timed-out
            # write leaves part of a frame behind): only success clears this.
            self._send_failed = "closed"
            try:
                with _deadline(self.timeout if timeout is None else timeout):
                    await self._write(data)
            except WireError as exc:
                self._send_failed = exc.reason
                raise
            self._send_failed = None

    async def receive(self, *, timeout: float | None = None, idle: float | None = None) -> Any:
        """The next frame's value; see the class docstring for EOF and errors.

        `timeout` bounds the reading of one frame. With `idle`, the wait for the frame to
        begin is bounded by `idle` instead (WireError "idle" when nothing came), and
        `timeout` starts at the frame's first byte: a long-lived connection may stay quiet,
        but a peer that begins a frame and dribbles it (slow loris) is cut off after
        `timeout` with "timeout"."""
        async with self._recv_lock:
            if self._recv_failed is not None:
                raise WireError(self._recv_failed)
            if self._eof:
                raise trio.EndOfChannel
            try:
                if idle is not None:
                    # Waiting for a frame to begin is bounded by `idle` alone; once its first
                    # byte is here, the frame must be complete within the frame timeout.
                    with _deadline(idle, "idle"):
                        await self._fill(1)
                with _deadline(self.timeout if timeout is None else timeout):
                    body = await self._read_frame(self.max_frame)
                payload = body
                if self._session is not None:
                    if len(body) < TAG_BYTES:
                        raise WireError("short")
                    tag, payload = body[:TAG_BYTES], body[TAG_BYTES:]
                    seq = _SEQ.pack(self._recv_seq)
                    expected = _tag(self._session, self._recv_dir, seq, payload)
                    if not hmac.compare_digest(tag, expected):
                        raise WireError("auth")
                    self._recv_seq += 1
                return _unpack(payload, len(payload))
            except WireError as exc:
                if exc.reason not in ("timeout", "idle"):  # nothing consumed: a retry is safe
                    self._recv_failed = exc.reason
                raise
            except trio.EndOfChannel:
                self._eof = True
                raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> FrameStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- bytes ---

    async def _write(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, OSError):
            raise WireError("closed") from None

    async def _read_frame(self, limit: int) -> bytes:
        """One frame's body; the announced length is checked before any of the body is read.

        Bytes leave the buffer only once a whole frame is there, so a cancelled or timed-out
        read never leaves the stream out of step.
        """
        await self._fill(_LENGTH.size)
        (length,) = _LENGTH.unpack_from(self._buffer)
        if length > limit:
            raise WireError("oversize")
        end = _LENGTH.size + length
        await self._fill(end)
        body = bytes(self._buffer[_LENGTH.size : end])
        del self._buffer[:end]
        return body

    async def _fill(self, n: int) -> None:
        while len(self._buffer) < n:
            try:
                chunk = await self._stream.receive_some(max(n - len(self._buffer), 65536))
            except (trio.BrokenResourceError, OSError):
                raise WireError("closed") from None
            if not chunk:
                if not self._buffer:
                    raise trio.EndOfChannel
                raise WireError("short", "end of stream inside a frame")
            self._buffer += chunk


@contextmanager
def _deadline(seconds: float, reason: str = "timeout") -> Iterator[None]:
    """`trio.fail_after` that reports a stalled peer as WireError(reason)."""
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError("timeout must be positive")
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise WireError(reason) from None


def _parse_hello(obj: Any, purpose: str) -> tuple[bytes, bool, str | None]:
    """(nonce, keyed, mismatch reason or None) from a hello; strangers raise at once."""
    if type(obj) is not list or len(obj) != 6 or obj[0] != _HELLO:
        raise WireError("magic", "hello")
    _, version, their_purpose, nonce, keyed, proof = obj
    if type(nonce) is not bytes or len(nonce) != NONCE_BYTES or type(keyed) is not bool:
        raise _shape("hello")
    if proof is not None and (type(proof) is not bytes or len(proof) != TAG_BYTES):
        raise _shape("hello proof")
    mismatch = None
    if type(version) is not int or version != VERSION:
        mismatch = "version"
    elif type(their_purpose) is not str or their_purpose != purpose:
        mismatch = "purpose"
    return nonce, keyed, mismatch


def _read_hello(obj: Any, purpose: str, keyed: bool) -> tuple[bytes, bytes | None]:
    """The server's (nonce, proof), after the same checks the server made of our hello."""
    nonce, their_keyed, mismatch = _parse_hello(obj, purpose)
    if mismatch is not None:
        raise WireError(mismatch)
    if their_keyed != keyed:
        raise WireError("auth", "keyed" if their_keyed else "unkeyed")
    return nonce, obj[5]
