"""The store's LMDB environment: opening it, its system entries, the node's identity.

Rule: `Environment` declares every piece of state the parts of the store share (the parts
are its subclasses, and `Store` combines them), and opens what is on disk -- the schema
checked, the bucket index complete, the clock moved past the HLC it persisted. It never
writes a record: records change only in the writer's transactions (kvs/store/writer.py);
what it writes itself is the schema and a missing bucket index at open, and system entries
before the writer runs (`ensure_identity`, `set_system_now`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import trio

from kvs.clock import MAX_HLC, HybridLogicalClock
from kvs.model import RecordCodec
from kvs.private_files import FILE_MODE, private_dir
from kvs.store.jobs import WriterJob
from kvs.store.layout import (
    CLOCK,
    DATA_FILE,
    IDENTITY,
    LMDB_MAX_KEY,
    MAX_DBS,
    SCHEMA,
    SCHEMA_VERSION,
    bucket_key,
    open_databases,
    pack_summary,
    pack_value,
    system_key,
    unpack_value,
)
from kvs.store.ops import CommitGate, CommitListener, Identity, ReplacedListener, StoreError

log = logging.getLogger(__name__)


class Environment:
    """The state of one store, and the opening of its LMDB environment."""

    path: Path
    clock: HybridLogicalClock
    history_depth: int
    identity: Identity | None
    _new_uuid: Callable[[], str]
    _map_size: int
    _in_thread: bool
    _commit_gate: CommitGate | None  # disk faults under each commit (the simulator's seam)
    _sync: bool
    _read_codec: RecordCodec  # reads, in the event loop
    _write_codec: RecordCodec  # the writer's transactions, maybe in a worker thread
    # The environment and its databases (see kvs/store/layout.py); all replaced together
    # when `replace_data` puts a snapshot in place.
    _env: lmdb.Environment
    _records: Any
    _changes: Any
    _history: Any
    _expiry: Any
    _tombstones: Any
    _system: Any
    _buckets: Any
    _map_ranges: list[tuple[int, int]] | None  # the map's address ranges (release_mapped_pages)
    # Held by a thread that uses the environment outside the writer (a backup's copy):
    # `replace_data` closes the environment only when no one holds it.
    _lease: threading.Lock
    _send: trio.MemorySendChannel[WriterJob]  # the writer's queue
    _receive: trio.MemoryReceiveChannel[WriterJob]
    listeners: list[CommitListener]
    # Called after `replace_data` put a snapshot in place: no Change is published for the
    # records it brought, so whoever caches what the store holds must forget it here.
    replaced_listeners: list[ReplacedListener]
    # Set while a bootstrap writes all over the file: the data file's pages are released
    # (see release_mapped_pages) every few hundred changes and after each commit.
    release_pages_after_commit: bool
    stats: dict[str, int]
    batch_sizes: list[int]  # write batches by size (BATCH_SIZE_BUCKETS, plus one overflow)
    # True from before a batch's commit until its listeners have run: a read made then may
    # see changes no listener has been told of yet (a watch replay must not send them twice).
    publishing: bool

    def _map_size_for(self, directory: Path) -> int:
        """The configured map, or room to grow for a data file already larger (a snapshot
        from a peer with a larger map)."""
        data_file = directory / DATA_FILE
        return max(self._map_size, 2 * data_file.stat().st_size if data_file.exists() else 0)

    def _open_env(self) -> None:
        """Open the environment in `path` and make it ready: schema checked, bucket index
        complete, the clock past the HLC it persisted (at start-up, and after
        `replace_data`)."""
        self._map_ranges = None
        try:
            private_dir(self.path)
            self._env = lmdb.open(
                str(self.path),
                map_size=self._map_size_for(self.path),
                max_dbs=MAX_DBS,
                sync=self._sync,
                metasync=self._sync,
                max_readers=256,
                mode=FILE_MODE,  # data.mdb and lock.mdb: the owner's only, whatever the umask
            )
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open the LMDB store in {self.path}: {exc}") from None
        env = self._env
        if env.max_key_size() < LMDB_MAX_KEY:
            raise StoreError(f"this LMDB build takes keys of {env.max_key_size()} bytes at most")
        (
            self._records,
            self._changes,
            self._history,
            self._expiry,
            self._tombstones,
            self._system,
            self._buckets,
        ) = open_databases(env)
        self._check_schema()
        self._ensure_bucket_index()
        persisted = self._get_system(CLOCK)
        if type(persisted) is int and persisted > MAX_HLC:
            # Persisted before peers' records were bounded (a record from "the year 292
            # million" moved the clock there): followed, every write after would carry an
            # HLC no peer accepts. Writes to keys holding such a record lose to it.
            log.warning(
                "the persisted clock reading is beyond any real time (%d ms); ignoring it",
                persisted >> 16,
            )
        elif type(persisted) is int and persisted > 0:
            self.clock.observe(persisted)

    def _check_schema(self) -> None:
        schema = self._get_system(SCHEMA)
        if schema is None:
            with self._env.begin(write=True, db=self._system) as txn:
                txn.put(system_key(SCHEMA), pack_value(SCHEMA_VERSION))
        elif schema != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} holds schema version {schema}; this release reads version {SCHEMA_VERSION}"
            )

    def _ensure_bucket_index(self) -> None:
        """Build the bucket index for a store written before it existed."""
        with self._env.begin() as txn:
            records = txn.stat(self._records)["entries"]
            indexed = txn.stat(self._buckets)["entries"]
        if records == indexed:
            return
        log.info("building the sync bucket index for %d records", records)
        with self._env.begin(write=True) as txn:
            txn.drop(self._buckets, delete=False)
            cursor = txn.cursor(db=self._records)
            for key_b, raw in cursor:
                record = self._read_codec.decode(raw)
                txn.put(bucket_key(record.key, key_b), pack_summary(record), db=self._buckets)

    # --- system entries and identity --------------------------------------------------------

    def _get_system(self, name: str) -> Any:
        with self._env.begin(db=self._system) as txn:
            raw = txn.get(system_key(name))
        return None if raw is None else unpack_value(raw)

    def get_system(self, name: str) -> Any:
        """A value from the system database (node identity, incarnation, ...), or None."""
        return self._get_system(name)

    def set_system_now(self, name: str, value: Any) -> None:
        """Store a system value at once, before the writer runs (start-up only)."""
        with self._env.begin(write=True, db=self._system) as txn:
            txn.put(system_key(name), pack_value(value))

    def ensure_identity(self, node_id: str, now_ms: int) -> Identity:
        """The node's persisted identity; joined_timestamp is set on the very first start only."""
        stored = self._get_system(IDENTITY)
        if stored is None:
            stored = {"node_id": node_id, "joined_timestamp": now_ms}
        elif stored.get("node_id") != node_id:
            log.warning(
                "data_dir %s was last used by node %s; continuing as %s with the same joined_timestamp",
                self.path,
                stored.get("node_id"),
                node_id,
            )
            stored = {"node_id": node_id, "joined_timestamp": stored["joined_timestamp"]}
        with self._env.begin(write=True, db=self._system) as txn:
            txn.put(system_key(IDENTITY), pack_value(stored))
        self.identity = Identity(
            node_id=stored["node_id"], joined_timestamp=stored["joined_timestamp"]
        )
        return self.identity

    # --- the environment itself -------------------------------------------------------------

    @property
    def env(self) -> lmdb.Environment:
        """The LMDB environment, for a consistent copy (kvs/sync/snapshot.py); never for
        writes. Only within an event-loop step: `replace_data` may close it between steps."""
        return self._env

    def info(self) -> dict[str, int]:
        env_info = self._env.info()
        stat = self._env.stat()
        return {
            "map_size": env_info["map_size"],
            "used_bytes": (env_info["last_pgno"] + 1) * stat["psize"],
        }

    def sync_to_disk(self) -> None:
        """Flush to disk (durability: os mode calls this periodically)."""
        self._env.sync(True)

    def close(self) -> None:
        self._env.close()
