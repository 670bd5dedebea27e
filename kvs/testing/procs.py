"""Real `kvs` processes for tests, fuzzers, benchmarks and the local cluster launcher: start
one, wait for its /health, read the end of its log, stop or kill it, and write its config
(0600: it holds the cluster secret).

Rule: everything here is what an operator could see of a node from outside: its process, its
files, its open ports. It imports nothing of the node but `kvs.daemon.tail` (the production
side of "the end of a log", shared rather than copied), so a harness built on it meets the
node as a client would. Free ports are in `kvs.testing.ports`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kvs.daemon import tail
from kvs.private_files import write_private

__all__ = [
    "HOST",
    "KVS_COMMAND",
    "NodeProcess",
    "ProcessError",
    "http_get",
    "kill_process",
    "rss_kib",
    "set_key",
    "start_kvs",
    "stop_process",
    "tail",
    "write_private",
]

HOST = "127.0.0.1"
KVS_COMMAND = (sys.executable, "-m", "kvs")  # the kvs of this interpreter
READY_TIMEOUT = 60.0  # a loaded 2-core machine can take seconds to import the stack
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


class ProcessError(Exception):
    """A node would not start or stop; the message says which and why (with its log's end)."""


# --- config files -------------------------------------------------------------------------------


def set_key(text: str, key: str, value: str) -> str:
    """Replace the value of a top-level `key:` line of a config, keeping its comment; append
    the line when the key is not there. `value` is written as it is (see `kvs.config.render`)."""
    pattern = re.compile(rf"^{re.escape(key)}:[^\n#]*", re.MULTILINE)
    if not pattern.search(text):
        return text + f"{key}: {value}\n"
    return pattern.sub(lambda _m: f"{key}: {value} ", text, count=1)


# --- processes ----------------------------------------------------------------------------------


def start_kvs(
    args: Sequence[str],
    *,
    cwd: Path,
    stdout: Path,
    stderr: Path | None = None,
    append: bool = False,
    new_session: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `python -m kvs ARGS` in `cwd`, stdin from /dev/null, output into files (a pipe
    could fill up and stall the node): `stdout`, and `stderr` (default: the same file).
    `new_session`: its own session, so a Ctrl-C of the caller does not reach it."""
    mode = "ab" if append else "wb"
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(stdout, mode))
        err = out if stderr is None else files.enter_context(open(stderr, mode))
        return subprocess.Popen(
            [*KVS_COMMAND, *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=new_session,
            env=None if env is None else dict(env),
        )


def stop_process(
    popen: subprocess.Popen[bytes], *, timeout: float = STOP_TIMEOUT, signum: int = signal.SIGTERM
) -> int | None:
    """Ask a process we started to stop (`signum`) and wait up to `timeout`; SIGKILL it if it
    is still running then. Returns its exit status, or None if it had to be killed."""
    if popen.poll() is not None:
        return popen.returncode
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(signum)
    try:
        return popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_process(popen, timeout=timeout)
        return None


def kill_process(popen: subprocess.Popen[bytes], *, timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL (kill -9: no chance to flush or close anything) and reap, by its own pid."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=timeout)


def rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) of a process in KiB (Linux), None if it is gone or unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


# --- HTTP from outside --------------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float, token: str | None = None) -> tuple[int, bytes]:
    """A tiny blocking HTTP/1.1 GET (no library: usable from a monitor thread, and honest
    about time: connect, send, read, all within `timeout`). Returns (status, body)."""
    deadline = time.monotonic() + timeout
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Connection: close\r\n\r\n"
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        data = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"GET {path}: no complete answer within {timeout} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"GET {path}: not an HTTP answer: {data[:80]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def health_status(port: int, timeout: float = 2.0) -> int | None:
    """The status of GET /health on 127.0.0.1:port, None while nothing answers there."""
    try:
        status, _ = http_get(port, "/health", timeout=timeout)
    except (OSError, ConnectionError):
        return None
    return status


# --- one node process ---------------------------------------------------------------------------


class NodeProcess:
    """One `python -m kvs ARGS` process serving HTTP on 127.0.0.1:`port`, its stdout and
    stderr in files. It can be started again after it stopped (same files, appended to
    unless `append` is false). Killed by its own pid, never by name."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        port: int,
        stdout_path: Path,
        stderr_path: Path,
        name: str = "kvs",
        append: bool = True,
        new_session: bool = False,
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.port = port
        self.name = name
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.append = append
        self.new_session = new_session
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0

    @classmethod
    def for_config(cls, name: str, config: Path, port: int) -> NodeProcess:
        """`python -m kvs CONFIG` in the config's directory, output in NAME.out / NAME.err
        there (appended over restarts), in its own session."""
        directory = config.parent
        return cls(
            [str(config)],
            cwd=directory,
            port=port,
            stdout_path=directory / f"{name}.out",
            stderr_path=directory / f"{name}.err",
            name=name,
            new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def start(self) -> None:
        assert self.popen is None or self.popen.poll() is not None, "already running"
        self.starts += 1
        self.started_at = time.monotonic()
        self.popen = start_kvs(
            self.args,
            cwd=self.cwd,
            stdout=self.stdout_path,
            stderr=self.stderr_path,
            append=self.append,
            new_session=self.new_session,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll /health until it answers 200; return the seconds since the start. Raises
        ProcessError (with the end of stderr) if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ProcessError(
                    f"{self.name} exited with status {self.returncode()} during start-up:\n"
                    + self.stderr_tail()
                )
            if health_status(self.port) == 200:
                return time.monotonic() - self.started_at
            if time.monotonic() > deadline:
                raise ProcessError(
                    f"{self.name} not ready after {timeout} s:\n{self.stderr_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def rss_kb(self) -> int | None:
        """Resident memory (VmRSS) in KiB, or None if the process is gone."""
        return None if self.pid is None else rss_kib(self.pid)

    def stderr_bytes(self) -> bytes:
        try:
            return self.stderr_path.read_bytes()
        except FileNotFoundError:
            return b""

    def stderr_text(self) -> str:
        return self.stderr_bytes().decode("utf-8", "replace")

    def stderr_tail(self, lines: int = 40) -> str:
        return tail(self.stderr_path, lines)

    def send_signal(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def stop(
        self, timeout: float = STOP_TIMEOUT, signum: int = signal.SIGTERM
    ) -> tuple[int | None, float]:
        """`signum` (SIGTERM), wait; SIGKILL after `timeout`. Returns (exit status, or None
        if it had to be killed; seconds taken)."""
        started = time.monotonic()
        if self.popen is None or self.popen.poll() is not None:
            return (self.returncode(), 0.0)
        code = stop_process(self.popen, timeout=timeout, signum=signum)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.popen is not None:
            kill_process(self.popen)
