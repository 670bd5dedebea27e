"""The settings of the SWIM core, and the formulas derived from them.

The values come from the node's configuration (`kvs.config.declaration`, where each one is
documented and its default written): this class holds no defaults of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvs.net.messages import MAX_MEMBERS


@dataclass(frozen=True)
class SwimSettings:
    probe_interval: float
    probe_timeout: float
    indirect_checks: int
    suspicion_mult: int
    suspicion_max_timeout_mult: int
    gossip_interval: float
    gossip_nodes: int
    retransmit_mult: int
    push_pull_interval: float
    awareness_max: int
    dead_member_retention: float  # keep dead/left members this long to refute stale gossip
    gossip_to_the_dead: float  # keep gossiping to recently dead nodes (they may refute)
    max_members: int
    """Never above MAX_MEMBERS, the most one push-pull table carries: a table that cannot be
    sent would fail every exchange."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_members <= MAX_MEMBERS:
            raise ValueError(f"max_members must be in 1..{MAX_MEMBERS}")

    def suspicion_timeouts(self, n: int) -> tuple[float, float]:
        """The shortest and the longest a suspicion lasts among `n` live members:
        `suspicion_mult * max(1, log10(n)) * probe_interval`, and `suspicion_max_timeout_mult`
        times that (Lifeguard: it starts at the longest and shrinks with confirmations)."""
        shortest = self.suspicion_mult * max(1.0, math.log10(max(1, n))) * self.probe_interval
        return shortest, shortest * self.suspicion_max_timeout_mult
