"""The data file under the store: its map grown, its pages released, leased, replaced.

Rule: the map moves (growth) or the environment closes (a snapshot put in place) only in
the writer task, between transactions, and only while no one holds the lease -- a thread
reading the map outside the writer (a backup's or a snapshot's copy) holds it meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import lmdb
import trio

from kvs.private_files import FILE_MODE
from kvs.store.jobs import ReplaceJob
from kvs.store.layout import DATA_FILE, LOCK_FILE, MAX_DBS, SYSTEM
from kvs.store.ops import StoreError
from kvs.store.reads import Reads

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class DataFile(Reads):
    """Map growth, page release, the lease, and `replace_data`."""

    # --- the lease ------------------------------------------------------------------------------

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

    # --- the map --------------------------------------------------------------------------------

    def _grow_map(self) -> None:
        # Runs in the event loop between transactions: no write transaction is open, and no read
        # transaction is either (reads never span an await), as LMDB requires.
        current = self._env.info()["map_size"]
        new_size = int(current * 2)
        log.info("LMDB map full at %d MiB; growing to %d MiB", current >> 20, new_size >> 20)
        self._env.set_mapsize(new_size)
        self._map_ranges = None  # the map may have moved
        self.stats["map_grows"] += 1

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
                target = str((self.path / DATA_FILE).resolve())
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

    # --- replacing the data with a snapshot --------------------------------------------------

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
        request = ReplaceJob(staged, installed)
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.carried

    async def _replace_data(self, request: ReplaceJob) -> None:
        """Run by the writer task (kvs/store/writer.py) when `request` reaches the queue's head."""
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
        env = lmdb.open(
            str(staged),
            max_dbs=MAX_DBS,
            map_size=self._map_size_for(staged),
            mode=FILE_MODE,
        )
        try:
            db = env.open_db(SYSTEM)
            with env.begin(write=True, db=db) as txn:
                txn.drop(db, delete=False)
                for key, value in system:
                    txn.put(key, value)
            env.sync(True)
        finally:
            env.close()
        self._env.close()
        try:
            os.replace(staged / DATA_FILE, self.path / DATA_FILE)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / LOCK_FILE)  # it described the file replaced
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            self._open_env()  # the new file, or the old one if it could not be replaced
        shutil.rmtree(staged, ignore_errors=True)
