"""Membership's codec: SWIM messages as sealed msgpack datagrams, and member tables.

Datagram layout (UDP, at most `MAX_DATAGRAM_BYTES`), keyed (the default):

    magic "KV" (2) | version (1, high bit set = sealed) | nonce (12) | AES-256-GCM-SIV(
        key, nonce, aad = magic + version,
        plaintext = sent_ms (8, big-endian) | msgpack payload) | tag (16)

and unkeyed (no cluster secret): magic | version | msgpack payload. The payload is a list of
1..64 messages, each a compact array `[kind, fields...]`. Sealing costs `SEAL_OVERHEAD` (36)
bytes a datagram; the MTU budget (1400) counts them. The "sealed" bit lets a receiver tell
"not sealed" from "sealed with another key" so that both show up as "auth"; a version-1
(HMAC, clear text) datagram is refused as "version". The key is derived from a cluster
secret for purpose "gossip"; with a keyring, the first key seals and any of them opens.
The nonce and the time defeat replay: see `kvs.net.replay`.

A push-pull's member table (`encode_push_pull`, `decode_push_pull`) uses the same member
encoding; it travels in one TCP frame (`kvs.net.frames`) instead of a datagram.

Every field is validated on the way in (and on the way out: what a peer would refuse, we do
not send); refusals raise `WireError` (`kvs.net.codec`). No I/O, no clock, no entropy.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from typing import Any, Final

from kvs.net.codec import (
    AEAD_NONCE_BYTES,
    AEAD_TAG_BYTES,
    VERSION,
    Aead,
    WireError,
    keyring_keys,
    pack,
    shape,
    unpack,
)
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
from kvs.net.replay import ReplayWindow

__all__ = [
    "MAX_DATAGRAM_BYTES",
    "MAX_HOST_LEN",
    "MAX_MESSAGES",
    "MAX_NODE_ID_LEN",
    "SEAL_OVERHEAD",
    "DatagramCodec",
    "decode_push_pull",
    "encode_push_pull",
]

MAGIC: Final = b"KV"
MAX_DATAGRAM_BYTES: Final = 1400  # below any sane path MTU, so datagrams never fragment
MAX_MESSAGES: Final = 64  # per datagram: keeps compound messages far below any limit

MAX_NODE_ID_LEN: Final = 64
MAX_HOST_LEN: Final = 253  # the longest DNS name (RFC 1035), and far more than any IP literal

_SEALED: Final = 0x80
_HEADER_BYTES: Final = len(MAGIC) + 1
_SENT: Final = struct.Struct(">Q")  # the sender's wall clock, milliseconds
# What sealing adds to a datagram: nonce, sender's time, AEAD tag (39 bytes with the header).
SEAL_OVERHEAD: Final = AEAD_NONCE_BYTES + _SENT.size + AEAD_TAG_BYTES


# --- field validation ---------------------------------------------------------------------------


def _uint(value: Any, what: str, limit: int = MAX_UINT) -> int:
    if type(value) is not int or not 0 <= value <= limit:  # `type is`: a bool is no int
        raise shape(what)
    return value


def _incarnation(value: Any) -> int:
    return _uint(value, "incarnation", MAX_INCARNATION)


def _node_id(value: Any, what: str = "node id") -> str:
    if type(value) is not str or not 1 <= len(value) <= MAX_NODE_ID_LEN or not value.isprintable():
        raise shape(what)
    return value


_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host(value: Any) -> str:
    """An IP literal or a DNS name of letters, digits and hyphens (RFC 1123). Anything else
    makes the resolver raise what a socket call does not document: a label over 63 bytes or
    an empty one ("a..b") raised UnicodeError out of `sendto` and ended the node. It also
    bounds an Alive message well below one datagram, so any single message always fits."""
    if type(value) is not str or not 1 <= len(value) <= MAX_HOST_LEN:
        raise shape("host")
    if ":" in value:  # IPv6; no zone ("%eth0"), which names an interface of the sender
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise shape("host") from None
        if "%" in value:
            raise shape("host")
        return value
    if not all(_HOST_LABEL.fullmatch(label) for label in value.split(".")):
        raise shape("host")
    return value


def _address(value: Any) -> Address:
    if type(value) is not list or len(value) != 2:
        raise shape("address")
    port = value[1]
    if type(port) is not int or not 0 <= port <= 65535:
        raise shape("port")
    return (_host(value[0]), port)


def _fields(value: Any, count: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != count:
        raise shape(what)
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
        raise shape("message")
    kind, *f = value
    if type(kind) is not int:
        raise shape("kind")
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
    raise shape("kind")


def _encode_message(m: Message) -> bytes:
    """One message's msgpack bytes; ValueError if a peer would refuse it (a bug on our side)."""
    wire = _message_to_wire(m)
    try:
        _message_from_wire(wire)
    except WireError as exc:
        raise ValueError(f"cannot encode {type(m).__name__}: bad {exc.detail}") from None
    return pack(wire)


