"""The membership protocol's vocabulary, as plain values: what nodes say to each other, and
what the SWIM core asks of the layer that drives it.

The SWIM core (`kvs.net.swim`) consumes and produces these; the wire codec
(`kvs.net.datagrams`) turns messages into authenticated msgpack and back, validating every
field; the driver (`kvs.net.membership`) performs the core's actions, and passes its
`MemberChanged` news on to whoever listens (replication among them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

Address = tuple[str, int]

# --- bounds ------------------------------------------------------------------------------------
# Every number a peer sends has a bound the node's own arithmetic can never exceed: whatever we
# compute from a received value (a refutation adds one to an incarnation) must still be a
# value every peer accepts, or our own encoder would refuse our own state.

MAX_UINT: Final = 2**63 - 1
"""The wire's integers (seq, joined_timestamp) fit a signed 64-bit integer."""

MAX_INCARNATION: Final = 2**62
"""The largest incarnation on the wire, well below MAX_UINT. A claim about ourselves at this
incarnation cannot be out-ranked, so it is refused (counted, never refuted): our own
incarnation therefore never exceeds MAX_INCARNATION. A node rising one per restart and per
refutation needs millions of years to reach it; only a forged claim gets near."""

MAX_SEQ: Final = MAX_UINT
"""Probe sequence numbers wrap around to 1 after this (they are compared, never added to)."""

MAX_MEMBERS: Final = 10_000
"""Members in one push-pull table, and so in a node's member table: a table that could not be
sent whole in a push-pull would break every exchange."""


class State(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """Who a member is and where to reach it; `incarnation` orders claims about it."""

    node_id: str
    joined_timestamp: int  # ms; persisted on first start, stable across restarts
    incarnation: int
    gossip: Address  # UDP datagrams and TCP push-pull
    sync: Address  # TCP replication
    http: Address  # the HTTP API


# --- datagram messages (UDP; several may share one datagram) ---------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    source: str
    target: str  # the node the sender means to reach (a restarted address may be someone else)


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe `target` at `target_address` on the sender's behalf."""

    seq: int
    source: str
    target: str
    target_address: Address


@dataclass(frozen=True, slots=True)
class Nack:
    """An indirect prober's "I asked, but got no answer": proves the requester is reachable."""

    seq: int
    source: str


@dataclass(frozen=True, slots=True)
class Alive:
    member: MemberInfo


@dataclass(frozen=True, slots=True)
class Suspect:
    node_id: str
    incarnation: int
    source: str


@dataclass(frozen=True, slots=True)
class Dead:
    node_id: str
    incarnation: int
    source: str


@dataclass(frozen=True, slots=True)
class Leave:
    node_id: str
    incarnation: int


Message = Ping | Ack | PingReq | Nack | Alive | Suspect | Dead | Leave
Gossip = Alive | Suspect | Dead | Leave  # the kinds that are disseminated by piggybacking


# --- stream messages (TCP push-pull) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberState:
    member: MemberInfo
    state: State


@dataclass(frozen=True, slots=True)
class PushPull:
    """A full member table; `join` marks the first exchange of a joining node."""

    source: str
    members: tuple[MemberState, ...]
    join: bool = False


# --- what the SWIM core asks of its driver (kvs.net.membership, or a simulator) ------------


@dataclass(frozen=True, slots=True)
class SendDatagram:
    to: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class StartPushPull:
    """Exchange member tables with this member over TCP (the driver does the I/O)."""

    node_id: str
    to: Address


@dataclass(frozen=True, slots=True)
class MemberChanged:
    member: MemberInfo
    state: State
    previous: State | None  # None: a member we had not known


@dataclass(frozen=True, slots=True)
class IncarnationChanged:
    """Our own incarnation rose (a refutation): persist it so a restart never goes below."""

    incarnation: int


Action = SendDatagram | StartPushPull | MemberChanged | IncarnationChanged
