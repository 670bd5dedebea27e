"""Housekeeping of the store: the TTL sweep and tombstone GC.

Rule: expired records become tombstones (never vanish: a replica that missed the version
may still hold an older one, which only a tombstone of this version keeps beaten), and
tombstones older than the tombstone TTL are removed. Both happen in the writer's
transactions, a bounded batch at a time, and only when an index says one is due: an idle
store never pays a write transaction (and an fsync) for them.
"""

from __future__ import annotations

from kvs.model import hlc_pack
from kvs.store.environment import Environment
from kvs.store.jobs import MaintenanceJob, WriteRequest
from kvs.store.layout import key_of, time_of
from kvs.store.ops import Change
from kvs.store.transaction import TransactionWriter

MAINTENANCE_BATCH = 2_000  # expired records or old tombstones handled per transaction


class Maintenance(Environment):
    """`Store.maintain`: what the node's housekeeping loop calls every second."""

    async def maintain(self, *, tombstone_ttl_ms: int, limit: int = MAINTENANCE_BATCH) -> int:
        """Turn expired records into tombstones (`Record.expired_tombstone`) and remove old
        tombstones; returns how many records were expired or removed."""
        now = self.clock.wall_ms()
        request = MaintenanceJob(now, hlc_pack(max(0, now - tombstone_ttl_ms)), limit)
        if not self._maintenance_due(request):
            return 0  # the common case: no write transaction (and no fsync) every second
        done = WriteRequest(ops=[])
        await self._send.send(request)
        await self._send.send(done)  # answered after the maintenance transaction committed
        await done.done.wait()
        return request.removed

    def _maintenance_due(self, job: MaintenanceJob) -> bool:
        """Whether the oldest TTL or tombstone entry is due (a cheap read, no write)."""
        with self._env.begin() as txn:
            for index, limit in (
                (self._expiry, job.now_ms),
                (self._tombstones, job.tombstone_before_hlc),
            ):
                cursor = txn.cursor(db=index)
                if cursor.first() and time_of(cursor.key()) <= limit:
                    return True
        return False


def sweep(writer: TransactionWriter, job: MaintenanceJob, changes: list[Change]) -> None:
    """Run `job` in the writer's open transaction: at most `job.limit` due entries of each
    index, oldest first."""
    s, txn = writer.store, writer.txn
    job.removed = 0
    for index, limit in ((s._expiry, job.now_ms), (s._tombstones, job.tombstone_before_hlc)):
        due: list[bytes] = []
        cursor = txn.cursor(db=index)
        ok = cursor.first()
        while ok and len(due) < job.limit:
            k = cursor.key()
            if time_of(k) > limit:
                break
            due.append(key_of(k))
            ok = cursor.next()
        for key_b in due:
            record = writer.current(key_b)
            if record is None:
                continue
            if index is s._expiry:
                if record.deleted or not record.expired(job.now_ms):
                    continue
                # Not removed: a replica that missed this version may still hold an
                # older one, which only a tombstone of this version keeps beaten.
                tombstone = record.expired_tombstone()
                writer.replace(key_b, record, tombstone)
                writer.drop_history(key_b)  # expired data is gone, as before the tombstone
                changes.append(Change(record, tombstone, local=False))
            else:
                writer.remove(key_b, record, changes)
            job.removed += 1
