"""Replication's numbers: the settings a node chooses, and the fixed bounds beside them.

Every part of kvs/sync reads these as `limits.NAME` when it uses them, never through
`from kvs.sync.limits import NAME`: a test can then shorten a timeout or a batch for every
part at once with `monkeypatch.setattr(limits, NAME, ...)`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kvs.net.frames import MAX_FRAME_BYTES
from kvs.sync import protocol as p


@dataclass(frozen=True)
class SyncSettings:
    """What a node chose (its configuration, `kvs.config.declaration`, documents each one and
    writes its default); the fixed bounds are the constants below."""

    sync_interval: float
    tombstone_ttl: float
    max_json_size: int  # the largest value a peer may send
    max_clock_offset: float
    sync_throttle_delay: float  # pause between batches of an exchange (bootstrap pacing)
    sync_max_connections: int  # inbound sync connections served at once; more are refused
    sync_snapshot_min_keys: int
    """A joiner copies a peer's whole data file (kvs/sync/snapshot.py) when the peer holds at
    least this many keys; fewer, or 0, and it takes the records one by one."""

    @property
    def tombstone_ttl_ms(self) -> int:
        return int(self.tombstone_ttl * 1000)

    @property
    def max_clock_offset_ms(self) -> int:
        return int(self.max_clock_offset * 1000)


MAX_FUTURE_MS = 86_400_000
"""A record from a peer whose HLC is further ahead of our wall clock than this is refused
(counted in `refused_future`), not stored: taken, it would drag our clock (and every write
after) that far ahead, up to the HLC's ceiling. Peers' clocks a little ahead are normal
(max_clock_offset logs them); a day ahead is broken. The refused record comes again with
anti-entropy, and is taken once our clock is within reach of it."""

REQUEST_TIMEOUT = 10.0  # a peer must answer each request (and send each frame) within this
IDLE_TIMEOUT = 120.0  # a server closes a connection on which no request began for this long
PUSHES_IN_FLIGHT = 4  # pushes a server connection merges at once (push link, not durable)
KEEPALIVE = IDLE_TIMEOUT / 4  # an idle push connection says something this often
PUSH_QUEUE_LIMIT = 10_000  # keys waiting for one peer; beyond it anti-entropy takes over
SNAPSHOT_MAX_CARRIED = 10_000  # a joiner holding more bootstraps by records only
PUSH_BATCH = 500
MAX_PEERS_SHOWN = 1024  # peers whose last exchange /cluster/stats remembers
FETCH_BATCH = p.MAX_KEYS_PER_REQUEST
LEAF_BATCH = p.MAX_LEAVES_PER_REQUEST  # leaves listed (or taken whole) per request
# Batches are cut by bytes too: a frame over MAX_FRAME_BYTES cannot be sent at all (and the
# send raises ValueError, which is not an I/O error), and values may be up to 1 MiB each.
FRAME_BUDGET = MAX_FRAME_BYTES // 4
MERGE_BATCH = 2000  # fetched records merged per transaction (LMDB holds its pages in memory)
BOOTSTRAP_RETRY = 0.5  # seconds between exchanges while syncing (not sync_interval)
BOOTSTRAP_GRACE = 10.0  # seconds a syncing node looks for a peer with data before it concludes
# that the cluster is new (every live peer is syncing too) and starts taking writes


def by_bytes(raws: list[bytes]) -> Iterator[list[bytes]]:
    """`raws` in consecutive runs of at most FRAME_BUDGET bytes (a record alone may exceed
    it only if it exceeds FRAME_BUDGET itself), so that every push fits one frame."""
    chunk: list[bytes] = []
    size = 0
    for raw in raws:
        if chunk and size + len(raw) > FRAME_BUDGET:
            yield chunk
            chunk, size = [], 0
        chunk.append(raw)
        size += len(raw)
    if chunk:
        yield chunk
