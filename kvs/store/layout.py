"""The store's bytes on disk: LMDB files and databases, key encodings, the version summary.

Rule: this is the only module that knows how a store is laid out on disk. Everything that
reads or writes a data dir -- the store, a snapshot's check, a backup's check, the Merkle
tree's grouping of buckets -- asks it, so that the layout changes in one place (with
SCHEMA_VERSION). It holds no state and does no I/O but for the few checks of a data dir
that no process has open (`open_copy`, `in_use`).

One LMDB environment (DATA_FILE, LOCK_FILE in the data dir), named databases:

    records    key                      -> encoded Record (the current version, or a tombstone)
    changes    hlc(8) + key             -> b""   one entry per key: its current version's HLC
    history    key + 0x00 + hlc(8)      -> encoded Record (previous versions, newest kept)
    expiry     expires_at(8) + key      -> b""   keys with a TTL, soonest first
    tombstones hlc(8) + key             -> b""   deletes and expired records, oldest first, for GC
    system     name                     -> msgpack value (node identity, persisted HLC, schema)
    buckets    bucket(2) + key          -> version summary: what anti-entropy compares, listed
                                           per sync bucket without decoding any value

`key` is the key's UTF-8 bytes, or for a key too long for LMDB a fixed-size stand-in (see
`storage_key`). Integers in keys are big-endian, so LMDB's byte order is numeric order.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lmdb
import msgpack

from kvs.model import Record, Version

SCHEMA_VERSION = 1
"""The layout's version, stored under `SCHEMA` in the system database. A store of another
version is refused on open; change it with any change of what this module describes."""

DATA_FILE = "data.mdb"  # LMDB's file inside a data dir
LOCK_FILE = "lock.mdb"  # LMDB's lock file: describes the processes that have the file open

# --- databases ---------------------------------------------------------------------------------

RECORDS = b"records"
CHANGES = b"changes"
HISTORY = b"history"
EXPIRY = b"expiry"
TOMBSTONES = b"tombstones"
SYSTEM = b"system"
BUCKETS = b"buckets"
MAX_DBS = 8  # named databases an environment is opened for (the seven above, and room)

# System entries the store itself keeps (callers keep theirs under names of their own).
SCHEMA = "schema"
IDENTITY = "identity"
CLOCK = "hlc"  # the last HLC reading, persisted with every transaction


class Databases(NamedTuple):
    records: Any
    changes: Any
    history: Any
    expiry: Any
    tombstones: Any
    system: Any
    buckets: Any


def open_databases(env: lmdb.Environment, *, create: bool = True) -> Databases:
    """Every database of the layout, in `env` (created if missing, unless `create` is False:
    then lmdb.Error says the environment is not a whole store)."""
    names = (RECORDS, CHANGES, HISTORY, EXPIRY, TOMBSTONES, SYSTEM, BUCKETS)
    return Databases(*(env.open_db(name, create=create) for name in names))


def pack_value(value: Any) -> bytes:
    """A system entry's value as stored."""
    return msgpack.packb(value)


def unpack_value(raw: bytes) -> Any:
    return msgpack.unpackb(raw)


def system_key(name: str) -> bytes:
    return name.encode()


# --- data dirs no process has open (a snapshot, a restored backup) -------------------------------


def open_copy(directory: Path) -> lmdb.Environment:
    """The store in `directory` read-only and without its lock file, for checking a copy that
    no process has open; lmdb.Error if it is not an LMDB data file."""
    return lmdb.open(str(directory), readonly=True, lock=False, max_dbs=MAX_DBS)


def system_entries(env: lmdb.Environment, *names: str) -> list[bytes | None]:
    """System entries as stored (None where absent); lmdb.Error if `env` has no system db."""
    system = env.open_db(SYSTEM, create=False)
    with env.begin(db=system) as txn:
        return [txn.get(system_key(name)) for name in names]


