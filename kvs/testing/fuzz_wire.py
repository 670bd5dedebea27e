"""A seeded fuzzer of gossip datagrams and sync frames, fired at a real node process.

    python -m kvs.testing.fuzz_wire --seconds 60 [--seed N] [--rate 1000] [--workers 4]

It starts `python -m kvs CONFIG` (clustering on, a fresh data directory, some data to make
snapshots worth taking), then for `--seconds` sends, from one `random.Random(seed)`:

- to the UDP gossip port: random bytes; valid datagrams truncated, bit-flipped, oversized,
  replayed (refused as "replay"), stamped outside the time window ("stale"), sealed with
  another key or none; and datagrams sealed with the real key (AES-256-GCM, a fresh nonce,
  the current time) whose messages' fields are mutated into negative, huge,
  wrong-typed, missing or extra values, including the claims of issue 12 ("you are dead"
  at the largest incarnation, hosts the resolver chokes on);
- to the TCP sync port and the gossip port's TCP push-pull: garbage, half-open connections,
  stalls in the middle of a frame, frames announcing 4 GB, a wrong key or purpose, and,
  after a valid handshake, mutated requests and push-pull tables, raw frames that are not
  msgpack, records that fail validation, snapshot requests abandoned or stalled midway.

Meanwhile it checks that the process stays up, `/health` answers within a second, RSS stays
under 4x its idle RSS, and nothing reaches stderr as a traceback; at the end, that the
node's drop counters rose and that it still shuts down cleanly. It prints the seed first and
a report last; exit status 0 when every check held.

Replay: each stream of inputs (datagrams, each TCP worker) draws from its own generator
seeded from the one seed in a fixed order, so a seed replays the same inputs in the same
order; how many of them fit in the time depends on the machine.

Test tooling (see `kvs.testing`): it reaches into `FrameStream` to send frames the real
encoder would refuse to build.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import random
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from kvs.testing import procs
from kvs.testing.ports import free_port
from kvs.testing.procs import NodeProcess, write_private
from kvs.testing.wire_inputs import DatagramFuzzer, FakePeers, Target
from kvs.testing.wire_peer import HostilePeer
from kvs.testing.wire_streams import StreamFuzzer, Tally

HEALTH_TIMEOUT = 1.0  # /health must answer within this, every time it is asked
RSS_FACTOR = 4.0  # RSS must stay under this many times the idle RSS
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
CHECK_INTERVAL = 0.5
HOLDERS = 8  # connections held open at once, at most
SEED_VALUES = 48  # values of SEED_VALUE_BYTES put in before fuzzing: a snapshot of several chunks
SEED_VALUE_BYTES = 64 * 1024


# --- the node under test ---------------------------------------------------------------------


def write_config(directory: Path, target: Target) -> Path:
    values = {
        "node_id": target.node_id,
        "bind_address": "127.0.0.1",
        "port": target.http[1],
        "gossip_port": target.gossip[1],
        "sync_port": target.sync[1],
        "data_dir": str(directory / "data"),
        "cluster_secret": target.secret,
        "clustering_enabled": True,
        "auth_enabled": False,  # the fuzzer reads /cluster/stats and writes seed data
        "backup_path": str(directory / "backups"),
        "log_level": "info",
    }
    path = directory / "config.yaml"
    # JSON values are YAML flow scalars: no quoting rules to get wrong.
    write_private(path, "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return path


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux), 0 where unknown."""
    return procs.rss_kib(pid) or 0


# --- the run ------------------------------------------------------------------------------------


@dataclass
class FuzzOptions:
    seconds: float = 60.0
    seed: int | None = None
    rate: int = 1000  # datagrams per second
    workers: int = 4  # TCP connections fuzzing at once (besides those held open)
    workdir: Path | None = None  # default: a temporary directory, removed afterwards
    health_timeout: float = HEALTH_TIMEOUT
    rss_factor: float = RSS_FACTOR


