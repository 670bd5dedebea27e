"""`bench.py load`: `kvs load` of a 100,000-key dump against the `_batch` endpoint's own rate.

One KVS node (`python -m kvs CONFIG`, empty store, durable writes). Each round, in turn:
- `_batch` alone: the same keys and values, pre-encoded as 1,000-op bodies, sent one after
  another over one keep-alive connection (what `kvs load` sends, without the client);
- `kvs load FILE` as its own process (`python -m kvs load FILE --url ...`), timed from
  spawn to exit: reading and checking the file, building the batches, sending them,
  and the process's start-up.
Fresh keys every round (a load inserts). Rounds alternate so drift on a shared machine
hits both alike; medians are reported, and the ratio load / `_batch` (target >= 0.8).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_support.procs import BenchError, http_request, machine_busy
from bench_support.report import machine_info
from bench_support.targets import KVS_BATCH_MAX, LOOPBACK, doc, kvs_node

REPO = Path(__file__).resolve().parent.parent.parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, default=100_000, help="keys per load (default 100000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    p.add_argument("--kvs-cmd", default=f"{sys.executable} -m kvs", help="how to run a node")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _write_dump(path: Path, prefix: str, keys: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(keys):
            line = {"key": f"{prefix}/k{i:06d}", "value": doc(i)}
            out.write(json.dumps(line, separators=(",", ":")) + "\n")


def _batch_bodies(prefix: str, keys: int) -> list[bytes]:
    bodies = []
    for lo in range(0, keys, KVS_BATCH_MAX):
        ops = [
            {"op": "put", "key": f"{prefix}/k{i:06d}", "data": doc(i)}
            for i in range(lo, min(keys, lo + KVS_BATCH_MAX))
        ]
        bodies.append(json.dumps({"ops": ops}, separators=(",", ":")).encode())
    return bodies


def _time_batch(port: int, bodies: list[bytes]) -> float:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=120)
    try:
        started = time.perf_counter()
        for body in bodies:
            status, data = http_request(port, "POST", "/kv/_batch", body, conn=conn)
            if status != 200:
                raise BenchError(f"_batch answered {status}: {data[:200]!r}")
        return time.perf_counter() - started
    finally:
        conn.close()


def _time_load(kvs_cmd: str, port: int, path: Path, keys: int) -> float:
    argv = [*shlex.split(kvs_cmd), "load", str(path), "--url", f"http://{LOOPBACK}:{port}"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or done.stdout.strip() != f"loaded {keys} keys":
        raise BenchError(f"kvs load failed ({done.returncode}): {done.stderr[-300:]}")
    return elapsed


def cmd_load(args: argparse.Namespace) -> int:
    batch_rates: list[float] = []
    load_rates: list[float] = []
    busy = machine_busy()
    with tempfile.TemporaryDirectory(prefix="kvs-bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        machine = machine_info(tmp)
        with kvs_node(args.kvs_cmd, tmp / "node", args.ready_timeout, cwd=REPO) as proc:
            for round_ in range(args.rounds):
                bodies = _batch_bodies(f"batch{round_}", args.keys)
                seconds = _time_batch(proc.port, bodies)
                batch_rates.append(args.keys / seconds)
                del bodies
                dump = tmp / f"dump{round_}.jsonl"
                _write_dump(dump, f"load{round_}", args.keys)
                seconds = _time_load(args.kvs_cmd, proc.port, dump, args.keys)
                load_rates.append(args.keys / seconds)
                print(
                    f"round {round_ + 1}: _batch {batch_rates[-1]:,.0f} keys/s,"
                    f" kvs load {load_rates[-1]:,.0f} keys/s",
                    file=sys.stderr,
                    flush=True,
                )
    batch = statistics.median(batch_rates)
    load = statistics.median(load_rates)
    report = {
        "command": "scripts/bench.py load " + " ".join(sys.argv[2:]),
        "machine": machine,
        "machine_busy_before": busy,
        "keys": args.keys,
        "batch_keys_per_s": [round(r) for r in batch_rates],
        "load_keys_per_s": [round(r) for r in load_rates],
        "batch_median": round(batch),
        "load_median": round(load),
        "ratio": round(load / batch, 3),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"keys per load: {args.keys:,}; rounds: {args.rounds}")
        print(f"_batch alone (1 connection, 1,000 ops/request): {batch:,.0f} keys/s (median)")
        print(f"kvs load FILE (its own process, start-up included): {load:,.0f} keys/s (median)")
        print(f"kvs load / _batch: {load / batch:.2f}x (target >= 0.8x)")
    return 0
