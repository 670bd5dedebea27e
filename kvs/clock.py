"""Hybrid logical clock: wall-clock milliseconds that never run backwards.

A local write gets `max(wall, last) + logical`; a received version advances the clock, so a
node whose wall clock lags still orders its next write after everything it has seen. The
wall clock is injected (`wall_ms`) so the simulator can drive it from Trio's MockClock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kvs.model import HLC_LOGICAL_MASK, hlc_ms, hlc_pack

MAX_HLC = hlc_pack(1 << 46)
"""The clock never moves past this reading (wall milliseconds 2**46: the year 4199). Peers'
records this far ahead are refused before the clock sees them (kvs.sync.limits.MAX_FUTURE_MS);
this keeps `now()`'s arithmetic far from the 63 bits every peer accepts, even for a reading
persisted before that check existed."""


def system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    def __init__(self, wall_ms: Callable[[], int] = system_wall_ms, *, last: int = 0) -> None:
        self._wall_ms = wall_ms
        self._last = last
        self.max_offset_seen_ms = 0  # the largest lead of a remote clock over ours

    @property
    def last(self) -> int:
        """The newest reading issued or observed (what to persist across restarts)."""
        return self._last

    def wall_ms(self) -> int:
        return self._wall_ms()

    def now(self) -> int:
        """A fresh reading, strictly greater than every earlier one."""
        wall = hlc_pack(self._wall_ms())
        if wall > self._last:
            self._last = wall
        else:
            # Same millisecond (or our wall clock is behind): bump the logical part. When
            # the counter overflows it carries into the millisecond, which is still monotonic.
            self._last += 1
        return self._last

    def reserve(self, n: int) -> int:
        """The first of `n` fresh readings `first .. first + n - 1`: what `now()` called `n`
        times within one millisecond gives, for one clock reading (a write transaction's ops)."""
        first = self.now()
        self._last += n - 1
        return first

    def observe(self, remote: int) -> int:
        """Advance past a reading received from elsewhere; returns its lead over our wall clock (ms).
        A reading past MAX_HLC is not followed (see there)."""
        lead = hlc_ms(remote) - self._wall_ms()
        if lead > self.max_offset_seen_ms:
            self.max_offset_seen_ms = lead
        if self._last < remote <= MAX_HLC:
            self._last = remote
        return lead


__all__ = ["HybridLogicalClock", "system_wall_ms", "HLC_LOGICAL_MASK", "MAX_HLC"]
