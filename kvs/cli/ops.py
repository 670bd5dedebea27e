"""Operations subcommands of `kvs`: backups, restore, and running a node as a daemon.

    kvs backup now [--url URL] [--token T]    take a backup on a running node, print its path
    kvs backup status [--url URL] [--token T] the node's backup status (JSON)
    kvs restore FILE --data-dir DIR [--force] restore a backup into a stopped node's data dir
    kvs start CONFIG | stop CONFIG | restart CONFIG
    kvs status [CONFIG]                       exit 0 when running, 3 when not (as init scripts)

PID files and logs live under ~/.kvs/ ($KVS_HOME overrides); see kvs/daemon.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from kvs.cli import local
from kvs.cli.client import UsageError, add_client_args, client_verify, positive_seconds
from kvs.client.env import DEFAULT_URL, TOKEN_ENV, TOKEN_HINT, URL_ENV

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


SUBCOMMANDS = {"backup", "restore", "start", "stop", "restart", "status", "reload"}


def _say(message: str) -> None:
    print(f"kvs: {message}", file=sys.stderr)


def _error(message: str) -> int:
    _say(message)
    return EXIT_ERROR


def _usage(message: str) -> int:
    _say(message)
    return EXIT_USAGE


# ---------------------------------------------------------------- backup (client side)


def _base_url(given: str) -> str | None:
    from kvs.client import resolve_url  # the client library's URL rules (kvs/client/)

    try:
        return resolve_url(given)
    except ValueError:
        return None


def _request(args: argparse.Namespace, method: str, path: str) -> tuple[int, Any]:
    """One request to the node; (0, message) when it cannot be reached."""
    import httpx

    given = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    base = _base_url(given)
    if base is None:
        raise _UsageError(f"--url: {given!r} is not an http:// URL (for example {DEFAULT_URL})")
    token = args.token or os.environ.get(TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        verify = client_verify(args)
    except UsageError as exc:
        raise _UsageError(str(exc)) from None
    try:
        response = httpx.request(
            method, base + path, headers=headers, timeout=args.timeout, verify=verify
        )
    except httpx.HTTPError as exc:
        from kvs.client.operations import connection_failed

        return 0, connection_failed(base, exc).message
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        message = body.get("error") if isinstance(body, dict) else None
        message = message or response.text.strip()[:200]
        if response.status_code == 401:
            message = f"401 {message} ({TOKEN_HINT})"
        return response.status_code, message
    return 200, body


class _UsageError(Exception):
    pass


def cmd_backup_now(args: argparse.Namespace) -> int:
    try:
        status, body = _request(args, "POST", "/api/backup/run")
    except _UsageError as exc:
        return _usage(str(exc))
    if status != 200 or not isinstance(body, dict) or "path" not in body:
        return _error(f"backup failed: {body}" if status else str(body))
    print(body["path"])
    if args.verbose:
        _say(f"{body['size']} bytes (LMDB copy {body['raw_size']} bytes) in {body['duration_s']} s")
    return EXIT_OK


def cmd_backup_status(args: argparse.Namespace) -> int:
    try:
        status, body = _request(args, "GET", "/api/backup/status")
    except _UsageError as exc:
        return _usage(str(exc))
    if status != 200:
        return _error(f"GET /api/backup/status: {body}" if status else str(body))
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(format_backup_status(body))
    return EXIT_OK


def format_backup_status(body: Any) -> str:
    """GET /api/backup/status for people: one `name  value` line per field, times in UTC."""
    if not isinstance(body, dict):
        return str(body)
    width = max((len(k) for k in body), default=0)
    lines = []
    for name, value in body.items():
        if isinstance(value, list):
            value = f"{len(value)}: " + ", ".join(
                str(v.get("path", v) if isinstance(v, dict) else v) for v in value
            )
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif value is None:
            value = "-"
        lines.append(f"{name.ljust(width)}  {value}")
    return "\n".join(lines)


# ---------------------------------------------------------------- restore


class _Progress:
    """A one-line progress bar on a terminal; silent when stderr is a file or a pipe."""

    WIDTH = 30

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        percent = min(100, done * 100 // total)
        if percent == self.shown:
            return
        self.shown = percent
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        sys.stderr.write(f"\rrestoring [{bar}] {percent:3d}%")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_restore(args: argparse.Namespace) -> int:
    from kvs.backup import BackupError, kept_on_restore, restore

    progress = _Progress()
    kept = kept_on_restore(Path(args.data_dir).absolute())
    try:
        manifest = restore(
            Path(args.file), Path(args.data_dir), force=args.force, progress=progress
        )
    except BackupError as exc:
        progress.finish()
        return _error(f"restore refused: {exc}; {args.data_dir} was left untouched")
    except OSError as exc:
        progress.finish()
        return _error(f"restore failed: {exc}; {args.data_dir} was left untouched")
    progress.finish()
    taken = dt.datetime.fromtimestamp(manifest.created_ms / 1000, dt.UTC)
    print(
        f"restored the backup of node {manifest.node_id} taken at "
        f"{taken.isoformat(timespec='seconds')} into {Path(args.data_dir).absolute()}"
    )
    if kept:  # not in backups: the target's own, kept in place (docs/operations.md)
        print(f"kept the target's {' and '.join(kept)} (not in backups)")
    return EXIT_OK


# ---------------------------------------------------------------- process management


def _load_config(path: str) -> Any:
    from kvs import config as config_mod

    return config_mod.load(path)


def cmd_start(args: argparse.Namespace) -> int:
    from kvs import daemon
    from kvs.config import ConfigError

    try:
        config = _load_config(args.config)
    except ConfigError as exc:
        return _usage(str(exc))
    instance = daemon.instance_for(args.config)
    current = daemon.state(instance)
    if current.pid is not None:
        return _error(f"{instance.config} is already running (pid {current.pid})")
    if current.stale_pid is not None:
        _say(f"removed a stale PID file (pid {current.stale_pid} is gone)")
    try:
        local.trust(config)  # a certificate file that is not one: say so before starting
    except (OSError, ssl.SSLError) as exc:
        return _usage(f"{instance.config}: tls_cert_file/tls_ca_file: cannot be read: {exc}")
    pid = daemon.spawn(instance)
    url = local.base_url(config)
    _say(
        f"started pid {pid}; waiting up to {args.timeout:g} s for {url}/health to answer as"
        f" node {config.node_id} (log: {instance.log_file})"
    )
    try:
        daemon.wait_ready(instance, pid, lambda: local.answers(config), args.timeout)
    except daemon.StartFailed as exc:
        return _error(f"{instance.config}: {exc}")
    print(f"started {config.node_id} (pid {pid}) on {url}; log: {instance.log_file}")
    if config.auth_enabled:
        print(root_token_note(config.data_path / "root.token"))
    return EXIT_OK


def root_token_note(path: Path) -> str:
    """Where an auth node's root token is (the first start of a new cluster writes it)."""
    if path.exists():
        return f'root token: {path} (export KVS_TOKEN="$(cat {path})")'
    return (
        f"auth is on; no root token in {path} (only a new cluster's first node writes one):"
        " ask an admin for a token, or `kvs admin recover CONFIG` on a node's host"
    )


