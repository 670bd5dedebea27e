"""Starting, probing and always stopping the server processes a benchmark measures (any
server: kvs, etcd, Hypercorn, serf; stopping, log tails and RSS come from kvs.testing.procs).

Every wait here has a deadline and every process started here is stopped by its own
context manager, so an interrupted or failing benchmark leaves nothing running.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvs.testing.procs import rss_kib, stop_process, tail

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """A benchmark step that cannot go on; the message says which and why."""


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    timeout: float = 10.0,
    conn: http.client.HTTPConnection | None = None,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request to 127.0.0.1:port; reuses `conn` when given (keep-alive for bulk loads)."""
    own = conn is None
    c = conn or http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        headers.update(extra_headers or {})
        c.request(method, path, body=body, headers=headers)
        resp = c.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            c.close()


def http_json(
    port: int,
    method: str,
    path: str,
    payload: Any = None,
    *,
    timeout: float = 30.0,
    extra_headers: dict[str, str] | None = None,
) -> Any:
    """A JSON request that must answer 200; raises BenchError with the body otherwise."""
    body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
    status, data = http_request(
        port, method, path, body, timeout=timeout, extra_headers=extra_headers
    )
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
    ready_s: float | None = None  # spawn to first ready answer, once wait_ready() saw it

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        """The end of the process's output, to explain a failed start."""
        return tail(self.log, lines)


@contextlib.contextmanager
def spawned(
    name: str, argv: Sequence[str], port: int, log: Path, *, cwd: Path | None = None
) -> Iterator[Proc]:
    """Run argv with output to `log`; on exit SIGTERM it, then SIGKILL after 5 s."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        started = time.perf_counter()
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
            )
        except OSError as exc:
            raise BenchError(f"cannot start {name} ({shlex.join(argv)}): {exc}") from None
    try:
        yield Proc(name, popen, port, log, started)
    finally:
        stop(popen)


def stop(popen: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Stop one process we started, by its pid: politely first, then for sure."""
    stop_process(popen, timeout=grace)


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
                proc.ready_s = time.perf_counter() - proc.started_at
                return proc.ready_s
            last = f"HTTP {status} {data[:200]!r}"
        time.sleep(interval)
    raise BenchError(
        f"{proc.name} not ready on {path} after {timeout:.0f} s ({last}):\n{proc.log_tail()}"
    )


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB (MiB), from /proc/PID/status VmRSS."""
    kib = rss_kib(pid)
    if kib is None:
        raise BenchError(f"no VmRSS in /proc/{pid}/status")
    return kib / 1024


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) `pid` has used, from /proc/PID/stat, with
    its children's (a node's HTTP workers: those running, and those it has reaped)."""
    total = _own_cpu_ticks(pid, with_reaped=True)
    for child in child_pids(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _own_cpu_ticks(child)
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu_ticks(pid: int, *, with_reaped: bool = False) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if with_reaped else 0)


def child_pids(pid: int) -> list[int]:
    """The live child processes of `pid` (a node's HTTP workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    found.append(int(entry.name))
    return sorted(found)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` while this run is idle: other work on the
    machine (a test suite, another benchmark) skews every figure, so the report says so."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(1, total1 - total0)


@dataclass(frozen=True)
class CpuMark:
    """A point to measure from: whole-machine CPU and this process tree's own CPU."""

    machine_busy_s: float
    machine_total_s: float
    ours_s: float


def cpu_mark() -> CpuMark:
    """Take a mark; children count once they have been waited for (ours always are)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy, total = _cpu_times()
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    ours = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return CpuMark(busy / tick, total / tick, ours)


def foreign_cpu(since: CpuMark) -> tuple[float, float]:
    """CPU-seconds used by other processes since `since`, and that as a share of the machine.

    An upper bound: kernel work done for our loopback traffic (softirq) is counted as theirs.
    """
    now = cpu_mark()
    foreign = (now.machine_busy_s - since.machine_busy_s) - (now.ours_s - since.ours_s)
    span = max(1e-9, now.machine_total_s - since.machine_total_s)
    return max(0.0, foreign), max(0.0, foreign) / span
