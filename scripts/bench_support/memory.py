"""Idle memory of a server and of each of its HTTP workers, and the `memory` subcommand.

Three figures per process, from /proc/PID/smaps_rollup (Linux):

- RSS: every resident page the process maps, shared or not. Issue 18 states its targets
  in RSS, so the verdicts use it. It counts the shared libraries (libpython, libcrypto)
  and the LMDB map's page-cache pages once in every process that maps them.
- PSS: each shared page divided among the processes that map it; the PSS of all the
  processes adds up to the memory they take together.
- USS: the pages only this process maps (private clean + private dirty): what stopping it
  frees, so what one more worker costs the machine.

A spawned worker (`python -m kvs.worker`) shares with its node only file-backed pages: its
Python heap is its own, so its anonymous memory is all in its USS. `bench.py http` keeps
every target up at once, so there the nodes of different targets share their libraries too
(a node's USS drops by the ~7 MB of cryptography's library): `bench.py memory` starts one
node at a time, for figures that do not depend on what else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_support.procs import BenchError, child_pids
from bench_support.targets import kvs_node

# Issue 18's targets, in RSS.
NODE_RSS_TARGET_MB = 60.0
WORKER_RSS_TARGET_MB = 40.0


@dataclass(frozen=True)
class ProcMemory:
    """One process's memory in MB (MiB); `role` is "node", "worker N" or a server's name."""

    role: str
    pid: int
    rss_mb: float
    pss_mb: float
    uss_mb: float
    anon_mb: float  # anonymous pages (heaps, Python objects); the rest is file-backed

    @property
    def target_mb(self) -> float | None:
        if self.role == "node":
            return NODE_RSS_TARGET_MB
        return WORKER_RSS_TARGET_MB if self.role.startswith("worker") else None


def proc_memory(pid: int, role: str) -> ProcMemory:
    """RSS, PSS, USS and anonymous memory of `pid`."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError as exc:
        raise BenchError(f"cannot read the memory of pid {pid} ({role}): {exc}") from None
    kib: dict[str, int] = {}
    for line in lines:
        name, _, value = line.partition(":")
        kib[name] = int(value.split()[0])
    private = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return ProcMemory(
        role,
        pid,
        rss_mb=kib["Rss"] / 1024,
        pss_mb=kib["Pss"] / 1024,
        uss_mb=private / 1024,
        anon_mb=kib.get("Anonymous", 0) / 1024,
    )


def tree_memory(pid: int, name: str = "node") -> list[ProcMemory]:
    """The process `pid` (as `name`) and each of its children (a node's HTTP workers)."""
    found = [proc_memory(pid, name)]
    for i, child in enumerate(child_pids(pid), start=1):
        with contextlib.suppress(BenchError):  # a worker restarting just now
            found.append(proc_memory(child, f"worker {i}"))
    return found


def _verdict(mb: float, target: float | None) -> str:
    if target is None:
        return ""
    return "PASS" if mb <= target else "FAIL"


def memory_lines(by_target: dict[str, list[ProcMemory]]) -> list[str]:
    """A markdown table: one row per process, the RSS verdict against issue 18's targets
    (node ≤ 60 MB, each extra worker ≤ 40 MB), and USS against the same target for a worker
    (what one more worker costs; see the module's docstring)."""
    if not by_target:
        return []
    out = [
        "| target | process | RSS MB | PSS MB | USS MB | anon MB | RSS target | RSS verdict"
        " | USS verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, procs in by_target.items():
        for p in procs:
            target = p.target_mb if name.startswith("kvs") else None
            uss = _verdict(p.uss_mb, target) if p.role.startswith("worker") else ""
            out.append(
                f"| {name} | {p.role} (pid {p.pid}) | {p.rss_mb:.1f} | {p.pss_mb:.1f}"
                f" | {p.uss_mb:.1f} | {p.anon_mb:.1f} | {f'≤ {target:.0f}' if target else ''}"
                f" | {_verdict(p.rss_mb, target)} | {uss} |"
            )
    return out


# ---------------------------------------------------------------- the `memory` subcommand


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=lambda text: [int(x) for x in text.split(",") if x.strip()],
        default=[1, 3],
        metavar="N,N",
        help="HTTP processes per node, one node per count (default 1,3)",
    )
    p.add_argument(
        "--idle", type=float, default=3.0, help="seconds idle after ready before measuring"
    )
    p.add_argument("--kvs-cmd", default=f"{sys.executable} -m kvs", help="command that runs a node")
    p.add_argument("--ready-timeout", type=float, default=30.0)
    p.add_argument("--tmp-dir", help="where the data dirs go (default: the system temp dir)")


@contextlib.contextmanager
def _idle_node(args: argparse.Namespace, tmp: Path, count: int) -> Iterator[int]:
    repo = Path(__file__).resolve().parents[2]
    with kvs_node(
        args.kvs_cmd, tmp / f"kvs-{count}", args.ready_timeout, cwd=repo, http_workers=count
    ) as proc:
        time.sleep(args.idle)
        yield proc.pid


def cmd_memory(args: argparse.Namespace) -> int:
    """Start a node (empty store) per `--workers` count, one at a time, and print each of
    its processes' idle memory. No load: seconds, not minutes, so a change can be checked."""
    by_target: dict[str, list[ProcMemory]] = {}
    with tempfile.TemporaryDirectory(prefix="kvs-bench-", dir=args.tmp_dir) as tmp_name:
        for count in args.workers:
            name = "kvs" if count == 1 else f"kvs-{count}w"
            try:
                with _idle_node(args, Path(tmp_name), count) as pid:
                    by_target[name] = tree_memory(pid)
            except BenchError as exc:
                print(f"bench.py memory: {name}: {exc}", file=sys.stderr)
                return 1
    print(f"## KVS idle memory per process ({args.idle:.0f} s after ready, empty store)\n")
    print("\n".join(memory_lines(by_target)))
    return 0
