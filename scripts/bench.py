#!/usr/bin/env python3
"""Benchmarks for the KVS node: a runner that prints a report, not a test.

    python scripts/bench.py setup          # apt-get install wrk etcd-server serf (once, as root)
                                           # and pip install the `bench` extra (matplotlib)
    python scripts/bench.py http           # HTTP throughput/latency vs bare Hypercorn and etcd
    python scripts/bench.py http --workers 1,2,4 --chart docs/http-scaling.png   # + the curve
    python scripts/bench.py gossip         # membership: simulator figures, then real serf vs KVS
    python scripts/bench.py replication    # replication lag, anti-entropy cost, bootstrap
    python scripts/bench.py backup         # backup of a 1M-key store: time, size, PUTs during it
    python scripts/bench.py load           # `kvs load` of 100,000 keys vs `_batch` alone
    python scripts/bench.py batch-cost     # CPU µs per key of `_batch`, in process
    python scripts/bench.py memory         # idle RSS/PSS/USS of a node and each HTTP worker

`http` measures, in one run and on this machine, a bare Hypercorn-on-Trio app (the
ceiling of the stack the node is built on), a real KVS node (`python -m kvs CONFIG`) and,
when `etcd` is on PATH, a single etcd through its JSON gateway; then bulk load, idle RSS
and start-up time. Every server runs as its own process on 127.0.0.1 and is stopped on
exit. Subcommands live in COMMANDS so later ones (sync, backup) slot in.

`gossip` runs whole KVS nodes on the deterministic simulated network for N = 10, 50, 100
(join convergence, failure detection, traffic per node, false positives under datagram
loss; seeded, so a seed gives the same figures on any machine), then, when `serf` is on
PATH, N real serf agents and N real KVS nodes on loopback: join convergence and
failure-detection time side by side (see bench_support/gossip_*.py).
"""

# ruff: noqa: E402 - venv_check.ensure runs before the imports it makes possible
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import venv_check

venv_check.ensure("bench.py", "httpx", "trio", "lmdb")

from bench_support import batch_cost, metrics_cost
from bench_support.auth_inprocess import auth_cpu_lines
from bench_support.backup import add_arguments as _add_backup_args
from bench_support.backup import cmd_backup
from bench_support.chart import (
    ChartError,
    cmd_chart,
    draw_scaling_chart,
    require_matplotlib,
    run_subtitle,
)
from bench_support.chart import add_arguments as _add_chart_args
from bench_support.cli_load import add_arguments as _add_load_args
from bench_support.cli_load import cmd_load
from bench_support.gossip_report import GossipReport
from bench_support.gossip_report import render as render_gossip
from bench_support.gossip_report import report_json as gossip_json
from bench_support.load import (
    LoadResult,
    Request,
    Workload,
    have_wrk,
    median_result,
    run_python,
    run_wrk,
)
from bench_support.memory import add_arguments as _add_memory_args
from bench_support.memory import cmd_memory, proc_memory, tree_memory
from bench_support.procs import (
    LOOPBACK,
    BenchError,
    cpu_mark,
    foreign_cpu,
    machine_busy,
    process_cpu_s,
    rss_mb,
)
from bench_support.replication import add_arguments as _add_replication_args
from bench_support.replication import cmd_replication
from bench_support.report import Bulk, HttpReport, machine_info, render, report_json
from bench_support.targets import (
    Sizes,
    Target,
    bare_target,
    bulk_load,
    etcd_target,
    kvs_node,
    kvs_target,
    script_server,
)

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent

# What the bare app answers to everything: about the size of a KVS PUT reply.
BARE_BODY = b'{"uuid":"0192f3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d","timestamp":1732492800000}'

OPS = ("GET", "PUT")
TARGET_NAMES = ("bare-hypercorn", "kvs", "etcd")
IDLE_SECONDS = 1.0
# What a failing step may raise: the run notes it and goes on with the other targets.
STEP_ERRORS = (BenchError, OSError, ValueError, KeyError, http.client.HTTPException)
BUSY_WARN = 0.10  # of all CPUs, measured while this run is idle


# ---------------------------------------------------------------- http


