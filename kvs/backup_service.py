"""The node's backup service: the cron schedule, one backup at a time, retention, status.

The blocking work (LMDB copy, compression, fsync) runs in a worker thread through
`trio.to_thread`, so the event loop and the group-commit writer keep going meanwhile;
that thread touches no Trio object. The wall clock and the sleep are injected, so the
schedule can be tested without waiting for midnight.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import trio

from kvs.backup import BackupError, BackupResult, apply_retention, create_backup, list_backups

log = logging.getLogger(__name__)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def next_run(schedule: str, after: dt.datetime) -> dt.datetime:
    """The first time strictly after `after` that the cron expression `schedule` names (UTC)."""
    from croniter import croniter  # here: a node without a backup schedule never needs it

    return croniter(schedule, after.astimezone(dt.UTC)).get_next(dt.datetime)


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.astimezone(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class BackupSettings:
    """From the node's configuration (kvs.config.declaration documents each and holds the
    defaults); `backup_dir` is `backup_path` resolved against the config file's directory."""

    backup_enabled: bool
    backup_schedule: str
    backup_dir: Path
    backup_retention: int


class BackupService:
    """Takes backups of one node's store, on a schedule and on demand, and reports on them."""

    def __init__(
        self,
        *,
        node_id: str,
        env: Callable[[], AbstractContextManager[lmdb.Environment]],
        settings: BackupSettings,
        now: Callable[[], dt.datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    ) -> None:
        self.node_id = node_id
        self.settings = settings
        self._env = env
        self._now = now
        self._sleep = sleep
        self._lock = trio.Lock()  # one backup at a time; a second caller waits its turn
        self.running = False
        self.last_run: dt.datetime | None = None
        self.last_result: str | None = None  # "ok" or "error"
        self.last_error: str | None = None
        self.last: BackupResult | None = None
        self.next_run: dt.datetime | None = None
        self.removed_total = 0

    def _now_ms(self) -> int:
        return int(self._now().timestamp() * 1000)

    async def run_once(self) -> BackupResult:
        """Take one backup now and apply retention; raises BackupError (also recorded)."""
        async with self._lock:
            self.running = True
            self.last_run = self._now()
            try:
                result, removed = await trio.to_thread.run_sync(self._backup_blocking)
            except BackupError as exc:
                self._failed(str(exc))
                raise
            except (OSError, lmdb.Error) as exc:
                message = f"backup into {self.settings.backup_dir} failed: {exc}"
                self._failed(message)
                raise BackupError(message) from None
            finally:
                self.running = False
            self.last_result, self.last_error, self.last = "ok", None, result
            self.removed_total += len(removed)
            for path in removed:
                log.info("backup retention removed %s", path.name)
            log.info(
                "backup written: %s (%d bytes, %.1f s)", result.path, result.size, result.seconds
            )
            return result

    def _failed(self, message: str) -> None:
        self.last_result, self.last_error = "error", message
        log.error("%s", message)

    def _backup_blocking(self) -> tuple[BackupResult, list[Path]]:
        """Worker thread: copy, then retention. Leftover temp files of an interrupted run
        of this node (a killed process) are removed first."""
        directory = self.settings.backup_dir
        with contextlib.suppress(OSError):
            for stale in directory.glob(f".kvs-{self.node_id}-*.tmp"):
                stale.unlink(missing_ok=True)
        with self._env() as env:  # held: the store's environment stays open meanwhile
            result = create_backup(env, directory, self.node_id, self._now_ms)
        removed = apply_retention(
            directory, self.node_id, self._now_ms(), self.settings.backup_retention
        )
        return result, removed

    async def run_schedule(self) -> None:
        """Forever: sleep until the schedule's next time, take a backup, repeat.

        A run missed while the node was down is not caught up (as cron). After a sleep the
        clock is read again, so a wall clock that moved only delays a run, never doubles it."""
        while True:
            now = self._now()
            due = next_run(self.settings.backup_schedule, now)
            self.next_run = due
            await self._sleep(max(0.0, (due - now).total_seconds()))
            if self._now() < due:
                continue
            with contextlib.suppress(BackupError):  # recorded in the status and logged
                await self.run_once()

    def status(self) -> dict[str, Any]:
        kept = list_backups(self.settings.backup_dir, self.node_id)
        sizes = []
        for path, _ in kept:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(path.stat().st_size)
        last = self.last
        return {
            "node_id": self.node_id,
            "enabled": self.settings.backup_enabled,
            "schedule": self.settings.backup_schedule,
            "path": str(self.settings.backup_dir),
            "retention_days": self.settings.backup_retention,
            "running": self.running,
            "last_run": _iso(self.last_run),
            "last_result": self.last_result,
            "last_error": self.last_error,
            "last_file": None if last is None else str(last.path),
            "last_size": None if last is None else last.size,
            "last_duration_s": None if last is None else round(last.seconds, 3),
            "next_run": _iso(self.next_run) if self.settings.backup_enabled else None,
            "count": len(kept),
            "total_size": sum(sizes),
        }
