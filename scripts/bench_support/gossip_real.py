"""`bench.py gossip`, real-process half: N serf agents, then N KVS nodes, on 127.0.0.1.

Both clusters are measured the same way, by one procedure (`measure`):
1. start the first node (the seed) and wait until it answers;
2. spawn the other N-1 at once, each told to join through the seed;
3. poll every node's member list, all nodes per sweep, until every node lists all N alive
   ("join": from step 2's spawn; "join after ready": from the moment the last node first
   answered, which leaves out process start-up);
4. SIGKILL one node (never the seed) and poll the others until every one reports it failed
   (serf) / dead (KVS) ("detect"); the first node to do so gives "first detect".
Any node seen reporting a node that was never killed as failed/dead is a false positive.

serf's member lists come from its RPC protocol (msgpack over TCP, the protocol `serf members`
uses), one persistent connection per agent: far cheaper than running `serf members` N times
a sweep. KVS member lists come from GET /members/ over one keep-alive connection per node.
Every process is started under a context manager that stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench_support.procs import LOOPBACK, BenchError, Proc, spawned, wait_ready

POLL_INTERVAL = 0.05  # seconds between the end of one sweep and the start of the next
RPC_TIMEOUT = 2.0  # one member-list request


@dataclass
class RealRun:
    """One cluster's measurements (seconds, wall clock)."""

    system: str  # "serf" or "kvs"
    n: int
    victim: str = ""
    startup_s: list[float] = field(default_factory=list)  # joiners: spawn -> first answer
    join_s: float | None = None
    join_after_ready_s: float | None = None
    first_detect_s: float | None = None
    detect_s: float | None = None
    false_positives: list[str] = field(default_factory=list)  # "observer: subject state"
    sweeps: int = 0
    sweep_s: float = 0.0  # mean duration of a sweep over every node
    error: str = ""


class Cluster(Protocol):
    """What `measure` needs of a running cluster."""

    system: str
    down_states: frozenset[str]  # a member state meaning "this one has failed"

    def start_seed(self) -> None: ...
    def start_joiners(self) -> None: ...
    def names(self) -> list[str]: ...
    def view(self, name: str) -> dict[str, str] | None: ...  # None: not answering (yet)
    def kill(self, name: str) -> None: ...


# ---------------------------------------------------------------- ports


