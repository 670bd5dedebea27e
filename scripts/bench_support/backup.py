"""`bench.py backup`: a backup of a large store (1,000,000 keys by default) on a real node.

Measures, on one KVS process (`python -m kvs CONFIG`):
- the backup's time on an idle node (`POST /api/backup/run`, the server's own timing),
- the backup file's size against the LMDB data file's size (and the compacted copy's),
- PUT throughput during a backup against just before it, with the same PUT workload and
  load generator as `bench.py http`; rounds alternate "before" and "during" so that drift
  on a shared machine hits both alike, and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_support.load import LoadResult, have_wrk, run_python, run_wrk
from bench_support.procs import BenchError, http_json, machine_busy
from bench_support.report import machine_info
from bench_support.targets import KVS_BATCH_MAX, Sizes, bulk_load, kvs_target

REPO = Path(__file__).resolve().parent.parent.parent
LOAD_CHUNK = 100  # batches per bulk_load call: ~13 MB of request bodies in memory at once


@dataclass
class BackupReport:
    command: str
    machine: dict[str, str]
    keys: int = 0
    load_s: float = 0.0
    lmdb_file_bytes: int = 0
    idle_s: list[float] = field(default_factory=list)
    loaded_s: list[float] = field(default_factory=list)
    file_bytes: list[int] = field(default_factory=list)
    raw_bytes: list[int] = field(default_factory=list)
    before: list[LoadResult] = field(default_factory=list)
    during: list[LoadResult] = field(default_factory=list)
    load_window_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _doc(i: int) -> dict[str, Any]:
    return {"n": i, "name": f"item-{i:07d}", "tags": ["bench", "backup"], "active": i % 2 == 0}


def _load_keys(port: int, keys: int, connections: int) -> float:
    """Insert `keys` fresh keys through `/kv/_batch`; returns the seconds it took."""
    from bench_support.targets import BulkPlan, kvs_batch_body, kvs_batch_failures

    batches = (keys + KVS_BATCH_MAX - 1) // KVS_BATCH_MAX
    started = time.perf_counter()
    for lo in range(0, batches, LOAD_CHUNK):
        bodies = []
        for b in range(lo, min(batches, lo + LOAD_CHUNK)):
            first = b * KVS_BATCH_MAX
            count = min(KVS_BATCH_MAX, keys - first)
            names = [f"data/{first + i:07d}" for i in range(count)]
            bodies.append(kvs_batch_body(names, _doc, first))
        plan = BulkPlan(
            "load", "/kv/_batch", KVS_BATCH_MAX, lambda run, b=bodies: b, kvs_batch_failures
        )
        _, failed = bulk_load(port, plan, bodies, connections)
        if failed:
            raise BenchError(f"{failed} puts failed while loading keys")
        done = min(keys, (lo + LOAD_CHUNK) * KVS_BATCH_MAX)
        if (lo // LOAD_CHUNK) % 2 == 1 or done == keys:
            _log(f"  loaded {done:,} keys ({done / (time.perf_counter() - started):,.0f}/s)")
    return time.perf_counter() - started


def _backup(port: int) -> dict[str, Any]:
    answer = http_json(port, "POST", "/api/backup/run", timeout=3600)
    if not isinstance(answer, dict) or "path" not in answer:
        raise BenchError(f"POST /api/backup/run answered {answer!r}")
    return answer


def cmd_backup(args: argparse.Namespace) -> int:
    loadgen = (
        "wrk" if args.loadgen == "wrk" or (args.loadgen == "auto" and have_wrk()) else "python"
    )
    with tempfile.TemporaryDirectory(prefix="kvs-bench-backup-", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        report = BackupReport(shlex.join([sys.executable, *sys.argv]), machine_info(tmp))
        report.machine["CPU busy before the run"] = f"{machine_busy():.0%}"
        report.machine["load generator"] = loadgen
        sizes = Sizes(get_keys=1, put_keys=args.put_keys, bulk_batches=1)
        with kvs_target(args.kvs_cmd, tmp, sizes, args.ready_timeout, cwd=REPO) as target:
            port = target.proc.port
            _log(f"loading {args.keys:,} keys")
            report.keys = args.keys
            report.load_s = _load_keys(port, args.keys, args.bulk_conns)
            data_file = tmp / "kvs" / "data" / "data.mdb"
            report.lmdb_file_bytes = data_file.stat().st_size

            def load(seconds: float) -> LoadResult:
                workload = target.workloads["PUT"]
                if loadgen == "wrk":
                    return run_wrk(
                        port,
                        workload,
                        connections=args.connections,
                        duration=seconds,
                        threads=1,
                        workdir=tmp,
                    )
                return run_python(port, workload, connections=args.connections, duration=seconds)

            for i in range(args.repeat):
                answer = _backup(port)
                report.idle_s.append(answer["duration_s"])
                report.file_bytes.append(answer["size"])
                report.raw_bytes.append(answer["raw_size"])
                Path(answer["path"]).unlink()
                _log(
                    f"  idle backup {i + 1}: {answer['duration_s']:.2f} s, {answer['size']:,} bytes"
                )
            # The load window sits inside the backup: shorter than an idle backup takes.
            window = max(1.0, 0.8 * statistics.median(report.idle_s))
            report.load_window_s = window
            load(1.0)  # warm-up
            for i in range(args.repeat):
                report.before.append(load(window))
                result: dict[str, Any] = {}
                errors: list[BaseException] = []

                def run_backup(
                    result: dict[str, Any] = result, errors: list[BaseException] = errors
                ) -> None:
                    try:
                        result.update(_backup(port))
                    except BaseException as exc:  # reported below
                        errors.append(exc)

                thread = threading.Thread(target=run_backup, daemon=True)
                thread.start()
                time.sleep(0.05)  # the backup has begun its copy
                during = load(window)
                thread.join(timeout=3600)
                if errors or not result:
                    raise BenchError(f"backup under load failed: {errors[:1]}")
                if result["duration_s"] < window:
                    report.notes.append(
                        f"round {i + 1}: the backup ({result['duration_s']:.2f} s) ended before"
                        f" the {window:.2f} s load window; 'during' mixes in time after it"
                    )
                report.during.append(during)
                report.loaded_s.append(result["duration_s"])
                Path(result["path"]).unlink()
                _log(
                    f"  round {i + 1}: PUT before {report.before[-1].rps:,.0f}/s, during"
                    f" {during.rps:,.0f}/s; backup under load {result['duration_s']:.2f} s"
                )
    print(render(report))
    if args.json:
        dump = json.dumps(report_json(report), indent=2)
        if args.json == "-":
            print(dump)
        else:
            Path(args.json).write_text(dump + "\n")
    return 0


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def report_json(r: BackupReport) -> dict[str, Any]:
    return {
        "command": r.command,
        "machine": r.machine,
        "keys": r.keys,
        "load_s": r.load_s,
        "lmdb_file_bytes": r.lmdb_file_bytes,
        "idle_backup_s": r.idle_s,
        "loaded_backup_s": r.loaded_s,
        "backup_file_bytes": r.file_bytes,
        "compacted_copy_bytes": r.raw_bytes,
        "put_rps_before": [x.rps for x in r.before],
        "put_rps_during": [x.rps for x in r.during],
        "put_p99_ms_before": [x.p99_ms for x in r.before],
        "put_p99_ms_during": [x.p99_ms for x in r.during],
        "put_errors_during": sum(x.errors for x in r.during),
        "load_window_s": r.load_window_s,
        "notes": r.notes,
    }


def render(r: BackupReport) -> str:
    med = statistics.median
    before = med(x.rps for x in r.before)
    during = med(x.rps for x in r.during)
    file_bytes = med(r.file_bytes)
    lines = [
        f"# backup of a {r.keys:,}-key store",
        f"command: {r.command}",
        *(f"{k}: {v}" for k, v in r.machine.items()),
        "",
        f"load ({r.keys:,} keys via _batch)      {r.load_s:8.1f} s  ({r.keys / r.load_s:,.0f} keys/s)",
        f"LMDB data file                       {_mb(r.lmdb_file_bytes):>12}",
        f"compacted copy (uncompressed)        {_mb(med(r.raw_bytes)):>12}",
        f"backup file (zstd)                   {_mb(file_bytes):>12}"
        f"  = {file_bytes / r.lmdb_file_bytes:.1%} of the LMDB file",
        f"backup time, idle node (median)      {med(r.idle_s):8.2f} s   runs: "
        + ", ".join(f"{s:.2f}" for s in r.idle_s),
        f"backup time, under PUT load (median) {med(r.loaded_s):8.2f} s   runs: "
        + ", ".join(f"{s:.2f}" for s in r.loaded_s),
        f"PUT/s before a backup (median)       {before:10,.0f}   runs: "
        + ", ".join(f"{x.rps:,.0f}" for x in r.before),
        f"PUT/s during a backup (median)       {during:10,.0f}   runs: "
        + ", ".join(f"{x.rps:,.0f}" for x in r.during),
        f"during / before                      {during / before:10.2f}",
        f"PUT p99 before / during (median)     {med(x.p99_ms for x in r.before):.1f} ms /"
        f" {med(x.p99_ms for x in r.during):.1f} ms;"
        f" failed PUTs during: {sum(x.errors for x in r.during)}",
        f"(each PUT window {r.load_window_s:.2f} s, inside the backup)",
    ]
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, default=1_000_000, help="keys in the store (default 1M)")
    p.add_argument("--repeat", type=int, default=3, help="backups per measurement (median shown)")
    p.add_argument("--connections", type=int, default=32, help="PUT load connections")
    p.add_argument("--put-keys", type=int, default=10000, help="distinct keys PUT writes among")
    p.add_argument("--bulk-conns", type=int, default=4, help="connections for the initial load")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument(
        "--kvs-cmd",
        default=f"{shlex.quote(sys.executable)} -m kvs",
        help="command that runs a node; the config path is appended",
    )
    p.add_argument("--tmp-dir", help="where the node's data dir goes (default: system temp)")
    p.add_argument("--json", nargs="?", const="-", metavar="PATH", help="also dump raw results")
