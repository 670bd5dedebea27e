"""Suspicion timers (Lifeguard): when a suspected member is declared dead.

Rule: pure, like the SWIM core that owns them (`kvs.net.swim`): no clock, no I/O, no
entropy; the time comes in as an argument. The core decides what to send; this decides when.

A suspicion runs for `suspicion_max_timeout_mult` times the minimum timeout, and shrinks
towards the minimum (on a log scale) as independent confirmations arrive from other members,
where the minimum is `suspicion_mult * max(1, log10(N)) * probe_interval`. When it runs out the
core makes a last call (it asks the suspect once more, see `Swim._last_call`); the suspicion
then ends at `final_at` unless an ack to that call's ping arrives, which restarts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvs.net.swim_settings import SwimSettings


@dataclass
class Suspicion:
    incarnation: int
    accuser: str  # who raised it: its own suspicion is not an independent confirmation
    start: float
    min_timeout: float
    max_timeout: float
    expected: int  # confirmations that bring the timeout down to the minimum
    confirmations: set[str] = field(default_factory=set)  # other accusers since
    final_at: float | None = None  # set when the last call went out (see Swim.tick)
    last_call_seq: int | None = None  # the seq its pings carry; an ack to it proves life

    def deadline(self) -> float:
        c = len(self.confirmations)
        if self.expected < 1:
            timeout = self.min_timeout
        else:
            frac = math.log(c + 1) / math.log(self.expected + 1)
            timeout = max(
                self.min_timeout, self.max_timeout - (self.max_timeout - self.min_timeout) * frac
            )
        if self.final_at is not None:
            return self.final_at
        return self.start + timeout


class Suspicions:
    """The members we suspect, each with its timer, and the last calls awaiting an ack."""

    def __init__(self) -> None:
        self.by_member: dict[str, Suspicion] = {}
        self.last_calls: dict[int, str] = {}  # last-call ping seq -> suspect

    def get(self, node_id: str) -> Suspicion | None:
        return self.by_member.get(node_id)

    def deadlines(self) -> Iterator[float]:
        return (s.deadline() for s in self.by_member.values())

    def open(
        self, node_id: str, incarnation: int, accuser: str, now: float, n: int, c: SwimSettings
    ) -> None:
        """Suspect `node_id` afresh (ending any earlier suspicion of it); `n` is the number of
        live members, the N of the formulas."""
        min_timeout, max_timeout = c.suspicion_timeouts(n)
        expected = c.suspicion_mult - 2 if n - 2 >= c.suspicion_mult - 2 else 0
        suspicion = Suspicion(
            incarnation,
            accuser,
            now,
            min_timeout,
            max_timeout,
            expected,
        )
        self.end(node_id)
        self.by_member[node_id] = suspicion

    def confirm(self, node_id: str, source: str) -> bool:
        """Count `source`'s accusation if it is an independent one (not the accuser's, not
        counted already); whether it was."""
        suspicion = self.by_member.get(node_id)
        if suspicion is None or source == suspicion.accuser or source in suspicion.confirmations:
            return False
        suspicion.confirmations.add(source)
        return True

    def end(self, node_id: str) -> None:
        suspicion = self.by_member.pop(node_id, None)
        if suspicion is not None and suspicion.last_call_seq is not None:
            self.last_calls.pop(suspicion.last_call_seq, None)

    def calling(self, node_id: str, suspicion: Suspicion, seq: int, final_at: float) -> None:
        """The last call to `node_id` went out with ping `seq`: the suspicion now ends at
        `final_at`, unless an ack to `seq` comes first."""
        suspicion.final_at = final_at
        suspicion.last_call_seq = seq
        self.last_calls[seq] = node_id

    def is_last_call(self, seq: int) -> bool:
        return seq in self.last_calls

    def answered(self, seq: int, now: float) -> bool:
        """An ack to last-call ping `seq`: the suspect is alive but its refutation has not
        reached us, so its suspicion starts afresh (with the confirmations so far) rather
        than end in a death. Whether a suspicion was restarted."""
        node_id = self.last_calls.pop(seq)
        suspicion = self.by_member.get(node_id)
        if suspicion is None or suspicion.last_call_seq != seq:
            return False
        suspicion.start = now
        suspicion.final_at = None
        suspicion.last_call_seq = None
        return True
