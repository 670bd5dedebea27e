"""Membership's codec: SWIM messages as authenticated msgpack datagrams, and member tables.

Datagram layout (UDP, at most `MAX_DATAGRAM_BYTES`):

    magic "KV" (2) | version (1; high bit set = tagged) | [tag (16)] | msgpack payload

The payload is a list of 1..64 messages, each a compact array `[kind, fields...]`; the tag is
HMAC-SHA256(key, magic + version + payload) truncated to 16 bytes. The "tagged" bit lets a
receiver tell "no tag" from "bad tag" so that both show up as "auth".

A push-pull's member table (`encode_push_pull`, `decode_push_pull`) uses the same member
encoding; it travels in one TCP frame (`kvs.net.frames`) instead of a datagram.

Every field is validated on the way in (and on the way out: what a peer would refuse, we do
not send); refusals raise `WireError` (`kvs.net.codec`). No I/O, no clock, no entropy.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Sequence
from typing import Any, Final

from kvs.net.codec import TAG_BYTES, VERSION, WireError, auth_tag, check_key, pack, shape, unpack
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
    "MAX_DATAGRAM_BYTES",
    "MAX_HOST_LEN",
    "MAX_MESSAGES",
    "MAX_NODE_ID_LEN",
    "DatagramCodec",
    "decode_push_pull",
    "encode_push_pull",
]

MAGIC: Final = b"KV"
MAX_DATAGRAM_BYTES: Final = 1400  # below any sane path MTU, so datagrams never fragment
MAX_MESSAGES: Final = 64  # per datagram: keeps compound messages far below any limit

MAX_NODE_ID_LEN: Final = 64
MAX_HOST_LEN: Final = 253  # the longest DNS name (RFC 1035), and far more than any IP literal

_TAGGED: Final = 0x80
_HEADER_BYTES: Final = len(MAGIC) + 1


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
    """Encodes and decodes membership datagrams; pure functions of the key, no I/O.

    Message bytes concatenate: a datagram's payload is an array header followed by each
    message's own encoding, so sizes add up exactly and `pack` needs no trial encodings.
    """

    __slots__ = ("_key", "max_size")

    def __init__(self, key: bytes | None, max_size: int = MAX_DATAGRAM_BYTES) -> None:
        self._key = check_key(key)
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
            data = header + auth_tag(self._key, header, payload) + payload
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
            expected = auth_tag(self._key, data[:_HEADER_BYTES], payload)
            if not hmac.compare_digest(expected, data[_HEADER_BYTES:payload_at]):
                raise WireError("auth")
        obj = unpack(payload, self.max_size)
        if type(obj) is not list or not 0 < len(obj) <= MAX_MESSAGES:
            raise shape("datagram")
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
