"""Starting, probing and always stopping the server processes a benchmark measures.

Every wait here has a deadline and every process started here is stopped by its own
context manager, so an interrupted or failing benchmark leaves nothing running.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark step that cannot go on; the message says which and why."""


def free_port() -> int:
    """A loopback TCP port that is free right now (the kernel picks it, so no guessing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float = 10.0,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:port; reuses `conn` when given (keep-alive for bulk loads)."""
    own = conn is None
    c = conn or http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=body, headers=headers)
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            c.close()


def http_json(
    port: int, method: str, path: str, payload: Any = None, *, timeout: float = 30.0
) -> Any:
    """A JSON request that must answer 200; raises BenchError with the body otherwise."""
    body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    status, data = http_request(port, method, path, body, timeout=timeout)
    if status != 200:
        raise BenchError(f"{method} {path} answered {status}: {data[:300]!r}")
    return json.loads(data) if data else None


@dataclass
class Proc:
    """A started server: its process, the port it serves HTTP on and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path
    started_at: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        """The end of the process's output, to explain a failed start."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def spawned(
    name: str, argv: Sequence[str], port: int, log: Path, *, cwd: Path | None = None
) -> Iterator[Proc]:
    """Run argv with output to `log`; on exit SIGTERM it, then SIGKILL after 5 s."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        started = time.perf_counter()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
        )
    try:
        yield Proc(name, popen, port, log, started)
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop one process we started, by its pid: politely first, then for sure."""
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=grace)


def wait_ready(
    proc: Proc,
    path: str,
    *,
    timeout: float = 20.0,
    method: str = "GET",
    body: bytes | None = None,
    interval: float = 0.005,
) -> float:
    """Poll until `path` answers 200; return seconds since spawn. Fails fast if the process exits."""
    deadline = proc.started_at + timeout
    last = "no answer yet"
    while time.perf_counter() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(
                f"{proc.name} exited with code {proc.popen.returncode} before it was ready:\n{proc.log_tail()}"
            )
        try:
            status, data = http_request(proc.port, method, path, body, timeout=1.0)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200:
                return time.perf_counter() - proc.started_at
            last = f"HTTP {status} {data[:200]!r}"
        time.sleep(interval)
    raise BenchError(
        f"{proc.name} not ready on {path} after {timeout:.0f} s ({last}):\n{proc.log_tail()}"
    )


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB (MiB), from /proc/PID/status VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS in /proc/{pid}/status")
