"""Helpers for tests that run the real `kvs` process: configs, start, poll, kill (on the
shared process helpers of kvs.testing.procs, with the test's assertions).

Every process started here is killed when its `running()` block ends, whatever happened,
so a failing test never leaves a node behind holding a port or an LMDB lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from kvs.config import render
from kvs.testing.ports import free_ports
from kvs.testing.procs import (
    KVS_COMMAND,
    NodeProcess,
    ProcessError,
    kill_process,
    set_key,
)

READY_TIMEOUT = 30.0  # generous: a loaded 2-core CI machine can be slow to import the stack
EXIT_TIMEOUT = 30.0

KVS = list(KVS_COMMAND)  # python -m kvs
KVS_SCRIPT = Path(sys.executable).with_name("kvs")  # the console script pip installed


def run_kvs(
    *args: str,
    cwd: Path | str | None = None,
    timeout: float = EXIT_TIMEOUT,
    console_script: bool = False,
    env: dict[str, str | None] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a `kvs` command to completion (init, or a node expected to fail at start-up).

    `python -m kvs` by default; `console_script=True` runs the installed `kvs` script.
    `env` changes the environment (a None value removes that variable); `stdin` is fed to
    the command (otherwise it reads an empty, closed standard input)."""
    command = [str(KVS_SCRIPT)] if console_script else KVS
    environment = None
    if env is not None:
        environment = {**os.environ}
        for name, value in env.items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        env=environment,
    )


def set_keys(path: Path, **values: object) -> None:
    """Rewrite `key: value` lines of a generated config in place, keeping its comments.

    Keys not in the file are appended. Values are written as YAML scalars."""
    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        text = set_key(text, key, render(value))
    path.write_text(text, encoding="utf-8")


def config_value(path: Path, key: str) -> str:
    """The raw value of `key` in a config file (quotes stripped), for secrets and node ids."""
    match = re.search(rf"^{re.escape(key)}:\s*(\"[^\"]*\"|[^\s#]+)", path.read_text(), re.M)
    assert match, f"{key} not in {path}"
    return match.group(1).strip('"')


def init_config(directory: Path, name: str = "config.yaml", **overrides: object) -> Path:
    """`kvs init PATH --port P` on free ports, then gossip/sync moved to free ports too.

    The generated file puts gossip and sync on P+1 and P+2, which may be taken; the node
    binds them once clustering lands, so they are pointed at ports known to be free."""
    directory.mkdir(parents=True, exist_ok=True)
    port, gossip_port, sync_port = free_ports(3)
    path = directory / name
    result = run_kvs("init", str(path), "--port", str(port), cwd=directory)
    assert result.returncode == 0, result.stderr
    # Tests not about auth run without it; the auth tests pass auth_enabled=True.
    overrides.setdefault("auth_enabled", False)
    set_keys(path, gossip_port=gossip_port, sync_port=sync_port, **overrides)
    return path


class KvsProcess:
    """One real `kvs` node process (a `kvs.testing.procs.NodeProcess`, started at once),
    with the test's view of it: a wait that fails is an AssertionError with its stderr;
    stdout and stderr go to files (a pipe could fill up)."""

    def __init__(self, args: list[str], cwd: Path, port: int, log_dir: Path) -> None:
        self.args = args
        self.cwd = cwd
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.monotonic_ns()
        self.stdout_path = log_dir / f"kvs-{port}-{stamp}.out"
        self.stderr_path = log_dir / f"kvs-{port}-{stamp}.err"
        self.process = NodeProcess(
            args,
            cwd=cwd,
            port=port,
            stdout_path=self.stdout_path,
            stderr_path=self.stderr_path,
            append=False,
        )
        self.process.start()
        self.started_at = self.process.started_at
        assert self.process.popen is not None
        self.popen = self.process.popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.process.stderr_text()

    def health(self, timeout: float = 2.0) -> httpx.Response | None:
        """GET /health, or None while nothing answers on the port yet."""
        try:
            return httpx.get(f"{self.base_url}/health", timeout=timeout)
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll /health until 200; return seconds since start. Fails if the process exits."""
        try:
            return self.process.wait_ready(timeout)
        except ProcessError as exc:
            raise AssertionError(f"{exc}\n(all of stderr:)\n{self.stderr()}") from None

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"kvs still running {timeout}s after being asked to stop:\n{self.stderr()}"
            ) from None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = EXIT_TIMEOUT) -> int:
        """Send `signum` and return the exit status."""
        self.send_signal(signum)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL and reap (kill -9: no chance to flush or close anything)."""
        kill_process(self.popen, timeout=EXIT_TIMEOUT)


@contextlib.contextmanager
def running(
    config: Path | None,
    *,
    cwd: Path | None = None,
    port: int | None = None,
    wait: bool = True,
    log_dir: Path | None = None,
) -> Iterator[KvsProcess]:
    """Start `kvs CONFIG` (or bare `kvs` when config is None), ready; kill it on the way out.

    stdout/stderr go to files in `log_dir` (default: `logs` in the working directory)."""
    if cwd is None:
        assert config is not None
        cwd = config.parent
    if port is None:
        assert config is not None
        port = int(config_value(config, "port"))
    args = [] if config is None else [str(config)]
    proc = KvsProcess(args, cwd=cwd, port=port, log_dir=log_dir or cwd / "logs")
    try:
        if wait:
            proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def assert_clean_stderr(text: str, secret: str | None = None) -> None:
    """No traceback, and never the cluster secret, anywhere in a node's stderr."""
    assert "Traceback" not in text, text
    assert "Exception Group" not in text, text
    if secret:
        assert secret not in text, "the cluster secret appeared on stderr"
