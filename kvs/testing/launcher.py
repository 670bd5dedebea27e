"""The local cluster launcher's library: N real KVS node processes on loopback, in one
directory (`python scripts/cluster.py` is its command line; its docstring shows the commands).

`Cluster(Path(dir)).start(3, base_port=0)` writes, under the directory: `nodeN.yaml` (a `kvs
init` config with its own HTTP, gossip and sync ports, the cluster's one shared
cluster_secret, node 1's HTTP address as seed for every other node), `data/nodeN/`, and
`cluster.json` (the node list, no secret). Each node runs as `python -m kvs DIR/nodeN.yaml`
in its own session, so it outlives the launcher; its output goes to `DIR/nodeN.log` and its
pid to `DIR/nodeN.pid`. `start` returns once every node sees every other as alive. Starting
a directory that already holds a stopped cluster starts it again with its configs and data;
starting one that is running is refused. `base_port=0` lets the kernel pick free ports.

Node 1 has no seed: if it is restarted alone, the others find it again through their
periodic reconnection to dead members (seconds), and it finds them the same way.

Used by the integration tests, the replication benchmark and scripts/cluster.py. Methods
raise LauncherError (UsageError for what the command line asked wrongly).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import kvs
from kvs.config import default_config_text
from kvs.config import load as load_config
from kvs.testing.ports import free_ports
from kvs.testing.procs import set_key, start_kvs, tail, write_private

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DOWN = 3

DEFAULT_DIR = "cluster"
DEFAULT_BASE_PORT = 9000
DEFAULT_TIMEOUT = 60.0  # generous: a loaded 2-core machine takes seconds to import the stack
STOP_TIMEOUT = 30.0  # a graceful stop takes well under a second; then SIGKILL
POLL_INTERVAL = 0.1
HOST = "127.0.0.1"
MANIFEST = "cluster.json"
LOCK = ".lock"
KVS_ROOT = Path(kvs.__file__).resolve().parent.parent  # the kvs the nodes must run


class LauncherError(Exception):
    """A step that cannot go on; the message says which and why (exit status 1)."""


class UsageError(LauncherError):
    """The command line asks for something impossible (exit status 2)."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the cluster: its name (= node_id), ports and files under the directory."""

    name: str
    http_port: int
    gossip_port: int
    sync_port: int
    directory: Path
    host: str = HOST

    @property
    def config(self) -> Path:
        return self.directory / f"{self.name}.yaml"

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data" / self.name

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        return f"http://{self.http_address}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "http_port": self.http_port,
            "gossip_port": self.gossip_port,
            "sync_port": self.sync_port,
        }


@dataclass
class NodeStatus:
    name: str
    url: str
    pid: int | None  # None: not running
    health: int | None  # /health status code; None: no answer
    members_alive: int | None

    @property
    def up(self) -> bool:
        return self.pid is not None and self.health == 200


# --- processes ---------------------------------------------------------------------------------


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (Z: zombie), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]  # the command name may contain spaces


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")


