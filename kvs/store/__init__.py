"""LMDB storage: records, indexes, history, and the group-commit writer.

The package's face: import from `kvs.store`, not from its modules, which may move.

    Store                       the store; run `Store.writer` in the node's nursery
    Put, Delete, Merge, Op      what a write asks (`Store.write(ops)`)
    Written, NotFound,          what each op got
      Conflict, Unchanged,
      Outcome
    Change, CommitListener      what a commit tells `Store.listeners`
    CommitGate                  the seam for disk faults under a commit (the simulator's)
    Summary                     a record's version without its value (what sync compares)
    StoreError                  the store cannot be opened or used
    StoreSettings, READER       what a node chose for it; what a read-only tool opens it with

Inside: layout.py (the bytes on disk: the only module that knows them), environment.py
(opening; the state the parts share), reads.py, writer.py (group commit), transaction.py
(one op in a write transaction), maintenance.py (TTL sweep, tombstone GC), datafile.py
(map growth, the lease, replace_data), jobs.py (the writer's queue), ops.py (op, outcome
and change types), store.py (`Store`, assembled from the parts).

Every write goes through one writer task (group commit): it drains all pending requests,
applies them in one write transaction -- in a worker thread, so a slow fsync never blocks
the event loop -- and answers each caller only after the commit is durable. Reads open a
short read transaction in the event loop and never hold it across an await.
"""

from kvs.store.layout import SCHEMA_VERSION, Summary, index_entries
from kvs.store.maintenance import MAINTENANCE_BATCH
from kvs.store.ops import (
    Change,
    CommitGate,
    CommitListener,
    Conflict,
    Delete,
    Identity,
    Merge,
    NotFound,
    Op,
    Outcome,
    Put,
    ReplacedListener,
    StoreError,
    Unchanged,
    Written,
)
from kvs.store.settings import READER, StoreSettings
from kvs.store.store import Store
from kvs.store.writer import BATCH_SIZE_BUCKETS, INLINE_TRANSACTION_OPS, MAX_OPS_PER_TRANSACTION

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "INLINE_TRANSACTION_OPS",
    "MAINTENANCE_BATCH",
    "MAX_OPS_PER_TRANSACTION",
    "READER",
    "SCHEMA_VERSION",
    "Change",
    "CommitGate",
    "CommitListener",
    "Conflict",
    "Delete",
    "Identity",
    "Merge",
    "NotFound",
    "Op",
    "Outcome",
    "Put",
    "ReplacedListener",
    "Store",
    "StoreError",
    "StoreSettings",
    "Summary",
    "Unchanged",
    "Written",
    "index_entries",
]
