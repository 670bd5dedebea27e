"""Taking records from peers: every one validated, then merged so that the winner stays.

Every record a peer sends -- pushed to us, or fetched or taken by our exchanges -- is decoded
strictly, its key and size checked (`protocol.check_record`; a bad one raises ProtocolError
and nothing of its batch is written), and stored through `Merge`, which keeps the winner
under `resolve`. An expired record is taken as the tombstone every replica turns it into;
tombstones older than `tombstone_ttl` are not taken, so garbage collection on one replica
is never undone by another; a record too far in our future is refused (see SyncSettings).
"""

from __future__ import annotations

import logging
from collections import Counter

from kvs.logs import LogLimiter
from kvs.model import Record, RecordCodec, hlc_ms
from kvs.store import Merge, Store, Written
from kvs.sync import limits
from kvs.sync import protocol as p
from kvs.sync.limits import SyncSettings

log = logging.getLogger(__name__)


class Intake:
    def __init__(self, store: Store, settings: SyncSettings, counters: Counter[str]) -> None:
        self._store = store
        self._settings = settings
        self._counters = counters
        self.codec = RecordCodec()
        self._errors = LogLimiter(log)

    async def accept(self, raw_records: list[bytes]) -> int:
        """Validate and merge records from a peer; returns how many were stored.
        A record that fails validation raises ProtocolError (the peer is broken or hostile)."""
        return await self.merge(self.merges(raw_records))

    async def merge(self, ops: list[Merge]) -> int:
        if not ops:
            return 0
        outcomes = await self._store.write(ops)
        stored = sum(1 for o in outcomes if isinstance(o, Written))
        self._counters["records_merged"] += stored
        return stored

    def merges(self, raw_records: list[bytes]) -> list[Merge]:
        """The store ops for records from a peer, every one validated first (ProtocolError)."""
        now = self._store.clock.wall_ms()
        ops: list[Merge] = []
        oldest_tombstone = now - self._settings.tombstone_ttl_ms
        for raw in raw_records:
            record = self.check(raw)
            stored: bytes | None = raw  # as the peer encoded it: no re-encoding
            if record.expires_at is not None and record.expired(now):
                # Taken as the tombstone it has become here: skipping it would leave an older
                # version of the key live on this replica, and sync would spread it back.
                record, stored = record.expired_tombstone(), None
                self._counters["expired_as_tombstone"] += 1
            written_ms = hlc_ms(record.version.hlc)
            if record.value is None and written_ms < oldest_tombstone:
                self._counters["skipped_old_tombstone"] += 1
                continue
            lead = written_ms - now
            if lead > limits.MAX_FUTURE_MS:
                self._counters["refused_future"] += 1
                self._errors.log(
                    logging.WARNING,
                    "future",
                    "refused a record from %s written %d ms in our future (more than %d): "
                    "check that node's clock",
                    record.version.origin[:64],
                    lead,
                    limits.MAX_FUTURE_MS,
                )
                continue
            if lead > self._settings.max_clock_offset_ms:
                self._counters["clock_offset_exceeded"] += 1
                self._errors.log(
                    logging.WARNING,
                    "offset",
                    "a record from %s is %d ms in our future: check that node's clock",
                    record.version.origin[:64],
                    lead,
                )
            ops.append(Merge(record, stored))
        return ops

    def check(self, raw: bytes) -> Record:
        return p.check_record(self.codec, raw, self._settings.max_json_size)