def free_dual_ports(count: int) -> list[int]:
    """Ports free on loopback for both TCP and UDP (gossip uses both on one number)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count * 20):
            if len(ports) == count:
                return ports
            tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind((LOOPBACK, port))
            except OSError:
                continue
            ports.append(port)
    raise BenchError(f"could not find {count} loopback ports free for both TCP and UDP")


# ---------------------------------------------------------------- serf


class SerfRpc:
    """A minimal client of serf's RPC protocol: handshake, then `members` requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.seq = 0
        self.unpacker: Any = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read(self) -> Any:
        assert self.sock is not None
        while True:
            for obj in self.unpacker:
                return obj
            data = self.sock.recv(65536)
            if not data:
                raise OSError("serf RPC connection closed")
            self.unpacker.feed(data)

    def _call(self, command: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import msgpack  # a KVS dependency, so present in the venv that runs the benchmark

        assert self.sock is not None
        self.seq += 1
        frame = msgpack.packb({"Command": command, "Seq": self.seq})
        if body is not None:
            frame += msgpack.packb(body)
        self.sock.sendall(frame)
        header = self._read()
        if header.get("Error"):
            raise OSError(f"serf RPC {command}: {header['Error']}")
        return header

    def _connect(self) -> None:
        import msgpack

        self.sock = socket.create_connection((LOOPBACK, self.port), timeout=RPC_TIMEOUT)
        self.unpacker = msgpack.Unpacker(raw=False)
        self._call("handshake", {"Version": 1})

    def members(self) -> dict[str, str] | None:
        """name -> status ("alive", "failed", "leaving", "left"); None if the agent is not up."""
        try:
            if self.sock is None:
                self._connect()
            self._call("members")
            body = self._read()
        except (OSError, ValueError):
            self.close()
            return None
        return {m["Name"]: m["Status"] for m in body.get("Members", [])}


@dataclass
class _SerfAgent:
    name: str
    bind_port: int
    rpc: SerfRpc
    proc: Proc | None = None


class SerfCluster:
    """N `serf agent`s with default (LAN) settings, agent 1 the seed every other joins."""

    system = "serf"
    down_states = frozenset({"failed"})

    def __init__(self, n: int, home: Path, stack: contextlib.ExitStack, timeout: float) -> None:
        self.home = home
        self.stack = stack
        self.timeout = timeout
        picked = free_dual_ports(2 * n)
        ports, rpc_ports = picked[:n], picked[n:]
        self.agents = {
            f"s{i + 1}": _SerfAgent(f"s{i + 1}", ports[i], SerfRpc(rpc_ports[i])) for i in range(n)
        }
        for agent in self.agents.values():
            stack.callback(agent.rpc.close)
        home.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return list(self.agents)

    def _spawn(self, agent: _SerfAgent, join: int | None) -> None:
        argv = [
            "serf",
            "agent",
            f"-node={agent.name}",
            f"-bind={LOOPBACK}:{agent.bind_port}",
            f"-rpc-addr={LOOPBACK}:{agent.rpc.port}",
            "-log-level=warn",
        ]
        if join is not None:
            argv.append(f"-join={LOOPBACK}:{join}")
        log = self.home / f"{agent.name}.log"
        agent.proc = self.stack.enter_context(spawned(agent.name, argv, agent.rpc.port, log))

    def start_seed(self) -> None:
        seed = next(iter(self.agents.values()))
        self._spawn(seed, None)
        assert seed.proc is not None
        deadline = time.monotonic() + self.timeout
        while seed.rpc.members() is None:
            if seed.proc.popen.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"serf seed agent did not come up:\n{seed.proc.log_tail()}")
            time.sleep(0.01)

    def start_joiners(self) -> None:
        seed_port = next(iter(self.agents.values())).bind_port
        for agent in list(self.agents.values())[1:]:
            self._spawn(agent, seed_port)

    def view(self, name: str) -> dict[str, str] | None:
        agent = self.agents[name]
        if agent.proc is not None and agent.proc.popen.poll() is not None:
            raise BenchError(f"serf agent {name} exited:\n{agent.proc.log_tail()}")
        return agent.rpc.members()

    def kill(self, name: str) -> None:
        agent = self.agents[name]
        assert agent.proc is not None
        agent.rpc.close()
        agent.proc.popen.kill()  # SIGKILL, by pid, a process this run started
        agent.proc.popen.wait(timeout=10)

    def cli_members(self, name: str) -> dict[str, str]:
        """`serf members` as a user would run it (to cross-check the RPC client once)."""
        agent = self.agents[name]
        done = subprocess.run(
            ["serf", "members", f"-rpc-addr={LOOPBACK}:{agent.rpc.port}", "-format=json"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"serf members failed: {done.stderr.strip()[:200]}")
        return {m["name"]: m["status"] for m in json.loads(done.stdout)["members"]}


# ---------------------------------------------------------------- KVS


@dataclass
class _KvsNode:
    name: str
    port: int
    gossip_port: int
    sync_port: int
    conn: http.client.HTTPConnection | None = None
    proc: Proc | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def members(self) -> dict[str, str] | None:
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=RPC_TIMEOUT)
            self.conn.request("GET", "/members/")
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                return None
            return {m["node_id"]: m["state"] for m in json.loads(data)}
        except (OSError, ValueError, http.client.HTTPException):
            self.close()
            return None


