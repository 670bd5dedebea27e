"""What the HTTP fuzzer sees of its nodes from outside, and how it records failures.

`Monitor` runs one thread per node (the process is up; /health answers within a limit; new
tracebacks on stderr) and one sampling RSS every 20 ms; `Tracker` remembers which
interaction ran on which node when, so a failure names its suspects; `Findings` groups
failures by kind and signature (one bug, one line).
"""

from __future__ import annotations

import collections
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvs.testing.http_plan import Interaction
from kvs.testing.procs import NodeProcess, http_get

# --- failures ---------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str
    signature: str
    index: int
    node: int
    detail: str


@dataclass
class FindingGroup:
    kind: str
    signature: str
    count: int = 0
    indices: list[int] = field(default_factory=list)
    nodes: set[int] = field(default_factory=set)
    detail: str = ""


class Findings:
    """Every failure seen, grouped by (kind, signature); thread-safe (monitor threads add)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.groups: dict[tuple[str, str], FindingGroup] = {}

    def add(self, finding: Finding) -> None:
        with self._lock:
            key = (finding.kind, finding.signature)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = FindingGroup(finding.kind, finding.signature)
                group.detail = finding.detail
            group.count += 1
            if len(group.indices) < 12 and finding.index >= 0:
                group.indices.append(finding.index)
            group.nodes.add(finding.node)

    def __len__(self) -> int:
        return len(self.groups)

    def sorted(self) -> list[FindingGroup]:
        with self._lock:
            return sorted(self.groups.values(), key=lambda g: (g.kind, g.signature))


def shape(text: str) -> str:
    """A message with its numbers and ids blanked, so one bug is one signature."""
    text = re.sub(r"0x[0-9a-fA-F]+", "0x…", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    return re.sub(r"\d+", "N", text)[:200]


# --- the monitor ---------------------------------------------------------------------------------


class Tracker:
    """Which interactions ran on which node when (wall-clock time, to match the timestamps
    of a node's log lines), for naming the suspects of a failure; optionally a log file."""

    def __init__(self, log: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.active: dict[int, tuple[int, str, float]] = {}
        self.recent: collections.deque[tuple[int, int, str, float, float]] = collections.deque(
            maxlen=20000
        )
        self._log = open(log, "a", encoding="utf-8") if log is not None else None  # noqa: SIM115

    def begin(self, inter: Interaction) -> None:
        with self._lock:
            self.active[inter.index] = (inter.node, inter.kind, time.time())

    def end(self, inter: Interaction) -> None:
        with self._lock:
            node, kind, started = self.active.pop(inter.index, (inter.node, inter.kind, 0.0))
            ended = time.time()
            self.recent.append((inter.index, node, kind, started, ended))
            if self._log is not None:
                stamp = time.strftime("%H:%M:%S", time.localtime(started))
                self._log.write(
                    f"{stamp}.{int(started * 1000) % 1000:03d} +{ended - started:.3f}s "
                    f"#{inter.index} {kind} node{node + 1} {inter.who}: {inter.what}\n"
                )

    def close(self) -> None:
        if self._log is not None:
            self._log.close()

    def suspects(self, node: int, start: float, end: float | None = None) -> list[str]:
        """Interactions on `node` that were running at some moment in [start, end]."""
        end = time.time() if end is None else end
        with self._lock:
            found = [
                (i, k) for i, (n, k, began) in self.active.items() if n == node and began <= end
            ]
            found += [
                (i, k)
                for i, n, k, began, ended in self.recent
                if n == node and began <= end and ended >= start
            ]
        return [f"{i}:{k}" for i, k in dict.fromkeys(sorted(found))][:30]


def log_time(block: str) -> float | None:
    """The wall-clock time of the log line that introduced a traceback."""
    match = LOG_LINE.search(block)
    if match is None:
        return None
    try:
        stamp = time.mktime(time.strptime(match.group(0), "%Y-%m-%d %H:%M:%S"))
    except ValueError:
        return None
    millis = re.match(r",(\d{3})", block[match.end() :])
    return stamp + (int(millis.group(1)) / 1000 if millis else 0.0)


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.M)


def traceback_blocks(text: str) -> list[str]:
    """Each traceback in a node's stderr, with the log line that introduced it."""
    blocks = []
    for match in re.finditer(r"Traceback \(most recent call last\)", text):
        start = text.rfind("\n", 0, max(0, text.rfind("\n", 0, match.start()))) + 1
        following = LOG_LINE.search(text, match.end())
        end = following.start() if following else len(text)
        blocks.append(text[start:end].rstrip())
    merged: list[str] = []
    for block in blocks:  # chained tracebacks ("During handling ...") are one block
        if merged and block in merged[-1]:
            continue
        merged.append(block)
    return merged


def traceback_signature(block: str) -> str:
    """The exception line and the innermost frames outside trio's internals: one bug, one
    signature, whichever request hit it."""
    lines = [ln.strip(" |+-") for ln in block.splitlines() if ln.strip(" |+-")]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Group|Exit)\b.*", ln)]
    last = errors[-1] if errors else (lines[-1] if lines else "?")
    frames = []
    for line in lines:
        match = re.match(r'File "([^"]+)", line \d+, in (\S+)', line)
        if match and "/trio/" not in match.group(1):
            frames.append(f"{Path(match.group(1)).stem}.{match.group(2)}")
    where = " < ".join(reversed(frames[-3:]))
    return shape(f"{last} @ {where}")


