"""The store as an HTTP worker process sees it: the node's LMDB environment, read only.

Rule: a worker never writes. Every write, and so every change, happens in the node's process
(its one writer task); a worker's `FollowerStore` only reads the same environment (LMDB is
built for many reader processes) and, before each request it serves, `follow()`s what the
node did meanwhile, through the `Beacon`:

1. The node creates the beacon (`Beacon.create`, data_dir/workers.gen: two counters) before
   it starts any worker, and `Beacon.follow_store` bumps them from its commit listeners:
   `system` when a commit changed a system record (a user, group or token, written here or
   replicated from a peer), `data` when `replace_data` put a snapshot in place. Listeners
   run right after the commit, before any writer's caller resumes: when the node
   acknowledges a token's revocation, the counter has already moved.
2. A worker reads both counters at the start of each request (two loads from a shared
   mapping): `data` moved -> it reopens the environment (the old file was replaced);
   `system` moved -> it forgets every cached principal (`replaced_listeners`).
3. The node grows the map when full; a worker's next transaction then fails with
   `MapResizedError`, and `_FollowedEnv` adopts the new size and begins again.

Why counters and not the change index: a record replicated from a peer carries the peer's
HLC, which may be older than the newest local change, so "the changes after the position I
last saw" could miss a revocation that arrived from another node.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import lmdb

from kvs.model import SYSTEM_PREFIX
from kvs.store.ops import Change
from kvs.store.store import Store

log = logging.getLogger(__name__)

BEACON_FILE = "workers.gen"
_WORDS = struct.Struct("<QQ")  # system generation, data generation


class Beacon:
    """Two counters in a small shared file: the node writes, workers read."""

    def __init__(self, path: Path, *, writable: bool) -> None:
        self.path = path
        flags = os.O_RDWR if writable else os.O_RDONLY
        fd = os.open(path, flags)
        try:
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, _WORDS.size, access=access)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, data_dir: Path) -> Beacon:
        """A fresh beacon (both counters 0) in `data_dir`, owner-only, for the node."""
        path = data_dir / BEACON_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _WORDS.pack(0, 0))
        finally:
            os.close(fd)
        return cls(path, writable=True)

    def read(self) -> tuple[int, int]:
        """(system generation, data generation)."""
        system, data = _WORDS.unpack_from(self._map, 0)
        return system, data

    def bump(self, *, system: bool = False, data: bool = False) -> None:
        old_system, old_data = self.read()
        _WORDS.pack_into(self._map, 0, old_system + (system or data), old_data + data)

    def follow_store(self, store: Store) -> None:
        """Bump the counters from `store`'s listeners (in the node's process)."""

        def on_commit(changes: list[Change]) -> None:
            for change in changes:
                record = change.new or change.old
                if record is not None and record.key.startswith(SYSTEM_PREFIX):
                    self.bump(system=True)
                    return

        store.listeners.append(on_commit)
        store.replaced_listeners.append(lambda: self.bump(data=True))

    def close(self, *, remove: bool = False) -> None:
        self._map.close()
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class _FollowedEnv:
    """An LMDB environment another process may grow: a transaction refused because the map
    grew (`MapResizedError`) adopts the new size and begins again."""

    def __init__(self, env: lmdb.Environment, stats: dict[str, int]) -> None:
        self._env = env
        self._stats = stats

    def begin(self, *args: Any, **kwargs: Any) -> lmdb.Transaction:
        try:
            return self._env.begin(*args, **kwargs)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)  # 0: take the size the file's writer set
            self._stats["map_followed"] += 1
            log.info(
                "the node grew the LMDB map to %d MiB; following", self.info()["map_size"] >> 20
            )
            return self._env.begin(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


class FollowerStore(Store):
    """A `Store` whose writer never runs, reading the environment a node writes (see the
    module's rule). Open it only after the node has opened the store (schema in place)."""

    def __init__(self, path: str | Path, beacon: Beacon, **kwargs: Any) -> None:
        self.followed = {"map_followed": 0, "reopened": 0, "caches_cleared": 0}
        self.beacon = beacon
        self._seen = beacon.read()
        super().__init__(path, in_thread=False, **kwargs)

    def _open_env(self) -> None:
        super()._open_env()
        self._env = _FollowedEnv(self._env, self.followed)  # type: ignore[assignment]

    def follow(self) -> None:
        """Catch up with what the node did since the last call (cheap when nothing did)."""
        now = self.beacon.read()
        if now == self._seen:
            return
        system, data = now
        if data != self._seen[1]:
            self._env.close()
            self._open_env()
            self.followed["reopened"] += 1
        self._seen = now
        self.followed["caches_cleared"] += 1
        for listener in self.replaced_listeners:  # cached principals, and the like
            listener()
