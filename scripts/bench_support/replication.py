"""`bench.py replication`: replication lag, anti-entropy cost and bootstrap, with real node
processes on 127.0.0.1 (started with the launcher's `Cluster`, kvs/testing/launcher.py, and
always stopped).

1. lag: a 3-node cluster; one writer PUTs fresh keys to node1 at a steady rate (several
   keep-alive connections, each on its own schedule, so one slow fsync does not hold the
   rest back); one poller per follower reads GET /kv_changes in a loop and notes when each
   key first appears there. Lag = first seen on the follower - the PUT was sent (an upper
   bound: it includes node1's own durable write; node1's PUT latency is shown beside it).
2. anti-entropy: node1's data set of N keys is built offline with kvs.store.Store (no
   HTTP), copied to node2's data dir under node2's identity, then D keys are rewritten on
   each side (half on node1, half on node2), so the two differ in D keys and nothing is
   pushed: every difference must be found by the Merkle exchange when node2 joins node1.
   Time: node2's /health answering -> both report the same /merkle_tree/root (includes
   the membership join). Bytes: the sync counters of /cluster/stats (every byte on every
   sync connection of both nodes, and per node the bytes of the exchanges it started).
   Compared with the bytes of a naive full listing of every key's (key, version).
3. bootstrap: node2 is stopped; node3 starts with an empty store and node1 as its seed, and
   syncs the whole data set. Time: node3's /health answering -> same root and mode
   "normal"; peak RSS (VmHWM, reset on node1 just before) of both.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_support.procs import (
    LOOPBACK,
    BenchError,
    cpu_mark,
    foreign_cpu,
    http_request,
    machine_busy,
)
from bench_support.report import machine_info

REPO = Path(__file__).resolve().parents[2]

TARGET_LAG_P99_MS = 50.0
TARGET_AE_S = 2.0
TARGET_AE_BYTES = 2_000_000
TARGET_BOOT_KEYS_S = 50_000.0
TARGET_BOOT_RSS_MB = 200.0
BUSY_WARN = 0.10  # of all CPUs busy with other work: the figures are then low and noisy

WRITER_CONNECTIONS = 64  # open loop: enough in flight that slow fsyncs never lower the rate
POLL_MS = 5.0  # a follower poller's pause after an answer with nothing more to read
BUILD_BATCH = 20_000  # ops per Store.write while building data sets (one transaction)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- results


@dataclass
class Dist:
    """A latency distribution in ms."""

    count: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None

    @classmethod
    def of(cls, values_ms: list[float]) -> Dist:
        if not values_ms:
            return cls()
        ordered = sorted(values_ms)

        def pct(q: float) -> float:  # nearest rank
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return cls(len(ordered), pct(0.50), pct(0.90), pct(0.99), ordered[-1])


@dataclass
class LagResult:
    rate: float
    seconds: float
    connections: int
    poll_ms: float
    observe: str = "poll"  # how followers are read: /kv_changes in a loop, or a watch stream
    writes: int = 0
    achieved_rate: float = 0.0
    put_errors: int = 0
    put_latency: Dist = field(default_factory=Dist)
    lag: dict[str, Dist] = field(default_factory=dict)  # follower -> lag after the write's HLC
    lag_after_send: dict[str, Dist] = field(default_factory=dict)
    lag_after_ack: dict[str, Dist] = field(default_factory=dict)
    combined: Dist = field(default_factory=Dist)  # both followers' samples
    combined_after_send: Dist = field(default_factory=Dist)
    missing: dict[str, int] = field(default_factory=dict)  # keys a poller never saw
    pushed: int = 0
    cpu_share: dict[str, float] = field(default_factory=dict)  # process -> CPUs used, on average
    error: str = ""


@dataclass
class AntiEntropyResult:
    keys: int
    differing: int
    build_s: float = 0.0
    start_s: float = 0.0  # node2 spawn -> /health 200 (tree rebuild of N keys)
    converge_s: float | None = None  # node2 /health 200 -> equal roots
    exchanges: dict[str, int] = field(default_factory=dict)  # node -> exchanges with differences
    exchange_bytes: dict[str, int] = field(default_factory=dict)  # node -> in+out of its exchanges
    wire_bytes: int = 0  # every sync byte both nodes sent (= received)
    records_moved: int = 0  # fetched + pushed, both nodes
    naive_bytes: int = 0  # every (key, version) summary, msgpack
    naive_key_bytes: int = 0  # the keys alone
    error: str = ""

    @property
    def one_exchange_bytes(self) -> int | None:
        return max(self.exchange_bytes.values()) if self.exchange_bytes else None


@dataclass
class BootstrapResult:
    keys: int
    start_s: float = 0.0  # spawn -> /health 200
    converge_s: float | None = None  # /health 200 -> same root, mode normal
    syncing_seen: bool = False
    joiner_hwm_mb: float | None = None
    seed_hwm_mb: float | None = None
    joiner_anon_mb: float | None = None  # peak RssAnon seen (sampled): the heap, no LMDB pages
    seed_anon_mb: float | None = None
    seed_counters: dict[str, int] = field(default_factory=dict)
    joiner_counters: dict[str, int] = field(default_factory=dict)
    error: str = ""

    @property
    def keys_per_s(self) -> float | None:
        return self.keys / self.converge_s if self.converge_s else None


@dataclass
class ReplicationReport:
    command: str
    machine: dict[str, str]
    settings: dict[str, Any]
    lag: LagResult | None = None
    anti_entropy: AntiEntropyResult | None = None
    bootstrap: BootstrapResult | None = None
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------- cluster helpers


def _launcher() -> Any:
    from kvs.testing import launcher  # scripts/cluster.py's library (loads httpx)

    return launcher


@contextlib.contextmanager
def _cluster(directory: Path) -> Iterator[Any]:
    """A `Cluster` in `directory`; every node it started is stopped on the way out."""
    launcher = _launcher()
    c = launcher.Cluster(directory, out=lambda line: _log(f"  {line}"))
    try:
        yield c
    finally:
        with contextlib.suppress(launcher.LauncherError):
            if c.exists():
                c.stop()


def _get(port: int, path: str, timeout: float = 10.0) -> Any:
    status, body = http_request(port, "GET", path, timeout=timeout)
    if status != 200:
        raise BenchError(f"GET {path} on port {port} answered {status}: {body[:200]!r}")
    return json.loads(body)


def _sync_stats(port: int) -> dict[str, Any]:
    return dict(_get(port, "/cluster/stats")["sync"])


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float) -> float:
    started = time.perf_counter()
    while True:
        try:
            if check():
                return time.perf_counter() - started
        except (OSError, http.client.HTTPException, BenchError, ValueError, KeyError):
            pass
        if time.perf_counter() - started > timeout:
            raise BenchError(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


def _vm(pid: int, field_name: str) -> float:
    """A /proc/PID/status size field (VmHWM, VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no {field_name} in /proc/{pid}/status")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) `pid` has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux: clear_refs 5); False where not permitted."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------- 1. lag


class _Writer(threading.Thread):
    """PUTs keys slot, slot+k, slot+2k, ... each at its scheduled time (start + i / rate)."""

    def __init__(self, port: int, slot: int, stride: int, total: int, rate: float, t0: float):
        super().__init__(daemon=True)
        self.port, self.slot, self.stride, self.total = port, slot, stride, total
        self.rate, self.t0 = rate, t0
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.stamps: dict[str, int] = {}  # the write's timestamp (node1's HLC, wall ms)
        self.errors = 0

    def run(self) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            for i in range(self.slot, self.total, self.stride):
                due = self.t0 + i / self.rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                key = f"lag/{i:06d}"
                body = b'{"i":%d,"v":"replication lag probe"}' % i
                self.sent[key] = time.perf_counter()
                try:
                    status, data = http_request(self.port, "PUT", f"/kv/{key}", body, conn=conn)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
                    self.errors += 1
                    continue
                if status == 200:
                    self.acked[key] = time.perf_counter()
                    self.stamps[key] = json.loads(data)["timestamp"]
                else:
                    self.errors += 1
        finally:
            conn.close()


class _Poller(threading.Thread):
    """Reads GET /kv_changes on one follower in a loop; notes when each lag/ key appears."""

    def __init__(self, port: int, since_ms: int, pause: float):
        super().__init__(daemon=True)
        self.port = port
        self.pause = pause
        self.since = since_ms
        self.seen: dict[str, float] = {}  # perf_counter when first listed
        self.seen_wall: dict[str, float] = {}  # the same moment in wall-clock ms
        self.halt = threading.Event()
        self.polls = 0
        self.error = ""

    def run(self) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        try:
            while not self.halt.is_set():
                status, data = http_request(
                    self.port, "GET", f"/kv_changes?since={self.since}&limit=1000", conn=conn
                )
                now, wall = time.perf_counter(), time.time() * 1000
                self.polls += 1
                if status != 200:
                    raise BenchError(f"/kv_changes answered {status}: {data[:200]!r}")
                body = json.loads(data)
                for change in body["changes"]:
                    key = change["key"]
                    if key.startswith("lag/") and key not in self.seen:
                        self.seen[key] = now
                        self.seen_wall[key] = wall
                self.since = body["next"]
                if not body["more"]:
                    time.sleep(self.pause)
        except (OSError, http.client.HTTPException, BenchError, ValueError) as exc:
            self.error = repr(exc)
        finally:
            conn.close()


class _Watcher(_Poller):
    """Holds GET /kv/lag/_watch open on one follower (server-sent events) and notes when
    each lag/ key's event arrives: no polling, so no load of its own on the follower."""

    def run(self) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=1.0)
        try:
            conn.request("GET", f"/kv/lag/_watch?since={self.since}")
            response = conn.getresponse()
            if response.status != 200:
                raise BenchError(f"/kv/lag/_watch answered {response.status}")
            while not self.halt.is_set():
                try:
                    line = response.fp.readline()
                except TimeoutError:
                    continue  # only to look at `halt` again
                if not line:
                    raise BenchError("the watch stream ended")
                if not line.startswith(b"data: "):
                    continue
                now, wall = time.perf_counter(), time.time() * 1000
                key = json.loads(line[6:]).get("key", "")
                self.polls += 1
                if key.startswith("lag/") and key not in self.seen:
                    self.seen[key] = now
                    self.seen_wall[key] = wall
        except (OSError, http.client.HTTPException, BenchError, ValueError) as exc:
            self.error = repr(exc)
        finally:
            conn.close()


