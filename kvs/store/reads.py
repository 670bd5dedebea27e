"""Every read of the store: single keys, scans, history, the time index, and what sync lists.

Rule: a read opens a short read transaction in the event loop (microseconds) and closes it
before it returns or yields: never across an await, which would pin old pages and grow the
file. A read that may be long (a scan, a full listing) re-opens one per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from kvs.model import SYSTEM_PREFIX, Record, RecordCodec, RecordHead
from kvs.store.environment import Environment
from kvs.store.layout import (
    BUCKETS,
    RAW_KEY_BYTES,
    RECORDS,
    Summary,
    bucket_of,
    bucket_record_key,
    bucket_start,
    history_end,
    history_prefix,
    key_of,
    prefix_range,
    same_long_group,
    scan_start,
    scan_stop,
    storage_key,
    time_key,
    unpack_summary,
)

_SCAN_CHUNK = 256
T = TypeVar("T")


class Reads(Environment):
    """The store's reads (see the module's rule)."""

    # --- keys --------------------------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        """The stored record, tombstones and expired records included (callers decide)."""
        with self._env.begin(db=self._records) as txn:
            raw = txn.get(storage_key(key))
        return None if raw is None else self._read_codec.decode(raw)

    def get_live(self, key: str) -> Record | None:
        record = self.get(key)
        if record is None or not record.live(self.clock.wall_ms()):
            return None
        return record

    def get_many(self, keys: list[str]) -> list[Record]:
        """The stored records (tombstones included) for `keys`; absent keys are skipped."""
        out: list[Record] = []
        with self._env.begin(db=self._records) as txn:
            for key in keys:
                raw = txn.get(storage_key(key))
                if raw is not None:
                    out.append(self._read_codec.decode(raw))
        return out

    def history(self, key: str, limit: int | None = None) -> list[Record]:
        """Previous versions of a key, newest first."""
        key_b = storage_key(key)
        prefix = history_prefix(key_b)
        out: list[Record] = []
        with self._env.begin(db=self._history) as txn:
            cursor = txn.cursor()
            # Seek just past this key's entries and walk backwards: newest first.
            end = history_end(key_b)
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

    # --- ranges ------------------------------------------------------------------------------

    def scan(self, start: str, end: str | None = None) -> Iterator[Record]:
        """Records with start <= key < end in key order. Re-opens the read transaction per chunk
        so a slow consumer never pins old pages for long."""
        for chunk in self._chunks(start, end):
            records = [self._read_codec.decode(value) for _, value in chunk]
            yield from _in_order_within(chunk, records, lambda r: r.key, start, end)

    def scan_heads(self, start: str, end: str | None = None) -> Iterator[tuple[RecordHead, bytes]]:
        """As `scan`, but each record as its head and its stored bytes (`decode` makes the
        record of those a caller keeps): for listings that filter far more than they show."""
        for chunk in self._chunks(start, end):
            heads = [(RecordCodec.decode_head(value), value) for _, value in chunk]
            yield from _in_order_within(chunk, heads, lambda h: h[0].key, start, end)

    def _chunks(self, start: str, end: str | None) -> Iterator[list[tuple[bytes, bytes]]]:
        """The stored (key, value) pairs of the range, a read transaction per chunk. A chunk
        never splits a long-key group (whose storage order is not key order): it is sorted as
        a whole by the caller. Its entries may lie outside [start, end): the caller checks."""
        start_b = start.encode()
        end_b = end.encode() if end is not None else None
        stop = scan_stop(end_b) if end_b is not None else None
        position, inclusive = scan_start(start_b), True
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
                    if len(entries) >= _SCAN_CHUNK and not same_long_group(entries[-1][0], k):
                        break
                    entries.append((k, cursor.value()))
                    ok = cursor.next()
            if entries:
                yield entries
            if not ok or not entries:
                return
            position, inclusive = entries[-1][0], False

    def decode(self, raw: bytes) -> Record:
        """The record of bytes `scan_heads` gave."""
        return self._read_codec.decode(raw)

    def seek(self, start: str) -> Record | None:
        """The first record whose key is >= start, or None."""
        return next(self.scan(start), None)

    def changes_after(self, after_hlc: int, after_key: str | None, limit: int) -> list[Record]:
        """Current versions in time-index order, strictly after the position `(after_hlc,
        after_key)` -- or after every entry with `after_hlc` when `after_key` is None. Entries
        with equal HLCs are in storage-key order (key order, but for very long keys)."""
        if after_key is None:
            position, skip = time_key(after_hlc + 1), None
        else:
            position = skip = time_key(after_hlc, storage_key(after_key))
        out: list[Record] = []
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._changes)
            ok = cursor.set_range(position)
            if ok and cursor.key() == skip:
                ok = cursor.next()
            while ok and len(out) < limit:
                raw = txn.get(key_of(cursor.key()), db=self._records)
                if raw is not None:
                    out.append(self._read_codec.decode(raw))
                ok = cursor.next()
        return out

    # --- counts ------------------------------------------------------------------------------

    def count(self) -> int:
        """Stored client keys that are not tombstones (expired-but-unswept keys included);
        system records (users, groups, tokens under SYSTEM_PREFIX) are not counted."""
        with self._env.begin() as txn:
            records = txn.stat(self._records)["entries"]
            tombstones = txn.stat(self._tombstones)["entries"]
        return records - tombstones - self.count_system()

    def count_system(self) -> int:
        """Live-or-expired (not tombstone) system records: a short scan of their range."""
        start, end = prefix_range(SYSTEM_PREFIX)
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

    # --- what sync needs ---------------------------------------------------------------------

    def bucket_summaries(self, buckets: list[int]) -> list[Summary]:
        """Every record's summary in the given sync buckets (bucket order, then key order)."""
        out: list[Summary] = []
        with self._env.begin(db=self._buckets) as txn:
            cursor = txn.cursor()
            for bucket in sorted(set(buckets)):
                prefix = bucket_start(bucket)
                ok = cursor.set_range(prefix)
                while ok and cursor.key()[:2] == prefix:
                    out.append(unpack_summary(cursor.value()))
                    ok = cursor.next()
        return out

    def iter_summaries(self, chunk: int = 4096) -> Iterator[Summary]:
        """All summaries, a short read transaction per chunk (for rebuilding the Merkle tree)."""
        for _, raw in self.iter_raw_items(BUCKETS, chunk):
            yield unpack_summary(raw)

    def iter_raw_items(
        self, db_name: bytes = RECORDS, chunk: int = 4096
    ) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one database as stored: records by storage key, or
        (`layout.BUCKETS`) summaries by bucket key; a short read transaction per chunk (for
        checking a snapshot from a peer, rebuilding the Merkle tree)."""
        db = {RECORDS: self._records, BUCKETS: self._buckets}[db_name]
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

    def get_raw_many(self, keys: list[str]) -> list[bytes]:
        """Encoded records for `keys` (what sync sends: no decode, no re-encode)."""
        out: list[bytes] = []
        with self._env.begin(db=self._records) as txn:
            for key in keys:
                raw = txn.get(storage_key(key))
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
                raw = txn.get(storage_key(key))
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
                first, stop = bucket_start(group.start), group.stop
                taken: list[bytes] = []
                more = 0
                ok = index.set_range(first)
                while ok:
                    k = index.key()
                    if bucket_of(k) >= stop:
                        break
                    raw = records.get(bucket_record_key(k))
                    if raw is not None:
                        taken.append(raw)
                        more += len(raw)
                    ok = index.next()
                if size + more > max_bytes:
                    return out, done
                out += taken
                size += more
        return out, len(groups)


def _in_order_within(
    chunk: list[tuple[bytes, bytes]],
    items: list[T],
    key: Callable[[T], str],
    start: str,
    end: str | None,
) -> Iterator[T]:
    """`items` (one per entry of `chunk`) in key order, those with start <= key < end. Only a
    chunk holding long keys needs sorting: for the others storage order is key order."""
    if any(len(k) > RAW_KEY_BYTES for k, _ in chunk):
        items = sorted(items, key=lambda item: key(item).encode())
    start_b, end_b = start.encode(), None if end is None else end.encode()
    for item in items:
        key_b = key(item).encode()
        if key_b >= start_b and (end_b is None or key_b < end_b):
            yield item