@dataclass
class FuzzReport:
    seed: int
    seconds: float = 0.0
    datagrams: int = 0
    frames: int = 0
    connections: int = 0
    idle_rss_kib: int = 0
    max_rss_kib: int = 0
    max_health_s: float = 0.0
    exit_status: int | None = None
    drops: dict[str, int] = field(default_factory=dict)  # counters that rose, by name
    datagram_kinds: dict[str, int] = field(default_factory=dict)
    scenarios: dict[str, int] = field(default_factory=dict)
    answered: int = 0  # the node's pings to fake members that were answered
    served: dict[str, int] = field(default_factory=dict)  # the node's connections to them
    fuzzer_errors: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"seed: {self.seed}",
            f"seconds: {self.seconds:.1f}",
            f"datagrams sent: {self.datagrams}",
            f"frames sent: {self.frames}",
            f"connections: {self.connections}",
            f"RSS: idle {self.idle_rss_kib / 1024:.1f} MiB, max {self.max_rss_kib / 1024:.1f} MiB",
            f"slowest /health: {self.max_health_s * 1000:.0f} ms",
            f"exit status after SIGTERM: {self.exit_status}",
            "counters that rose: "
            + ", ".join(f"{name}={value}" for name, value in sorted(self.drops.items())),
            "datagram kinds: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.datagram_kinds.items())),
            "stream scenarios: " + ", ".join(f"{k}={v}" for k, v in sorted(self.scenarios.items())),
            f"the node's own traffic to the fake members: {self.answered} pings answered, "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.served.items()))
            + " connections served with hostile replies",
        ]
        if self.fuzzer_errors:
            lines.append(f"fuzzer-side errors (not the node's): {self.fuzzer_errors}")
        lines.append("OK" if self.ok else "PROBLEMS:\n  " + "\n  ".join(self.problems))
        if not self.ok and self.stderr_tail:
            lines.append("node stderr (tail):\n" + self.stderr_tail)
        return "\n".join(lines)


def _counters(stats: dict[str, Any]) -> dict[str, int]:
    """Every counter of /cluster/stats under one flat name (membership, swim, sync)."""
    flat = {f"gossip.{k}": v for k, v in stats.get("counters", {}).items()}
    flat.update({f"swim.{k}": v for k, v in stats.get("swim", {}).items()})
    flat.update({f"sync.{k}": v for k, v in stats.get("sync", {}).get("counters", {}).items()})
    return {k: v for k, v in flat.items() if isinstance(v, int)}


def _is_drop(name: str) -> bool:
    """A counter of refused input (or of failed exchanges with a hostile fake member)."""
    last = name.rpartition(".")[2]
    return last.startswith(("dropped_", "stream_dropped_", "refused_")) or last in (
        "unrefutable_claims",
        "members_refused",
        "exchange_failures",
        "push_failures",
        "push_pull_failures",
        "reconnect_failures",
        "merge_failures",
        "errors",
        "push_pull_errors",
    )


def _start_node(directory: Path, target: Target) -> NodeProcess:
    """The node process, started on a fresh config; its output in node.out and node.err."""
    node = NodeProcess(
        [str(write_config(directory, target))],
        cwd=directory,
        port=target.http[1],
        stdout_path=directory / "node.out",
        stderr_path=directory / "node.err",
        name="the node",
        append=False,
    )
    node.start()
    return node


async def _get(client: Any, url: str, timeout: float) -> Any:
    return await client.get(url, timeout=timeout)


async def _fuzz(options: FuzzOptions, seed: int, directory: Path) -> FuzzReport:
    import httpx  # the node itself never imports it at start-up

    rng = random.Random(seed)
    report = FuzzReport(seed=seed)
    target = Target(
        node_id="fuzz-target",
        secret=rng.randbytes(24).hex(),
        http=("127.0.0.1", free_port()),
        gossip=("127.0.0.1", free_port()),
        sync=("127.0.0.1", free_port()),
    )
    # Every stream's generator, seeded now, in this order: the same seed replays them.
    datagram_rng = random.Random(rng.getrandbits(64))
    worker_rngs = [random.Random(rng.getrandbits(64)) for _ in range(options.workers)]
    values_rng = random.Random(rng.getrandbits(64))
    peer_rng = random.Random(rng.getrandbits(64))

    node = _start_node(directory, target)
    tally = Tally()
    datagrams: DatagramFuzzer | None = None
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            run = _Run(options, report, node, client, target, tally)
            if not await run.started() or not await run.seed_data(values_rng):
                return report
            peers = FakePeers(gossip=("127.0.0.1", free_port()), sync=("127.0.0.1", free_port()))
            datagrams = DatagramFuzzer(datagram_rng, target, peers)
            hostile = HostilePeer(peer_rng, target, peers, tally)
            await run.fuzz(datagrams, hostile, peers, worker_rngs)
            await run.after()
    finally:
        report.exit_status, _ = node.stop(STOP_TIMEOUT)
        node.kill()
        report.datagrams, report.frames = tally.datagrams, tally.frames
        report.connections = tally.connections
        report.scenarios = dict(tally.scenarios)
        report.answered, report.served = tally.answered, dict(tally.served)
        report.fuzzer_errors = dict(tally.fuzzer_errors)
        if datagrams is not None:
            report.datagram_kinds = dict(datagrams.kinds)
    _judge(report, node.stderr_text(), target, options)
    return report