def measure_lag(args: argparse.Namespace, tmp: Path) -> LagResult:
    result = LagResult(
        rate=args.rate,
        seconds=args.lag_seconds,
        connections=args.connections,
        poll_ms=args.poll_ms,
        observe=args.observe,
    )
    total = int(args.rate * args.lag_seconds)
    with _cluster(tmp / "lag") as c:
        _log("lag: starting a 3-node cluster")
        specs = c.start(3, base_port=0)
        ports = {s.name: s.http_port for s in specs}
        time.sleep(1.0)  # let the push connections open
        since = time.time_ns() // 1_000_000 - 1000
        observer = _Watcher if args.observe == "watch" else _Poller
        pollers = {
            name: observer(ports[name], since, args.poll_ms / 1000) for name in ("node2", "node3")
        }
        for p in pollers.values():
            p.start()
        t0 = time.perf_counter() + 0.2
        writers = [
            _Writer(ports["node1"], slot, args.connections, total, args.rate, t0)
            for slot in range(args.connections)
        ]
        _log(f"lag: {total} PUTs to node1 at {args.rate:g}/s for {args.lag_seconds:g} s")
        pids = {s.name: c.pid(s) for s in specs}
        cpu0 = {name: _cpu_s(pid) for name, pid in pids.items() if pid is not None}
        cpu0["bench.py (writers, pollers)"] = _cpu_s(os.getpid())
        wall0 = time.perf_counter()
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=args.lag_seconds + 120)
        span = time.perf_counter() - wall0
        for name, before in cpu0.items():
            pid = pids.get(name, os.getpid())
            with contextlib.suppress(OSError):
                result.cpu_share[name] = (_cpu_s(pid or os.getpid()) - before) / span
        if any(w.is_alive() for w in writers):
            raise BenchError("the lag writer did not finish in time")
        elapsed = max(max(w.acked.values(), default=t0) for w in writers) - t0
        sent = {k: v for w in writers for k, v in w.sent.items()}
        acked = {k: v for w in writers for k, v in w.acked.items()}
        stamps = {k: v for w in writers for k, v in w.stamps.items()}
        result.writes = len(acked)
        result.put_errors = sum(w.errors for w in writers)
        result.achieved_rate = len(acked) / elapsed if elapsed > 0 else 0.0
        result.put_latency = Dist.of([(acked[k] - sent[k]) * 1000 for k in acked])
        with contextlib.suppress(BenchError):
            _wait(
                "every acknowledged key seen on both followers",
                lambda: all(set(acked) <= set(p.seen) for p in pollers.values()),
                10.0,
                0.05,
            )
        for p in pollers.values():
            p.halt.set()
            p.join(timeout=15)
        combined: list[float] = []
        combined_sent: list[float] = []
        for name, p in pollers.items():
            if p.error:
                result.error = f"{name} poller: {p.error}"
            lags = [p.seen_wall[k] - stamps[k] for k in acked if k in p.seen]
            combined += lags
            result.lag[name] = Dist.of(lags)
            after_send = [(p.seen[k] - sent[k]) * 1000 for k in acked if k in p.seen]
            combined_sent += after_send
            result.lag_after_send[name] = Dist.of(after_send)
            result.lag_after_ack[name] = Dist.of(
                [(p.seen[k] - acked[k]) * 1000 for k in acked if k in p.seen]
            )
            result.missing[name] = sum(1 for k in acked if k not in p.seen)
        result.combined = Dist.of(combined)
        result.combined_after_send = Dist.of(combined_sent)
        result.pushed = int(_sync_stats(ports["node1"])["counters"].get("pushed_on_write", 0))
    return result


