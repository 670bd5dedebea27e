"""`kvs init` and `kvs serve` (also bare `kvs [CONFIG]`): write a default config, run a node in
the foreground until SIGINT/SIGTERM, with what a server process sets for itself (garbage
collection thresholds, the open-file limit). Bad configuration ends with one line naming the
key and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from kvs import config as config_mod
from kvs.config import DEFAULT_CONFIG_NAME, Config, ConfigError
from kvs.logs import setup_logging
from kvs.memory import tune_gc
from kvs.store import StoreError

EXIT_OK = 0
EXIT_USAGE = 2


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
    os.umask(0o077)  # whatever the node creates is its owner's only (kvs/private_files.py)
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


def _raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit in force.

    Each HTTP connection holds a descriptor; at many systems' default soft limit of 1,024,
    a thousand idle clients left no descriptor to accept with (nor for LMDB, sync or a
    backup). The hard limit is the administrator's choice; the soft one is only a default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _serve(config: Config) -> None:
    from kvs.node import Node
    from kvs.server import ApiServer  # imported late: `kvs init` should not pay for the web stack

    node = Node(config, api=ApiServer(), show_root_token=_show_root_token)
    try:
        node.store = node.open_store()
    except StoreError as exc:
        raise ConfigError("data_dir", str(exc), config.source) from None
    tune_gc()
    _raise_file_limit()  # before the API sizes its connection cap by it
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                count = 0
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        _reload_keyring(node, config)
                        continue
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


def _reload_keyring(node: Any, config: Config) -> None:
    """SIGHUP: re-read the config file and put its `cluster_secret` (keyring) in force;
    nothing else in the file is applied. A bad file changes nothing and is logged (by key
    name: never a secret)."""
    if config.source is None:
        log.warning("received SIGHUP: no config file to reload the keyring from")
        return
    try:
        fresh = config_mod.load(config.source)
        node.reload_keyring(fresh.cluster_secrets)
    except (ConfigError, ValueError) as exc:
        log.warning("received SIGHUP: keyring NOT reloaded: %s", exc)
        return
    log.info("received SIGHUP: keyring reloaded (%d secret(s))", len(fresh.cluster_secrets))


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