class _Run:
    """One fuzzing run against a started node: wait for it, give it data, fire at it while
    watching it, and read what it counted."""

    def __init__(
        self,
        options: FuzzOptions,
        report: FuzzReport,
        node: NodeProcess,
        client: Any,
        target: Target,
        tally: Tally,
    ) -> None:
        self.options = options
        self.report = report
        self.node = node
        self.client = client
        self.target = target
        self.tally = tally
        self.base = node.url
        self.before: dict[str, int] = {}
        self.began = 0.0

    async def started(self) -> bool:
        """Until /health answers 200; False (and a problem) if the node exits or is late."""
        import httpx

        deadline = trio.current_time() + START_TIMEOUT
        while True:
            if not self.node.alive():
                self.report.problems.append(
                    f"the node exited at start-up: {self.node.returncode()}"
                )
                return False
            with contextlib.suppress(httpx.HTTPError):
                if (await _get(self.client, self.base + "/health", 2.0)).status_code == 200:
                    return True
            if trio.current_time() > deadline:
                self.report.problems.append("the node did not start")
                return False
            await trio.sleep(0.05)

    async def seed_data(self, values_rng: random.Random) -> bool:
        """Values worth a snapshot of several chunks; then the idle RSS and the counters."""
        for i in range(SEED_VALUES):
            value = json.dumps(values_rng.randbytes(SEED_VALUE_BYTES // 2).hex())
            await self.client.put(f"{self.base}/kv/fuzz/big/{i}", content=value, timeout=10)
        await trio.sleep(1.0)
        self.report.idle_rss_kib = max(rss_kib(self.node.pid or 0) for _ in range(3))
        stats = await _get(self.client, self.base + "/cluster/stats", 5)
        self.before = _counters(stats.json())
        return True

    async def fuzz(
        self,
        datagrams: DatagramFuzzer,
        hostile: HostilePeer,
        peers: FakePeers,
        worker_rngs: list[random.Random],
    ) -> None:
        """Datagrams, stream workers and the hostile fake members, for `seconds`."""
        sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
        await sock.bind(peers.gossip)
        holders = trio.Semaphore(HOLDERS)
        self.began = trio.current_time()
        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.send_datagrams, sock, datagrams)
                nursery.start_soon(hostile.answer, sock)
                for handler, address in (
                    (hostile.serve_push_pull, peers.gossip),
                    (hostile.serve_sync, peers.sync),
                ):
                    await nursery.start(
                        functools.partial(trio.serve_tcp, handler, address[1], host=address[0])
                    )
                for worker_rng in worker_rngs:
                    fuzzer = StreamFuzzer(worker_rng, self.target, peers, self.tally, holders)
                    nursery.start_soon(fuzzer.run, nursery)
                await self.watch(self.options.seconds)
                nursery.cancel_scope.cancel()
        self.report.seconds = trio.current_time() - self.began

    async def send_datagrams(self, sock: Any, datagrams: DatagramFuzzer) -> None:
        rate = self.options.rate
        burst = max(1, rate // 100)
        while True:
            for _ in range(burst):
                with contextlib.suppress(OSError):
                    await sock.sendto(datagrams.next(), self.target.gossip)
                self.tally.datagrams += 1
            await trio.sleep(burst / rate)

    async def watch(self, seconds: float) -> None:
        """Check the node every CHECK_INTERVAL for `seconds`; stop early if it died."""
        import httpx

        report, node, timeout = self.report, self.node, self.options.health_timeout
        end = self.began + seconds
        while trio.current_time() < end:
            if not node.alive():
                report.problems.append(
                    f"the node exited during the run (status {node.returncode()}) "
                    f"after {trio.current_time() - self.began:.1f} s"
                )
                return
            report.max_rss_kib = max(report.max_rss_kib, rss_kib(node.pid or 0))
            asked = trio.current_time()
            try:
                response = await _get(self.client, self.base + "/health", timeout)
                took = trio.current_time() - asked
                report.max_health_s = max(report.max_health_s, took)
                if response.status_code != 200:
                    report.problems.append(f"/health answered {response.status_code}")
            except httpx.HTTPError as exc:
                report.problems.append(
                    f"/health did not answer within {timeout} s "
                    f"({type(exc).__name__}) at {asked - self.began:.1f} s"
                )
            await trio.sleep(min(CHECK_INTERVAL, max(0.0, end - trio.current_time())))

    async def after(self) -> None:
        """Once what was in flight is done: the peak RSS and the counters that rose."""
        import httpx

        await trio.sleep(1.0)
        report, node = self.report, self.node
        if not node.alive():
            return
        report.max_rss_kib = max(report.max_rss_kib, rss_kib(node.pid or 0))
        try:
            after = _counters((await _get(self.client, self.base + "/cluster/stats", 5)).json())
            report.drops = {
                name: after[name] - self.before.get(name, 0)
                for name in sorted(after)
                if _is_drop(name) and after[name] > self.before.get(name, 0)
            }
        except (httpx.HTTPError, ValueError) as exc:
            report.problems.append(f"/cluster/stats failed after the run: {exc!r}")


def _judge(report: FuzzReport, stderr: str, target: Target, options: FuzzOptions) -> None:
    if report.exit_status != 0 and not report.problems:
        report.problems.append(f"the node did not stop cleanly on SIGTERM: {report.exit_status}")
    if report.idle_rss_kib and report.max_rss_kib > options.rss_factor * report.idle_rss_kib:
        report.problems.append(
            f"RSS rose to {report.max_rss_kib} KiB, over {options.rss_factor}x the idle "
            f"{report.idle_rss_kib} KiB"
        )
    for marker in ("Traceback", "Exception Group"):
        if marker in stderr:
            report.problems.append(f"{marker!r} in the node's stderr")
    if target.secret in stderr:
        report.problems.append("the cluster secret appeared in the node's stderr")
    if report.datagrams and not any(k.startswith("gossip.dropped_") for k in report.drops):
        report.problems.append("no datagram drop was counted")
    if report.connections and not any(
        k.startswith(("sync.dropped_", "gossip.stream_dropped_")) for k in report.drops
    ):
        report.problems.append("no stream drop was counted")
    for name in ("gossip.dropped_error", "gossip.stream_dropped_error", "sync.dropped_error"):
        if report.drops.get(name):
            report.problems.append(f"{name}: {report.drops[name]} unexpected errors (a bug)")
    for name in ("sync.errors", "gossip.push_pull_errors"):
        if report.drops.get(name):
            report.problems.append(f"{name}: {report.drops[name]} unexpected errors (a bug)")
    if report.problems:
        report.stderr_tail = "\n".join(stderr.splitlines()[-40:]).replace(target.secret, "***")


def run(options: FuzzOptions) -> FuzzReport:
    """Start a node, fuzz it for `options.seconds`, stop it; the report says what held."""
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    budget = options.seconds + START_TIMEOUT + STOP_TIMEOUT + 60

    async def main(directory: Path) -> FuzzReport:
        with trio.fail_after(budget):
            return await _fuzz(options, seed, directory)

    if options.workdir is not None:
        options.workdir.mkdir(parents=True, exist_ok=True)
        return trio.run(main, options.workdir)
    with tempfile.TemporaryDirectory(prefix="kvs-fuzz-") as directory:
        return trio.run(main, Path(directory))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvs.testing.fuzz_wire", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=None, help="replay this seed")
    parser.add_argument("--rate", type=int, default=1000, help="datagrams per second")
    parser.add_argument("--workers", type=int, default=4, help="TCP connections at once")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the node's files here")
    args = parser.parse_args(argv)
    if not math.isfinite(args.seconds) or args.seconds <= 0:
        parser.error("--seconds must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed: {seed}", flush=True)
    options = FuzzOptions(
        seconds=args.seconds,
        seed=seed,
        rate=max(1, args.rate),
        workers=max(0, args.workers),
        workdir=args.workdir,
    )
    report = run(replace(options))
    print(report.text(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
