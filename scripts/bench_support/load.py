"""Closed-loop HTTP load: N keep-alive connections, each sending its next request as soon
as the previous answer arrives, for a fixed time; reports requests/s and p50/p99 latency.

Two generators with one interface: `wrk` (C, event-driven; preferred, it is far faster
than any server measured here) and a built-in asyncio one for machines without wrk,
whose own ceiling the caller must check, since on 2 cores it may be the bottleneck.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_support.procs import LOOPBACK, BenchError


@dataclass(frozen=True)
class Request:
    """One HTTP request of a workload; bodies are pre-encoded so the client does no JSON work."""

    method: str
    path: str
    body: bytes = b""


@dataclass(frozen=True)
class Workload:
    """A request mix: each request sent is drawn uniformly at random from `requests`."""

    name: str
    requests: tuple[Request, ...]
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (Authorization)


@dataclass(frozen=True)
class LoadResult:
    """What one timed run measured; `errors` counts failed and non-2xx requests."""

    tool: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float


# wrk runs `init` in each thread's Lua state and `done` once, after all threads stop.
# Requests are pre-formatted from a file (one "METHOD PATH BODY" line each) so the Lua
# side only picks one at random; `done` prints one machine-readable line.
WRK_SCRIPT = r"""
local reqs = {}

-- headers given with -H (Authorization) go with every request
local function with_base(extra)
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  for k, v in pairs(extra) do h[k] = v end
  return h
end

init = function(args)
  for line in io.lines(args[1]) do
    local method, path, body = line:match("^(%S+) (%S+) ?(.*)$")
    if body == "" then
      reqs[#reqs + 1] = wrk.format(method, path, with_base({}))
    else
      reqs[#reqs + 1] = wrk.format(method, path, with_base({["Content-Type"] = "application/json"}), body)
    end
  end
  math.randomseed(tonumber(tostring(reqs):match("0x(%x+)"), 16) % 2147483647 + os.time())
end

request = function()
  return reqs[math.random(#reqs)]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_WRK_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _write_requests(workload: Workload, path: Path) -> None:
    lines = []
    for req in workload.requests:
        if b"\n" in req.body or " " in req.path:
            raise BenchError(
                f"request {req.path} cannot be written for wrk (space in path or newline in body)"
            )
        lines.append(f"{req.method} {req.path} {req.body.decode()}".rstrip(" "))
    path.write_text("\n".join(lines) + "\n")


def run_wrk(
    port: int,
    workload: Workload,
    *,
    connections: int,
    duration: float,
    threads: int,
    workdir: Path,
) -> LoadResult:
    """One wrk run; latency percentiles come from the Lua `done` hook (microseconds)."""
    script = workdir / "bench.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT)
    reqfile = workdir / f"requests-{port}-{workload.name}.txt"
    _write_requests(workload, reqfile)
    seconds = max(1, round(duration))
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        *(arg for name, value in workload.headers for arg in ("-H", f"{name}: {value}")),
        f"http://{LOOPBACK}:{port}/",
        "--",
        str(reqfile),
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + 60} s") from None
    match = _WRK_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise BenchError(
            f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    fields = {k: int(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    elapsed = fields["duration_us"] / 1e6
    errors = sum(fields[k] for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        tool="wrk",
        requests=fields["requests"],
        errors=errors,
        seconds=elapsed,
        rps=fields["requests"] / elapsed if elapsed else 0.0,
        p50_ms=fields["p50_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
    )


class _ClientConn(asyncio.Protocol):
    """One keep-alive connection of the built-in generator: send, parse answer, repeat.

    Parsing is the minimum HTTP/1.1 needs with Content-Length bodies; a `Connection:
    close` answer (Hypercorn closes after keep_alive_max_requests) ends this connection
    and the generator opens a new one, as wrk does.
    """

    def __init__(self, run: _PyRun) -> None:
        self.run = run
        self.buf = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if self.run.stopping:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.pick())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            start = head.find(b"content-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            self.buf = self.buf[total:]
            self.run.record(self.sent_at, time.perf_counter(), 200 <= status < 300)
            if b"connection: close" in head:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _PyRun:
    """Shared state of one built-in generator run (lives only for that run)."""

    def __init__(self, workload: Workload, port: int) -> None:
        host = f"{LOOPBACK}:{port}"
        self.raw = [_format(req, host, workload.headers) for req in workload.requests]
        self.rng = random.Random()
        self.stopping = False
        self.latencies: list[float] = []
        self.errors = 0

    def pick(self) -> bytes:
        return self.raw[self.rng.randrange(len(self.raw))]

    def record(self, sent: float, received: float, ok: bool) -> None:
        if self.stopping:
            return
        self.latencies.append(received - sent)
        if not ok:
            self.errors += 1


def _format(req: Request, host: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    head = f"{req.method} {req.path} HTTP/1.1\r\nHost: {host}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    if req.body or req.method in ("POST", "PUT"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(req.body)}\r\n"
    return head.encode() + b"\r\n" + req.body


async def _py_load(port: int, workload: Workload, connections: int, duration: float) -> LoadResult:
    run = _PyRun(workload, port)
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = started + duration
    errors_connect = 0

    async def one_slot() -> None:
        nonlocal errors_connect
        while time.perf_counter() < deadline:
            try:
                _, proto = await loop.create_connection(lambda: _ClientConn(run), LOOPBACK, port)
            except OSError:
                errors_connect += 1
                await asyncio.sleep(0.01)
                continue
            try:
                await asyncio.wait_for(asyncio.shield(proto.closed), deadline - time.perf_counter())
            except TimeoutError:
                break
            finally:
                if run.stopping and proto.transport is not None:
                    proto.transport.close()

    tasks = [asyncio.create_task(one_slot()) for _ in range(connections)]
    await asyncio.sleep(duration)
    run.stopping = True
    elapsed = time.perf_counter() - started
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    lat = sorted(run.latencies)
    if not lat:
        raise BenchError(f"built-in generator got no answers from port {port}")
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return LoadResult(
        tool="python-asyncio",
        requests=len(lat),
        errors=run.errors + errors_connect,
        seconds=elapsed,
        rps=len(lat) / elapsed,
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
    )


def run_python(port: int, workload: Workload, *, connections: int, duration: float) -> LoadResult:
    """One run of the built-in generator, in this process (it is otherwise idle meanwhile)."""
    return asyncio.run(_py_load(port, workload, connections, duration))


def median_result(results: Sequence[LoadResult]) -> LoadResult:
    """Per-field medians over repeated runs, so one noisy run does not set the figure."""
    if len(results) == 1:
        return results[0]
    return LoadResult(
        tool=results[0].tool,
        requests=int(statistics.median(r.requests for r in results)),
        errors=sum(r.errors for r in results),
        seconds=statistics.median(r.seconds for r in results),
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
    )
