"""`Store`: the node's LMDB store, assembled from its parts.

Rule: this module only builds the state the parts share (declared in
kvs/store/environment.py) and opens the environment; what the store does lives in the part
named for it -- reads.py, writer.py (group commit), transaction.py (one op in a
transaction), maintenance.py (TTL sweep, tombstone GC), datafile.py (map growth, lease,
replace_data) -- and what is on disk in layout.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import trio

from kvs.clock import HybridLogicalClock
from kvs.model import RecordCodec
from kvs.store.jobs import WriterJob
from kvs.store.maintenance import Maintenance
from kvs.store.ops import CommitGate
from kvs.store.settings import StoreSettings
from kvs.store.writer import BATCH_SIZE_BUCKETS, Writer


class Store(Writer, Maintenance):
    """The node's LMDB store. Construct, then run `writer` inside the node's nursery.

    Reads (`get`, `scan`, `changes_after`, ...) run in the caller's task; writes (`write`,
    `put_system`, `maintain`, `replace_data`) wait for the writer task's commit. Listeners
    (`listeners`, `replaced_listeners`) are told, in the writer task, what each commit did.

    The parts build on one another in the order they need each other: Environment (state,
    opening) <- Reads <- DataFile (replace_data reads the records it carries over) <- Writer
    (runs replace jobs, grows the map); Maintenance needs only the Environment."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: HybridLogicalClock,
        new_uuid: Callable[[], str],
        settings: StoreSettings,
        in_thread: bool = True,
        max_pending: int = 65_536,
        commit_gate: CommitGate | None = None,
    ) -> None:
        self.path = Path(path)
        self.settings = settings
        self._map_size = settings.lmdb_map_size
        self.clock = clock
        self._new_uuid = new_uuid
        self.history_depth = settings.history_depth
        self._in_thread = in_thread
        self._commit_gate = commit_gate
        self._sync = settings.durability == "fsync"
        self._read_codec = RecordCodec(settings.compression_level)
        self._write_codec = RecordCodec(settings.compression_level)
        self._open_env()
        self._send, self._receive = trio.open_memory_channel[WriterJob](max_pending)
        self.listeners = []
        self.replaced_listeners = []
        self._lease = threading.Lock()
        self.release_pages_after_commit = False
        self.identity = None
        self.stats = {"transactions": 0, "ops": 0, "map_grows": 0, "last_batch": 0, "max_batch": 0}
        self.batch_sizes = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        self.publishing = False
