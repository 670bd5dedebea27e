"""A one-line progress bar on stderr for long commands (dump, load, rm --prefix): shown on a
terminal, silent when stderr is a file or a pipe, so scripts see only the result."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    WIDTH = 30

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.1:
            return
        self._last = now
        rate = self.done / max(now - self.started, 1e-6)
        if self.total:
            percent = min(100, self.done * 100 // self.total)
            filled = self.WIDTH * percent // 100
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            text = f"{self.label} [{bar}] {percent:3d}% {self.done}/{self.total} ({rate:,.0f}/s)"
        else:
            text = f"{self.label} {self.done} ({rate:,.0f}/s)"
        self.stream.write("\r" + text)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
