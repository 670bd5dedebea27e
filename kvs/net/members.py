"""The member table: every member a node knows, its state, and the order of probing them.

Rule: pure, like the SWIM core that owns it (`kvs.net.swim`): no clock, no I/O; its one
source of chance is the core's seeded `random.Random`, drawn in the core's order. The core
decides every state change and sets it on a `Member` here; the table keeps what follows from
the set of members: how many are live (the N of the protocol's formulas), which can be
probed, and whose turn it is.

Probing goes round-robin over a shuffled list of the reachable members (alive or suspect),
reshuffled once per round; a member that joins mid-round goes to a random place in the rest
of the round (as in memberlist), so a burst of joins does not delay probing of the others.
Dead and left members stay in the table for `dead_member_retention` (stale "alive" gossip about
them must not bring them back) and are then reaped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from kvs.net.messages import MemberInfo, State


@dataclass
class Member:
    info: MemberInfo
    state: State
    last_change: float  # core time of the last state change

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def incarnation(self) -> int:
        return self.info.incarnation


class MemberTable:
    def __init__(self, me: MemberInfo, rng: random.Random) -> None:
        self.me = me.node_id
        self.members: dict[str, Member] = {me.node_id: Member(me, State.ALIVE, 0.0)}
        self._rng = rng
        self._live: int | None = None  # live_count() cache; None after any membership change
        self._probe_order: list[str] = []
        self._probe_index = 0

    def changed(self) -> None:
        """Call after adding or removing a member or changing one's state."""
        self._live = None

    def live_count(self) -> int:
        """Members (ourselves included) neither dead nor left: the N of the formulas.

        Cached until a member is added, removed or changes state: every datagram sent asks
        (for the retransmit limit), and counting costs O(N) (a fifth of a 200-node simulation)."""
        if self._live is None:
            self._live = sum(
                1 for m in self.members.values() if m.state in (State.ALIVE, State.SUSPECT)
            )
        return self._live

    def sorted(self) -> list[Member]:
        return [self.members[k] for k in sorted(self.members)]

    def reachable(self) -> list[str]:
        """The other members that may answer a probe (alive or suspect), by node id."""
        return [
            k
            for k, m in sorted(self.members.items())
            if k != self.me and m.state in (State.ALIVE, State.SUSPECT)
        ]

    def add(self, info: MemberInfo, now: float) -> None:
        """A member we had not known, alive; it joins the current probe round."""
        self.members[info.node_id] = Member(info, State.ALIVE, now)
        self._live = None
        position = self._rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(position, info.node_id)

    def next_probe_target(self) -> str | None:
        """Whose turn it is to be probed; None when no other member is reachable."""
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                node_id = self._probe_order[self._probe_index]
                self._probe_index += 1
                member = self.members.get(node_id)
                if (
                    member is not None
                    and node_id != self.me
                    and member.state in (State.ALIVE, State.SUSPECT)
                ):
                    return node_id
            self._probe_order = self.reachable()
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
            if not self._probe_order:
                return None
        return None

    def reap(self, now: float, retention: float) -> list[str]:
        """Forget the members dead or left for `retention` or longer; their node ids."""
        reaped = []
        for node_id, member in list(self.members.items()):
            if node_id == self.me:
                continue
            if member.state in (State.DEAD, State.LEFT) and now - member.last_change >= retention:
                del self.members[node_id]
                self._live = None
                reaped.append(node_id)
        return reaped
