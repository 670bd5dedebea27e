"""LMDB storage: records, indexes, history, and the group-commit writer.

Layout (one LMDB environment, named databases):

    records    key                      -> encoded Record (the current version, or a tombstone)
    changes    hlc(8) + key             -> b""   one entry per key: its current version's HLC
    history    key + 0x00 + hlc(8)      -> encoded Record (previous versions, newest kept)
    expiry     expires_at(8) + key      -> b""   keys with a TTL, soonest first
    tombstones hlc(8) + key             -> b""   deletes and expired records, oldest first, for GC
    system     name                     -> msgpack value (node identity, persisted HLC, schema)
    buckets    bucket(2) + key          -> version summary: what anti-entropy compares, listed
                                           per sync bucket without decoding any value

`key` is the key's UTF-8 bytes, or for a key too long for LMDB a fixed-size stand-in (see
`_storage_key`).

Every write goes through one writer task (group commit): it drains all pending requests,
applies them in one write transaction -- in a worker thread, so a slow fsync never blocks
the event loop -- and answers each caller only after the commit is durable. Reads open a
short read transaction in the event loop and never hold it across an await.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import struct
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import trio

from kvs.clock import MAX_HLC, HybridLogicalClock
from kvs.model import (
    DEFAULT_PERMISSIONS,
    SYSTEM_PREFIX,
    Record,
    RecordCodec,
    Version,
    hlc_pack,
    sync_bucket,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Group commit stops taking more requests at this many ops. Large transactions run on the
# event loop (see Store._commit), which cannot answer anything meanwhile: ~2,000 ops is
# ~35-60 ms of it here, well inside the membership's probe timeout (250 ms by default) even
# on a machine several times slower.
MAX_OPS_PER_TRANSACTION = 2048
INLINE_TRANSACTION_OPS = 64  # from this many ops on, a transaction runs on the event loop
# Upper bounds of the group-commit batch-size histogram (ops per transaction), for /metrics.
MAINTENANCE_BATCH = 2_000  # expired records or old tombstones handled per transaction
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, MAX_OPS_PER_TRANSACTION)
_U64 = struct.Struct(">Q")
_SCAN_CHUNK = 256
_RELEASE_EVERY_OPS = 100

# LMDB refuses keys over 511 bytes and the indexes add up to 9 bytes to a key (history: key +
# 0x00 + hlc), but a KVS key may be 1024 bytes. A key of up to _RAW_KEY_BYTES is stored as
# itself; a longer one as its first _RAW_KEY_BYTES bytes + 0xFF + a hash of the whole key.
# 0xFF never occurs in UTF-8, so storage order is still key order, except among long keys
# that share their first _RAW_KEY_BYTES bytes (a "group", contiguous in LMDB): `scan` sorts
# those itself.
_LMDB_MAX_KEY = 511
_INDEX_OVERHEAD = 9
_HASH_BYTES = 16
_RAW_KEY_BYTES = _LMDB_MAX_KEY - _INDEX_OVERHEAD - 1 - _HASH_BYTES
_LONG_MARK = b"\xff"


def _storage_key(key: str) -> bytes:
    raw = key.encode()
    if len(raw) <= _RAW_KEY_BYTES:
        return raw
    digest = hashlib.blake2b(raw, digest_size=_HASH_BYTES).digest()
    return raw[:_RAW_KEY_BYTES] + _LONG_MARK + digest


def index_entries(
    record: Record, pack: Callable[[Any], bytes] = msgpack.packb
) -> tuple[bytes, bytes, bytes]:
    """(storage key, bucket key, summary): where the store files `record`, for checking a
    snapshot from a peer (kvs/sync/snapshot.py)."""
    key_b = _storage_key(record.key)
    return key_b, _bucket_key(record.key, key_b), _summary(record, pack)


def _same_long_group(a: bytes, b: bytes) -> bool:
    return (
        len(a) > _RAW_KEY_BYTES
        and len(b) > _RAW_KEY_BYTES
        and a[:_RAW_KEY_BYTES] == b[:_RAW_KEY_BYTES]
    )


def _scan_stop(end: bytes) -> bytes:
    """The storage position at and after which every key is >= `end`."""
    if len(end) <= _RAW_KEY_BYTES:
        return end
    return end[:_RAW_KEY_BYTES] + _LONG_MARK * (_HASH_BYTES + 2)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class StoreError(Exception):
    """The store cannot be opened or used (bad data dir, wrong schema, disk trouble)."""


# --- write requests ---------------------------------------------------------------------------

# The value classes below are built per op on the write and read paths. They are not
# `frozen`: a frozen dataclass costs ~0.5 µs more to construct (measured: 730 vs 206 ns for
# four fields), several times per key. Treat them as immutable all the same.


@dataclass(slots=True, unsafe_hash=True)
class Put:
    key: str
    value: bytes
    expires_at: int | None = None
    if_match: str | None = None  # compare-and-set against the current version's uuid
    owner: str = ""  # a new key's owner and group (the writing user and their primary group)
    group: str = ""
    meta: tuple[str, str, int] | None = None  # replace owner, group, permissions (metadata PUT)


@dataclass(slots=True, unsafe_hash=True)
class Delete:
    key: str
    must_exist: bool = True  # False: deleting an absent key is a no-op (batch semantics)


@dataclass(slots=True, unsafe_hash=True)
class Merge:
    """A record from another replica: stored only if it wins under `resolve`. `raw`, when
    given, is the record as the peer encoded it, stored as is (no re-encoding)."""

    record: Record
    raw: bytes | None = None


Op = Put | Delete | Merge


@dataclass(slots=True, unsafe_hash=True)
class Written:
    record: Record


@dataclass(slots=True, unsafe_hash=True)
class NotFound:
    key: str


@dataclass(slots=True, unsafe_hash=True)
class Conflict:
    key: str
    current_uuid: str | None


@dataclass(slots=True, unsafe_hash=True)
class Unchanged:
    """A Merge that lost to the version already stored, or a no-op delete."""

    key: str


Outcome = Written | NotFound | Conflict | Unchanged


@dataclass(slots=True, unsafe_hash=True)
class Change:
    """What one committed op did; handed to listeners (Merkle tree, watchers, replication)."""

    old: Record | None
    new: Record | None  # None: the record was removed (tombstone GC)
    local: bool  # a client's write here (replication pushes it); not a merge or an expiry


@dataclass
class _Request:
    ops: list[Op]
    versions: list[Version | None] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)
    system: dict[str, Any] = field(default_factory=dict)  # system-db entries to write too


class _Maintenance:
    """Marker ops the writer runs itself: TTL sweep and tombstone GC."""

    def __init__(self, now_ms: int, tombstone_before_hlc: int, limit: int) -> None:
        self.now_ms = now_ms
        self.tombstone_before_hlc = tombstone_before_hlc
        self.limit = limit
        self.removed = 0


class _Replace:
    """Marker the writer runs itself: put a verified snapshot in place of the data file."""

    def __init__(self, staged: Path, installed: Callable[[], None]) -> None:
        self.staged = staged
        self.installed = installed
        self.carried: list[bytes] = []
        self.error: BaseException | None = None
        self.done = trio.Event()


class _GrowMap(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Identity:
    node_id: str
    joined_timestamp: int


def _hlc_key(hlc: int, key: bytes) -> bytes:
    return _U64.pack(hlc) + key


_BUCKET = struct.Struct(">H")


def _bucket_key(key: str, key_b: bytes) -> bytes:
    return _BUCKET.pack(sync_bucket(key)) + key_b


def _summary(record: Record, pack: Callable[[Any], bytes] = msgpack.packb) -> bytes:
    v = record.version
    return pack(
        [record.key, v.hlc, v.origin_joined, v.origin, v.uuid, record.deleted, record.expires_at]
    )


@dataclass(slots=True, unsafe_hash=True)
class Summary:
    """What anti-entropy knows of a record without reading its value."""

    key: str
    version: Version
    deleted: bool
    expires_at: int | None


def _read_summary(raw: bytes) -> Summary:
    key, hlc, joined, origin, uid, deleted, expires_at = msgpack.unpackb(raw)
    return Summary(key, Version(hlc, joined, origin, uid), deleted, expires_at)


def _history_prefix(key: bytes) -> bytes:
    return key + b"\x00"


class Store:
    """The node's LMDB store. Construct, then run `writer` inside the node's nursery."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: HybridLogicalClock,
        new_uuid: Callable[[], str],
        map_size: int = 1 << 30,
        durability: str = "fsync",
        compression_level: int = 3,
        history_depth: int = 3,
        in_thread: bool = True,
        max_pending: int = 65_536,
    ) -> None:
        self.path = Path(path)
        self._map_size = map_size
        self.clock = clock
        self._new_uuid = new_uuid
        self.history_depth = history_depth
        self._in_thread = in_thread
        self._sync = durability == "fsync"
        self._read_codec = RecordCodec(compression_level)
        self._write_codec = RecordCodec(compression_level)
        self._open_env()
        self._send, self._receive = trio.open_memory_channel[_Request | _Maintenance | _Replace](
            max_pending
        )
        self.listeners: list[Callable[[list[Change]], None]] = []
        # Called after `replace_data` put a snapshot in place: no Change is published for the
        # records it brought, so whoever caches what the store holds must forget it here.
        self.replaced_listeners: list[Callable[[], None]] = []
        # Held by a thread that uses the environment outside the writer (a backup's copy):
        # `replace_data` closes the environment only when no one holds it.
        self._lease = threading.Lock()
        # Set while a bootstrap writes all over the file: the data file's pages are released
        # (see release_mapped_pages) every _RELEASE_EVERY_OPS changes and after each commit.
        self.release_pages_after_commit = False
        self.identity: Identity | None = None
        self.stats = {"transactions": 0, "ops": 0, "map_grows": 0, "last_batch": 0, "max_batch": 0}
        # Write batches by size: counts per BATCH_SIZE_BUCKETS bound (plus one overflow slot).
        self.batch_sizes = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
        # True from before a batch's commit until its listeners have run: a read made then may
        # see changes no listener has been told of yet (a watch replay must not send them twice).
        self.publishing = False

    def _map_size_for(self, directory: Path) -> int:
        """The configured map, or room to grow for a data file already larger (a snapshot
        from a peer with a larger map)."""
        data_file = directory / "data.mdb"
        return max(self._map_size, 2 * data_file.stat().st_size if data_file.exists() else 0)

    def _open_env(self) -> None:
        """Open the environment in `path` and make it ready: schema checked, bucket index
        complete, the clock past the HLC it persisted (at start-up, and after
        `replace_data`)."""
        self._map_ranges: list[tuple[int, int]] | None = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(
                str(self.path),
                map_size=self._map_size_for(self.path),
                max_dbs=8,
                sync=self._sync,
                metasync=self._sync,
                max_readers=256,
            )
        except (OSError, lmdb.Error) as exc:
            raise StoreError(f"cannot open the LMDB store in {self.path}: {exc}") from None
        env = self._env
        if env.max_key_size() < _LMDB_MAX_KEY:
            raise StoreError(f"this LMDB build takes keys of {env.max_key_size()} bytes at most")
        self._records = env.open_db(b"records")
        self._changes = env.open_db(b"changes")
        self._history = env.open_db(b"history")
        self._expiry = env.open_db(b"expiry")
        self._tombstones = env.open_db(b"tombstones")
        self._system = env.open_db(b"system")
        self._buckets = env.open_db(b"buckets")
        self._check_schema()
        self._ensure_bucket_index()
        persisted = self._get_system("hlc")
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

    # --- identity and schema ----------------------------------------------------------------

    def _get_system(self, name: str) -> Any:
        with self._env.begin(db=self._system) as txn:
            raw = txn.get(name.encode())
        return None if raw is None else msgpack.unpackb(raw)

    def _check_schema(self) -> None:
        schema = self._get_system("schema")
        if schema is None:
            with self._env.begin(write=True, db=self._system) as txn:
                txn.put(b"schema", msgpack.packb(SCHEMA_VERSION))
        elif schema != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} holds schema version {schema}; this release reads version {SCHEMA_VERSION}"
            )

    def ensure_identity(self, node_id: str, now_ms: int) -> Identity:
        """The node's persisted identity; joined_timestamp is set on the very first start only."""
        stored = self._get_system("identity")
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
            txn.put(b"identity", msgpack.packb(stored))
        self.identity = Identity(
            node_id=stored["node_id"], joined_timestamp=stored["joined_timestamp"]
        )
        return self.identity

    def close(self) -> None:
        self._env.close()

    @property
    def env(self) -> lmdb.Environment:
        """The LMDB environment, for a consistent copy (kvs/sync/snapshot.py); never for
        writes. Only within an event-loop step: `replace_data` may close it between steps."""
        return self._env

    def lease_env_nowait(self) -> bool:
        """Take the lease of `lease_env` from the event loop, if free; `release_env` ends it."""
        return self._lease.acquire(blocking=False)

    def release_env(self) -> None:
        self._lease.release()

    @contextlib.contextmanager
    def lease_env(self) -> Iterator[lmdb.Environment]:
        """The environment for a worker thread (a backup's copy): `replace_data` waits until
        it is given back before it closes the environment."""
        with self._lease:
            yield self._env

    # --- reads (event loop, short transactions) ------------------------------------------------

    def get(self, key: str) -> Record | None:
        """The stored record, tombstones and expired records included (callers decide)."""
        with self._env.begin(db=self._records) as txn:
            raw = txn.get(_storage_key(key))
        return None if raw is None else self._read_codec.decode(raw)

    def get_live(self, key: str) -> Record | None:
        record = self.get(key)
        if record is None or not record.live(self.clock.wall_ms()):
            return None
        return record

    def history(self, key: str, limit: int | None = None) -> list[Record]:
        """Previous versions of a key, newest first."""
        key_b = _storage_key(key)
        prefix = _history_prefix(key_b)
        out: list[Record] = []
        with self._env.begin(db=self._history) as txn:
            cursor = txn.cursor()
            # Seek just past this key's entries and walk backwards: newest first.
            end = key_b + b"\x01"
            positioned = cursor.set_range(end)
            if not positioned:
                positioned = cursor.last()
            elif positioned:
                positioned = cursor.prev()
            while positioned and (limit is None or len(out) < limit):
                k = cursor.key()
                if not k.startswith(prefix):
                    break
                out.append(self._read_codec.decode(cursor.value()))
                if limit is not None and len(out) >= limit:
                    break
                positioned = cursor.prev()
        return out

    # --- what sync needs -------------------------------------------------------------------------

    def bucket_summaries(self, buckets: list[int]) -> list[Summary]:
        """Every record's summary in the given sync buckets (bucket order, then key order)."""
        out: list[Summary] = []
        with self._env.begin(db=self._buckets) as txn:
            cursor = txn.cursor()
            for bucket in sorted(set(buckets)):
                prefix = _BUCKET.pack(bucket)
                ok = cursor.set_range(prefix)
                while ok and cursor.key()[:2] == prefix:
                    out.append(_read_summary(cursor.value()))
                    ok = cursor.next()
        return out

    def iter_summaries(self, chunk: int = 4096) -> Iterator[Summary]:
        """All summaries, a short read transaction per chunk (for rebuilding the Merkle tree)."""
        for _, raw in self.iter_raw_items("buckets", chunk):
            yield _read_summary(raw)

    def iter_raw_items(
        self, db_name: str = "records", chunk: int = 4096
    ) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one database as stored: records by storage key, or
        (`"buckets"`) summaries by bucket key; a short read transaction per chunk (for
        checking a snapshot from a peer, rebuilding the Merkle tree)."""
        db = {"records": self._records, "buckets": self._buckets}[db_name]
        position = b""
        while True:
            batch: list[tuple[bytes, bytes]] = []
            with self._env.begin(db=db) as txn:
                cursor = txn.cursor()
                ok = cursor.set_range(position)
                if ok and position and cursor.key() == position:
                    ok = cursor.next()
                while ok and len(batch) < chunk:
                    batch.append((cursor.key(), cursor.value()))
                    ok = cursor.next()
            yield from batch
            if len(batch) < chunk:
                return
            position = batch[-1][0]

    def get_many(self, keys: list[str]) -> list[Record]:
        """The stored records (tombstones included) for `keys`; absent keys are skipped."""
        out: list[Record] = []
        with self._env.begin(db=self._records) as txn:
            for key in keys:
                raw = txn.get(_storage_key(key))
                if raw is not None:
                    out.append(self._read_codec.decode(raw))
        return out

    def get_raw_many(self, keys: list[str]) -> list[bytes]:
        """Encoded records for `keys` (what sync sends: no decode, no re-encode)."""
        out: list[bytes] = []
        with self._env.begin(db=self._records) as txn:
            for key in keys:
                raw = txn.get(_storage_key(key))
                if raw is not None:
                    out.append(bytes(raw))
        return out

    def get_raw_within(self, keys: list[str], max_bytes: int) -> tuple[list[bytes], int]:
        """Encoded records for the longest prefix of `keys` (one key at least) whose records
        fit in `max_bytes`, and the length of that prefix: a sync reply must fit one frame
        whatever the values' sizes. Absent keys are skipped but count in the prefix."""
        out: list[bytes] = []
        size = 0
        with self._env.begin(db=self._records) as txn:
            for done, key in enumerate(keys):
                raw = txn.get(_storage_key(key))
                if raw is None:
                    continue
                if out and size + len(raw) > max_bytes:
                    return out, done
                out.append(bytes(raw))
                size += len(raw)
        return out, len(keys)

    def bucket_records_within(self, groups: list[range], max_bytes: int) -> tuple[list[bytes], int]:
        """Encoded records of every key in the sync buckets of the longest prefix of `groups`
        (each a range of buckets: one Merkle leaf) that fits in `max_bytes`, and the length
        of that prefix -- whole groups only, so it may be 0. Bucket order, then key order."""
        out: list[bytes] = []
        size = 0
        with self._env.begin() as txn:
            index = txn.cursor(db=self._buckets)
            records = txn.cursor(db=self._records)
            for done, group in enumerate(groups):
                if not group:
                    continue
                first, stop = _BUCKET.pack(group.start), group.stop
                taken: list[bytes] = []
                more = 0
                ok = index.set_range(first)
                while ok:
                    k = index.key()
                    if _BUCKET.unpack_from(k)[0] >= stop:
                        break
                    raw = records.get(k[2:])
                    if raw is not None:
                        taken.append(raw)
                        more += len(raw)
                    ok = index.next()
                if size + more > max_bytes:
                    return out, done
                out += taken
                size += more
        return out, len(groups)

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
                txn.put(_bucket_key(record.key, key_b), _summary(record), db=self._buckets)

    def count(self) -> int:
        """Stored client keys that are not tombstones (expired-but-unswept keys included);
        system records (users, groups, tokens under SYSTEM_PREFIX) are not counted."""
        with self._env.begin() as txn:
            records = txn.stat(self._records)["entries"]
            tombstones = txn.stat(self._tombstones)["entries"]
        return records - tombstones - self.count_system()

    def count_system(self) -> int:
        """Live-or-expired (not tombstone) system records: a short scan of their range."""
        start = SYSTEM_PREFIX.encode()
        end = start[:-1] + b"0"  # the byte after "/"
        count = 0
        with self._env.begin(db=self._records) as txn:
            cursor = txn.cursor()
            ok = cursor.set_range(start)
            while ok and cursor.key() < end:
                # A tombstone's value field is nil; decoding is the sure way to tell.
                if self._read_codec.decode(cursor.value()).value is not None:
                    count += 1
                ok = cursor.next()
        return count

    def tombstone_count(self) -> int:
        """Tombstones (deletes and expired records) not yet collected."""
        with self._env.begin() as txn:
            return int(txn.stat(self._tombstones)["entries"])

    def info(self) -> dict[str, int]:
        env_info = self._env.info()
        stat = self._env.stat()
        return {
            "map_size": env_info["map_size"],
            "used_bytes": (env_info["last_pgno"] + 1) * stat["psize"],
        }

    def scan(self, start: str, end: str | None = None) -> Iterator[Record]:
        """Records with start <= key < end in key order. Re-opens the read transaction per chunk
        so a slow consumer never pins old pages for long."""
        start_b = start.encode()
        end_b = end.encode() if end is not None else None
        stop = _scan_stop(end_b) if end_b is not None else None
        position, inclusive = start_b[:_RAW_KEY_BYTES], True
        while True:
            entries: list[tuple[bytes, bytes]] = []
            with self._env.begin(db=self._records) as txn:
                cursor = txn.cursor()
                ok = cursor.set_range(position)
                if ok and not inclusive and cursor.key() == position:
                    ok = cursor.next()
                while ok:
                    k = cursor.key()
                    if stop is not None and k >= stop:
                        ok = False
                        break
                    # A chunk never splits a long-key group: it is sorted as a whole below.
                    if len(entries) >= _SCAN_CHUNK and not _same_long_group(entries[-1][0], k):
                        break
                    entries.append((k, cursor.value()))
                    ok = cursor.next()
            records = [self._read_codec.decode(value) for _, value in entries]
            records.sort(key=lambda r: r.key.encode())
            for record in records:
                key_b = record.key.encode()
                if key_b >= start_b and (end_b is None or key_b < end_b):
                    yield record
            if not ok or not entries:
                return
            position, inclusive = entries[-1][0], False

    def seek(self, start: str) -> Record | None:
        """The first record whose key is >= start, or None."""
        return next(self.scan(start), None)

    def changes_after(self, after_hlc: int, after_key: str | None, limit: int) -> list[Record]:
        """Current versions in time-index order, strictly after the position `(after_hlc,
        after_key)` -- or after every entry with `after_hlc` when `after_key` is None. Entries
        with equal HLCs are in storage-key order (key order, but for very long keys)."""
        if after_key is None:
            position, skip = _U64.pack(after_hlc + 1), None
        else:
            position = skip = _hlc_key(after_hlc, _storage_key(after_key))
        out: list[Record] = []
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._changes)
            ok = cursor.set_range(position)
            if ok and cursor.key() == skip:
                ok = cursor.next()
            while ok and len(out) < limit:
                raw = txn.get(cursor.key()[8:], db=self._records)
                if raw is not None:
                    out.append(self._read_codec.decode(raw))
                ok = cursor.next()
        return out

    # --- writes (through the writer task) ---------------------------------------------------------

    async def write(self, ops: list[Op]) -> list[Outcome]:
        """Apply ops atomically in the next group commit; returns once durable."""
        request = _Request(ops=ops)
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.outcomes

    def get_system(self, name: str) -> Any:
        """A value from the system database (node identity, incarnation, ...), or None."""
        return self._get_system(name)

    def set_system_now(self, name: str, value: Any) -> None:
        """Store a system value at once, before the writer runs (start-up only)."""
        with self._env.begin(write=True, db=self._system) as txn:
            txn.put(name.encode(), msgpack.packb(value))

    async def put_system(self, name: str, value: Any) -> None:
        """Durably store a system value, through the writer like every other write."""
        request = _Request(ops=[], system={name: value})
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error

    async def maintain(self, *, tombstone_ttl_ms: int, limit: int = MAINTENANCE_BATCH) -> int:
        """Turn expired records into tombstones (`Record.expired_tombstone`) and remove old
        tombstones; returns how many records were expired or removed."""
        now = self.clock.wall_ms()
        request = _Maintenance(now, hlc_pack(max(0, now - tombstone_ttl_ms)), limit)
        if not self._maintenance_due(request):
            return 0  # the common case: no write transaction (and no fsync) every second
        done = _Request(ops=[])
        await self._send.send(request)
        await self._send.send(done)  # answered after the maintenance transaction committed
        await done.done.wait()
        return request.removed

    def _maintenance_due(self, job: _Maintenance) -> bool:
        """Whether the oldest TTL or tombstone entry is due (a cheap read, no write)."""
        with self._env.begin() as txn:
            for index, limit in (
                (self._expiry, job.now_ms),
                (self._tombstones, job.tombstone_before_hlc),
            ):
                cursor = txn.cursor(db=index)
                if cursor.first() and _U64.unpack(cursor.key()[:8])[0] <= limit:
                    return True
        return False

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The group-commit loop. Runs until cancelled; in-flight transactions finish first."""
        task_status.started()
        receive = self._receive
        replace: _Replace | None = None
        while True:
            if replace is not None:  # in queue order: after the writes before it
                await self._replace_data(replace)
                replace = None
            first = await receive.receive()
            if isinstance(first, _Replace):
                replace = first
                continue
            batch: list[_Request | _Maintenance] = [first]
            ops = len(getattr(first, "ops", ()))
            while ops < MAX_OPS_PER_TRANSACTION:
                try:
                    item = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(item, _Replace):
                    replace = item
                    break
                batch.append(item)
                ops += len(getattr(item, "ops", ()))
            self._assign_versions(batch)
            self.publishing = True
            try:
                changes = await self._commit(batch)
            except Exception as exc:
                # One bad op must not fail the other callers that shared its transaction:
                # apply each request on its own, and fail only those that fail alone.
                log.error("write transaction failed: %s; retrying its requests one by one", exc)
                changes = []
                for item in batch:
                    try:
                        changes += await self._commit([item])
                    except Exception as item_exc:
                        log.error("write failed: %s", item_exc)
                        if isinstance(item, _Request):
                            item.error = StoreError(f"write failed: {item_exc}")
            self.stats["ops"] += ops
            self.stats["last_batch"] = ops
            self.stats["max_batch"] = max(self.stats["max_batch"], ops)
            if ops:
                self.batch_sizes[bisect.bisect_left(BATCH_SIZE_BUCKETS, ops)] += 1
            for item in batch:
                if isinstance(item, _Request):
                    item.done.set()
            if changes:
                for listener in self.listeners:
                    try:
                        listener(changes)
                    except Exception:  # a broken observer must not stop every write
                        log.exception("store listener %r failed", listener)
            self.publishing = False
            # Not kept until the next write arrives: a batch may hold tens of MiB of values.
            del batch, first, changes

    async def replace_data(
        self, staged: Path, installed: Callable[[], None] = lambda: None
    ) -> list[bytes]:
        """Put the LMDB data file in directory `staged` (a verified snapshot of a peer's
        store) in place of this store's, keeping this store's system entries (identity,
        HLC, bootstrap state...). Returns the records this store held before, as encoded:
        the caller merges them again (they arrived while the snapshot was on its way).

        Runs in the writer, between transactions, so no write sees half of it; `installed`
        runs there too, right after, before any other write (the Merkle tree is swapped in
        it). No Change is published for the snapshot's records: `replaced_listeners` are
        called instead."""
        request = _Replace(staged, installed)
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.carried

    @contextlib.asynccontextmanager
    async def _env_leased(self) -> AsyncIterator[None]:
        """Hold the lease from the event loop, waiting while a thread holds it (a backup's or
        a snapshot's copy reads the map, which must neither move nor close meanwhile)."""
        while not self._lease.acquire(blocking=False):
            await trio.sleep(0.05)
        try:
            yield
        finally:
            self._lease.release()

    async def _replace_data(self, request: _Replace) -> None:
        try:
            async with self._env_leased():
                request.carried = [raw for _, raw in self.iter_raw_items()]
                self._swap_in(request.staged)
            request.installed()
            for listener in self.replaced_listeners:
                listener()
        except Exception as exc:
            request.error = exc if isinstance(exc, StoreError) else StoreError(str(exc))
            log.error("replacing the data with a snapshot failed: %s", exc)
        finally:
            request.done.set()

    def _swap_in(self, staged: Path) -> None:
        with self._env.begin(db=self._system) as txn:
            system = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        # Our own system entries go into the snapshot first, and it reaches the disk before
        # it replaces the data file: a crash leaves either store whole, never the peer's
        # identity in our data_dir.
        env = lmdb.open(str(staged), max_dbs=8, map_size=self._map_size_for(staged))
        try:
            db = env.open_db(b"system")
            with env.begin(write=True, db=db) as txn:
                txn.drop(db, delete=False)
                for key, value in system:
                    txn.put(key, value)
            env.sync(True)
        finally:
            env.close()
        self._env.close()
        try:
            os.replace(staged / "data.mdb", self.path / "data.mdb")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / "lock.mdb")  # it described the file replaced
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            self._open_env()  # the new file, or the old one if it could not be replaced
        shutil.rmtree(staged, ignore_errors=True)

    async def _commit(self, batch: list[_Request | _Maintenance]) -> list[Change]:
        """Apply `batch` in one write transaction, growing the map until it fits.

        A small transaction of client writes runs in a worker thread, so the event loop goes
        on serving while its commit waits for the disk (fsync). Everything else runs here:
        large transactions (bulk writes, a bootstrap's records, the sweep), whose cost is
        Python work that a thread could not run in parallel anyway, and records from peers,
        whose fsync no client waits for. py-lmdb releases the GIL around every LMDB call, so
        in a thread each call waits for the busy event loop to hand the GIL back (up to the
        5 ms switch interval). Measured: a put costs 1 µs alone and 1 ms beside a busy
        Python thread; merging pushed records here took replication lag p99 from 86 to
        78 ms (median of four interleaved runs, 500 writes/s)."""
        requests = [item for item in batch if isinstance(item, _Request)]
        ops = [op for item in requests for op in item.ops]
        in_thread = (
            self._in_thread
            and len(requests) == len(batch)  # no sweep
            and len(ops) < INLINE_TRANSACTION_OPS
            and any(not isinstance(op, Merge) for op in ops)
        )
        while True:
            try:
                if in_thread:
                    changes = await trio.to_thread.run_sync(self._apply, batch)
                else:
                    changes = self._apply(batch)
            except _GrowMap:
                async with self._env_leased():  # growing the map may move it
                    self._grow_map()
                continue
            self.stats["transactions"] += 1
            if self.release_pages_after_commit:
                self.release_mapped_pages()
            return changes

    def _assign_versions(self, batch: list[_Request | _Maintenance]) -> None:
        identity = self.identity
        assert identity is not None, "ensure_identity() before writing"
        joined, node_id = identity.joined_timestamp, identity.node_id
        now, new_uuid = self.clock.now, self._new_uuid
        for item in batch:
            if not isinstance(item, _Request):
                continue
            if not item.versions:
                item.versions = [
                    None if isinstance(op, Merge) else Version(now(), joined, node_id, new_uuid())
                    for op in item.ops
                ]
            for op in item.ops:
                if isinstance(op, Merge):
                    self.clock.observe(op.record.version.hlc)

    def _grow_map(self) -> None:
        # Runs in the event loop between transactions: no write transaction is open, and no read
        # transaction is either (reads never span an await), as LMDB requires.
        current = self._env.info()["map_size"]
        new_size = int(current * 2)
        log.info("LMDB map full at %d MiB; growing to %d MiB", current >> 20, new_size >> 20)
        self._env.set_mapsize(new_size)
        self._map_ranges = None  # the map may have moved
        self.stats["map_grows"] += 1

    def _apply(self, batch: list[_Request | _Maintenance]) -> list[Change]:
        """One write transaction for the whole batch. Runs in a worker thread (or inline)."""
        changes: list[Change] = []
        release_every = _RELEASE_EVERY_OPS if self.release_pages_after_commit else 0
        try:
            with self._env.begin(write=True) as txn:
                writer = _TransactionWriter(self, txn)
                for item in batch:
                    if isinstance(item, _Maintenance):
                        writer.maintain(item, changes)
                        continue
                    item.outcomes = []
                    for op, version in zip(item.ops, item.versions, strict=True):
                        item.outcomes.append(writer.apply(op, version, changes))
                        if release_every and len(changes) % release_every == 0:
                            # Mid-transaction too: pages LMDB reads stay mapped (the kernel
                            # maps 16 neighbours per fault), and LMDB's map is read-only,
                            # so a page dropped here is simply mapped again if read again.
                            self.release_mapped_pages()
                    for name, value in item.system.items():
                        txn.put(name.encode(), msgpack.packb(value), db=self._system)
                txn.put(b"hlc", msgpack.packb(self.clock.last), db=self._system)
        except lmdb.MapFullError:
            raise _GrowMap() from None
        return changes

    def release_mapped_pages(self) -> int:
        """Drop this process's mappings of the LMDB file's pages (madvise MADV_DONTNEED on
        the read-only map); returns the bytes of map released, 0 where unsupported.

        Every page a transaction reads (a write reads the B-tree path it changes) stays
        mapped, and counts in the process's RSS, until the process ends: a bootstrap, which
        writes all over the file, would end with the whole data file resident. The pages
        stay in the OS page cache (shared and reclaimable), and the next access maps them
        again from there; LMDB's map is read-only (no MDB_WRITEMAP), so nothing is lost."""
        if not sys.platform.startswith("linux"):
            return 0
        released = 0
        try:
            if self._map_ranges is None:  # found again after the map grows (_grow_map)
                target = str((self.path / "data.mdb").resolve())
                with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                    spans = [line.split()[0] for line in maps if line.rstrip("\n").endswith(target)]
                bounds = [[int(x, 16) for x in span.split("-")] for span in spans]
                self._map_ranges = [(start, end - start) for start, end in bounds]
            madvise = _libc().madvise
            for start, length in self._map_ranges:
                if madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), 4) == 0:
                    released += length  # 4: MADV_DONTNEED
        except (OSError, AttributeError, ValueError):
            return released
        return released

    def sync_to_disk(self) -> None:
        """Flush to disk (durability: os mode calls this periodically)."""
        self._env.sync(True)


