"""Faults under a simulated node's store: a `kvs.store.CommitGate` that fails commits as a
disk would (the simulator's twin of a bad disk; production passes no gate).

What a node does on each (docs/architecture.md, "Disk faults"): a commit that fails -- EIO
from a failed fsync or write, ENOSPC -- is aborted whole by LMDB (its meta page, the commit
point, is written and synced only after the data pages were), so nothing of it is durable or
visible, after a restart either. Its callers are answered with an error and never with an
acknowledgement; the writer tries each request of the batch once more on its own; the node
stays up and serves reads. A failed write of the node's own state (its incarnation) ends the
node, on purpose. A torn write at a crash is LMDB's to survive: a crash between the data
pages and the meta page leaves the previous commit in force.
"""

from __future__ import annotations

import errno
import os
import random
from dataclasses import dataclass, field

__all__ = ["DiskFaults"]


@dataclass
class DiskFaults:
    """Fails each commit with probability `rate` while `rate` > 0, with an errno drawn from
    `kinds`; counts what it did. Draws from its own seeded generator only when active."""

    rng: random.Random
    rate: float = 0.0
    kinds: tuple[int, ...] = (errno.EIO, errno.ENOSPC)
    failed: dict[str, int] = field(default_factory=dict)
    commits: int = 0

    @property
    def active(self) -> bool:
        return self.rate > 0

    def before_commit(self, ops: int) -> None:
        self.commits += 1
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return
        code = self.kinds[self.rng.randrange(len(self.kinds))]
        name = errno.errorcode[code]
        self.failed[name] = self.failed.get(name, 0) + 1
        raise OSError(code, f"simulated disk fault: {os.strerror(code)}")