def sync_progress_text(progress: Any) -> str:
    """A syncing node's bootstrap progress from /health's `sync` object, for people."""
    if not isinstance(progress, dict):
        return "syncing"
    received = progress.get("keys_received", 0)
    expected = progress.get("keys_expected", 0)
    rate = progress.get("keys_per_s") or 0
    eta = progress.get("eta_s")
    left = f", about {eta:g} s left" if isinstance(eta, int | float) else ""
    return f"syncing: {received:,} of {expected:,} keys received ({rate:,.0f} keys/s{left})"


def cmd_stop(args: argparse.Namespace) -> int:
    from kvs import daemon

    instance = daemon.instance_for(args.config)
    current = daemon.state(instance)
    if current.pid is None:
        stale = (
            f" (removed a stale PID file: pid {current.stale_pid} is gone)"
            if current.stale_pid
            else ""
        )
        print(f"{instance.config} is not running{stale}")
        return EXIT_OK
    stopped = daemon.stop(instance, current.pid, args.timeout)
    if stopped.killed:
        _say(
            f"pid {stopped.pid} did not exit within {args.timeout:g} s of SIGTERM: killed it"
            " (SIGKILL); committed writes are safe, requests in flight were cut off"
        )
    else:
        print(f"stopped pid {stopped.pid} ({stopped.seconds:.1f} s)")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP to a background node: it re-reads its keyring (`cluster_secret`), nothing else.
    The file is checked first, so a typo is reported here, not only in the node's log."""
    import signal

    from kvs import daemon
    from kvs.config import ConfigError

    try:
        config = _load_config(args.config)
    except ConfigError as exc:
        return _usage(str(exc))
    instance = daemon.instance_for(args.config)
    current = daemon.state(instance)
    if current.pid is None:
        _say(f"{instance.config} is not running (a foreground node: kill -HUP its pid)")
        return EXIT_NOT_RUNNING
    os.kill(current.pid, signal.SIGHUP)
    count = len(config.cluster_secrets)
    print(f"sent SIGHUP to pid {current.pid}: it reloads its keyring ({count} secret(s))")
    return EXIT_OK