class _TransactionWriter:
    """Applies ops inside one open write transaction."""

    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self.codec = store._write_codec
        self.now_ms = store.clock.wall_ms()
        # Every op reads and writes these three by key. A cursor's get/put skip the argument
        # parsing and database lookup of txn.get/put(db=...): measured, a get 620 -> 160 ns
        # and a put 570 -> 365 ns. A Packer reused skips building one per msgpack.packb.
        self.records = txn.cursor(db=store._records)
        self.changes_index = txn.cursor(db=store._changes)
        self.buckets = txn.cursor(db=store._buckets)
        self.pack = msgpack.Packer().pack

    def _lookup(self, key_b: bytes) -> tuple[Record | None, bytes | None]:
        """The stored record, decoded and as stored."""
        raw = self.records.get(key_b)
        return (None, None) if raw is None else (self.codec.decode(raw), raw)

    def _current(self, key_b: bytes) -> Record | None:
        return self._lookup(key_b)[0]

    def apply(self, op: Op, version: Version | None, changes: list[Change]) -> Outcome:
        key_b = _storage_key(op.record.key if isinstance(op, Merge) else op.key)
        current, current_raw = self._lookup(key_b)
        live = current is not None and current.live(self.now_ms)
        if isinstance(op, Merge):
            incoming = op.record
            if current is not None and not incoming.version.newer_than(current.version):
                return Unchanged(incoming.key)
            self._replace(key_b, current, incoming, current_raw, op.raw)
            changes.append(Change(current, incoming, local=False))
            return Written(incoming)
        assert version is not None
        # Records are built with positional arguments: keywords cost a quarter more here.
        if isinstance(op, Put):
            if op.if_match is not None and (
                not live or current is None or current.version.uuid != op.if_match
            ):
                return Conflict(op.key, current.version.uuid if live and current else None)
            if live:
                assert current is not None
                owner, group = current.owner, current.group
                permissions, created_at = current.permissions, current.created_at
            else:  # a new key (or one that was deleted or expired)
                owner, group = op.owner, op.group
                permissions, created_at = DEFAULT_PERMISSIONS, version.timestamp
            if op.meta is not None:
                owner, group, permissions = op.meta
            record = Record(
                op.key, op.value, version, op.expires_at, owner, group, permissions, created_at
            )
        else:
            if not live:
                return NotFound(op.key) if op.must_exist else Unchanged(op.key)
            assert current is not None
            record = Record(
                op.key,
                None,
                version,
                None,
                current.owner,
                current.group,
                current.permissions,
                current.created_at,
            )
        self._replace(key_b, current, record, current_raw)
        changes.append(Change(current, record, local=True))
        return Written(record)

    def _replace(
        self,
        key_b: bytes,
        current: Record | None,
        record: Record,
        current_raw: bytes | None = None,
        raw: bytes | None = None,
    ) -> None:
        """Store `record` (encoded as `raw`, if given) in place of `current` (stored as
        `current_raw`, if known)."""
        s, txn = self.store, self.txn
        if current is not None:
            self._unindex(key_b, current)
            if s.history_depth > 0:
                txn.put(
                    _history_prefix(key_b) + _U64.pack(current.version.hlc),
                    # As stored, when known: re-encoding would only give the same record.
                    self.codec.encode(current) if current_raw is None else current_raw,
                    db=s._history,
                )
            self._trim_history(key_b)  # also drops what a larger depth kept before a restart
        self.records.put(key_b, self.codec.encode(record) if raw is None else raw)
        self.buckets.put(_bucket_key(record.key, key_b), _summary(record, self.pack))
        self.changes_index.put(_hlc_key(record.version.hlc, key_b), b"")
        if record.deleted:
            txn.put(_hlc_key(record.version.hlc, key_b), b"", db=s._tombstones)
        elif record.expires_at is not None:
            txn.put(_hlc_key(record.expires_at, key_b), b"", db=s._expiry)

    def _unindex(self, key_b: bytes, record: Record) -> None:
        s, txn = self.store, self.txn
        txn.delete(_hlc_key(record.version.hlc, key_b), db=s._changes)
        if record.deleted:
            txn.delete(_hlc_key(record.version.hlc, key_b), db=s._tombstones)
        elif record.expires_at is not None:
            txn.delete(_hlc_key(record.expires_at, key_b), db=s._expiry)

    def _trim_history(self, key_b: bytes) -> None:
        prefix = _history_prefix(key_b)
        cursor = self.txn.cursor(db=self.store._history)
        entries: list[bytes] = []
        ok = cursor.set_range(prefix)
        while ok and cursor.key().startswith(prefix):
            entries.append(cursor.key())
            ok = cursor.next()
        for old in entries[: max(0, len(entries) - self.store.history_depth)]:
            self.txn.delete(old, db=self.store._history)

    def _remove(self, key_b: bytes, record: Record, changes: list[Change]) -> None:
        s, txn = self.store, self.txn
        self._unindex(key_b, record)
        txn.delete(key_b, db=s._records)
        txn.delete(_bucket_key(record.key, key_b), db=s._buckets)
        self._drop_history(key_b)
        changes.append(Change(record, None, local=True))

    def _drop_history(self, key_b: bytes) -> None:
        prefix = _history_prefix(key_b)
        cursor = self.txn.cursor(db=self.store._history)
        while cursor.set_range(prefix) and cursor.key().startswith(prefix):
            cursor.delete()

    def maintain(self, job: _Maintenance, changes: list[Change]) -> None:
        s, txn = self.store, self.txn
        job.removed = 0
        for index, limit in ((s._expiry, job.now_ms), (s._tombstones, job.tombstone_before_hlc)):
            due: list[bytes] = []
            cursor = txn.cursor(db=index)
            ok = cursor.first()
            while ok and len(due) < job.limit:
                k = cursor.key()
                if _U64.unpack(k[:8])[0] > limit:
                    break
                due.append(k[8:])
                ok = cursor.next()
            for key_b in due:
                record = self._current(key_b)
                if record is None:
                    continue
                if index is s._expiry:
                    if record.deleted or not record.expired(job.now_ms):
                        continue
                    # Not removed: a replica that missed this version may still hold an
                    # older one, which only a tombstone of this version keeps beaten.
                    tombstone = record.expired_tombstone()
                    self._replace(key_b, record, tombstone)
                    self._drop_history(key_b)  # expired data is gone, as before the tombstone
                    changes.append(Change(record, tombstone, local=False))
                else:
                    self._remove(key_b, record, changes)
                job.removed += 1