def cmd_http(args: argparse.Namespace) -> int:
    """The HTTP comparison; exits 1 when a step failed (the report still prints)."""
    if args.loadgen == "auto":
        args.loadgen = "wrk" if have_wrk() else "python"
    elif args.loadgen == "wrk" and not have_wrk():
        print(
            "wrk is not on PATH: run `python scripts/bench.py setup`, or use --loadgen python",
            file=sys.stderr,
        )
        return 2
    if args.chart:
        try:
            require_matplotlib()
        except ChartError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.no_etcd:
        args.skip.append("etcd")
    args.workers = sorted({n for n in args.workers if n > 1})  # 1 process: the `kvs` target
    if args.auth:  # KVS anonymous against KVS with a token on every request, nothing else
        args.skip += ["bare-hypercorn", "etcd", "loadgen-ceiling"]
        args.workers = []
    else:
        args.skip.append("kvs-auth")
    with tempfile.TemporaryDirectory(prefix="kvs-bench-", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        report = HttpReport(
            command=shlex.join([sys.executable, *sys.argv]),
            machine=machine_info(tmp),
            settings={k: v for k, v in vars(args).items() if k not in ("func", "command", "json")},
        )
        if args.loadgen == "wrk":
            report.settings["loadgen"] = f"wrk, {args.threads} thread(s)"
        else:
            report.notes.append(
                "wrk not found: the built-in Python generator was used; see its headroom lines."
            )
        _check_quiet(report, args.wait_quiet)
        mark = cpu_mark()
        failed = False
        for name, step in (("loadgen-ceiling", measure_ceiling), ("kvs", measure_startup)):
            if name not in args.skip:
                failed |= _guarded(report, name, lambda step=step: step(report, args, tmp))
        with contextlib.ExitStack() as servers:  # every target stays up, idle, until the end
            targets, start_failed = start_targets(report, args, tmp, servers)
            failed |= start_failed
            failed |= measure_interleaved(report, targets, args, tmp)
            report.notes.extend(worker_scaling_lines(report, args.workers))
            if args.auth:
                report.notes.extend(auth_cost_lines(report))
                report.notes.extend(auth_cpu_lines())
            for target in targets:
                if target.bulk is not None:
                    failed |= _guarded(
                        report, target.name, lambda t=target: measure_bulk(report, t, args)
                    )
                report.loaded_rss_mb[target.name] = rss_mb(target.proc.pid)
        # After every server of ours has been stopped and waited for, so their CPU is counted.
        foreign_s, share = foreign_cpu(mark)
        report.machine["other processes' CPU during the run"] = f"{foreign_s:.1f} s ({share:.0%})"
        if share > BUSY_WARN:
            report.notes.append(
                f"other processes used {share:.0%} of the machine during the run: figures are low"
                " and noisy; rerun on a quiet machine (see --wait-quiet)"
            )
    if args.chart:
        failed |= _guarded(report, "chart", lambda: _draw_chart(report, Path(args.chart)))
    print(render(report))
    if args.json:
        dump = json.dumps(report_json(report), indent=2)
        if args.json == "-":
            print(dump)
        else:
            Path(args.json).write_text(dump + "\n")
    return 1 if failed else 0


def _draw_chart(report: HttpReport, path: Path) -> None:
    """The scaling chart (bench_support/chart.py) of this run's medians."""
    try:
        rps = {name: {op: report.rps(name, op) for op in OPS} for name in report.rows}
        summary = draw_scaling_chart(rps, path, run_subtitle(report.settings, report.machine))
    except ChartError as exc:
        raise BenchError(str(exc)) from None
    _log(summary)
    report.notes.append(f"scaling chart: {path}")


def _check_quiet(report: HttpReport, wait: float) -> None:
    """Note how busy the machine was without us: other load makes every figure low and noisy.

    With `wait`, first give other work up to that many seconds to finish."""
    deadline = time.monotonic() + wait
    busy = machine_busy()
    while busy > BUSY_WARN and time.monotonic() < deadline:
        _log(f"machine {busy:.0%} busy with other work; waiting for it to quieten")
        busy = machine_busy(2.0)
    report.machine["CPU busy before the run"] = f"{busy:.0%}"
    if busy > BUSY_WARN:
        report.notes.append(
            f"other work kept the machine {busy:.0%} busy before the run: figures may be low and noisy;"
            " rerun on a quiet machine (see --wait-quiet)"
        )
        _log(f"warning: machine {busy:.0%} busy before the run")


def _note_failure(report: HttpReport, name: str, exc: Exception) -> None:
    """Record a failed step in the report (its row says why; the notes keep the detail)."""
    _log(f"{name}: FAILED: {exc}")
    if name in TARGET_NAMES and not report.row(name).note:
        report.row(name).note = "failed: " + (str(exc) or repr(exc)).splitlines()[0][:80]
    detail = str(exc) if isinstance(exc, BenchError) else repr(exc)
    report.notes.append(f"{name} failed: {detail}")


def _guarded(report: HttpReport, name: str, step: Callable[[], None]) -> bool:
    """Run one step; a BenchError is noted in the report and True returned, not raised."""
    try:
        step()
    except STEP_ERRORS as exc:
        _note_failure(report, name, exc)
        return True
    return False


def _run_load(
    port: int, workload: Workload, args: argparse.Namespace, tmp: Path, seconds: float
) -> LoadResult:
    if args.loadgen == "wrk":
        return run_wrk(
            port,
            workload,
            connections=args.connections,
            duration=seconds,
            threads=args.threads,
            workdir=tmp,
        )
    return run_python(port, workload, connections=args.connections, duration=seconds)


def measure_ceiling(report: HttpReport, args: argparse.Namespace, tmp: Path) -> None:
    """The load generator's own max rate, against a server far cheaper than Hypercorn."""
    argv = [sys.executable, str(SCRIPT), "_canned"]
    with script_server("canned", argv, tmp, args.ready_timeout) as proc:
        workload = Workload("GET", (Request("GET", "/"),))
        ceiling = _run_load(proc.port, workload, args, tmp, args.duration)
        report.generator_ceiling = ceiling
        _log(f"load generator ceiling (canned-answer server): {ceiling.rps:,.0f} req/s")


def measure_startup(report: HttpReport, args: argparse.Namespace, tmp: Path) -> None:
    """Spawn to first /health 200 on an empty store, `--startup-runs` times (nothing else running).

    The package's bytecode is compiled first, as `pip install` does and as any second start
    finds it: without it (an editable install where PYTHONDONTWRITEBYTECODE is set, as on
    this project's machine) every start compiles the sources again, ~0.4 s that no
    installed node pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kvs")], check=True)
    for i in range(args.startup_runs):
        with kvs_node(args.kvs_cmd, tmp / f"kvs-start-{i}", args.ready_timeout, cwd=REPO) as proc:
            assert proc.ready_s is not None
            report.startup_s.append(proc.ready_s)
    _log("kvs start-up: " + ", ".join(f"{s:.3f} s" for s in report.startup_s))


def auth_cost_lines(report: HttpReport) -> list[str]:
    """The auth check's cost: a token on every request against anonymous requests, as
    throughput and as the server's CPU time per request (medians). On a busy machine the
    CPU time is the steadier figure: throughput of a CPU-bound server is its inverse."""
    lines = []
    for op in OPS:
        plain, authed = report.rps("kvs", op), report.rps("kvs-auth", op)
        cpu_plain = report.cpu_us_per_request.get(f"kvs {op}")
        cpu_auth = report.cpu_us_per_request.get(f"kvs-auth {op}")
        if plain and authed:
            lines.append(
                f"auth cost, {op} throughput: {authed:,.0f} req/s with a token vs {plain:,.0f}"
                f" anonymous = {authed / plain:.0%} (target: at least 85%)"
            )
        if cpu_plain and cpu_auth:
            a, b = statistics.median(cpu_plain), statistics.median(cpu_auth)
            lines.append(
                f"auth cost, {op} server CPU per request: {b:,.0f} us with a token vs {a:,.0f}"
                f" anonymous: throughput at full CPU = {a / b:.0%} (target: at least 85%);"
                f" runs: {', '.join(f'{x:,.0f}' for x in cpu_auth)} vs"
                f" {', '.join(f'{x:,.0f}' for x in cpu_plain)}"
            )
    return lines


# Issue 18's targets: throughput with 2 HTTP processes against 1, on the same machine.
WORKER_TARGETS = {"GET": 1.5, "PUT": 1.3}


def worker_scaling_lines(report: HttpReport, counts: list[int]) -> list[str]:
    """Req/s with N HTTP processes against the node alone (medians of the rounds), and the
    issue's targets for N = 2. Throughput counts every process's CPU (see process_cpu_s)."""
    lines = []
    for op in OPS:
        one = report.rps("kvs", op)
        if not one:
            continue
        curve = [f"1: {one:,.0f}"]
        for n in counts:
            rps = report.rps(f"kvs-{n}w", op)
            if rps:
                curve.append(f"{n}: {rps:,.0f} ({rps / one:.2f}x)")
        line = f"http_workers scaling, {op} req/s by processes: " + "; ".join(curve)
        two = report.rps("kvs-2w", op)
        if two:
            verdict = "met" if two / one >= WORKER_TARGETS[op] else "NOT met"
            line += f" (target for 2: >= {WORKER_TARGETS[op]}x: {verdict})"
        lines.append(line)
    return lines


def start_targets(
    report: HttpReport, args: argparse.Namespace, tmp: Path, servers: contextlib.ExitStack
) -> tuple[list[Target], bool]:
    """Start and prepare every target not skipped; each is stopped when `servers` closes.

    Returns the targets that came up, and whether any failed to."""
    sizes = Sizes(args.get_keys, args.put_keys, args.bulk_batches)
    starters: dict[str, Callable[[], AbstractContextManager[Target]]] = {
        "bare-hypercorn": lambda: bare_target(
            [sys.executable, str(SCRIPT), "_bare"], tmp, args.ready_timeout
        ),
        "kvs": lambda: kvs_target(args.kvs_cmd, tmp, sizes, args.ready_timeout, cwd=REPO),
        "kvs-auth": lambda: kvs_target(
            args.kvs_cmd, tmp, sizes, args.ready_timeout, cwd=REPO, auth=True
        ),
        "etcd": lambda: etcd_target(tmp, sizes, args.ready_timeout),
    }
    for n in args.workers:  # the same node with n HTTP processes (issue 18)
        starters[f"kvs-{n}w"] = lambda n=n: kvs_target(
            args.kvs_cmd, tmp, sizes, args.ready_timeout, cwd=REPO, http_workers=n
        )
    targets: list[Target] = []
    failed = False
    for name, start in starters.items():
        if name in args.skip:
            report.row(name).note = "skipped (--skip)"
            continue
        if name == "etcd" and shutil.which("etcd") is None:
            report.row(name).note = "etcd not on PATH (python scripts/bench.py setup)"
            continue

        def up(start: Callable[[], AbstractContextManager[Target]] = start) -> None:
            target = servers.enter_context(start())
            time.sleep(IDLE_SECONDS)
            report.idle_rss_mb[target.name] = rss_mb(target.proc.pid)
            if target.name.startswith("kvs"):
                report.idle_memory[target.name] = tree_memory(target.proc.pid)
            else:
                report.idle_memory[target.name] = [proc_memory(target.proc.pid, "server")]
            target.prepare()
            targets.append(target)
            rss = report.idle_rss_mb[target.name]
            _log(f"{target.name}: ready (pid {target.proc.pid}, idle RSS {rss:.1f} MB)")

        failed |= _guarded(report, name, up)
    return targets, failed


def measure_interleaved(
    report: HttpReport, targets: list[Target], args: argparse.Namespace, tmp: Path
) -> bool:
    """GET then PUT on every target, round after round, so machine drift hits all alike.

    One warm-up per target and operation first. Returns True if a target failed (it is
    dropped from later rounds)."""
    runs: dict[tuple[str, str], list[LoadResult]] = defaultdict(list)
    live = list(targets)
    failed = False

    def run(target: Target, op: str, seconds: float, record: bool) -> None:
        nonlocal failed
        try:
            cpu_before = process_cpu_s(target.proc.pid)
            result = _run_load(target.proc.port, target.workloads[op], args, tmp, seconds)
            cpu_used = process_cpu_s(target.proc.pid) - cpu_before
        except STEP_ERRORS as exc:
            failed = True
            live.remove(target)
            _note_failure(report, target.name, exc)
            return
        if record:
            runs[target.name, op].append(result)
            if result.requests:
                report.cpu_us_per_request.setdefault(f"{target.name} {op}", []).append(
                    cpu_used / result.requests * 1e6
                )
            _log(
                f"  {target.name} {op}: {result.rps:,.0f} req/s  p50 {result.p50_ms:.2f} ms"
                f"  p99 {result.p99_ms:.2f} ms"
                + (f"  errors {result.errors}" if result.errors else "")
            )

    if args.warmup > 0:
        for op in OPS:
            for target in list(live):
                run(target, op, args.warmup, record=False)
    for round_no in range(args.repeat):
        _log(f"round {round_no + 1}/{args.repeat}:")
        for op in OPS:
            for target in list(live):
                run(target, op, args.duration, record=True)
    for (name, op), results in runs.items():
        row = report.row(name)
        row.runs[op] = results
        row.results[op] = median_result(results)
    return failed


def measure_bulk(report: HttpReport, target: Target, args: argparse.Namespace) -> None:
    """`--bulk-runs` timed bulk loads of fresh keys; the median goes in the table."""
    assert target.bulk is not None
    plan = target.bulk
    rates: list[float] = []
    failed_ops = 0
    for run in range(args.bulk_runs):
        rate, bad = bulk_load(target.proc.port, plan, plan.bodies(run), args.bulk_conns)
        rates.append(rate)
        failed_ops += bad
    bulk = Bulk(target.name, f"{plan.how}, {args.bulk_conns} conns", rates, failed_ops)
    report.bulk.append(bulk)
    _log(
        f"{target.name} bulk: {bulk.median:,.0f} keys/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


# ---------------------------------------------------------------- gossip


def cmd_gossip(args: argparse.Namespace) -> int:
    """Membership: the simulator's figures, then real serf vs KVS; exits 1 if a step failed."""
    from bench_support import gossip_real, gossip_sim  # gossip_sim imports kvs and trio

    with tempfile.TemporaryDirectory(prefix="kvs-bench-gossip-", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        machine = machine_info(tmp)
        if gossip_real.have_serf():
            machine["serf"] = gossip_real.serf_version()
        report = GossipReport(
            command=shlex.join([sys.executable, *sys.argv]),
            machine=machine,
            membership=gossip_sim.shipped_membership_config(),
        )
        failed = False
        if not args.no_sim:
            failed |= run_gossip_sim(report, args)
        if args.real_n > 0 and not args.no_real:
            failed |= run_gossip_real(report, args, tmp)
    print(render_gossip(report))
    if args.json:
        dump = json.dumps(gossip_json(report), indent=2)
        if args.json == "-":
            print(dump)
        else:
            Path(args.json).write_text(dump + "\n")
    return 1 if failed else 0


def _ignore_sigint() -> None:
    """In simulator workers: Ctrl-C is the parent's to handle (it terminates the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_gossip_sim(report: GossipReport, args: argparse.Namespace) -> bool:
    """Every simulator job, in parallel worker processes (each job is one seeded trio.run, so
    its figures do not depend on how busy the machine is). Returns True if a job failed."""
    import multiprocessing

    from bench_support import gossip_sim

    settings = gossip_sim.SimSettings(
        seed=args.seed,
        latency=args.latency_ms / 1000,
        jitter=args.jitter_ms / 1000,
        traffic_seconds=args.traffic_seconds,
        kills=args.kills,
        fp_seconds=args.fp_seconds,
        timeout=args.sim_timeout,
    )
    report.sim = settings
    # (cost estimate, label, function, arguments): the biggest first, so the pool ends level.
    jobs: list[tuple[float, str, Callable[..., Any], tuple[Any, ...]]] = [
        (n * 150.0, f"N={n}", gossip_sim.run_size_job, (n, settings)) for n in args.sizes
    ]
    jobs += [
        (
            n * args.fp_seconds * (1 + 4 * loss),
            f"N={n} loss {loss:.0%}",
            gossip_sim.run_fp_job,
            (n, loss, settings),
        )
        for n in args.fp_sizes
        for loss in args.fp_losses
    ]
    jobs.sort(key=lambda job: -job[0])
    workers = max(1, min(args.jobs, len(jobs)))
    _log(f"simulator: {len(jobs)} job(s) on {workers} worker process(es), seed {args.seed}")
    began = time.perf_counter()
    results: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_ignore_sigint) as pool:  # exit: terminate()
        pending = {label: pool.apply_async(fn, fn_args) for _, label, fn, fn_args in jobs}
        for label, future in pending.items():
            result = future.get(timeout=args.sim_wall_timeout)
            results[label] = result
            state = f"FAILED: {result.error}" if result.error else "done"
            _log(
                f"  {label}: {state} ({result.wall_s:.0f} s wall, {result.sim_seconds:.0f} s simulated)"
            )
    report.sim_wall_s = time.perf_counter() - began
    report.sizes = sorted(
        (r for r in results.values() if isinstance(r, gossip_sim.SizeResult)), key=lambda r: r.n
    )
    report.fps = sorted(
        (r for r in results.values() if isinstance(r, gossip_sim.FpResult)),
        key=lambda r: (r.n, r.loss),
    )
    failed = [r for r in results.values() if r.error]
    for r in failed:
        report.notes.append(f"simulator job failed (seed {args.seed}): {r.error}")
    return bool(failed)


def run_gossip_real(report: GossipReport, args: argparse.Namespace, tmp: Path) -> bool:
    """serf agents and KVS nodes as real processes, interleaved round by round."""
    from bench_support import gossip_real

    skip_serf = args.no_serf or not gossip_real.have_serf()
    if skip_serf and not args.no_serf:
        report.notes.append(
            "serf is not on PATH: only KVS ran as real processes (python scripts/bench.py setup)"
        )
    busy = machine_busy()
    report.machine["CPU busy before the real-process runs"] = f"{busy:.0%}"
    if busy > BUSY_WARN:
        report.notes.append(
            f"other work kept the machine {busy:.0%} busy before the real-process runs: process"
            " start-up and join times are inflated (failure detection is timer-bound and suffers"
            " less)"
        )
    report.real_n, report.real_repeat = args.real_n, args.repeat
    began = time.perf_counter()
    report.real = gossip_real.measure_both(
        args.real_n,
        args.repeat,
        tmp,
        args.real_timeout,
        shlex.split(args.kvs_cmd),
        REPO,
        skip_serf,
        _log,
    )
    report.real_wall_s = time.perf_counter() - began
    failed = [r for r in report.real if r.error]
    for r in failed:
        report.notes.append(f"{r.system} run failed: {r.error}")
    return bool(failed)


def _csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _csv_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _add_gossip_args(p: argparse.ArgumentParser) -> None:
    sim = p.add_argument_group("simulator")
    sim.add_argument(
        "--sizes",
        type=_csv_ints,
        default=[10, 50, 100],
        help="cluster sizes for join/failure/traffic (default 10,50,100; 200 costs ~5 more minutes)",
    )
    sim.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    sim.add_argument("--latency-ms", type=float, default=0.5, help="one-way latency (default 0.5)")
    sim.add_argument(
        "--jitter-ms", type=float, default=0.5, help="extra uniform delay, up to (default 0.5)"
    )
    sim.add_argument(
        "--traffic-seconds",
        type=float,
        default=60.0,
        help="steady-state traffic window, simulated s (default 60)",
    )
    sim.add_argument("--kills", type=int, default=3, help="nodes killed per size (default 3)")
    sim.add_argument(
        "--fp-sizes",
        type=_csv_ints,
        default=[10, 50],
        help="cluster sizes for the false-positive runs (default 10,50; '' for none)",
    )
    sim.add_argument(
        "--fp-losses",
        type=_csv_floats,
        default=[0.0, 0.05, 0.10],
        help="datagram loss rates (default 0,0.05,0.1)",
    )
    sim.add_argument(
        "--fp-seconds",
        type=float,
        default=300.0,
        help="simulated seconds of loss per false-positive run (default 300)",
    )
    sim.add_argument(
        "--sim-timeout",
        type=float,
        default=300.0,
        help="simulated seconds any one convergence may take before it counts as failed",
    )
    sim.add_argument(
        "--sim-wall-timeout",
        type=float,
        default=1800.0,
        help="wall seconds one simulator job may take (default 1800)",
    )
    sim.add_argument(
        "--jobs",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="simulator worker processes (default: one per CPU)",
    )
    sim.add_argument("--no-sim", action="store_true", help="skip the simulator part")
    real = p.add_argument_group("real processes")
    real.add_argument(
        "--real-n", type=int, default=10, help="nodes per real cluster (default 10; 0: skip)"
    )
    real.add_argument(
        "--repeat", type=int, default=3, help="fresh clusters per system; medians shown"
    )
    real.add_argument(
        "--real-timeout",
        type=float,
        default=90.0,
        help="seconds a join or a failure detection may take (default 90)",
    )
    real.add_argument("--no-serf", action="store_true", help="run only the KVS real cluster")
    real.add_argument("--no-real", action="store_true", help="skip the real-process part")
    real.add_argument(
        "--kvs-cmd",
        default=f"{shlex.quote(sys.executable)} -m kvs",
        help="command that runs a node; the config path is appended",
    )
    p.add_argument("--tmp-dir", help="where the real nodes' data dirs go (default: system temp)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also dump raw results as JSON (to PATH, or stdout)",
    )


# ---------------------------------------------------------------- other subcommands


def cmd_setup(args: argparse.Namespace) -> int:
    """Install the benchmark's external tools; kept out of tests so they never install things.

    First the `bench` extra of pyproject.toml (matplotlib, for --chart) into the Python that
    runs this script (the checkout's venv), when one of them is missing; then the Debian
    packages (root)."""
    if _install_bench_extra() != 0:
        return 1
    if os.geteuid() != 0:
        print("setup needs root (apt-get install); run it as root or with sudo", file=sys.stderr)
        return 2
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *args.packages]):
        print("+", shlex.join(argv), flush=True)
        if subprocess.run(argv, env=env, check=False, timeout=1800).returncode != 0:
            return 1
    return 0


def _install_bench_extra() -> int:
    """pip install the `bench` optional dependencies that do not import yet (each imports
    under its distribution's name: pyproject.toml says so where it lists them)."""
    import importlib.util
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as f:
        wanted = tomllib.load(f)["project"]["optional-dependencies"]["bench"]
    missing = [
        req for req in wanted if importlib.util.find_spec(re.split(r"[<>=!~ \[;]", req)[0]) is None
    ]
    if not missing:
        return 0
    argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *missing]
    print("+", shlex.join(argv), flush=True)
    return subprocess.run(argv, check=False, timeout=1800).returncode


def cmd_bare(args: argparse.Namespace) -> int:
    """The ceiling: Hypercorn on Trio, one worker, no access log, a raw ASGI app with a fixed answer."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BARE_BODY)).encode()),
    ]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the request body, as a real handler must
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": BARE_BODY})

    config = Config()
    config.bind = [f"{LOOPBACK}:{args.port}"]
    config.accesslog = None
    config.workers = 1
    trio.run(serve, app, config)
    return 0


def cmd_canned(args: argparse.Namespace) -> int:
    """A server far cheaper than any HTTP stack (fixed answer per request head), to find the
    load generator's own ceiling: what it reaches here is a floor for its capacity."""
    import asyncio

    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(BARE_BODY)).encode()
        + b"\r\n\r\n"
        + BARE_BODY
    )

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:  # bodiless requests only (GET)
            self.buf += data
            count = self.buf.count(b"\r\n\r\n")
            if count:
                self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4 :]
                self.transport.write(answer * count)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(Canned, LOOPBACK, args.port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())
    return 0