# ------------------------------------------------------------------------- data sets


def _import_kvs() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def build_data_sets(
    dir1: Path, dir2: Path, names: tuple[str, str], keys: int, differing: int
) -> tuple[int, int]:
    """node1's N keys in `dir1`; the same data under node2's identity in `dir2`; then
    `differing` keys rewritten, half on each side. Returns the naive listing's bytes (every
    (key, version) summary, msgpack) and the bytes of the keys alone."""
    _import_kvs()
    import msgpack
    import trio

    from kvs.clock import HybridLogicalClock, system_wall_ms
    from kvs.config import Config, project
    from kvs.store import Put, Store, StoreSettings
    from kvs.sync import protocol

    def open_store(path: Path) -> Store:
        return Store(
            path,
            clock=HybridLogicalClock(system_wall_ms),
            new_uuid=lambda: str(uuid.uuid4()),
            # a bulk build: synced once at the end
            settings=project(StoreSettings, Config(), lmdb_map_size=16 << 30, durability="os"),
            in_thread=False,
        )

    def body(i: int, tag: str) -> bytes:
        return b'{"n":%d,"v":"%s"}' % (i, tag.encode())

    async def write_all(store: Store, ops: Iterator[Any], node_id: str, joined: int) -> None:
        """Write `ops` as node `node_id` (joined at `joined`), whatever identity the dir held."""
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            if store.ensure_identity(node_id, joined).joined_timestamp != joined:
                await store.put_system("identity", {"node_id": node_id, "joined_timestamp": joined})
                store.ensure_identity(node_id, joined)
            batch: list[Any] = []
            for op in ops:
                batch.append(op)
                if len(batch) >= BUILD_BATCH:
                    await store.write(batch)
                    batch = []
            if batch:
                await store.write(batch)
            nursery.cancel_scope.cancel()

    # The copy in dir2 starts as node1's: the store warns about the node id it then changes.
    logging.getLogger("kvs.store").setLevel(logging.ERROR)
    now = system_wall_ms()
    first = open_store(dir1)
    try:
        trio.run(
            write_all,
            first,
            (Put(f"bench/ae/{i:07d}", body(i, "base")) for i in range(keys)),
            names[0],
            now,
        )
        naive = naive_keys = 0
        for s in first.iter_summaries():
            naive += len(msgpack.packb(protocol.encode_summary(s)))
            naive_keys += len(s.key.encode())
        first.sync_to_disk()
    finally:
        first.close()
    dir2.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dir1 / "data.mdb", dir2 / "data.mdb")
    half = differing // 2
    second = open_store(dir2)
    try:
        trio.run(
            write_all,
            second,
            (Put(f"bench/ae/{i:07d}", body(i, "node2")) for i in range(half, differing)),
            names[1],
            now + 1,
        )
        second.sync_to_disk()
    finally:
        second.close()
    first = open_store(dir1)
    try:
        trio.run(
            write_all,
            first,
            (Put(f"bench/ae/{i:07d}", body(i, "node1")) for i in range(half)),
            names[0],
            now,
        )
        first.sync_to_disk()
    finally:
        first.close()
    return naive, naive_keys


