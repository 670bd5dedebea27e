"""Probes: SWIM's failure detector, one member per probe interval, as plain state.

Rule: pure, like the SWIM core that owns them (`kvs.net.swim`): no clock, no I/O; times come
in as arguments, and the core sends every message.

Our probe of a member: a direct ping; no ack within `probe_timeout` (scaled by our local
health, Lifeguard), ping-reqs to `indirect_checks` helpers; no ack by the end of the
(scaled) probe interval, the probe failed. Helpers that did not even nack suggest that the
fault is ours, not the target's (Lifeguard): the core's local health counts them.

A probe on behalf of someone else's ping-req: forward the target's ack to the requester, or
nack at the deadline, so the requester knows its helper is alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvs.net.messages import Address

if TYPE_CHECKING:
    from kvs.net.swim_settings import SwimSettings


@dataclass
class Probe:
    target: str
    seq: int
    indirect_at: float  # ask helpers from then on, unless acked
    end_at: float  # the verdict
    acked: bool = False
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0

    @classmethod
    def start(cls, target: str, seq: int, now: float, timeout: float, interval: float) -> Probe:
        """A probe of `target` with ping `seq`, sent at `now`, with the scaled times."""
        return cls(target=target, seq=seq, indirect_at=now + timeout, end_at=now + interval)

    def deadline(self) -> float:
        # An acked probe never sends its ping-reqs: its indirect_at is no deadline.
        waiting_direct = not self.acked and not self.indirect_sent
        return self.indirect_at if waiting_direct else self.end_at

    def helpers_due(self, now: float) -> bool:
        """Whether it is time to ask helpers (once: the core then sends the ping-reqs)."""
        return not self.acked and not self.indirect_sent and now >= self.indirect_at

    def missing_nacks(self) -> int:
        """After a failed probe, how much worse our local health looks: one for each helper
        that did not even nack, or one when we asked none."""
        if self.expected_nacks > 0:
            return max(0, self.expected_nacks - self.nacks)
        return 1


@dataclass
class IndirectProbe:
    """A ping we send for someone else's ping-req: forward the ack, or nack at the deadline."""

    requester: Address
    requester_seq: int
    target: str
    deadline: float


def nack_after(c: SwimSettings) -> float:
    """How long a ping-req helper waits for the target before it nacks.

    The requester counts nacks only until its probe ends, (probe_interval - probe_timeout)
    x its own scale after it sent the ping-req; a helper that waited probe_timeout x its
    scale would nack just too late, and every failed probe would then cost the requester
    `indirect_checks` awareness (Lifeguard paper, footnote 5). So: 80% of the shorter
    window, unscaled, leaving the rest for two network hops.
    """
    return 0.8 * min(c.probe_timeout, c.probe_interval - c.probe_timeout)
