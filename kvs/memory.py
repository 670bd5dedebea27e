"""Handing memory the process has freed back to the operating system, and the garbage
collector's settings for a server process.

glibc keeps freed memory inside its heaps for reuse, and returns to the system only what
lies at a heap's top. After a large request (a 29 MiB batch) the freed blocks sit between
live ones, so the resident size stayed at its peak and grew with every such request
(measured: 62 -> 334 MB over five batches, one at a time). `malloc_trim(0)` releases the
free pages anywhere in the heaps; it takes microseconds. Elsewhere (musl, macOS) it does not
exist and this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_looked_up = False


def release_free_memory() -> bool:
    """Return freed heap memory to the operating system; False where that is not possible."""
    global _trim, _looked_up
    if not _looked_up:
        _looked_up = True
        name = ctypes.util.find_library("c")
        try:
            _trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):
            _trim = None
    if _trim is None:
        return False
    _trim(0)
    return True


def tune_gc() -> None:
    """Garbage collection for a server process (a node's or an HTTP worker's), called once
    start-up has loaded everything.

    Every request and every key of a bulk write allocates dozens of short-lived objects,
    nearly all freed by reference counting; with the default thresholds the cyclic
    collector still ran every 700 allocations and walked everything start-up had loaded.
    Freezing what exists now and collecting the young generation every 50,000 allocations
    took 15-20 % off the CPU of a bulk write (measured in process)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
