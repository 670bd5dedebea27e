"""Running a node in the background: PID files, log files, start, stop, status.

Everything lives under `~/.kvs/` (or `$KVS_HOME`): `run/<name>.pid` and `logs/<name>.log`,
where `<name>` is the config file's stem plus a short hash of its absolute path, so two
`config.yaml` files in different directories never share a PID file. A PID file holds the
PID and the config's path; it is trusted only while that PID is alive and is a `kvs serve`
of that config (PIDs are reused), otherwise it is stale and removed.

The node runs as `python -m kvs serve CONFIG` in a new session (detached from the
terminal, immune to its hang-up), stdout and stderr appended to the log file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvs.private_files import open_private, private_dir, write_private

HOME_ENV = "KVS_HOME"
POLL = 0.05
LOG_TAIL_LINES = 20


def kvs_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".kvs")


@dataclass(frozen=True)
class Instance:
    """Where one config's daemon keeps its PID file and log."""

    config: Path  # absolute
    name: str
    pid_file: Path
    log_file: Path


def instance_for(config: str | os.PathLike[str], home: Path | None = None) -> Instance:
    path = Path(config).resolve()
    home = home or kvs_home()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = f"{path.stem}-{digest}"
    return Instance(path, name, home / "run" / f"{name}.pid", home / "logs" / f"{name}.log")


def all_instances(home: Path | None = None) -> list[Instance]:
    """Every instance with a PID file under the home directory (for `kvs status`)."""
    home = home or kvs_home()
    found = []
    for pid_file in sorted((home / "run").glob("*.pid")):
        _, config = _read_pid_file(pid_file)
        if config is not None:
            found.append(instance_for(config, home))
    return found


def _read_pid_file(path: Path) -> tuple[int | None, str | None]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        pid = None
    return pid, (lines[1] if len(lines) > 1 else None)


def _write_pid_file(instance: Instance, pid: int) -> None:
    private_dir(instance.pid_file.parent)
    write_private(instance.pid_file, f"{pid}\n{instance.config}\n")


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (an unreaped zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(0) is all we know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def is_node_of(pid: int, config: Path) -> bool:
    """Whether `pid` is a live `kvs serve` process of `config` (not a reused PID)."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc: trust the PID file
    args = [a.decode(errors="replace") for a in argv]
    return "serve" in args and str(config) in args and any("kvs" in a for a in args)


@dataclass(frozen=True)
class State:
    pid: int | None  # the running node's PID
    stale_pid: int | None  # a PID file that named a process that is gone (now removed)


def state(instance: Instance) -> State:
    """Whether the instance runs; a stale PID file is removed on the way."""
    pid, _ = _read_pid_file(instance.pid_file)
    if pid is None:
        if instance.pid_file.exists():
            instance.pid_file.unlink(missing_ok=True)
        return State(None, None)
    if is_node_of(pid, instance.config):
        return State(pid, None)
    instance.pid_file.unlink(missing_ok=True)
    return State(None, pid)


def log_tail(instance: Instance, lines: int = LOG_TAIL_LINES) -> str:
    return tail(instance.log_file, lines)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file ("" if it cannot be read), from at most its last
    64 KiB: a failed start is explained by its end, however long the log grew. (The test and
    benchmark process helpers, kvs.testing.procs, use this one too.)"""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class StartFailed(Exception):
    """The node exited or did not become ready; the message includes the log's tail."""


def spawn(instance: Instance) -> int:
    """Start `kvs serve CONFIG` detached, logging to the instance's log; returns its PID."""
    private_dir(instance.log_file.parent)
    with contextlib.suppress(OSError):
        os.chmod(instance.log_file.parent.parent, 0o700)
    # The log names keys, clients and errors: the owner's only (0600), like the data.
    with os.fdopen(open_private(instance.log_file, os.O_WRONLY | os.O_APPEND), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvs", "serve", str(instance.config)],
            cwd=instance.config.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    # Not waited for: the node outlives this process, and init becomes its parent.
    _write_pid_file(instance, proc.pid)
    return proc.pid


def wait_ready(
    instance: Instance,
    pid: int,
    is_ready: Callable[[], bool],
    timeout: float,
) -> None:
    """Poll until `is_ready()`; raise StartFailed if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid):
            instance.pid_file.unlink(missing_ok=True)
            raise StartFailed(
                f"the node exited during start-up; last log lines:\n{log_tail(instance)}"
            )
        if is_ready():
            return
        if time.monotonic() > deadline:
            raise StartFailed(
                f"the node (pid {pid}) is not ready after {timeout:g} s; it is still running"
                f" (`kvs stop` to end it); last log lines:\n{log_tail(instance)}"
            )
        time.sleep(POLL)


@dataclass(frozen=True)
class Stopped:
    pid: int
    killed: bool  # SIGKILL was needed
    seconds: float


def stop(instance: Instance, pid: int, timeout: float) -> Stopped:
    """SIGTERM, wait up to `timeout` for a graceful exit, else SIGKILL; remove the PID file."""
    started = time.monotonic()
    killed = False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
    instance.pid_file.unlink(missing_ok=True)
    return Stopped(pid, killed, time.monotonic() - started)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True