def _add_http_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--duration", type=float, default=5.0, help="seconds per measurement (default 5)"
    )
    p.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of unrecorded load first (default 1)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per measurement; the median is shown (default 3)",
    )
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="wrk threads (default 1: 2 cores, one for the server)",
    )
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--get-keys", type=int, default=1000, help="keys pre-loaded for GET")
    p.add_argument("--put-keys", type=int, default=10000, help="distinct keys PUT writes among")
    p.add_argument("--bulk-runs", type=int, default=5, help="bulk-load runs; the median is shown")
    p.add_argument("--bulk-batches", type=int, default=10, help="1000-key batches per bulk run")
    p.add_argument("--bulk-conns", type=int, default=4, help="concurrent connections for bulk load")
    p.add_argument("--startup-runs", type=int, default=3, help="cold starts timed (median shown)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for other work on the machine to finish before starting",
    )
    p.add_argument(
        "--ready-timeout", type=float, default=20.0, help="seconds a server gets to become ready"
    )
    p.add_argument(
        "--kvs-cmd",
        default=f"{shlex.quote(sys.executable)} -m kvs",
        help="command that runs a node; the config path is appended",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=("loadgen-ceiling", "bare-hypercorn", "kvs", "etcd", "kvs-auth"),
        help="skip a step (repeatable)",
    )
    p.add_argument("--no-etcd", action="store_true", help="same as --skip etcd")
    p.add_argument(
        "--workers",
        type=_csv_ints,
        default=[2, 4],
        metavar="N,N",
        help="also measure KVS with these http_workers counts (default 2,4; '' for none; 1 is the"
        " `kvs` target itself)",
    )
    p.add_argument(
        "--chart",
        metavar="PATH",
        help="draw req/s by HTTP processes (--workers), GET and PUT, with etcd's figures,"
        " into a PNG (needs matplotlib: `bench.py setup`)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="measure the auth check: KVS anonymous vs KVS (auth on) with a token on every request",
    )
    p.add_argument(
        "--tmp-dir", help="where the temporary data dirs go (default: the system temp dir)"
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="also dump raw results as JSON (to PATH, or stdout)",
    )