@dataclass
class NodeWatch:
    idle_rss_kb: int = 0
    max_rss_kb: int = 0
    max_health_s: float = 0.0
    health_checks: int = 0
    deaths: int = 0
    stderr_offset: int = 0
    rss_reported: bool = False


class Monitor:
    """One thread per node: alive, /health within `health_limit`, RSS under `rss_factor` x
    idle, new tracebacks on stderr. A dead node is restarted when `restart` is set."""

    def __init__(
        self,
        nodes: list[NodeProcess],
        findings: Findings,
        tracker: Tracker,
        *,
        restart: bool,
        health_limit: float,
        rss_factor: float,
        interval: float = 0.5,
    ) -> None:
        self.nodes = nodes
        self.findings = findings
        self.tracker = tracker
        self.restart = restart
        self.health_limit = health_limit
        self.rss_factor = rss_factor
        self.interval = interval
        self.watch = [NodeWatch() for _ in nodes]
        self.stopping = threading.Event()
        self.down = [threading.Event() for _ in nodes]  # set while a node is dead/restarting
        self._threads: list[threading.Thread] = []

    def measure_idle(self) -> None:
        for node, watch in zip(self.nodes, self.watch, strict=True):
            samples = []
            for _ in range(3):
                samples.append(node.rss_kb() or 0)
                time.sleep(0.1)
            watch.idle_rss_kb = max(samples)
            watch.max_rss_kb = watch.idle_rss_kb
            watch.stderr_offset = len(node.stderr_bytes())

    def start(self) -> None:
        for i in range(len(self.nodes)):
            thread = threading.Thread(target=self._loop, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        sampler = threading.Thread(target=self._sample_rss, daemon=True)
        sampler.start()
        self._threads.append(sampler)

    def _sample_rss(self) -> None:
        """RSS of every node every 20 ms: a parse of a large body peaks for well under a
        second, which a slower poll misses."""
        while not self.stopping.wait(0.02):
            for i, (node, watch) in enumerate(zip(self.nodes, self.watch, strict=True)):
                rss = node.rss_kb()
                if not rss:
                    continue
                watch.max_rss_kb = max(watch.max_rss_kb, rss)
                if rss > self.rss_factor * watch.idle_rss_kb and not watch.rss_reported:
                    watch.rss_reported = True
                    suspects = self.tracker.suspects(i, time.time() - 1.0)
                    self.findings.add(
                        Finding(
                            "rss",
                            f"RSS over {self.rss_factor:g}x idle",
                            -1,
                            i,
                            f"{node.name}: {rss // 1024} MiB vs idle "
                            f"{watch.idle_rss_kb // 1024} MiB; in flight: {suspects}",
                        )
                    )

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for i in range(len(self.nodes)):
            self._scan_stderr(i)

    def _loop(self, i: int) -> None:
        while not self.stopping.wait(self.interval):
            self.tick(i)

    def tick(self, i: int) -> None:
        node, watch = self.nodes[i], self.watch[i]
        self._scan_stderr(i)
        if not node.alive():
            watch.deaths += 1
            code = node.returncode()
            tail = node.stderr_tail(25)
            blocks = traceback_blocks(node.stderr_bytes().decode("utf-8", "replace"))
            why = traceback_signature(blocks[-1]) if blocks else f"exit status {code}"
            suspects = self.tracker.suspects(i, time.time() - 1.5)
            self.findings.add(
                Finding(
                    "node-exit",
                    why,
                    -1,
                    i,
                    f"{node.name} exited with status {code}; in flight on it: {suspects}\n{tail}",
                )
            )
            if not self.restart:
                self.down[i].set()
                self.stopping.wait()  # nothing more to watch on this node
                return
            self.down[i].set()
            try:
                node.start()
                node.wait_ready()
                watch.stderr_offset = len(node.stderr_bytes())
            except Exception as exc:  # noqa: BLE001 - reported, and the node stays down
                self.findings.add(
                    Finding("node-restart-failed", type(exc).__name__, -1, i, str(exc))
                )
                self.stopping.wait()
                return
            finally:
                self.down[i].clear() if node.alive() else None
            return
        started = time.monotonic()
        wall = time.time()
        try:
            status, _ = http_get(node.port, "/health", timeout=max(5.0, self.health_limit * 3))
            error = "" if status == 200 else f"status {status}"
        except (OSError, ConnectionError) as exc:
            error = type(exc).__name__
        took = time.monotonic() - started
        if error:  # a node on its way out refuses first: that is its exit, judged next tick
            for _ in range(20):
                if not node.alive():
                    return
                time.sleep(0.1)
        if not node.alive():
            return
        watch.health_checks += 1
        watch.max_health_s = max(watch.max_health_s, took)
        if error or took > self.health_limit:
            suspects = self.tracker.suspects(i, wall - 0.5, wall + took)
            what = f"/health {error}" if error else f"/health slower than {self.health_limit:g} s"
            self.findings.add(
                Finding(
                    "health",
                    what,
                    -1,
                    i,
                    f"{node.name}: {took:.2f} s {error}; in flight: {suspects}",
                )
            )

    def _scan_stderr(self, i: int) -> None:
        node, watch = self.nodes[i], self.watch[i]
        data = node.stderr_bytes()
        if len(data) <= watch.stderr_offset:
            return
        # Only whole lines: a traceback being written is read on the next tick.
        end = data.rfind(b"\n", watch.stderr_offset) + 1
        if end <= watch.stderr_offset:
            return
        new = data[watch.stderr_offset : end].decode("utf-8", "replace")
        if "Traceback" not in new and "Exception Group" not in new:
            watch.stderr_offset = end
            return
        # Wait for a traceback to be complete (a following log line or a quiet moment).
        blocks = traceback_blocks(new)
        for block in blocks:
            when = log_time(block)
            suspects = (
                self.tracker.suspects(i, when - 0.3, when + 0.05)
                if when is not None
                else self.tracker.suspects(i, time.time() - 2.0)
            )
            self.findings.add(
                Finding(
                    "traceback",
                    traceback_signature(block),
                    -1,
                    i,
                    f"{node.name}; in flight: {suspects}\n" + "\n".join(block.splitlines()[-14:]),
                )
            )
        watch.stderr_offset = end
