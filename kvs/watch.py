"""Watching keys: change events under a prefix, replayed from the time index, then live.

The hub is a store listener: after every committed batch (local writes, replicated merges,
TTL expiries) it hands each watcher the changes under its prefix. A watcher buffers at most
`limit` events; a consumer that falls further behind is cut off (`overflowed`) instead of
making the node buffer without bound, and resumes from the last event id it received.

Resuming (`since`) first replays the time index -- the current version of every key changed
after the resume point -- while live events already collect in the buffer, then switches to
the buffer. Each change is sent exactly once across that boundary:

- a live event buffered before the replay reaches the same version is skipped by the replay;
- a version the replay read while a batch was committing but not yet announced
  (`Store.publishing`) may still arrive live: it is remembered (`_at_risk`) until that
  batch's announcement, which drops it. One writer means one such batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import trio

from kvs.model import Record, hlc_ms, hlc_pack
from kvs.store import Change, Store

REPLAY_CHUNK = 256  # time-index entries read per short read transaction


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str
    uuid: str
    hlc: int
    deleted: bool

    @classmethod
    def of(cls, record: Record) -> WatchEvent:
        return cls(record.key, record.version.uuid, record.version.hlc, record.deleted)

    @property
    def timestamp(self) -> int:
        return hlc_ms(self.hlc)

    @property
    def id(self) -> str:
        """The resume position: `since=<id>` (or `Last-Event-ID`) continues after this event.
        A TTL expiry keeps the version it ends, so the id marks tombstones (`-d`)."""
        return f"{self.hlc}-{self.uuid}-d" if self.deleted else f"{self.hlc}-{self.uuid}"

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "uuid": self.uuid,
            "timestamp": self.timestamp,
            "deleted": self.deleted,
            "id": self.id,
        }


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a replay starts: after every entry with an HLC <= `after_hlc`. For an event id,
    `after_hlc` is one below the event's HLC, and `skip` names that one event: two nodes'
    HLCs can tie, so other versions at the same HLC are replayed."""

    after_hlc: int
    skip: tuple[str, bool] | None = None  # (uuid, deleted) of the event resumed after