def cmd_restart(args: argparse.Namespace) -> int:
    from kvs.config import ConfigError

    try:
        _load_config(args.config)  # a broken config must not stop a running node
    except ConfigError as exc:
        return _usage(str(exc))
    code = cmd_stop(args)
    if code != EXIT_OK:
        return code
    return cmd_start(args)


def cmd_status(args: argparse.Namespace) -> int:
    from kvs import daemon

    instances = [daemon.instance_for(args.config)] if args.config else daemon.all_instances()
    if not instances:
        print(f"no node started with `kvs start` (PID files in {daemon.kvs_home() / 'run'})")
        return EXIT_NOT_RUNNING
    running = False
    for instance in instances:
        current = daemon.state(instance)
        if current.pid is not None:
            running = True
            print(
                f"{instance.config}: running (pid {current.pid}), {_answering(instance.config)};"
                f" log: {instance.log_file}"
            )
        elif current.stale_pid is not None:
            print(
                f"{instance.config}: not running (stale PID file for pid {current.stale_pid} removed)"
            )
        else:
            print(f"{instance.config}: not running")
    return EXIT_OK if running else EXIT_NOT_RUNNING


def _answering(config_path: Path) -> str:
    """`ready on URL`, or why the running node does not answer (its config is unreadable
    now, or /health does not answer in its own scheme)."""
    from kvs.config import ConfigError

    try:
        config = _load_config(str(config_path))
    except ConfigError:
        return "its config no longer loads"
    try:
        body = local.health(config, timeout=2.0)
    except (OSError, ssl.SSLError):
        body = None
    if body is None:
        return f"not answering on {local.base_url(config)}"
    if body.get("mode") == "syncing":
        return f"{sync_progress_text(body.get('sync'))} on {local.base_url(config)}"
    return f"ready on {local.base_url(config)}"


# ---------------------------------------------------------------- argument parsing


def register(sub: Any) -> None:
    """Add the operations subcommands to `kvs`'s subparsers."""
    backup = sub.add_parser("backup", help="take a backup on a running node, or show backup status")
    backup_sub = backup.add_subparsers(dest="backup_command", required=True)
    now = backup_sub.add_parser("now", help="take a backup now; prints the file's path")
    add_client_args(now, 3600.0)
    now.add_argument("-v", "--verbose", action="store_true", help="also print size and time")
    now.set_defaults(func=cmd_backup_now)
    status = backup_sub.add_parser("status", help="the node's backup status (--json: as JSON)")
    add_client_args(status, 10.0)
    status.add_argument("--json", action="store_true", help="print the node's JSON")
    status.set_defaults(func=cmd_backup_status)

    restore = sub.add_parser(
        "restore",
        help="restore a backup file into a stopped node's data dir",
        description="Restore a backup into DIR (created if missing). The file is verified"
        " first; on any error DIR is left as it was.",
    )
    restore.add_argument("file", help="a .kvsbak file made by a node's backup")
    restore.add_argument("--data-dir", required=True, help="the stopped node's data_dir")
    restore.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty DIR"
    )
    restore.set_defaults(func=cmd_restore)

    for name, func, helptext in (
        ("start", cmd_start, "start a node in the background and wait until it is ready"),
        ("stop", cmd_stop, "stop a background node (SIGTERM, then SIGKILL after --timeout)"),
        ("restart", cmd_restart, "stop, then start, a background node"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config", help="the node's config file")
        p.add_argument(
            "--timeout",
            type=positive_seconds,
            default=60.0,
            help="seconds to wait for readiness or a graceful exit (default 60)",
        )
        p.set_defaults(func=func)
    reload_p = sub.add_parser(
        "reload",
        help="make a background node re-read its keyring (cluster_secret) from its config",
        description="Send SIGHUP to the node started with CONFIG: it puts the config's"
        " cluster_secret (a secret or a keyring list) in force without a restart; nothing"
        " else in the file is applied. See docs/operations.md, Rotating the cluster secret.",
    )
    reload_p.add_argument("config", help="the node's config file")
    reload_p.set_defaults(func=cmd_reload)
    status_p = sub.add_parser(
        "status", help="whether a background node runs (exit 0) or not (exit 3)"
    )
    status_p.add_argument(
        "config", nargs="?", help="the node's config (default: every node started)"
    )
    status_p.set_defaults(func=cmd_status)