class Cluster:
    """The cluster in one directory. Methods raise LauncherError; `out` gets progress lines."""

    def __init__(
        self,
        directory: Path,
        *,
        out: Callable[[str], None] = print,
        env: dict[str, str] | None = None,
        auth: bool = False,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory.resolve()
        # New clusters only (an existing directory keeps its configs). With auth, node 1
        # creates the root token on its first start: data/node1/root.token. `settings`:
        # more config keys for every node, as YAML text (`http_workers: "2"`).
        self.auth = auth
        self.settings = dict(settings or {})
        self.out = out
        self.env = dict(env or {})  # extra environment for the nodes this object starts
        # Processes this object started: polled (and so reaped) instead of probed by pid, so a
        # killed child of a long-lived caller (a test) is not mistaken for a running zombie.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # --- the node list -------------------------------------------------------------------------

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self.manifest.exists()

    def nodes(self) -> list[NodeSpec]:
        try:
            data = json.loads(self.manifest.read_text(encoding="utf-8"))
            return [
                NodeSpec(
                    name=str(n["name"]),
                    http_port=int(n["http_port"]),
                    gossip_port=int(n["gossip_port"]),
                    sync_port=int(n["sync_port"]),
                    host=str(n.get("host", HOST)),
                    directory=self.directory,
                )
                for n in data["nodes"]
            ]
        except FileNotFoundError:
            raise LauncherError(
                f"no cluster in {self.directory} (start one with: cluster.py start -n 3)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LauncherError(
                f"{self.manifest} is damaged ({exc}); remove the directory"
            ) from None

    def node(self, which: str) -> NodeSpec:
        """A node by name (`node2`) or number (`2`)."""
        name = f"node{which}" if which.isdigit() else which
        for spec in self.nodes():
            if spec.name == name:
                return spec
        known = ", ".join(n.name for n in self.nodes())
        raise UsageError(f"no node {which!r} in {self.directory} (nodes: {known})")

    def plan(self, count: int, base_port: int) -> list[NodeSpec]:
        """The nodes of a new cluster: names and ports (nothing written yet)."""
        if count < 1:
            raise UsageError("-n must be at least 1")
        if base_port == 0:
            ports = free_ports(3 * count)
        else:
            ports = list(range(base_port, base_port + 3 * count))
        if ports[-1] > 65535:
            raise UsageError(f"--base-port {base_port} leaves no room for {count} nodes")
        return [
            NodeSpec(f"node{i + 1}", *ports[3 * i : 3 * i + 3], directory=self.directory)
            for i in range(count)
        ]

    def create(self, specs: Sequence[NodeSpec]) -> None:
        """Write the configs and the manifest for new nodes sharing one fresh secret."""
        self.directory.mkdir(parents=True, exist_ok=True)
        secret = _new_secret()
        seed = specs[0].http_address
        for spec in specs:
            text = default_config_text(
                node_id=spec.name, port=spec.http_port, cluster_secret=secret
            )
            text = set_key(text, "gossip_port", str(spec.gossip_port))
            text = set_key(text, "sync_port", str(spec.sync_port))
            text = set_key(text, "data_dir", f"./data/{spec.name}")
            seeds = "[]" if spec is specs[0] else f'["{seed}"]'
            text = set_key(text, "seed_nodes", seeds)
            text = set_key(text, "auth_enabled", "true" if self.auth else "false")
            for key, value in self.settings.items():
                text = set_key(text, key, value)
            write_private(spec.config, text)
            load_config(spec.config)  # a config the node would refuse is our bug: fail here
        write_private(
            self.manifest,
            json.dumps({"version": 1, "nodes": [s.to_json() for s in specs]}, indent=2) + "\n",
        )

    # --- process state -------------------------------------------------------------------------

    def pid(self, spec: NodeSpec) -> int | None:
        """The pid of the running node, or None; a stale pid file is removed (and said so)."""
        for pid, child in list(self._children.items()):  # reap children killed meanwhile
            if child.poll() is not None:
                del self._children[pid]
        try:
            text = spec.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        pid = int(text) if text.isdigit() else 0
        if pid > 0 and self._is_ours_and_running(pid, spec):
            return pid
        self.out(f"{spec.name}: removing stale pid file ({text or 'empty'})")
        with contextlib.suppress(FileNotFoundError):
            spec.pid_file.unlink()
        return None

    def _is_ours_and_running(self, pid: int, spec: NodeSpec) -> bool:
        child = self._children.get(pid)
        if child is not None:
            return child.poll() is None
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)  # our child from an earlier call: reap it
            if reaped == pid:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False  # someone else's process took the pid: ours is gone
        if _proc_state(pid) in ("Z", "X"):
            return False
        cmdline = _proc_cmdline(pid)
        return cmdline is None or str(spec.config) in cmdline  # not a reused pid

    def running(self) -> dict[str, int]:
        return {spec.name: pid for spec in self.nodes() if (pid := self.pid(spec)) is not None}

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One launcher at a time changes a directory (two `start`s would race for ports)."""
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LauncherError(
                    f"another cluster.py is working on {self.directory}; try again"
                ) from None
            yield

    # --- commands ------------------------------------------------------------------------------

    def start(
        self,
        count: int | None = None,
        *,
        base_port: int = DEFAULT_BASE_PORT,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[NodeSpec]:
        """Create (or reuse) the cluster, start every node, wait until all see all alive."""
        with self.locked():
            if self.exists():
                specs = self.nodes()
                if count is not None and count != len(specs):
                    raise UsageError(
                        f"{self.directory} holds a cluster of {len(specs)} nodes, not {count}; "
                        "use another --dir, or remove this one"
                    )
                running = self.running()
                if running:
                    shown = ", ".join(f"{k} (pid {v})" for k, v in running.items())
                    raise LauncherError(
                        f"a cluster is already running in {self.directory}: {shown}; "
                        "use `stop`, `status` or `restart NODE`"
                    )
                self.out(
                    f"starting the existing cluster in {self.directory} (configs and data kept)"
                )
                _check_ports_free(specs)
            else:
                specs = self.plan(3 if count is None else count, base_port)
                _check_ports_free(specs)  # before writing: a refused start writes no config
                self.create(specs)
            started = time.monotonic()
            deadline = started + timeout
            try:
                # The seed first, so the others' first join attempt finds it.
                self._spawn(specs[0])
                self._wait_healthy(specs[0], deadline)
                for spec in specs[1:]:
                    self._spawn(spec)
                for spec in specs[1:]:
                    self._wait_healthy(spec, deadline)
                self._wait_converged(specs, deadline)
            except BaseException:
                self.out("start failed: stopping the nodes it started")
                self._stop(specs, STOP_TIMEOUT)
                raise
            elapsed = time.monotonic() - started
        self.out(
            f"cluster of {len(specs)} nodes in {self.directory}: all alive after {elapsed:.1f} s"
        )
        for spec in specs:
            self.out(f"  {spec.name:8} {spec.url:24} pid {self.pid(spec)}  log {spec.log}")
        self.out(f"console: {specs[0].url}/ui/ (every node serves one)")
        return specs

    def stop(self, *which: str, timeout: float = STOP_TIMEOUT) -> dict[str, str]:
        """SIGTERM the named nodes, or every node (each announces its leave), and wait for
        them to exit; SIGKILL any still running after `timeout`."""
        with self.locked():
            specs = [self.node(w) for w in which] if which else self.nodes()
            results = self._stop(specs, timeout)
        if not results:
            self.out(f"not running: {', '.join(s.name for s in specs) or 'no nodes'}")
        return results

    def kill(self, which: str) -> int | None:
        """SIGKILL one node (no leave, no clean close): returns its pid, None if not running."""
        with self.locked():
            spec = self.node(which)
            pid = self.pid(spec)
            if pid is None:
                self.out(f"{spec.name} is not running")
                return None
            os.kill(pid, signal.SIGKILL)
            if not self._wait_gone(pid, spec, time.monotonic() + STOP_TIMEOUT):
                raise LauncherError(f"{spec.name} (pid {pid}) survived SIGKILL")
            spec.pid_file.unlink(missing_ok=True)
        self.out(f"{spec.name} killed (SIGKILL, pid {pid})")
        return pid

    def restart(
        self, which: str, *, timeout: float = DEFAULT_TIMEOUT, wait_cluster: bool = True
    ) -> int:
        """Stop the node if it runs, start it again on its config and data, wait until it is
        healthy and (unless `wait_cluster` is false) until all running nodes see each other."""
        with self.locked():
            spec = self.node(which)
            if self.pid(spec) is not None:
                self._stop([spec], STOP_TIMEOUT)
            _check_ports_free([spec])
            deadline = time.monotonic() + timeout
            pid = self._spawn(spec)
            self._wait_healthy(spec, deadline)
            if wait_cluster:
                specs = self.nodes()
                running = self.running()
                self._wait_converged([s for s in specs if s.name in running], deadline)
        self.out(f"{spec.name} restarted: {spec.url} pid {pid}")
        return pid

    def status(self) -> list[NodeStatus]:
        rows = []
        with _client() as client:
            for spec in self.nodes():
                pid = self.pid(spec)
                health = alive = None
                if pid is not None:
                    try:
                        response = client.get(f"{spec.url}/health")
                        health = response.status_code
                        if response.status_code == 200:
                            alive = response.json().get("members_alive")
                    except (httpx.HTTPError, ValueError):
                        pass
                rows.append(NodeStatus(spec.name, spec.url, pid, health, alive))
        return rows

    # --- internals -----------------------------------------------------------------------------

    def _spawn(self, spec: NodeSpec) -> int:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(KVS_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(spec.log, "ab") as log:
            log.write(f"--- cluster.py: starting {spec.name} at {time.ctime()} ---\n".encode())
        child = start_kvs(
            [str(spec.config)],
            cwd=self.directory,
            stdout=spec.log,
            append=True,
            new_session=True,  # its own session: it outlives us and our Ctrl-C
            env=env,
        )
        self._children[child.pid] = child
        tmp = spec.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(f"{child.pid}\n")
        tmp.replace(spec.pid_file)
        return child.pid

    def _wait_healthy(self, spec: NodeSpec, deadline: float) -> None:
        with _client() as client:
            while True:
                if self.pid(spec) is None:
                    raise LauncherError(
                        f"{spec.name} exited during start-up; the end of {spec.log}:\n"
                        + _tail(spec.log)
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{spec.url}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise LauncherError(
                        f"{spec.name} not healthy in time; the end of {spec.log}:\n"
                        + _tail(spec.log)
                    )
                time.sleep(POLL_INTERVAL)

    def root_token(self) -> str | None:
        """Node 1's root token (auth clusters; created on its first start), or None."""
        path = self.directory / "data" / "node1" / "root.token"
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def _wait_converged(self, specs: Sequence[NodeSpec], deadline: float) -> None:
        """Until every node in `specs` lists every other as alive."""
        want = {s.name for s in specs}
        missing: dict[str, set[str]] = {}
        token = self.root_token()
        with _client(token) as client:
            while True:
                missing = {}
                for spec in specs:
                    if self.pid(spec) is None:
                        raise LauncherError(
                            f"{spec.name} exited; the end of {spec.log}:\n" + _tail(spec.log)
                        )
                    alive = alive_members(client, spec.url)
                    if alive is None or not want <= alive:
                        missing[spec.name] = want - (alive or set())
                if not missing:
                    return
                if time.monotonic() > deadline:
                    shown = "; ".join(
                        f"{k} does not see {', '.join(sorted(v)) or '(no answer)'}"
                        for k, v in sorted(missing.items())
                    )
                    raise LauncherError(f"the nodes did not all see each other in time: {shown}")
                time.sleep(POLL_INTERVAL)

    def _wait_gone(self, pid: int, spec: NodeSpec, deadline: float) -> bool:
        while self._is_ours_and_running(pid, spec):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        self._children.pop(pid, None)
        return True

    def _stop(self, specs: Sequence[NodeSpec], timeout: float) -> dict[str, str]:
        pids = {spec.name: (spec, pid) for spec in specs if (pid := self.pid(spec)) is not None}
        started = time.monotonic()
        for _spec, pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        results: dict[str, str] = {}
        for name, (spec, pid) in pids.items():
            if self._wait_gone(pid, spec, started + timeout):
                results[name] = f"stopped (pid {pid}, {time.monotonic() - started:.1f} s)"
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, spec, time.monotonic() + STOP_TIMEOUT)
                results[name] = f"killed: still running {timeout:.0f} s after SIGTERM (pid {pid})"
            spec.pid_file.unlink(missing_ok=True)
            self.out(f"{name} {results[name]}")
        return results


