"""What travels the writer's queue: client writes, maintenance, and snapshot swaps.

Rule: these are the only ways to ask the writer task (kvs/store/writer.py) for work. Each
carries what the caller waits on; the writer runs them in queue order, so a job sees every
write queued before it and none after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from kvs.model import Version
from kvs.store.ops import Op, Outcome


@dataclass
class WriteRequest:
    """One caller's ops, applied atomically in the next group commit."""

    ops: list[Op]
    versions: list[Version | None] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)
    system: dict[str, Any] = field(default_factory=dict)  # system-db entries to write too


class MaintenanceJob:
    """The writer runs it in a transaction of its own batch: TTL sweep and tombstone GC
    (kvs/store/maintenance.py)."""

    def __init__(self, now_ms: int, tombstone_before_hlc: int, limit: int) -> None:
        self.now_ms = now_ms
        self.tombstone_before_hlc = tombstone_before_hlc
        self.limit = limit
        self.removed = 0


class ReplaceJob:
    """The writer runs it between transactions: put a verified snapshot in place of the data
    file (kvs/store/datafile.py)."""

    def __init__(self, staged: Path, installed: Callable[[], None]) -> None:
        self.staged = staged
        self.installed = installed
        self.carried: list[bytes] = []
        self.error: BaseException | None = None
        self.done = trio.Event()


WriterJob = WriteRequest | MaintenanceJob | ReplaceJob