def _add_setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--packages",
        nargs="+",
        default=["wrk", "etcd-server", "serf"],
        help="Debian packages to install",
    )


def _add_port_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, required=True)


@dataclass(frozen=True)
class Command:
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    hidden: bool = False


# Subcommand name -> definition; add sync/backup here.
COMMANDS: dict[str, Command] = {
    "http": Command(
        "HTTP GET/PUT and bulk load vs bare Hypercorn and etcd", _add_http_args, cmd_http
    ),
    "gossip": Command(
        "membership: simulated join/failure/traffic/false positives, real serf vs KVS",
        _add_gossip_args,
        cmd_gossip,
    ),
    "replication": Command(
        "replication: lag at 500 writes/s, anti-entropy cost, bootstrap of a new node",
        _add_replication_args,
        cmd_replication,
    ),
    "metrics-cost": Command(
        "CPU cost of request metrics on the single-key fast path (in process)",
        metrics_cost.add_args,
        metrics_cost.run,
    ),
    "batch-cost": Command(
        "CPU time per key of POST /kv/_batch (in process, 1,000-key bodies)",
        batch_cost.add_args,
        batch_cost.run,
    ),
    "backup": Command(
        "backup of a 1M-key store: time, file vs LMDB size, PUT throughput during vs before",
        _add_backup_args,
        cmd_backup,
    ),
    "load": Command(
        "kvs load of 100,000 keys vs the _batch endpoint's own rate (target >= 0.8x)",
        _add_load_args,
        cmd_load,
    ),
    "memory": Command(
        "idle RSS, PSS and USS of a node and of each of its HTTP workers (no load)",
        _add_memory_args,
        cmd_memory,
    ),
    "chart": Command(
        "draw the HTTP scaling chart (PNG) of a report saved by `http --json PATH`",
        _add_chart_args,
        cmd_chart,
    ),
    "setup": Command(
        "install wrk, etcd-server and serf with apt-get (root)", _add_setup_args, cmd_setup
    ),
    "_bare": Command(
        "internal: serve the bare Hypercorn app", _add_port_arg, cmd_bare, hidden=True
    ),
    "_canned": Command(
        "internal: fixed-answer server for the load generator's ceiling",
        _add_port_arg,
        cmd_canned,
        hidden=True,
    ),
}


def _log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{" + ",".join(c for c in COMMANDS if not c.startswith("_")) + "}",
    )
    for name, command in COMMANDS.items():
        shown = {} if command.hidden else {"help": command.help}  # no "help" key: not listed
        p = sub.add_parser(name, description=command.help, **shown)
        command.add_args(p)
    args = parser.parse_args(argv)
    if not args.command.startswith("_"):  # so `finally` blocks stop our servers on SIGTERM too
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("interrupted; every process this run started has been stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
