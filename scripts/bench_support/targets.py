"""The servers `bench.py http` compares, each started as its own process on 127.0.0.1.

A target is started by a context manager (so it is always stopped), then `prepare()`
loads the keys its GET workload reads; idle RSS is read between the two. Workloads and
bulk bodies are built here so each target gets the same documents and key counts.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_support.load import Request, Workload
from bench_support.procs import (
    LOOPBACK,
    BenchError,
    Proc,
    child_pids,
    http_json,
    http_request,
    spawned,
    wait_ready,
)
from kvs.testing.ports import free_port, free_ports

KVS_BATCH_MAX = 1000
ETCD_TXN_OPS = 100


@dataclass(frozen=True)
class BulkPlan:
    """How to bulk-load one target: `bodies(run)` gives that run's pre-encoded requests."""

    how: str
    path: str
    ops_per_body: int
    bodies: Callable[[int], list[bytes]]
    failures: Callable[[bytes, int], int]  # (answer body, ops sent) -> ops that failed


@dataclass
class Target:
    """A running server under test, with what to send it."""

    name: str
    proc: Proc
    workloads: dict[str, Workload]
    prepare: Callable[[], None] = lambda: None
    bulk: BulkPlan | None = None


@dataclass(frozen=True)
class Sizes:
    """Key counts shared by every target so their numbers compare."""

    get_keys: int = 1000
    put_keys: int = 10000
    bulk_batches: int = 10  # of KVS_BATCH_MAX keys per bulk run


# ---------------------------------------------------------------- documents


def doc(i: int) -> dict[str, Any]:
    """A ~100-byte JSON document, the size the GET keys are loaded with."""
    return {
        "name": f"user-{i:05d}",
        "email": f"user-{i:05d}@example.com",
        "active": i % 2 == 0,
        "score": i * 7 % 1000,
        "tags": ["bench", "http"],
    }


def small_doc(i: int) -> dict[str, Any]:
    return {"n": i, "v": "bench"}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


# ---------------------------------------------------------------- bulk


def bulk_load(
    port: int, plan: BulkPlan, bodies: Sequence[bytes], connections: int
) -> tuple[float, int]:
    """Send pre-encoded bodies over `connections` keep-alive connections; (keys/s, failed ops).

    Threads, not a load generator: each request carries ~100 kB and takes milliseconds,
    so the client's per-request cost is small next to the server's.
    """
    chunks = [bodies[i::connections] for i in range(connections)]
    failed = [0] * connections
    errors: list[str] = []
    start = threading.Barrier(connections + 1)

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=60)
        try:
            start.wait(timeout=30)
            for body in chunks[slot]:
                status, data = http_request(port, "POST", plan.path, body, conn=conn)
                if status != 200:
                    errors.append(f"HTTP {status} {data[:200]!r}")
                    failed[slot] += plan.ops_per_body
                else:
                    failed[slot] += plan.failures(data, plan.ops_per_body)
        except Exception as exc:  # reported by the caller's BenchError below
            errors.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    start.wait(timeout=30)
    began = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    elapsed = time.perf_counter() - began
    if errors or any(t.is_alive() for t in threads):
        raise BenchError(
            f"bulk load to {plan.path} failed: {errors[:1] or 'timed out'} ({len(errors)} errors)"
        )
    return len(bodies) * plan.ops_per_body / elapsed, sum(failed)


# ---------------------------------------------------------------- self-hosted helpers


@contextlib.contextmanager
def script_server(
    name: str, argv_prefix: Sequence[str], tmp: Path, timeout: float
) -> Iterator[Proc]:
    """One of bench.py's own internal servers (`_bare`, `_canned`), ready when yielded."""
    port = free_port()
    with spawned(name, [*argv_prefix, "--port", str(port)], port, tmp / f"{name}.log") as proc:
        wait_ready(proc, "/", timeout=timeout)
        yield proc


@contextlib.contextmanager
def bare_target(argv_prefix: Sequence[str], tmp: Path, timeout: float) -> Iterator[Target]:
    """The bare Hypercorn app answers one body to anything; PUT still sends a body to read."""
    with script_server("bare-hypercorn", argv_prefix, tmp, timeout) as proc:
        workloads = {
            "GET": Workload("GET", (Request("GET", "/kv/bench/k0"),)),
            "PUT": Workload("PUT", (Request("PUT", "/kv/bench/p0", dumps(small_doc(0))),)),
        }
        yield Target("bare-hypercorn", proc, workloads)


