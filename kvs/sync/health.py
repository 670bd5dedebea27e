"""Whether this replica may take part in replication: syncing (bootstrapping), stale, or in step.

- Syncing: a new node (empty store, seeds to join), or one restarted before its bootstrap
  completed, holds part of the data at best: it refuses writes until its first full exchange
  with a peer that holds the cluster's data. The state is persisted ("pending", "done"), so a
  restart mid-bootstrap goes on with it.
- Stale: a node cut off from the cluster for longer than `tombstone_ttl` may hold keys whose
  deletes every other replica has forgotten: its data could bring them back. It then neither
  sends nor serves records, and refuses writes, until it is re-bootstrapped. The time of the
  last exchange is persisted (now and then), so a long downtime counts too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import trio

from kvs.store import Store, StoreError
from kvs.sync.limits import SyncSettings

log = logging.getLogger(__name__)

# System-db names (persisted in the store, so that they survive a restart).
BOOTSTRAP_STATE = "sync_bootstrap"  # "pending" while bootstrapping, "done" once complete
LAST_EXCHANGE = "sync_last_exchange_ms"  # wall ms of the last exchange that completed


def bootstrap_needed(store: Store, has_seeds: bool) -> bool:
    """Whether a node starts in `syncing` mode: its bootstrap began and never completed
    (persisted), or it starts with an empty store and seeds to join. A node restarted in
    the middle of a bootstrap holds part of the data, and must not take that for all of it."""
    state = store.get_system(BOOTSTRAP_STATE)
    if state == "pending":
        return True
    if state == "done":
        return False
    return has_seeds and store.count() == 0


def bootstrap_progress(
    keys: int, expected: int, started: float, start_keys: int, *, now: float
) -> dict[str, object]:
    """Keys received since `started` (our count then: `start_keys`), the rate, and the time
    left at that rate (None until a key came)."""
    received = max(0, keys - start_keys)
    elapsed = max(now - started, 1e-9)
    rate = received / elapsed
    left = max(0, expected - keys)
    return {
        "keys_received": received,
        "keys_expected": max(0, expected - start_keys),
        "keys_per_s": round(rate, 1),
        "eta_s": round(left / rate, 1) if rate > 0 else None,
    }


class Health:
    def __init__(
        self,
        store: Store,
        settings: SyncSettings,
        counters: Counter[str],
        *,
        syncing: bool,
        on_stale: Callable[[], None],
    ) -> None:
        self._store = store
        self._settings = settings
        self._counters = counters
        self._on_stale = on_stale  # called once, when this replica goes stale
        self.syncing = syncing  # a bootstrapping node refuses writes until this clears
        self.synced = trio.Event()
        if not syncing:
            self.synced.set()
        self.stale = False
        self.started_at = 0.0  # Trio time when replication started
        self.last_exchange_ms: int | None = None
        self._persisted_exchange_ms = 0
        # A bootstrap's progress (`/health` while syncing, `kvs status`): the peer's size as
        # it said, and our key count and Trio time when we first heard it.
        self.expected_keys: int | None = None
        self._progress_start: tuple[float, int] | None = None

    def note_peer_size(self, size: object, now: float) -> None:
        """While syncing: the key count a peer we bootstrap from reported."""
        if not self.syncing or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return
        self.expected_keys = size
        if self._progress_start is None:
            self._progress_start = (now, self._store.count())

    def progress(self, now: float) -> dict[str, object] | None:
        """`{"keys_received", "keys_expected", "keys_per_s", "eta_s"}` while syncing from a
        peer whose size we know; None otherwise."""
        if not self.syncing or self.expected_keys is None or self._progress_start is None:
            return None
        return bootstrap_progress(
            self._store.count(), self.expected_keys, *self._progress_start, now=now
        )

    async def begin(self) -> None:
        """At start-up: persist a bootstrap before any record comes, and check how long ago
        the last exchange was (a downtime longer than tombstone_ttl makes us stale)."""
        if self.syncing and self._store.get_system(BOOTSTRAP_STATE) != "pending":
            await self._store.put_system(BOOTSTRAP_STATE, "pending")
        now = self._store.clock.wall_ms()
        last = self._store.get_system(LAST_EXCHANGE)
        if isinstance(last, int) and not self.syncing:
            self.last_exchange_ms = self._persisted_exchange_ms = last
            self.check(now)
        else:
            self.last_exchange_ms = now  # never synced: a new node or a new cluster

    def check_now(self) -> bool:
        """`check` at our wall clock's time."""
        return self.check(self._store.clock.wall_ms())

    def check(self, now: int) -> bool:
        """Whether we are stale at `now` (wall ms); going stale is logged, once."""
        last = self.last_exchange_ms
        if self.stale or self.syncing or last is None:
            return self.stale
        if now - last > self._settings.tombstone_ttl_ms:
            self.stale = True
            self._on_stale()
            hours = (now - last) / 3_600_000
            log.error(
                "this node last synced with the cluster %.1f hours ago, longer than "
                "tombstone_ttl (%.1f hours): deletes it missed may be forgotten by the other "
                "nodes, so its data could bring deleted keys back. It stops replicating and "
                "refuses writes (mode 'stale'). Re-bootstrap it: stop it, move its data_dir "
                "away, and start it again with seed_nodes (docs/architecture.md: Replication)",
                hours,
                self._settings.tombstone_ttl_ms / 3_600_000,
            )
        return self.stale

    async def note_exchange(self, *, alone: bool = False) -> None:
        """Remember (and persist, now and then) that we are in step with the cluster: an
        exchange completed, or there is nobody to be out of step with."""
        if self.stale:
            return
        now = self._store.clock.wall_ms()
        self.last_exchange_ms = now
        every = min(60_000, self._settings.tombstone_ttl_ms // 10)
        if now - self._persisted_exchange_ms >= every:
            try:
                await self._store.put_system(LAST_EXCHANGE, now)
            except StoreError as exc:
                # Bookkeeping, not a client's write: a disk error here must not end the
                # node (that downtime could outlast tombstone_ttl and make it stale). The
                # next exchange tries again; a restart meanwhile reads an older time.
                self._counters["last_exchange_not_persisted"] += 1
                log.warning("could not persist the last exchange time: %s", exc)
            else:
                self._persisted_exchange_ms = now
        if alone:
            self._counters["alone_ticks"] += 1

    async def finish_bootstrap(self) -> None:
        """Our bootstrap is complete (persisted): take writes from now on."""
        await self._store.put_system(BOOTSTRAP_STATE, "done")
        self.syncing = False
        self._store.release_pages_after_commit = False
        self.synced.set()
        await self.note_exchange()