class KvsCluster:
    """N real KVS nodes (`python -m kvs CONFIG`), node 1 the seed of every other."""

    system = "kvs"
    down_states = frozenset({"dead"})

    def __init__(
        self,
        n: int,
        home: Path,
        stack: contextlib.ExitStack,
        timeout: float,
        kvs_cmd: Sequence[str],
        cwd: Path,
    ) -> None:
        self.home = home
        self.stack = stack
        self.timeout = timeout
        self.kvs_cmd = list(kvs_cmd)
        self.cwd = cwd
        self.secret = secrets.token_hex(24)
        picked = free_dual_ports(3 * n)
        http_ports, gossip_ports, sync_ports = picked[:n], picked[n : 2 * n], picked[2 * n :]
        self.nodes = {
            f"k{i + 1}": _KvsNode(f"k{i + 1}", http_ports[i], gossip_ports[i], sync_ports[i])
            for i in range(n)
        }
        for node in self.nodes.values():
            stack.callback(node.close)
        home.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return list(self.nodes)

    def _spawn(self, node: _KvsNode, seed_port: int | None) -> Proc:
        """A node with the shipped default membership settings (none set in its config)."""
        node_home = self.home / node.name
        node_home.mkdir()
        seeds = [f"{LOOPBACK}:{seed_port}"] if seed_port is not None else []
        lines = [
            f"node_id: {node.name}",
            f"bind_address: {LOOPBACK}",
            f"port: {node.port}",
            f"gossip_port: {node.gossip_port}",
            f"sync_port: {node.sync_port}",
            f"data_dir: {json.dumps(str(node_home / 'data'))}",
            f"seed_nodes: {json.dumps(seeds)}",
            f'cluster_secret: "{self.secret}"',
            "auth_enabled: false",
            "log_level: warning",
        ]
        config = node_home / "config.yaml"
        config.write_text("\n".join(lines) + "\n")
        argv = [*self.kvs_cmd, str(config)]
        log = node_home / "node.log"
        node.proc = self.stack.enter_context(
            spawned(f"kvs {node.name}", argv, node.port, log, cwd=self.cwd)
        )
        return node.proc

    def start_seed(self) -> None:
        seed = next(iter(self.nodes.values()))
        wait_ready(self._spawn(seed, None), "/health", timeout=self.timeout)

    def start_joiners(self) -> None:
        seed_port = next(iter(self.nodes.values())).port
        for node in list(self.nodes.values())[1:]:
            self._spawn(node, seed_port)

    def view(self, name: str) -> dict[str, str] | None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.popen.poll() is not None:
            raise BenchError(f"kvs node {name} exited:\n{node.proc.log_tail()}")
        return node.members()

    def kill(self, name: str) -> None:
        node = self.nodes[name]
        assert node.proc is not None
        node.close()
        node.proc.popen.kill()  # SIGKILL, by pid, a process this run started
        node.proc.popen.wait(timeout=10)


# ---------------------------------------------------------------- the procedure


def _sweep(
    cluster: Cluster, names: list[str], pool: ThreadPoolExecutor
) -> dict[str, dict[str, str] | None]:
    return dict(zip(names, pool.map(cluster.view, names), strict=True))