def _array_header_bytes(count: int) -> int:
    return 1 if count <= 15 else 3 if count <= 0xFFFF else 5


# --- datagrams ----------------------------------------------------------------------------------


class DatagramCodec:
    """Encodes and decodes membership datagrams; pure functions of the keys, no I/O.

    Keyed (a keyring: the first key seals, every key opens), each datagram is sealed with
    AES-256-GCM-SIV (every node shares the key, so nonce misuse resistance: see
    `kvs.net.codec.Aead`) under a caller-supplied random nonce and carries its sender's wall-clock time;
    `decode` admits it through the codec's `ReplayWindow` (fed the receiver's `now_ms`), so
    a captured datagram replayed later is refused ("replay" or "stale"). Unkeyed (no secret),
    datagrams travel in clear text and nothing is checked: for tests and trusted labs only.

    Message bytes concatenate: a datagram's payload is an array header followed by each
    message's own encoding, so sizes add up exactly and `pack` needs no trial encodings.
    """

    __slots__ = ("_aeads", "_keys", "max_size", "window")

    def __init__(
        self,
        keys: bytes | Sequence[bytes] | None,
        max_size: int = MAX_DATAGRAM_BYTES,
        *,
        window: ReplayWindow | None = None,
    ) -> None:
        self._keys: tuple[bytes, ...] = ()
        self._aeads: tuple[Aead, ...] = ()
        self.set_keys(keys)
        if max_size < _HEADER_BYTES + SEAL_OVERHEAD + 16:
            raise ValueError(f"max_size {max_size} is too small for any datagram")
        self.max_size = max_size
        self.window = window if window is not None else ReplayWindow()

    def __repr__(self) -> str:  # the keys stay out of logs
        return f"DatagramCodec(keys={len(self._keys)}, max_size={self.max_size})"

    def set_keys(self, keys: bytes | Sequence[bytes] | None) -> None:
        """Replace the keyring (a reload): the first key seals from now on, all of them open.
        Going from keyed to unkeyed (or back) is refused: that is not a rotation."""
        new = keyring_keys(keys)
        if self._keys and not new:
            raise ValueError("a keyed codec cannot drop every key")
        self._keys = new
        self._aeads = tuple(Aead(k, siv=True) for k in new)

    @property
    def keyed(self) -> bool:
        return bool(self._keys)

    @property
    def overhead(self) -> int:
        """Bytes around the payload: magic, version and (when keyed) nonce, time and tag."""
        return _HEADER_BYTES + (SEAL_OVERHEAD if self._keys else 0)

    def encoded_size(self, message: Message) -> int:
        """The bytes `message` adds to a datagram's payload."""
        return len(_encode_message(message))

    def datagram_size(self, messages: Sequence[Message]) -> int:
        """The exact size `encode(messages, ...)` would produce."""
        body = sum(self.encoded_size(m) for m in messages)
        return self.overhead + _array_header_bytes(len(messages)) + body

    def fits(self, messages: Sequence[Message], extra: int = 0) -> bool:
        """Whether `messages`, plus `extra` bytes of payload, fit in one datagram."""
        return (
            0 < len(messages) <= MAX_MESSAGES
            and self.datagram_size(messages) + extra <= self.max_size
        )

    def encode(
        self, messages: Sequence[Message], *, sent_ms: int = 0, nonce: bytes | None = None
    ) -> bytes:
        """One datagram carrying `messages`; ValueError if empty, too many, or too big.

        `sent_ms` is the sender's wall clock and `nonce` 12 fresh random bytes (the node's
        entropy source, or the simulator's seeded one); a keyed codec refuses to go without
        them (ValueError), an unkeyed one ignores them."""
        return self._seal([_encode_message(m) for m in messages], sent_ms, nonce)

    def pack(
        self,
        first: Sequence[Message],
        more: Sequence[Message],
        *,
        sent_ms: int = 0,
        nonce: bytes | None = None,
    ) -> tuple[bytes, int]:
        """A datagram with all of `first`, then as many of `more`, in order, as fit.

        Returns the datagram and how many of `more` it carries (a prefix: packing stops at
        the first message that does not fit, so the caller's priority order is kept).
        ValueError if `first` alone does not fit, or if the datagram would be empty. Any
        single valid message fits in an empty datagram, so a non-empty `more` always
        contributes at least one message when `first` is empty. `sent_ms` and `nonce` as
        for `encode`.
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
        return self._seal(parts, sent_ms, nonce), used

    def _seal(self, parts: list[bytes], sent_ms: int, nonce: bytes | None) -> bytes:
        count = len(parts)
        if not 0 < count <= MAX_MESSAGES:
            raise ValueError(f"a datagram carries 1 to {MAX_MESSAGES} messages, not {count}")
        # msgpack array header: fixarray up to 15 items, else array16.
        array = bytes([0x90 | count]) if count <= 15 else b"\xdc" + count.to_bytes(2, "big")
        payload = b"".join([array, *parts])
        if not self._aeads:
            data = MAGIC + bytes([VERSION]) + payload
        else:
            if not isinstance(nonce, bytes) or len(nonce) != AEAD_NONCE_BYTES:
                raise ValueError(f"a sealed datagram needs a fresh {AEAD_NONCE_BYTES}-byte nonce")
            if type(sent_ms) is not int or not 0 <= sent_ms <= MAX_UINT:
                raise ValueError("sent_ms must be the sender's wall clock in milliseconds")
            header = MAGIC + bytes([VERSION | _SEALED])
            plain = _SENT.pack(sent_ms) + payload
            data = header + nonce + self._aeads[0].seal(nonce, plain, header)
        if len(data) > self.max_size:
            raise ValueError(f"datagram of {len(data)} bytes exceeds {self.max_size}")
        return data

    def decode(self, data: bytes, *, now_ms: int | None = None) -> list[Message]:
        """The messages in one datagram; WireError for anything that is not exactly valid,
        including a sealed datagram sent too far from `now_ms` ("stale") or already
        accepted ("replay"; see `kvs.net.replay`). A keyed codec needs `now_ms`."""
        if self._keys and now_ms is None:
            raise ValueError("a keyed codec needs the receiver's clock (now_ms)")
        if len(data) > self.max_size:  # before anything else: no work for a flood of jumbo junk
            raise WireError("oversize")
        data = bytes(data)
        if len(data) < _HEADER_BYTES:
            raise WireError("short")
        if data[:2] != MAGIC:
            raise WireError("magic")
        version = data[2]
        if version & ~_SEALED != VERSION:
            raise WireError("version")
        sealed = bool(version & _SEALED)
        if sealed != bool(self._keys):
            raise WireError("auth", "sealed" if sealed else "unsealed")
        payload = self._open(data, now_ms) if sealed else data[_HEADER_BYTES:]
        if not payload:
            raise WireError("short")
        obj = unpack(payload, self.max_size)
        if type(obj) is not list or not 0 < len(obj) <= MAX_MESSAGES:
            raise shape("datagram")
        return [_message_from_wire(item) for item in obj]

    def _open(self, data: bytes, now_ms: int | None) -> bytes:
        """The payload of a sealed datagram, once its tag, time and nonce are accepted."""
        if len(data) < _HEADER_BYTES + SEAL_OVERHEAD:
            raise WireError("short")
        header = data[:_HEADER_BYTES]
        nonce = data[_HEADER_BYTES : _HEADER_BYTES + AEAD_NONCE_BYTES]
        sealed = data[_HEADER_BYTES + AEAD_NONCE_BYTES :]
        for aead in self._aeads:  # the sender's key is one of ours, most likely the first
            plain = aead.open(nonce, sealed, header)
            if plain is not None:
                break
        else:
            raise WireError("auth")
        (sent_ms,) = _SENT.unpack_from(plain)
        assert now_ms is not None  # checked by decode
        self.window.admit(sent_ms, nonce, now_ms)
        return plain[_SENT.size :]


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
        raise shape("join")
    if type(members) is not list or len(members) > MAX_MEMBERS:
        raise shape("members")
    seen: set[str] = set()
    states = []
    for entry in members:
        info_wire, code = _fields(entry, 2, "member state")
        info = _member_from_wire(info_wire)
        if type(code) is not int or code not in _STATES_BY_CODE:
            raise shape("state")
        if info.node_id in seen:
            raise shape("duplicate member")
        seen.add(info.node_id)
        states.append(MemberState(info, _STATES_BY_CODE[code]))
    return PushPull(source=_node_id(source, "source"), members=tuple(states), join=join)