def parse_resume(text: str) -> ResumePoint:
    """`since` is a millisecond timestamp (exclusive, as for /kv_changes) or an event id
    `<hlc>-<uuid>[-d]`. Raises ValueError with a message for anything else."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        if len(text) > 15 or int(text) >= 1 << 47:
            raise ValueError(f"since={text} is not a millisecond timestamp")
        return ResumePoint(hlc_pack(int(text) + 1) - 1)
    hlc_text, dash, uuid = text.partition("-")
    deleted = uuid.endswith("-d")
    if deleted:
        uuid = uuid[:-2]
    if (
        dash
        and hlc_text.isascii()
        and hlc_text.isdigit()
        and len(hlc_text) <= 19
        and 0 < int(hlc_text) < 1 << 63
        and len(uuid) == 36
    ):
        return ResumePoint(int(hlc_text) - 1, (uuid, deleted))
    raise ValueError(
        f"since must be a millisecond timestamp or an event id (<hlc>-<uuid>[-d]), got {text!r}"
    )


def under(prefix: str, key: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


Ident = tuple[str, str, bool]  # (key, uuid, deleted): an expiry keeps the uuid, not the flag


class Watcher:
    """One client's subscription. Fed by the hub (in the store's writer task), drained by
    the client's stream: `replay` (when resuming), then `wait` and `take` until `ended`."""

    def __init__(
        self,
        hub: WatchHub,
        prefix: str,
        limit: int,
        readable: Callable[[Record], bool] | None = None,
    ) -> None:
        self.hub = hub
        self.prefix = prefix
        self.limit = limit
        self.readable = readable  # None: every key; else only records the caller may read
        self.ended: str | None = None  # why the stream must end: "overflow" or "shutdown"
        self.on_overflow: Callable[[], None] | None = None
        self._buffer: list[WatchEvent] = []
        self._wakeup = trio.Event()
        self._replaying = False
        self._buffered: set[Ident] = set()  # live events buffered during the replay
        self._at_risk: set[Ident] = set()  # replayed versions whose announcement may follow

    # --- fed by the hub ---------------------------------------------------------------------

    def offer(self, event: WatchEvent) -> None:
        if self.ended is not None:
            return
        ident = (event.key, event.uuid, event.deleted)
        if ident in self._at_risk:
            return  # the replay sent it already
        if len(self._buffer) >= self.limit:
            self.hub.disconnected_slow += 1
            self.end("overflow")
            if self.on_overflow is not None:
                self.on_overflow()
            return
        self._buffer.append(event)
        if self._replaying:
            self._buffered.add(ident)
        self._wakeup.set()

    def batch_announced(self) -> None:
        self._at_risk.clear()

    def end(self, reason: str) -> None:
        """Stop collecting events (and free them); the stream ends, saying `reason`."""
        if self.ended is None:
            self.ended = reason
            self._buffer = []
            self._buffered.clear()
            self.hub.unsubscribe(self)
            self._wakeup.set()

    # --- drained by the stream ----------------------------------------------------------------

    def replay(self, store: Store, resume: ResumePoint) -> Iterator[WatchEvent]:
        """Every current version changed after `resume` under the prefix, oldest first,
        except those already buffered live. Each chunk is read in its own short read
        transaction, none held while the caller sends."""
        self._replaying = True
        after_hlc, after_key = resume.after_hlc, None
        while self.ended is None:
            in_flight = store.publishing
            records = store.changes_after(after_hlc, after_key, REPLAY_CHUNK)
            chunk: list[WatchEvent] = []
            for record in records:
                if not under(self.prefix, record.key):
                    continue
                if self.readable is not None and not self.readable(record):
                    continue
                if (record.version.uuid, record.deleted) == resume.skip:
                    continue
                event = WatchEvent.of(record)
                chunk.append(event)
                if in_flight:
                    self._at_risk.add((event.key, event.uuid, event.deleted))
            for event in chunk:
                if self.ended is not None:
                    return
                if (event.key, event.uuid, event.deleted) not in self._buffered:
                    yield event
            if len(records) < REPLAY_CHUNK:
                break
            after_hlc, after_key = records[-1].version.hlc, records[-1].key
        self._replaying = False
        self._buffered.clear()

    async def wait(self) -> None:
        """Until there are live events to take, or the watcher has ended."""
        while not self._buffer and self.ended is None:
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def take(self) -> list[WatchEvent]:
        events, self._buffer = self._buffer, []
        return events


class WatchHub:
    """Every watcher of one node; registered as a store listener by the API."""

    def __init__(self, store: Store, buffer: int) -> None:
        self.store = store
        self.buffer = buffer
        self.watchers: set[Watcher] = set()
        self.disconnected_slow = 0
        self.events_sent = 0
        store.listeners.append(self.on_changes)

    def subscribe(self, prefix: str, readable: Callable[[Record], bool] | None = None) -> Watcher:
        watcher = Watcher(self, prefix, self.buffer, readable)
        self.watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def on_changes(self, changes: list[Change]) -> None:
        if not self.watchers:
            return
        records = [c.new for c in changes if c.new is not None]
        events = [WatchEvent.of(r) for r in records]
        for watcher in list(self.watchers):
            prefix, readable = watcher.prefix, watcher.readable
            for record, event in zip(records, events, strict=True):
                if under(prefix, event.key) and (readable is None or readable(record)):
                    watcher.offer(event)
            watcher.batch_announced()


def sse_event(event: WatchEvent) -> bytes:
    return b"id: %s\ndata: %s\n\n" % (event.id.encode(), orjson.dumps(event.to_json()))


def sse_control(kind: str, body: dict[str, object]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(body))
