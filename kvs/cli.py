"""The `kvs` command.

    kvs [CONFIG]          run a node in the foreground (config.yaml, created if missing)
    kvs init [PATH]       write a commented default config without starting
    kvs members [--url URL] [--json]
                          a node's member table (URL default: $KVS_URL or
                          http://127.0.0.1:8080); exit 1 if the node is unreachable or errs
    kvs conflict DIR1 DIR2 [--key KEY]... [--json]
                          write same-timestamp conflicting data into two stopped nodes'
                          data dirs and print which value must win (kvs/conflict.py)

Bad configuration ends with one line naming the key and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from kvs import cli_auth, cli_ops
from kvs import config as config_mod
from kvs.config import DEFAULT_CONFIG_NAME, Config, ConfigError
from kvs.logs import setup_logging
from kvs.store import StoreError

EXIT_OK = 0
EXIT_ERROR = 1  # a client command whose node is unreachable or answers an error
EXIT_USAGE = 2

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "KVS_URL"

log = logging.getLogger("kvs")


def _fail(message: str) -> int:
    print(f"kvs: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path or DEFAULT_CONFIG_NAME)
    try:
        config_mod.write_default(path, port=args.port)
    except ConfigError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{path}: cannot write: {exc.strerror}")
    print(f"wrote {path} (node_id and cluster_secret generated; file mode 0600)")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    path = Path(args.config or DEFAULT_CONFIG_NAME)
    if args.config is None and not path.exists():
        try:
            config_mod.write_default(path)
        except (ConfigError, OSError) as exc:
            return _fail(f"cannot create {path}: {exc}")
        print(f"kvs: created {path} with default settings", file=sys.stderr)
    try:
        config = config_mod.load(path)
    except ConfigError as exc:
        return _fail(str(exc))
    setup_logging(config.log_level, config.node_id, config.log_format)
    try:
        trio.run(_serve, config)
    except KeyboardInterrupt:  # a signal that arrived before the handler was installed
        return EXIT_OK
    except BaseException as exc:
        config_error = _find_config_error(exc)
        if config_error is None:
            raise
        return _fail(str(config_error))
    return EXIT_OK


def _find_config_error(exc: BaseException) -> ConfigError | None:
    """Nurseries wrap errors in groups; a start-up ConfigError is what the user must see."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_config_error(inner)
            if found is not None:
                return found
    return None


async def _serve(config: Config) -> None:
    from kvs.node import Node  # imported late: `kvs init` should not pay for the web stack

    node = Node(config, show_root_token=_show_root_token)
    try:
        node.store = node.open_store()
    except StoreError as exc:
        raise ConfigError("data_dir", str(exc), config.source) from None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                count = 0
                async for signum in signals:
                    count += 1
                    if count == 1:
                        log.info(
                            "received %s: shutting down gracefully (again to stop at once)",
                            signal.Signals(signum).name,
                        )
                        node.request_shutdown()
                    else:
                        log.warning("received %s again: stopping now", signal.Signals(signum).name)
                        node.stop_now()

            async def run_node(
                *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
            ) -> None:
                await node.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # the node is done: stop watching for signals

            nursery.start_soon(watch_signals)
            try:
                await nursery.start(run_node)
            except BaseException as exc:
                # Hypercorn binds inside nested nurseries, so a bind failure arrives wrapped
                # in exception groups, not as a bare OSError: dig it out to report `port`.
                os_error = _find_os_error(exc)
                if os_error is None:
                    raise
                raise _bind_error(config, os_error) from None
            # Warned only once actually listening: a bind failure must stay one line.
            if not config.auth_enabled and config.bind_address not in (
                "127.0.0.1",
                "localhost",
                "::1",
            ):
                log.warning(
                    "listening on %s with no authentication: anyone who can reach this address can read and write",
                    config.bind_address,
                )


def _show_root_token(issued: Any, path: str) -> None:
    """The first start's root token: on a terminal, shown once; otherwise (a daemon, output
    to a file) only the 0600 file has it. Printed, never logged."""
    if sys.stdout.isatty():
        print(
            f"\nkvs: created the root user; its token (all scopes, valid 24 h) is shown once:\n\n"
            f"    {issued.token}\n\nkvs: it is also in {path} (mode 0600)\n",
            flush=True,
        )
    else:
        print(f"kvs: created the root user; its token is in {path} (mode 0600)", flush=True)