def measure(
    make: Callable[[contextlib.ExitStack], Cluster],
    n: int,
    timeout: float,
    log: Callable[[str], None],
) -> RealRun:
    """Join convergence and failure detection of one fresh cluster; stops it on the way out."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=n) as pool:
        cluster = make(stack)
        run = RealRun(cluster.system, n)
        names = cluster.names()
        seed, victim = names[0], names[-1]
        run.victim = victim
        sweep_time = 0.0
        killed: set[str] = set()

        def sweep(who: list[str]) -> dict[str, dict[str, str] | None]:
            nonlocal sweep_time
            began = time.perf_counter()
            views = _sweep(cluster, who, pool)
            sweep_time += time.perf_counter() - began
            run.sweeps += 1
            for observer, view in views.items():
                for subject, state in (view or {}).items():
                    note = f"{observer}: {subject} {state}"
                    if (
                        state in cluster.down_states
                        and subject not in killed
                        and note not in run.false_positives
                    ):
                        run.false_positives.append(note)
            return views

        try:
            cluster.start_seed()
            spawned_at = time.perf_counter()
            cluster.start_joiners()
            first_answer: dict[str, float] = {}
            deadline = spawned_at + timeout
            while True:
                views = sweep(names)
                now = time.perf_counter()
                for name, view in views.items():
                    if view is not None and name != seed:
                        first_answer.setdefault(name, now - spawned_at)
                if all(
                    view is not None
                    and all(view.get(other) == "alive" for other in names)
                    and len(view) == n
                    for view in views.values()
                ):
                    run.join_s = now - spawned_at
                    run.join_after_ready_s = run.join_s - max(first_answer.values(), default=0.0)
                    break
                if now > deadline:
                    raise BenchError(f"{cluster.system}: not every node saw all {n} alive")
                time.sleep(POLL_INTERVAL)
            run.startup_s = sorted(first_answer.values())
            log(
                f"  {cluster.system}: all {n} see all alive {run.join_s:.2f} s after spawn"
                f" ({run.join_after_ready_s:.2f} s after the last node answered)"
            )
            if isinstance(cluster, SerfCluster):  # the RPC client and `serf members` agree
                cli = cluster.cli_members(seed)
                if sorted(cli) != sorted(names) or set(cli.values()) != {"alive"}:
                    raise BenchError(f"`serf members` disagrees with the RPC view: {cli}")

            survivors = [name for name in names if name != victim]
            killed.add(victim)
            killed_at = time.perf_counter()
            cluster.kill(victim)
            deadline = killed_at + timeout
            while True:
                views = sweep(survivors)
                now = time.perf_counter()
                down = [
                    name
                    for name, view in views.items()
                    if view is not None and view.get(victim) in cluster.down_states
                ]
                if down and run.first_detect_s is None:
                    run.first_detect_s = now - killed_at
                if len(down) == len(survivors):
                    run.detect_s = now - killed_at
                    break
                if now > deadline:
                    raise BenchError(
                        f"{cluster.system}: {victim} not reported failed by all within"
                        f" {timeout:.0f} s ({len(down)}/{len(survivors)} did)"
                    )
                time.sleep(POLL_INTERVAL)
            log(
                f"  {cluster.system}: {victim} killed; first report {run.first_detect_s:.2f} s,"
                f" all {len(survivors)} survivors {run.detect_s:.2f} s"
            )
        except BenchError as exc:
            run.error = " ".join(str(exc).split())[:300]
            log(f"  {cluster.system}: FAILED: {exc}")
        run.sweep_s = sweep_time / max(1, run.sweeps)
        return run


def have_serf() -> bool:
    return shutil.which("serf") is not None


def serf_version() -> str:
    try:
        done = subprocess.run(
            ["serf", "version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "?"
    return (done.stdout.strip().splitlines() or ["?"])[0]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure_both(
    n: int,
    repeat: int,
    tmp: Path,
    timeout: float,
    kvs_cmd: Sequence[str],
    cwd: Path,
    skip_serf: bool,
    log: Callable[[str], None],
) -> list[RealRun]:
    """serf then KVS, `repeat` rounds, interleaved so machine drift hits both alike."""
    runs: list[RealRun] = []
    for rep in range(repeat):
        log(f"real processes, round {rep + 1}/{repeat} (N={n}):")
        if not skip_serf:

            def make_serf(stack: contextlib.ExitStack, rep: int = rep) -> Cluster:
                return SerfCluster(n, tmp / f"serf-{rep}", stack, timeout)

            runs.append(_guarded("serf", make_serf, n, timeout, log))

        def make_kvs(stack: contextlib.ExitStack, rep: int = rep) -> Cluster:
            return KvsCluster(n, tmp / f"kvs-{rep}", stack, timeout, kvs_cmd, cwd)

        runs.append(_guarded("kvs", make_kvs, n, timeout, log))
    return runs


def _guarded(
    system: str,
    make: Callable[[contextlib.ExitStack], Cluster],
    n: int,
    timeout: float,
    log: Callable[[str], None],
) -> RealRun:
    """`measure`, with a cluster that could not even be set up reported as a failed run."""
    try:
        return measure(make, n, timeout, log)
    except (BenchError, OSError) as exc:
        log(f"  {system}: FAILED: {exc}")
        return RealRun(system, n, error=" ".join(str(exc).split())[:300])