# ------------------------------------------------------------------------- 2 + 3


def measure_sync(
    args: argparse.Namespace, tmp: Path, report: ReplicationReport
) -> tuple[AntiEntropyResult, BootstrapResult | None]:
    ae = AntiEntropyResult(keys=args.keys, differing=args.differing)
    boot: BootstrapResult | None = None
    launcher = _launcher()
    with _cluster(tmp / "sync") as c:
        specs = c.plan(3, 0)
        c.create(specs)
        n1, n2, n3 = specs
        _log(f"anti-entropy: building {args.keys:,} keys offline (two data dirs)")
        began = time.perf_counter()
        ae.naive_bytes, ae.naive_key_bytes = build_data_sets(
            n1.data_dir, n2.data_dir, (n1.name, n2.name), args.keys, args.differing
        )
        ae.build_s = time.perf_counter() - began
        _log(f"anti-entropy: built in {ae.build_s:.1f} s; starting node1")
        c.restart(n1.name, wait_cluster=False, timeout=args.timeout)
        spawned = time.perf_counter()
        _log("anti-entropy: starting node2 (it joins node1; the exchange starts at once)")
        c.restart(n2.name, wait_cluster=False, timeout=args.timeout)
        ready = time.perf_counter()
        ae.start_s = ready - spawned

        def same_root() -> bool:
            r1 = _get(n1.http_port, "/merkle_tree/root")
            r2 = _get(n2.http_port, "/merkle_tree/root")
            return bool(r1 == r2)

        try:
            ae.converge_s = _wait(
                "node1 and node2 reach the same root", same_root, args.timeout, 0.01
            )
        except BenchError as exc:
            ae.error = str(exc)
        # Both nodes start an exchange when they meet: let the slower one finish and count.
        last: list[Any] = []

        def settled() -> bool:
            now = [_sync_stats(spec.http_port)["counters"] for spec in (n1, n2)]
            done = now == last and all(
                c.get("exchanges", 0) + c.get("exchanges_equal", 0) >= 1 for c in now
            )
            last[:] = now
            return done

        with contextlib.suppress(BenchError):
            _wait("both nodes' exchanges finish", settled, 30.0, 0.3)
        wire = 0
        for spec in (n1, n2):
            counters = _sync_stats(spec.http_port)["counters"]
            wire += int(counters.get("bytes_out", 0))
            ae.exchanges[spec.name] = int(counters.get("exchanges", 0))
            ae.exchange_bytes[spec.name] = int(counters.get("exchange_bytes_in", 0)) + int(
                counters.get("exchange_bytes_out", 0)
            )
            ae.records_moved += int(counters.get("records_fetched", 0)) + int(
                counters.get("records_pushed", 0)
            )
            if "bytes_out" not in counters and spec is n1:
                report.notes.append(
                    "the nodes expose no sync byte counters (bytes_out): bytes not measured"
                )
        ae.wire_bytes = wire
        _log(f"anti-entropy: converged {ae.converge_s} s after node2 answered; {wire:,} bytes")
        if args.skip_bootstrap:
            return ae, None

        boot = BootstrapResult(keys=_get(n1.http_port, "/merkle_tree/root")["keys"])
        c.stop(n2.name)
        pid1 = c.pid(n1)
        if pid1 is None or not _reset_peak_rss(pid1):
            report.notes.append("could not reset node1's VmHWM: its peak includes its start-up")
        _log(f"bootstrap: node3 joins node1 ({boot.keys:,} records) with an empty store")
        target = _get(n1.http_port, "/merkle_tree/root")["root"]
        spawned = time.perf_counter()
        try:
            c.restart(n3.name, wait_cluster=False, timeout=args.timeout)
        except launcher.LauncherError as exc:
            boot.error = str(exc)
            return ae, boot
        ready = time.perf_counter()
        boot.start_s = ready - spawned
        pid3 = c.pid(n3)

        def sample(pid: int | None, peak: float | None) -> float | None:
            if pid is None:
                return peak
            with contextlib.suppress(OSError, BenchError):
                now = _vm(pid, "RssAnon")
                return now if peak is None else max(peak, now)
            return peak

        def joined() -> bool:
            boot.joiner_anon_mb = sample(pid3, boot.joiner_anon_mb)
            boot.seed_anon_mb = sample(pid1, boot.seed_anon_mb)
            sync = _sync_stats(n3.http_port)
            boot.syncing_seen |= bool(sync["syncing"])
            return not sync["syncing"] and sync["root"] == target

        try:
            boot.converge_s = _wait("node3 reaches node1's root", joined, args.timeout, 0.05)
        except BenchError as exc:
            boot.error = str(exc)
        if pid3 is not None:
            boot.joiner_hwm_mb = _vm(pid3, "VmHWM")
        if pid1 is not None:
            boot.seed_hwm_mb = _vm(pid1, "VmHWM")
        boot.seed_counters = dict(_sync_stats(n1.http_port)["counters"])
        boot.joiner_counters = dict(_sync_stats(n3.http_port)["counters"])
        _log(f"bootstrap: converged {boot.converge_s} s after node3 answered")
    return ae, boot