def _find_os_error(exc: BaseException) -> OSError | None:
    """The OSError (a failed bind) inside `exc` or its nested exception groups, if any."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_os_error(inner)
            if found is not None:
                return found
    return None


def _bind_error(config: Config, exc: OSError) -> ConfigError:
    """One line naming the config key whose port or address could not be bound."""
    key = getattr(exc, "config_key", "port")
    port = getattr(config, key, config.port) if key != "port" else config.port
    if key == "gossip_port":
        port = config.effective_gossip_port
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(key, f"{config.bind_address}:{port} is already in use", config.source)
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(
            "bind_address",
            f"{config.bind_address} is not an address of this machine",
            config.source,
        )
    if exc.errno == errno.EACCES:
        return ConfigError(key, f"not permitted to listen on port {port}", config.source)
    return ConfigError(
        key, f"cannot listen on {config.bind_address}:{port}: {exc.strerror}", config.source
    )


def _error(message: str) -> int:
    print(f"kvs: {message}", file=sys.stderr)
    return EXIT_ERROR


def _base_url(text: str) -> str | None:
    """`http://host:port` from what the user typed (`host:port` alone is fine); None if
    it is not an http(s) URL with a host."""
    import httpx

    text = text.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return text


def cmd_members(args: argparse.Namespace) -> int:
    import httpx

    given = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    base = _base_url(given)
    if base is None:
        return _fail(f"--url: {given!r} is not an http:// URL (for example {DEFAULT_URL})")
    url = f"{base}/members/"
    token = os.environ.get(cli_auth.TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, timeout=args.timeout, headers=headers)
    except httpx.HTTPError as exc:
        return _error(f"cannot reach {base}: {exc or type(exc).__name__}")
    if response.status_code != 200:
        return _error(f"GET {url} answered {response.status_code}: {_error_text(response)}")
    try:
        members = response.json()
    except ValueError:
        return _error(f"GET {url} did not answer JSON")
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        return _error(f"GET {url} did not answer a member table")
    if args.json:
        print(json.dumps(members, indent=2))
    else:
        print(format_members(members, now_ms=time.time_ns() // 1_000_000))
    return EXIT_OK


def _error_text(response: Any) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
    except ValueError:
        pass
    return response.text.strip()[:200] or response.reason_phrase


def format_members(members: list[dict[str, Any]], *, now_ms: int) -> str:
    """The member table for people: one row per member, `*` marking the node asked."""
    header = ("NODE_ID", "STATE", "INC", "HTTP", "GOSSIP", "CHANGED")
    rows = [
        (
            f"{m.get('node_id', '?')}{' *' if m.get('self') else ''}",
            str(m.get("state", "?")),
            str(m.get("incarnation", "?")),
            str(m.get("http_address", "?")),
            str(m.get("gossip_address", "?")),
            _age(m.get("last_change"), now_ms),
        )
        for m in members
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i == 2 else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]
    counts: dict[str, int] = {}
    for m in members:
        counts[str(m.get("state", "?"))] = counts.get(str(m.get("state", "?")), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines.append(f"{len(members)} members: {summary}" if members else "no members")
    return "\n".join(lines)


def _age(last_change: Any, now_ms: int) -> str:
    """`12s ago`, `5m ago`, ... from a wall-clock ms timestamp (`?` if there is none)."""
    if isinstance(last_change, bool) or not isinstance(last_change, int):
        return "?"
    seconds = max(0, now_ms - last_change) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvs", description="KVS: a distributed key-value store for JSON documents"
    )
    sub = parser.add_subparsers(dest="command")
    init = sub.add_parser("init", help="write a commented default config")
    init.add_argument("path", nargs="?", help=f"where to write it (default {DEFAULT_CONFIG_NAME})")
    init.add_argument(
        "--port", type=int, default=8080, help="HTTP port (gossip and sync use the next two)"
    )
    init.set_defaults(func=cmd_init)
    serve = sub.add_parser("serve", help="run a node in the foreground (the default command)")
    serve.add_argument(
        "config",
        nargs="?",
        help=f"config file (default ./{DEFAULT_CONFIG_NAME}, created if missing)",
    )
    serve.set_defaults(func=cmd_serve)
    members = sub.add_parser("members", help="show a node's member table")
    members.add_argument(
        "--url",
        help=f"the node's HTTP address (default ${URL_ENV}, else {DEFAULT_URL})",
    )
    members.add_argument("--json", action="store_true", help="print the raw JSON")
    members.epilog = f"With authentication on, put a token in ${cli_auth.TOKEN_ENV}."
    members.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=5.0,
        help="seconds to wait for the node (default 5)",
    )
    members.set_defaults(func=cmd_members)
    conflict = sub.add_parser(
        "conflict",
        help="write same-timestamp conflicting data into two stopped nodes' data dirs",
        description="Write the same keys with conflicting values and the same HLC timestamp"
        " into two STOPPED nodes' data dirs, and print which value the conflict rule makes"
        " win once they sync.",
    )
    from kvs import conflict as conflict_mod

    conflict_mod.add_arguments(conflict)
    conflict.set_defaults(func=conflict_mod.run)
    cli_ops.register(sub)
    cli_auth.register(sub)
    return parser


SUBCOMMANDS = {"init", "serve", "members", "conflict", *cli_ops.SUBCOMMANDS, *cli_auth.SUBCOMMANDS}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `kvs` and `kvs CONFIG.yaml` run a node, as in the Go KVS.
    if not argv or (argv[0] not in SUBCOMMANDS and not argv[0].startswith("-")):
        argv = ["serve", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
