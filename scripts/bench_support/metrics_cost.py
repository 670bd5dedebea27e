"""`bench.py metrics-cost`: what request metrics add to the single-key hot path.

The HTTP benchmark's throughput moves by more than this cost from run to run on a shared
2-core machine, so the cost is measured directly: a real in-process node (real LMDB, the
real ASGI stack of kvs/api, no socket), and N `GET /kv/{key}` requests driven straight into
the ASGI app, once through the bare fast path (`KeyRoutes`, what the node had before
metrics and watch), once adding the `_watch` router in front, and once through the whole
stack with the metrics middleware outermost (what Hypercorn calls). CPU time per request,
median of R interleaved runs; the difference is the cost per request.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import trio

from bench_support.inprocess import inprocess_node
from kvs.store import Put


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=20_000, help="requests per run")
    p.add_argument("--runs", type=int, default=7, help="runs per variant; the median is shown")


async def _drive(app: Any, n: int) -> float:
    """CPU seconds for `n` GETs of one key through `app`."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/kv/bench/key",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, send)
    elapsed = time.process_time() - started
    assert statuses.count(200) == n, "every request must be answered 200"
    return elapsed


async def _measure(args: argparse.Namespace) -> dict[str, float]:
    async with inprocess_node("kvs-metrics-cost-") as node:
        await node.store.write([Put("bench/key", b'{"a": 1, "b": "some text"}')])
        full = node.api.app.asgi_app  # MetricsMiddleware(WatchRoutes(KeyRoutes(quart)))
        variants = {
            "fast path only": full.app.app,
            "+ watch router": full.app,
            "+ metrics": full,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for app in variants.values():  # warm-up
            await _drive(app, 1000)
        for _ in range(args.runs):
            for name, app in variants.items():
                times[name].append(await _drive(app, args.requests))
        return {name: statistics.median(t) / args.requests * 1e6 for name, t in times.items()}


def run(args: argparse.Namespace) -> int:
    per_request = trio.run(_measure, args)
    base = per_request["fast path only"]
    print(f"GET /kv/{{key}} through the ASGI stack, in process: CPU µs per request "
          f"(median of {args.runs} runs x {args.requests:,} requests)\n")  # fmt: skip
    print("| stack | µs/request | added |\n| --- | ---: | ---: |")
    for name, micros in per_request.items():
        print(f"| {name} | {micros:.1f} | {micros - base:+.1f} µs ({(micros / base - 1):+.1%}) |")
    return 0