# ------------------------------------------------------------------------- command


def cmd_replication(args: argparse.Namespace) -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="kvs-bench-repl-", dir=args.tmp_dir) as name:
        tmp = Path(name)
        machine = machine_info(tmp)
        report = ReplicationReport(
            command=shlex.join([sys.executable, *sys.argv]),
            machine=machine,
            settings={k: v for k, v in vars(args).items() if k not in ("func", "command", "json")},
        )
        busy = machine_busy()
        deadline = time.monotonic() + args.wait_quiet
        while busy > BUSY_WARN and time.monotonic() < deadline:
            _log(f"machine {busy:.0%} busy with other work; waiting for it to quieten")
            busy = machine_busy(2.0)
        report.machine["CPU busy before the run"] = f"{busy:.0%}"
        if busy > BUSY_WARN:
            report.notes.append(
                f"other work kept the machine {busy:.0%} busy before the run: every figure here"
                " is CPU-bound on 2 cores and suffers; rerun on a quiet machine (--wait-quiet)"
            )
        mark = cpu_mark()
        if "lag" not in args.skip:
            try:
                report.lag = measure_lag(args, tmp)
                failed |= bool(report.lag.error)
            except (BenchError, OSError, _launcher().LauncherError) as exc:
                report.notes.append(f"lag failed: {exc}")
                failed = True
        if "anti-entropy" not in args.skip:
            try:
                report.anti_entropy, report.bootstrap = measure_sync(args, tmp, report)
                failed |= bool(report.anti_entropy.error) or bool(
                    report.bootstrap and report.bootstrap.error
                )
            except (BenchError, OSError, _launcher().LauncherError) as exc:
                report.notes.append(f"anti-entropy/bootstrap failed: {exc}")
                failed = True
        foreign_s, share = foreign_cpu(mark)  # our nodes have all been stopped and reaped
        report.machine["other processes' CPU during the run"] = f"{foreign_s:.0f} s ({share:.0%})"
        if share > BUSY_WARN:
            report.notes.append(
                f"other processes used {share:.0%} of the machine during the run: figures are"
                " low and noisy"
            )
    print(render(report))
    if args.json:
        dump = json.dumps(dataclasses.asdict(report), indent=2, default=str)
        if args.json == "-":
            print(dump)
        else:
            Path(args.json).write_text(dump + "\n")
    return 1 if failed else 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=500.0, help="lag: PUTs per second (default 500)")
    p.add_argument(
        "--lag-seconds", type=float, default=10.0, help="lag: seconds of writes (default 10)"
    )
    p.add_argument(
        "--connections",
        type=int,
        default=WRITER_CONNECTIONS,
        help=f"lag: writer connections, each on its own schedule (default {WRITER_CONNECTIONS})",
    )
    p.add_argument(
        "--poll-ms",
        type=float,
        default=POLL_MS,
        help=f"lag: a follower poller's pause between /kv_changes reads (default {POLL_MS:g})",
    )
    p.add_argument(
        "--observe",
        choices=("poll", "watch"),
        default="poll",
        help="lag: read the followers by polling /kv_changes (default) or by a watch stream",
    )
    p.add_argument(
        "--keys",
        type=int,
        default=1_000_000,
        help="anti-entropy and bootstrap: keys in the data set (default 1,000,000)",
    )
    p.add_argument(
        "--differing",
        type=int,
        default=1000,
        help="anti-entropy: keys that differ between the two nodes (default 1000)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("lag", "anti-entropy"),
        help="skip a part (repeatable; skipping anti-entropy skips bootstrap too)",
    )
    p.add_argument("--skip-bootstrap", action="store_true", help="stop after the anti-entropy part")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds any one start-up or convergence may take (default 600)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for other work on the machine to finish before starting",
    )
    p.add_argument("--tmp-dir", help="where the data dirs go (default: the system temp dir)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also dump raw results as JSON (to PATH, or stdout)",
    )