def stored_schema(env: lmdb.Environment) -> Any:
    """The schema version a copy records (None: none), after checking that it holds every
    database of the layout (lmdb.Error if not; ValueError if the entry does not decode)."""
    open_databases(env, create=False)
    [schema] = system_entries(env, SCHEMA)
    return None if schema is None else unpack_value(schema)


def in_use(directory: Path) -> bool:
    """Whether a process has the environment in `directory` open: LMDB keeps a shared fcntl
    lock on the first byte of LOCK_FILE for as long as it has, so an exclusive one fails.
    OSError if the lock file is there but cannot be opened (callers decide what that means).

    (Checked before opening the store here: fcntl locks belong to the process, and closing
    this descriptor later would drop the lock LMDB takes.)"""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
        return False
    finally:
        os.close(fd)


# --- keys ----------------------------------------------------------------------------------------

# LMDB refuses keys over 511 bytes and the indexes add up to 9 bytes to a key (history: key +
# 0x00 + hlc), but a KVS key may be 1024 bytes. A key of up to RAW_KEY_BYTES is stored as
# itself; a longer one as its first RAW_KEY_BYTES bytes + 0xFF + a hash of the whole key.
# 0xFF never occurs in UTF-8, so storage order is still key order, except among long keys
# that share their first RAW_KEY_BYTES bytes (a "group", contiguous in LMDB): a scan sorts
# those itself.
LMDB_MAX_KEY = 511
_INDEX_OVERHEAD = 9
_HASH_BYTES = 16
RAW_KEY_BYTES = LMDB_MAX_KEY - _INDEX_OVERHEAD - 1 - _HASH_BYTES
_LONG_MARK = b"\xff"


def storage_key(key: str) -> bytes:
    """Where `key`'s record is filed in the records database (and the key the indexes name)."""
    raw = key.encode()
    if len(raw) <= RAW_KEY_BYTES:
        return raw
    digest = hashlib.blake2b(raw, digest_size=_HASH_BYTES).digest()
    return raw[:RAW_KEY_BYTES] + _LONG_MARK + digest


def same_long_group(a: bytes, b: bytes) -> bool:
    """Whether two storage keys are long keys of one group (see above): their storage order
    need not be their key order."""
    return (
        len(a) > RAW_KEY_BYTES and len(b) > RAW_KEY_BYTES and a[:RAW_KEY_BYTES] == b[:RAW_KEY_BYTES]
    )


def scan_start(start: bytes) -> bytes:
    """The storage position at and after which every key >= `start` is (and some below it)."""
    return start[:RAW_KEY_BYTES]


def scan_stop(end: bytes) -> bytes:
    """The storage position at and after which every key is >= `end`."""
    if len(end) <= RAW_KEY_BYTES:
        return end
    return end[:RAW_KEY_BYTES] + _LONG_MARK * (_HASH_BYTES + 2)


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """Storage positions [start, end) of every key under `prefix`, which ends with "/"."""
    start = prefix.encode()
    return start, start[:-1] + b"0"  # "0": the byte after "/"


# Time indexes (changes, tombstones: by HLC; expiry: by expires_at): a time(8) + key.
_U64 = struct.Struct(">Q")


def time_key(time: int, key_b: bytes = b"") -> bytes:
    """A time index's entry for the storage key `key_b` at `time` (alone: where `time` begins)."""
    return _U64.pack(time) + key_b


def time_of(entry: bytes) -> int:
    """The time of a time index's entry."""
    return _U64.unpack(entry[:8])[0]


def key_of(entry: bytes) -> bytes:
    """The storage key a time index's entry names."""
    return entry[8:]


def history_prefix(key_b: bytes) -> bytes:
    """The start of every history entry of the storage key `key_b` (in HLC order)."""
    return key_b + b"\x00"


def history_key(key_b: bytes, hlc: int) -> bytes:
    return key_b + b"\x00" + _U64.pack(hlc)


def history_end(key_b: bytes) -> bytes:
    """The position just past every history entry of the storage key `key_b`."""
    return key_b + b"\x01"


