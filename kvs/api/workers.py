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
import logging
import pickle
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
STEADY_AFTER = 60.0  # up this long: the next restart starts again from FIRST_BACKOFF
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
    ) -> None:
        self.config = config
        self.count = count
        self.stopping = stopping
        self.grace = grace
        self.after_exit = after_exit  # the node frees dead readers' LMDB slots here
        self.pids: dict[int, int] = {}
        self.restarts = 0
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
            task_status.started()

    async def _keep(self, index: int) -> None:
        backoff = FIRST_BACKOFF
        while not self.stopping.is_set():
            started = trio.current_time()
            status = await self._run_once(index)
            self.after_exit()
            if self.stopping.is_set():
                return
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

    async def _run_once(self, index: int) -> int | None:
        """Run one worker process until it exits or the node stops; its exit status."""
        try:
            process = await trio.lowlevel.open_process(
                self.argv(index),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            log.error("cannot start worker[%d]: %s", index, exc)
            return None
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
        return process.returncode

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
