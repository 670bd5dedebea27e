"""The node's HTTP worker processes (`http_workers` > 1): started, watched, restarted, stopped.

The contract, in order (kvs/server.py follows it):

1. The node's store is open (schema in place) and its `Beacon` created before any worker
   starts (kvs/store/follower.py); the node serves its app on the private Unix socket.
2. `WorkerPool.run` in the node's nursery starts workers 1..N-1 (`python -m kvs.worker`;
   the node itself is worker 0), each given the node's config on its stdin, and copies every
   line a worker writes to stderr into the node's log, tagged `worker[I]`.
3. A worker that exits is started again after a pause: 0.1 s, doubling up to 5 s, back to
   0.1 s once a worker has stayed up a minute. Its LMDB reader slot is freed
   (`reader_check`), so a worker killed mid-read pins no pages.
4. When `stopping` is set, every worker gets SIGTERM (it stops accepting and finishes what
   it is answering) and `STOP_GRACE` seconds; then SIGKILL. A cancellation (a second
   Ctrl-C) kills them at once. `run` returns once no worker is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from kvs.config import Config

log = logging.getLogger("kvs.workers")

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
STEADY_AFTER = 60.0
KEYRING_POLL = 1.0  # up this long: the next restart starts again from FIRST_BACKOFF
_LEVELS = {
    name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
}


class WorkerPool:
    """Workers 1..count-1 of one node (see the module's contract)."""

    def __init__(
        self,
        config: Config,
        count: int,
        *,
        stopping: trio.Event,
        grace: float,
        after_exit: Callable[[], None] = lambda: None,
        keyring: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        self.config = config
        self.keyring = keyring  # the node's keyring in force (a SIGHUP reload changes it)
        self._retiring: set[int] = set()  # pids stopped on purpose (a reload), not failed
        self.count = count
        self.stopping = stopping
        self.grace = grace
        self.after_exit = after_exit  # the node frees dead readers' LMDB slots here
        self.pids: dict[int, int] = {}
        self.restarts = 0
        self._set_payload(config)

    def _set_payload(self, config: Config) -> None:
        self.config = config
        payload = pickle.dumps(config)
        self._payload = len(payload).to_bytes(8, "big") + payload

    def argv(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "kvs.worker",
            "--index",
            str(index),
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for index in range(1, self.count):
                nursery.start_soon(self._keep, index)
            if self.keyring is not None:
                nursery.start_soon(self._follow_keyring, self.keyring)
            task_status.started()
            await self.stopping.wait()
            nursery.cancel_scope.deadline = trio.current_time() + self.grace + 5.0

    async def _follow_keyring(self, keyring: Callable[[], tuple[str, ...]]) -> None:
        """A reloaded keyring (SIGHUP) reaches the workers by a restart with the new one,
        each finishing what it answers first: within KEYRING_POLL, a secret removed from
        the keyring signs nothing any process accepts."""
        while not self.stopping.is_set():
            with trio.move_on_after(KEYRING_POLL):
                await self.stopping.wait()
            secrets = keyring()
            if secrets == self.config.cluster_secrets:
                continue
            self._set_payload(dataclasses.replace(self.config, cluster_secret=list(secrets)))
            log.info("keyring reloaded: restarting the HTTP workers with it")
            for pid in list(self.pids.values()):
                self._retiring.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    async def _keep(self, index: int) -> None:
        backoff = FIRST_BACKOFF
        while not self.stopping.is_set():
            started = trio.current_time()
            status, pid = await self._run_once(index)
            self.after_exit()
            if self.stopping.is_set():
                return
            if pid in self._retiring:
                self._retiring.discard(pid)
                continue  # stopped for a reload: started again at once
            if trio.current_time() - started >= STEADY_AFTER:
                backoff = FIRST_BACKOFF
            self.restarts += 1
            log.warning(
                "worker[%d] exited (status %s); starting it again in %.1f s",
                index,
                status,
                backoff,
            )
            with trio.move_on_after(backoff):
                await self.stopping.wait()
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _run_once(self, index: int) -> tuple[int | None, int | None]:
        """Run one worker process until it exits or the node stops: its exit status, pid."""
        try:
            process = await trio.lowlevel.open_process(
                self.argv(index),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            log.error("cannot start worker[%d]: %s", index, exc)
            return None, None
        self.pids[index] = process.pid
        try:
            assert process.stdin is not None and process.stderr is not None
            # The config, then the pipe stays open: its end tells the worker the node is gone.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.send_all(self._payload)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_copy_log, process.stderr, index)  # ends at the pipe's end
                async with trio.open_nursery() as stopper:
                    stopper.start_soon(self._stop_when_stopping, process)
                    await process.wait()
                    stopper.cancel_scope.cancel()
        finally:
            self.pids.pop(index, None)
            with trio.CancelScope(shield=True):
                await process.stdin.aclose()  # type: ignore[union-attr]
            if process.returncode is None:
                process.kill()  # cancelled: no grace
                with trio.CancelScope(shield=True):
                    await process.wait()
        return process.returncode, process.pid

    async def _stop_when_stopping(self, process: trio.Process) -> None:
        await self.stopping.wait()
        if process.returncode is None:
            process.terminate()
        with trio.move_on_after(self.grace):
            await process.wait()
        if process.returncode is None:
            process.kill()


async def _copy_log(stream: trio.abc.ReceiveStream, index: int) -> None:
    """Each line a worker writes to stderr, into the node's log as `worker[I] ...`. A worker
    writes `LEVEL logger: message` (kvs/worker.py); any other line (a traceback) is kept
    at WARNING."""
    pending = b""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while chunk := await stream.receive_some(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _relog(index, line)
    if pending:
        _relog(index, pending)


def _relog(index: int, raw: bytes) -> None:
    line = raw.decode("utf-8", "replace").rstrip()
    if not line:
        return
    first, _, rest = line.partition(" ")
    level = _LEVELS.get(first)
    if level is None:
        level, rest = logging.WARNING, line
    log.log(level, "worker[%d] %s", index, rest)