# ------------------------------------------------------------------------- rendering


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def _verdict(value: float | None, target: float, *, at_most: bool) -> str:
    if value is None:
        return "n/a"
    return "PASS" if (value <= target if at_most else value >= target) else "FAIL"


def _mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.3f} MB"


def render(report: ReplicationReport) -> str:
    out = ["## KVS replication benchmark", ""]
    targets: list[str] = []
    lag = report.lag
    if lag is not None:
        out += [
            f"### Replication lag (3 nodes; {lag.writes:,} PUTs to node1 at {lag.rate:g}/s for"
            f" {lag.seconds:g} s over {lag.connections} connections, open loop; achieved"
            f" {lag.achieved_rate:,.0f}/s)",
            "",
            (
                "Lag = when the follower first lists the key in GET /kv_changes (read in a loop"
                f" with a {lag.poll_ms:g} ms pause: up to that much of each figure is the"
                " poller's) minus:"
                if lag.observe == "poll"
                else "Lag = when the follower's watch stream (GET /kv/lag/_watch, server-sent"
                " events: no polling) delivers the key's event minus:"
            )
            + " the write's timestamp (node1's HLC at the write, same machine clock: the commit"
            " and the push are in it; the primary figure), or when the client sent the PUT"
            " (adds node1's whole PUT latency: an upper bound), or when the 200 came back.",
            "",
            "| measure | n | p50 ms | p90 ms | p99 ms | max ms | never seen |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

        def row(label: str, d: Dist, missing: str = "") -> str:
            return (
                f"| {label} | {d.count} | {_ms(d.p50)} | {_ms(d.p90)} | {_ms(d.p99)}"
                f" | {_ms(d.max)} | {missing} |"
            )

        out.append(row("node1 PUT latency (durable), client-side", lag.put_latency))
        for name, dist in lag.lag.items():
            out.append(row(f"lag to {name}", dist, str(lag.missing.get(name, 0))))
            out.append(row(f"lag to {name}, from the client's send", lag.lag_after_send[name]))
            out.append(row(f"lag to {name}, from the 200", lag.lag_after_ack[name]))
        out += [
            row("**lag, both followers**", lag.combined),
            row("lag, both followers, from the client's send", lag.combined_after_send),
            "",
            f"PUT errors: {lag.put_errors}; records pushed on write by node1: {lag.pushed:,}."
            + (f" Error: {lag.error}" if lag.error else ""),
            "",
            "CPU used during the writes (CPUs, of the machine's"
            f" {len(os.sched_getaffinity(0))}): "
            + ", ".join(f"{k} {v:.2f}" for k, v in lag.cpu_share.items())
            + f"; all of them {sum(lag.cpu_share.values()):.2f}.",
            "",
        ]
        d, ds = lag.combined, lag.combined_after_send
        targets.append(
            f"| replication lag p99, both followers, from the write's timestamp | {_ms(d.p99)} ms"
            f" | ≤ {TARGET_LAG_P99_MS:g} ms | {_verdict(d.p99, TARGET_LAG_P99_MS, at_most=True)} |"
        )
        targets.append(
            f"| replication lag p99, both followers, from the client's send | {_ms(ds.p99)} ms"
            f" | ≤ {TARGET_LAG_P99_MS:g} ms | {_verdict(ds.p99, TARGET_LAG_P99_MS, at_most=True)} |"
        )
    ae = report.anti_entropy
    if ae is not None:
        one = ae.one_exchange_bytes
        ratio = f"{ae.naive_bytes / one:,.0f}x" if one else "n/a"
        ratio_all = f"{ae.naive_bytes / ae.wire_bytes:,.0f}x" if ae.wire_bytes else "n/a"
        out += [
            f"### Anti-entropy ({ae.keys:,} keys on 2 nodes, {ae.differing:,} differing:"
            f" {ae.differing // 2:,} newer on each side; nothing pushed)",
            "",
            "| measure | value |",
            "| --- | ---: |",
            f"| data sets built offline (kvs.store.Store), s | {ae.build_s:,.1f} |",
            f"| node2 start-up with {ae.keys:,} keys (spawn -> /health), s | {ae.start_s:,.2f} |",
            f"| node2 /health -> same Merkle root on both (join + exchange), s | {_ms(ae.converge_s)} |",
            "| exchanges that found differences, per node (one exchange per pair: the lower node id starts it) | "
            + ", ".join(f"{k} {v}" for k, v in ae.exchanges.items())
            + " |",
            "| bytes of the exchanges each node started (in + out) | "
            + ", ".join(f"{k} {_mb(v)}" for k, v in ae.exchange_bytes.items())
            + " |",
            f"| all sync bytes on the wire, both nodes, until converged | {_mb(ae.wire_bytes)} |",
            f"| records moved (fetched + pushed, both nodes) | {ae.records_moved:,} |",
            f"| naive full listing: every (key, version), msgpack | {_mb(ae.naive_bytes)} |",
            f"| naive full listing: the keys alone | {_mb(ae.naive_key_bytes)} |",
            f"| naive listing / one exchange | {ratio} |",
            f"| naive listing / all sync bytes | {ratio_all} |",
            "",
        ]
        if ae.error:
            out += [f"Error: {ae.error}", ""]
        targets.append(
            f"| anti-entropy: join + exchange to converge | {_ms(ae.converge_s)} s"
            f" | ≤ {TARGET_AE_S:g} s | {_verdict(ae.converge_s, TARGET_AE_S, at_most=True)} |"
        )
        targets.append(
            f"| anti-entropy: bytes of one exchange (largest) | {_mb(one)} |"
            f" ≤ {_mb(TARGET_AE_BYTES)} | {_verdict(one, TARGET_AE_BYTES, at_most=True)} |"
        )
        targets.append(
            f"| anti-entropy: all sync bytes until converged ({sum(ae.exchanges.values())}"
            f" exchanges) | {_mb(ae.wire_bytes)} | | info |"
        )
    boot = report.bootstrap
    if boot is not None:
        keys_s = boot.keys_per_s
        sc, jc = boot.seed_counters, boot.joiner_counters
        out += [
            f"### Bootstrap (node3, empty, joins node1 holding {boot.keys:,} records)",
            "",
            "| measure | value |",
            "| --- | ---: |",
            f"| node3 spawn -> /health, s | {boot.start_s:,.2f} |",
            f"| node3 /health -> same root and mode normal, s | {_ms(boot.converge_s)} |",
            f"| keys/s | {'n/a' if keys_s is None else f'{keys_s:,.0f}'} |",
            f"| mode syncing observed | {'yes' if boot.syncing_seen else 'no'} |",
            f"| node3 (joiner) peak RSS, VmHWM MiB | {_ms(boot.joiner_hwm_mb)} |",
            f"| node3 (joiner) peak anonymous RSS (RssAnon, sampled), MiB | {_ms(boot.joiner_anon_mb)} |",
            f"| node1 (seed) peak RSS during the bootstrap, VmHWM MiB | {_ms(boot.seed_hwm_mb)} |",
            f"| node1 (seed) peak anonymous RSS (RssAnon, sampled), MiB | {_ms(boot.seed_anon_mb)} |",
            f"| node3: records merged (stored) / of them through its own fetches | {jc.get('records_merged', 0):,} / {jc.get('records_fetched', 0):,} |",
            f"| node1: records pushed to node3 by node1's own exchange | {sc.get('records_pushed', 0):,} |",
            f"| node1: fetch requests served (node3's exchange) | {sc.get('served_fetch', 0):,} |",
            f"| sync bytes: node1 out / node3 out | {_mb(sc.get('bytes_out'))} / {_mb(jc.get('bytes_out'))} |",
            "",
            "VmHWM counts LMDB's memory-mapped data file pages (page cache, shared and"
            " reclaimable) as well as the heap; RssAnon is the heap alone.",
            "",
        ]
        if boot.error:
            out += [f"Error: {boot.error}", ""]
        targets.append(
            f"| bootstrap keys/s | {'n/a' if keys_s is None else f'{keys_s:,.0f}'}"
            f" | ≥ {TARGET_BOOT_KEYS_S:,.0f} | {_verdict(keys_s, TARGET_BOOT_KEYS_S, at_most=False)} |"
        )
        targets.append(
            f"| bootstrap joiner peak RSS MiB | {_ms(boot.joiner_hwm_mb)} | ≤ {TARGET_BOOT_RSS_MB:g}"
            f" | {_verdict(boot.joiner_hwm_mb, TARGET_BOOT_RSS_MB, at_most=True)} |"
        )
    out += ["### Targets", "", "| target | value | goal | verdict |", "| --- | ---: | ---: | --- |"]
    out += targets
    if report.notes:
        out += ["", "Notes:", *(f"- {n}" for n in report.notes)]
    out += ["", f"Command: `{report.command}`", ""]
    out += [f"- {k}: {v}" for k, v in report.machine.items()]
    return "\n".join(out)