# ---------------------------------------------------------------- KVS


def write_kvs_config(
    path: Path, data_dir: Path, *, auth: bool = False, http_workers: int = 1
) -> int:
    """Write a node config on fresh loopback ports; return its HTTP port.

    YAML by hand: every value is a plain scalar, and JSON strings are valid YAML."""
    port, gossip_port, sync_port = free_ports(3)
    lines = [
        "node_id: bench-1",
        f"bind_address: {LOOPBACK}",
        f"port: {port}",
        f"gossip_port: {gossip_port}",
        f"sync_port: {sync_port}",
        f"data_dir: {json.dumps(str(data_dir))}",
        f'cluster_secret: "{secrets.token_hex(24)}"',
        f"auth_enabled: {'true' if auth else 'false'}",  # the root token: data_dir/root.token
        "log_level: warning",
        f"http_workers: {http_workers}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return port


@contextlib.contextmanager
def kvs_node(
    kvs_cmd: str,
    home: Path,
    timeout: float,
    *,
    cwd: Path | None = None,
    auth: bool = False,
    http_workers: int = 1,
) -> Iterator[Proc]:
    """A KVS node on an empty store under `home`, ready (GET /health 200) when yielded; with
    `http_workers` > 1, once its workers serve too."""
    home.mkdir(parents=True)
    config = home / "config.yaml"
    port = write_kvs_config(config, home / "data", auth=auth, http_workers=http_workers)
    argv = [*shlex.split(kvs_cmd), str(config)]
    with spawned(f"kvs ({home.name})", argv, port, home / "node.log", cwd=cwd) as proc:
        wait_ready(proc, "/health", timeout=timeout)
        deadline = time.monotonic() + timeout
        while len(child_pids(proc.pid)) < http_workers - 1:
            if time.monotonic() > deadline:
                raise BenchError(f"kvs ({home.name}): its HTTP workers did not start")
            time.sleep(0.1)
        time.sleep(1.0 if http_workers > 1 else 0)  # the workers bind the port after start
        yield proc


def kvs_batch_body(
    keys: Sequence[str], make: Callable[[int], dict[str, Any]], first: int = 0
) -> bytes:
    return dumps(
        {"ops": [{"op": "put", "key": k, "data": make(first + i)} for i, k in enumerate(keys)]}
    )


def kvs_batch_failures(data: bytes, expected: int) -> int:
    """Ops of one _batch answer that did not succeed (an item carrying "error", or missing)."""
    results = json.loads(data).get("results", [])
    bad = sum(1 for r in results if not isinstance(r, dict) or "error" in r)
    return bad + max(0, expected - len(results))


@contextlib.contextmanager
def kvs_target(
    kvs_cmd: str,
    tmp: Path,
    sizes: Sizes,
    timeout: float,
    *,
    cwd: Path | None = None,
    auth: bool = False,
    http_workers: int = 1,
) -> Iterator[Target]:
    """KVS; with `auth`, a node with auth on and the root token on every request; with
    `http_workers` > 1, a node with that many HTTP processes (target `kvs-Nw`)."""
    name = "kvs-auth" if auth else "kvs" if http_workers == 1 else f"kvs-{http_workers}w"
    with kvs_node(
        kvs_cmd, tmp / name, timeout, cwd=cwd, auth=auth, http_workers=http_workers
    ) as proc:
        port = proc.port
        headers: dict[str, str] = {}
        if auth:
            token = (tmp / name / "data" / "root.token").read_text().strip()
            headers["Authorization"] = f"Bearer {token}"

        def prepare() -> None:
            keys = [f"bench/k{i}" for i in range(sizes.get_keys)]
            for lo in range(0, len(keys), KVS_BATCH_MAX):
                part = keys[lo : lo + KVS_BATCH_MAX]
                status, data = http_request(
                    port,
                    "POST",
                    "/kv/_batch",
                    kvs_batch_body(part, doc, lo),
                    extra_headers=headers,
                )
                if status != 200 or kvs_batch_failures(data, len(part)):
                    raise BenchError(f"kvs _batch pre-load answered {status}: {data[:300]!r}")
            got = http_json(port, "GET", "/kv/bench/k0", extra_headers=headers)
            if got.get("data") != doc(0):
                raise BenchError(
                    f"kvs GET /kv/bench/k0 returned {str(got)[:300]}, not the document loaded"
                )

        def bodies(run: int) -> list[bytes]:  # fresh keys each run: a bulk load inserts
            return [
                kvs_batch_body([f"bulk/{run}/{b}/{i}" for i in range(KVS_BATCH_MAX)], doc)
                for b in range(sizes.bulk_batches)
            ]

        sent = tuple(headers.items())
        workloads = {
            "GET": Workload(
                "GET",
                tuple(Request("GET", f"/kv/bench/k{i}") for i in range(sizes.get_keys)),
                sent,
            ),
            "PUT": Workload(
                "PUT",
                tuple(
                    Request("PUT", f"/kv/bench/p{i}", dumps(small_doc(i)))
                    for i in range(sizes.put_keys)
                ),
                sent,
            ),
        }
        plan = BulkPlan(
            f"_batch, {KVS_BATCH_MAX} puts/request",
            "/kv/_batch",
            KVS_BATCH_MAX,
            bodies,
            kvs_batch_failures,
        )
        yield Target(name, proc, workloads, prepare, None if auth else plan)


# ---------------------------------------------------------------- etcd


def etcd_txn_body(
    keys: Sequence[str], make: Callable[[int], dict[str, Any]], first: int = 0
) -> bytes:
    puts = [
        {"requestPut": {"key": b64(k), "value": b64(dumps(make(first + i)))}}
        for i, k in enumerate(keys)
    ]
    return dumps({"success": puts})


def etcd_txn_failures(data: bytes, expected: int) -> int:
    answer = json.loads(data)
    if answer.get("succeeded") is False:
        return expected
    return max(0, expected - len(answer.get("responses", [])))


@contextlib.contextmanager
def etcd_target(tmp: Path, sizes: Sizes, timeout: float) -> Iterator[Target]:
    """A single-member etcd on loopback ports, fsync on (its default), via its JSON gateway."""
    client, peer = free_ports(2)
    client_url, peer_url = f"http://{LOOPBACK}:{client}", f"http://{LOOPBACK}:{peer}"
    argv = [
        "etcd",
        "--name=bench",
        f"--data-dir={tmp / 'etcd-data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=bench={peer_url}",
        "--initial-cluster-state=new",
        "--logger=zap",
        "--log-level=warn",
    ]
    with spawned("etcd", argv, client, tmp / "etcd.log") as proc:
        wait_ready(proc, "/health", timeout=timeout)

        def prepare() -> None:
            keys = [f"bench/k{i}" for i in range(sizes.get_keys)]
            for lo in range(0, len(keys), ETCD_TXN_OPS):
                part = keys[lo : lo + ETCD_TXN_OPS]
                status, data = http_request(
                    client, "POST", "/v3/kv/txn", etcd_txn_body(part, doc, lo)
                )
                if status != 200 or etcd_txn_failures(data, len(part)):
                    raise BenchError(f"etcd txn pre-load answered {status}: {data[:300]!r}")
            got = http_json(client, "POST", "/v3/kv/range", {"key": b64("bench/k0")})
            if json.loads(base64.b64decode(got["kvs"][0]["value"])) != doc(0):
                raise BenchError(f"etcd range bench/k0 returned {str(got)[:300]}")

        def bodies(run: int) -> list[bytes]:  # as many keys per run as the KVS bulk load
            total = KVS_BATCH_MAX * sizes.bulk_batches
            keys = [f"bulk/{run}/{i}" for i in range(total)]
            return [
                etcd_txn_body(keys[lo : lo + ETCD_TXN_OPS], doc)
                for lo in range(0, total, ETCD_TXN_OPS)
            ]

        gets = tuple(
            Request("POST", "/v3/kv/range", dumps({"key": b64(f"bench/k{i}")}))
            for i in range(sizes.get_keys)
        )
        puts = tuple(
            Request(
                "POST",
                "/v3/kv/put",
                dumps({"key": b64(f"bench/p{i}"), "value": b64(dumps(small_doc(i)))}),
            )
            for i in range(sizes.put_keys)
        )
        plan = BulkPlan(
            f"txn, {ETCD_TXN_OPS} puts/txn", "/v3/kv/txn", ETCD_TXN_OPS, bodies, etcd_txn_failures
        )
        yield Target(
            "etcd",
            proc,
            {"GET": Workload("GET", gets), "PUT": Workload("PUT", puts)},
            prepare,
            plan,
        )
