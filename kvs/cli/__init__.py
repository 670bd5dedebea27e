"""The `kvs` command.

    kvs [CONFIG]          run a node in the foreground (config.yaml, created if missing)
    kvs init [PATH]       write a commented default config without starting
    kvs get|put|rm|ls|tree|history|watch|members|user|group|token ... [--url] [--token]
                          client commands (kvs/cli/client.py); exit 1 on an error answer
    kvs conflict DIR1 DIR2 [--key KEY]... [--json]
                          write same-timestamp conflicting data into two stopped nodes'
                          data dirs and print which value must win (kvs/conflict.py)

Bad configuration ends with one line naming the key and exit status 2, never a traceback.

The package: `serve` (init and serve), `client` (the client subcommands), `ops` (backup,
restore, start/stop/status as a daemon), `auth` (audit verify, join); here only the parser
and `main`, the console script's entry point (`kvs = "kvs.cli:main"`).
"""

from __future__ import annotations

import argparse
import sys

from kvs.cli import auth as cli_auth
from kvs.cli import client as cli_client
from kvs.cli import ops as cli_ops
from kvs.cli.serve import EXIT_USAGE, cmd_init, cmd_serve
from kvs.config import DEFAULT_CONFIG_NAME


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
    cli_client.register(sub)  # get, put, rm, ls, tree, history, watch, members, user, ...
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


SUBCOMMANDS = {
    "init",
    "serve",
    "conflict",
    *cli_client.COMMANDS,
    *cli_ops.SUBCOMMANDS,
    *cli_auth.SUBCOMMANDS,
}


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
