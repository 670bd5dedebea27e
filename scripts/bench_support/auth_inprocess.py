"""The auth check's CPU cost measured in process, without an HTTP server: the same node code
(the raw-ASGI key path) driven directly, with auth off and with a token on every request.

On a busy shared machine wall-clock throughput through wrk varies by a factor of two from
run to run; process CPU time per request, measured here, varies by a few percent."""

from __future__ import annotations

import statistics
import time
from typing import Any

import trio

from bench_support.inprocess import inprocess_node

WORKERS = 16
PER_WORKER = 1000
BODY = b'{"colour": "red", "pairs": 3}'


async def _measure(auth: bool) -> dict[str, float]:
    """CPU microseconds per PUT (new keys) and per GET (those keys), 16 concurrent callers."""
    async with inprocess_node("kvs-auth-bench-", auth=auth) as node:
        out: dict[str, float] = {}
        headers = [(b"content-length", str(len(BODY)).encode())]
        if auth:
            token = node.root_token_path.read_text().strip()
            headers.append((b"authorization", b"Bearer " + token.encode()))

        async def call(method: str, path: str) -> None:
            scope: dict[str, Any] = {
                "type": "http",
                "method": method,
                "path": path,
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1", 1),
            }
            statuses: list[int] = []

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": BODY}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await node.api.app.asgi_app(scope, receive, send)
            if statuses != [200]:
                raise RuntimeError(f"{method} {path} answered {statuses}")

        for method in ("PUT", "GET"):

            async def worker(w: int, method: str = method) -> None:
                for i in range(PER_WORKER):
                    await call(method, f"/kv/bench/w{w}/k{i}")

            started = time.process_time()
            async with trio.open_nursery() as workers:
                for w in range(WORKERS):
                    workers.start_soon(worker, w)
            out[method] = (time.process_time() - started) / (WORKERS * PER_WORKER) * 1e6
        return out


def auth_cpu_lines(rounds: int = 3) -> list[str]:
    """Median CPU per request with auth off and on, interleaved over `rounds`."""
    off: dict[str, list[float]] = {"GET": [], "PUT": []}
    on: dict[str, list[float]] = {"GET": [], "PUT": []}
    for _ in range(rounds):
        for auth, into in ((False, off), (True, on)):
            for op, us in trio.run(_measure, auth).items():
                into[op].append(us)
    lines = []
    for op in ("GET", "PUT"):
        a, b = statistics.median(off[op]), statistics.median(on[op])
        lines.append(
            f"auth check in process (no HTTP server), {op}: {a:.0f} -> {b:.0f} us of CPU per"
            f" request, +{b - a:.0f} us (median of {rounds})"
        )
    return lines
