"""Sliding-window rate limiting, per user (per client IP for anonymous callers), in memory.

The sliding-window counter: the previous fixed window's count, weighted by how much of it
still overlaps the sliding window, plus the current window's count. O(1) memory and time per
caller, and no burst of twice the limit at a window boundary as plain fixed windows allow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 100_000  # callers remembered before idle ones are forgotten


@dataclass(slots=True)
class _Window:
    start: float
    current: int
    previous: int


class RateLimiter:
    def __init__(self, limit: int, window_s: float, now: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window_s
        self.now = now
        self._windows: dict[str, _Window] = {}
        self.refused = 0

    def check(self, caller: str) -> float | None:
        """Count one request by `caller`; None if allowed, else seconds to wait (Retry-After)."""
        now = self.now()
        w = self._windows.get(caller)
        if w is None:
            if len(self._windows) >= MAX_TRACKED:
                self._forget_idle(now)
            w = self._windows[caller] = _Window(now - now % self.window, 0, 0)
        elapsed_windows = int((now - w.start) // self.window)
        if elapsed_windows:
            w.previous = w.current if elapsed_windows == 1 else 0
            w.current = 0
            w.start += elapsed_windows * self.window
        overlap = 1.0 - (now - w.start) / self.window
        if w.previous * overlap + w.current >= self.limit:
            self.refused += 1
            return self._retry_after(w, now)
        w.current += 1
        return None

    def _retry_after(self, w: _Window, now: float) -> float:
        # When the current window alone is full, only its end helps; else the previous
        # window's weight must fall enough: previous * overlap(t) + current < limit.
        if w.current >= self.limit or w.previous == 0:
            return max(w.start + self.window - now, 0.001)
        below = min(max((self.limit - w.current) / w.previous, 0.0), 1.0)  # overlap < below
        wait = w.start + self.window * (1.0 - below) - now
        return max(wait, 0.001)

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, w in self._windows.items() if now - w.start >= 2 * self.window]
        for key in idle:
            del self._windows[key]
        if len(self._windows) >= MAX_TRACKED:  # all busy: forget everyone (fail open, rare)
            self._windows.clear()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