# --- sync buckets and Merkle leaves ------------------------------------------------------------------

SYNC_BUCKETS = 1 << 16  # replicas compare data bucket by bucket (the Merkle tree's leaves)
# (sync_bucket below relies on 2**16: the bucket is the hash's last 16 bits)
_BUCKET = struct.Struct(">H")


# An empty 8-byte blake2b, copied for each key: a copy costs two thirds of a new hasher
# (whose parameter block is rebuilt each time), and gives the same digest.
_BLAKE2B_8 = hashlib.blake2b(digest_size=8)


@functools.lru_cache(maxsize=8192)
def sync_bucket(key: str) -> int:
    """The sync bucket of a key: a hash, so that buckets fill evenly whatever the keys are.
    Filed in the bucket index, and compared between replicas: it never changes. It is
    `int.from_bytes(blake2b(key, digest_size=8), "big") % SYNC_BUCKETS`, i.e. the digest's
    last two bytes (SYNC_BUCKETS is 2**16), computed without the slower `int.from_bytes`.

    Cached because every write needs it twice in a row, for the store's bucket index and then
    the Merkle tree (measured: a cache hit costs a tenth of the hash)."""
    hasher = _BLAKE2B_8.copy()
    hasher.update(key.encode())
    digest = hasher.digest()
    return digest[6] << 8 | digest[7]


def leaf_of(key: str, leaves: int) -> int:
    """The leaf holding `key` in a Merkle tree of `leaves` leaves: the tree's leaves are the
    sync buckets, grouped (consecutive buckets per leaf) for a shallower tree."""
    return sync_bucket(key) // (SYNC_BUCKETS // leaves)


def buckets_of_leaf(leaf: int, leaves: int) -> range:
    """The sync buckets of one leaf of a Merkle tree of `leaves` leaves."""
    per_leaf = SYNC_BUCKETS // leaves
    return range(leaf * per_leaf, (leaf + 1) * per_leaf)


def bucket_key(key: str, key_b: bytes) -> bytes:
    """The bucket index's entry for `key`, stored under `key_b`."""
    return _BUCKET.pack(sync_bucket(key)) + key_b


def bucket_start(bucket: int) -> bytes:
    """Where the bucket index's entries of `bucket` begin."""
    return _BUCKET.pack(bucket)


def bucket_of(entry: bytes) -> int:
    """The bucket of a bucket index's entry."""
    return _BUCKET.unpack_from(entry)[0]


def bucket_record_key(entry: bytes) -> bytes:
    """The storage key a bucket index's entry names."""
    return entry[2:]


# --- the version summary ------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Summary:
    """What anti-entropy knows of a record without reading its value."""

    key: str
    version: Version
    deleted: bool
    expires_at: int | None


def summary_fields(of: Record | Summary) -> list[Any]:
    """A version summary as a list: [key, hlc, origin_joined, origin, uuid, deleted,
    expires_at]. The bucket index stores it (msgpack) and the sync protocol sends it."""
    v = of.version
    return [of.key, v.hlc, v.origin_joined, v.origin, v.uuid, of.deleted, of.expires_at]


def pack_summary(record: Record, pack: Callable[[Any], bytes] = msgpack.packb) -> bytes:
    """The bucket index's value for `record`. `pack` may be a reused Packer's (the bytes are
    the same)."""
    return pack(summary_fields(record))


def unpack_summary(raw: bytes) -> Summary:
    key, hlc, joined, origin, uid, deleted, expires_at = msgpack.unpackb(raw)
    return Summary(key, Version(hlc, joined, origin, uid), deleted, expires_at)


def index_entries(
    record: Record, pack: Callable[[Any], bytes] = msgpack.packb
) -> tuple[bytes, bytes, bytes]:
    """(storage key, bucket key, summary): where the store files `record`, for checking a
    snapshot from a peer (kvs/sync/snapshot.py)."""
    key_b = storage_key(record.key)
    return key_b, bucket_key(record.key, key_b), pack_summary(record, pack)
