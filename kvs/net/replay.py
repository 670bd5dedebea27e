"""Which sealed datagrams a receiver has already accepted: the replay window.

Rule: this file never reads a clock: `now_ms` (the receiver's wall clock) arrives as an
argument, so the simulator controls it. One `ReplayWindow` per receiving endpoint, owned by
its codec (`kvs.net.datagrams.DatagramCodec`), never global.

A sealed datagram carries its sender's wall-clock time and a random 12-byte nonce. It is
accepted when

1. its time is within `WINDOW_MS` (60 s) of the receiver's, either way: membership tolerates
   that much clock skew between hosts (NTP keeps real ones within milliseconds; the HLC
   already copes with far less). Outside: "stale".
2. its nonce was not accepted before: "replay". A nonce is remembered until its datagram
   could no longer pass rule 1, so every replay inside the window is caught, and one outside
   it is stale.

Memory is bounded by `capacity` nonces (default 32,768: about 6 MB at most; a node receives
a few dozen datagrams a second, so a 120 s window holds a few thousand). When it is full the
window SHRINKS rather than forgetting: the oldest remembered nonce is dropped and every
datagram sent at or before its time is refused as "stale" from then on (the floor). Nothing
that was accepted can ever be accepted again; under a flood of genuine datagrams the
tolerated skew narrows instead. The floor also holds if the receiver's clock steps back.
"""

from __future__ import annotations

import heapq
from typing import Final

from kvs.net.codec import WireError

__all__ = ["DEFAULT_CAPACITY", "WINDOW_MS", "ReplayWindow"]

WINDOW_MS: Final = 60_000
DEFAULT_CAPACITY: Final = 32_768


class ReplayWindow:
    """Admits each (time, nonce) once within the window; see the module doc."""

    __slots__ = ("_by_time", "_floor_ms", "_seen", "capacity", "window_ms")

    def __init__(self, window_ms: int = WINDOW_MS, capacity: int = DEFAULT_CAPACITY) -> None:
        if window_ms <= 0 or capacity <= 0:
            raise ValueError("window_ms and capacity must be positive")
        self.window_ms = window_ms
        self.capacity = capacity
        self._seen: set[bytes] = set()
        self._by_time: list[tuple[int, bytes]] = []  # a heap: the oldest nonce first
        self._floor_ms = -1  # datagrams sent at or before this are refused: "stale"

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def floor_ms(self) -> int:
        return self._floor_ms

    def admit(self, sent_ms: int, nonce: bytes, now_ms: int) -> None:
        """Remember `nonce`, or raise WireError("stale" or "replay") and remember nothing."""
        self._expire(now_ms - self.window_ms)
        if abs(sent_ms - now_ms) > self.window_ms or sent_ms <= self._floor_ms:
            raise WireError("stale")
        if nonce in self._seen:
            raise WireError("replay")
        while len(self._seen) >= self.capacity:
            self._forget_oldest()
            if sent_ms <= self._floor_ms:
                raise WireError("stale")
        self._seen.add(nonce)
        heapq.heappush(self._by_time, (sent_ms, nonce))

    def _expire(self, before_ms: int) -> None:
        while self._by_time and self._by_time[0][0] < before_ms:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        sent_ms, nonce = heapq.heappop(self._by_time)
        self._seen.discard(nonce)
        self._floor_ms = max(self._floor_ms, sent_ms)
