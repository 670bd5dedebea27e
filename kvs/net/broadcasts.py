"""The dissemination queue: membership news waiting to ride on datagrams (SWIM's piggybacking).

Rule: pure, like the SWIM core that owns it (`kvs.net.swim`): no clock, no I/O, no entropy.

One piece of news per member (newer news about a member replaces older), each sent a bounded
number of times -- about `retransmit_mult * log10(N+1)`, computed by the core -- and the
least-sent first, the newest first among equally-sent ones, so fresh news spreads before old
news is repeated (memberlist's TransmitLimitedQueue).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvs.net.messages import Gossip


@dataclass
class Broadcast:
    about: str
    message: Gossip
    order: int  # newer broadcasts first among equally-sent ones
    transmits: int = 0


class Broadcasts:
    def __init__(self) -> None:
        self._by_member: dict[str, Broadcast] = {}
        self._order = 0

    def __bool__(self) -> bool:
        return bool(self._by_member)

    def __contains__(self, about: str) -> bool:
        return about in self._by_member

    def queue(self, about: str, message: Gossip) -> None:
        self._order += 1
        self._by_member[about] = Broadcast(about, message, self._order)

    def forget(self, about: str) -> None:
        self._by_member.pop(about, None)

    def pending(self) -> list[Broadcast]:
        """Everything queued, in the order to send it."""
        return sorted(self._by_member.values(), key=lambda b: (b.transmits, -b.order))

    def sent(self, broadcasts: list[Broadcast], limit: int) -> None:
        """`broadcasts` went out once more; those sent `limit` times are done."""
        for broadcast in broadcasts:
            broadcast.transmits += 1
            if broadcast.transmits >= limit:
                del self._by_member[broadcast.about]
