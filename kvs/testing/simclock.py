"""Simulated time for one `trio.run`, and the wire's deliveries without a task.

Rule: the clock moves only when no task can run, and then straight to the next thing that
happens: a Trio deadline (a sleep, a timeout) or an arrival on the attached `SimNetwork`.
Arrivals are performed by the clock itself, so a datagram or a stream chunk wakes its
receiver in the very next batch: no delivery task to wake first, no re-arming of its
timer each time something is sent, no empty batch for the jump. (`trio.testing.MockClock`
with `autojump_threshold=0` costs one empty run-loop batch per jump, and a task-driven wire
two more task steps per arrival: together 40 % of the run loop's batches in the swarm's
reference scenario.)

Trio asks a clock `deadline_to_sleep_time` only when no task is runnable (the run loop in
`trio._core._run.unrolled_run`, checked against Trio 0.35): that is where time jumps and
where arrivals are handed over. They only wake tasks (channel sends, parking lots), which
is allowed outside a task. `wait_all_tasks_blocked` does not work under this clock (it
would never see the run idle); nothing in the simulator uses it. Real I/O (a worker thread,
a pipe: a snapshot's copy) is not waited for before a jump, as with MockClock's autojump:
a run that does any is not exact under either.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

__all__ = ["Arrivals", "SimClock"]


class Arrivals(Protocol):
    """What the clock drives: timed work that needs no task (`SimNetwork`)."""

    def next_arrival(self) -> float:
        """When the earliest pending arrival is due (inf: none)."""
        ...

    def deliver_due(self, now: float) -> None:
        """Perform every arrival due at or before `now`, in order."""
        ...


class SimClock(trio.abc.Clock):
    """Time starts at 0 and moves only by jumps; see the module docstring."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wire: Arrivals | None = None

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        """Nothing can run: jump to the next deadline or arrival, whichever is first, and
        perform the arrivals due then. Always 0 (nothing to wait for in real time), except
        when nothing at all is pending (a deadlock: the harness's watchdog ends it)."""
        arrival = self.wire.next_arrival() if self.wire is not None else math.inf
        target = min(deadline, arrival)
        if target == math.inf:
            return math.inf
        if target > self.now:
            self.now = target
        if arrival <= self.now and self.wire is not None:
            self.wire.deliver_due(self.now)
        return 0.0