# --- helpers -----------------------------------------------------------------------------------


def _client(token: str | None = None) -> httpx.Client:
    # trust_env=False: a proxy from the environment must never see loopback traffic.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(timeout=2.0, trust_env=False, headers=headers)


def alive_members(client: httpx.Client, url: str) -> set[str] | None:
    """The node ids `url` reports alive in GET /members/, or None when it does not answer."""
    try:
        response = client.get(f"{url}/members/")
        if response.status_code != 200:
            return None
        return {m["node_id"] for m in response.json() if m.get("state") == "alive"}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _new_secret() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def _port_free(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:  # as the node binds: TIME_WAIT leftovers do not count
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _check_ports_free(specs: Sequence[NodeSpec]) -> None:
    """Refuse before starting anything when some node's port is taken."""
    busy = []
    for spec in specs:
        checks = [
            ("port", spec.http_port, socket.SOCK_STREAM),
            ("gossip_port", spec.gossip_port, socket.SOCK_STREAM),
            ("gossip_port (UDP)", spec.gossip_port, socket.SOCK_DGRAM),
            ("sync_port", spec.sync_port, socket.SOCK_STREAM),
        ]
        for key, port, kind in checks:
            if not _port_free(spec.host, port, kind):
                busy.append(f"{spec.name} {key} {spec.host}:{port}")
    if busy:
        raise LauncherError(
            "ports already in use (another program, or nodes started elsewhere): "
            + ", ".join(busy)
            + "; pick another --base-port (0: any free ports)"
        )


def _tail(path: Path, lines: int = 20) -> str:
    text = tail(path, lines)
    if not text and not path.is_file():
        return "  (no log)"
    return "\n".join("  " + line for line in text.splitlines())
