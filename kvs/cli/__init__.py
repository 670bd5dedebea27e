"""The `kvs` command.

    kvs [CONFIG]          run a node in the foreground (config.yaml, created if missing)
    kvs init [PATH]       write a commented default config without starting
    kvs get|put|rm|ls|tree|history|watch|members|user|group|token ... [--url] [--token]
                          [--cacert]: client commands (kvs/cli/client.py); exit 1 on an
                          error answer
    kvs get --prefix|rm --prefix|count|dump|load
                          prefix operations, export and import (kvs/cli/bulk.py)
    kvs shell             every client command at a prompt, or piped (kvs/cli/shell.py)
    kvs help [COMMAND]    help; `kvs --version`; options anywhere, typos get a suggestion
    kvs start|stop|restart|status, backup, restore: operations (kvs/cli/ops.py)
    kvs join URL --token T [CONFIG], kvs audit verify, kvs admin recover [CONFIG]
                          security (kvs/cli/auth.py, kvs/cli/recover.py)
    kvs conflict DIR1 DIR2 [--key KEY]... [--json]
                          write same-timestamp conflicting data into two stopped nodes'
                          data dirs and print which value must win (kvs/conflict.py)

`kvs --help` ends with EXAMPLES (below), and `join` and `admin recover` with their own;
tests/unit/test_cli_examples.py parses every one of them, and runs the client ones against
a live node.

Bad configuration ends with one line naming the key and exit status 2, never a traceback.

The package: `serve` (init and serve), `client` (the client subcommands), `ops` (backup,
restore, start/stop/status as a daemon), `local` (reaching this host's node in its own
scheme), `auth` (audit verify, join), `recover` (admin recover); here only the parser and
`main`, the console script's entry point (`kvs = "kvs.cli:main"`).
"""

from __future__ import annotations

import argparse
import sys

import kvs
from kvs.cli import auth as cli_auth
from kvs.cli import client as cli_client
from kvs.cli import ops as cli_ops
from kvs.cli import shell as cli_shell
from kvs.cli.forgiving import (
    ForgivingParser,
    hoist_globals,
    looks_like_config,
    show_help,
    suggest,
    unknown_option,
)
from kvs.cli.serve import EXIT_USAGE, cmd_init, cmd_serve
from kvs.config import DEFAULT_CONFIG_NAME

EXAMPLES = """\
examples:
  kvs init config.yaml --port 8080
  kvs config.yaml
  kvs start config.yaml
  kvs status config.yaml
  kvs put home/room/socks '{"colour": "red"}' --ttl 1h
  kvs get home/room/socks
  kvs ls home
  kvs tree home --depth 2
  kvs history home/room/socks
  kvs watch home --since 0
  kvs rm home/room/socks
  kvs members
  kvs get home/room/socks --url https://10.0.0.1:8080 --cacert ca.pem
  kvs token create USER_UUID --scope read --scope write --expires-in 1h
  kvs backup now
  kvs join https://10.0.0.1:8080 --token "$KVS_TOKEN" --cacert ca.pem --port 8090 node4.yaml
  kvs admin recover config.yaml
  kvs stop config.yaml

The client commands read $KVS_URL, $KVS_TOKEN and $KVS_CACERT when --url, --token or
--cacert are not given.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ForgivingParser(
        prog="kvs",
        description="KVS: a distributed key-value store for JSON documents",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kvs {kvs.__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("help", help="show help: kvs help [COMMAND [ACTION]]")
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
    cli_shell.register(sub, main)
    return parser


SUBCOMMANDS = {
    "help",
    "shell",
    "init",
    "serve",
    "conflict",
    *cli_client.COMMANDS,
    *cli_ops.SUBCOMMANDS,
    *cli_auth.SUBCOMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    argv = hoist_globals(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "help":
        return show_help(parser, argv[1:])
    # `kvs` and `kvs CONFIG.yaml` run a node, as in the Go KVS; a bare word that is no
    # file is a mistyped command.
    word = argv[0] if argv else "-"
    if word not in SUBCOMMANDS and not word.startswith("-") and not looks_like_config(word):
        hint = suggest(word, SUBCOMMANDS)
        print(
            f"kvs: unknown command {word!r}{hint}; `kvs help` lists the commands"
            " (a config file needs its extension: config.yaml)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not argv or (argv[0] not in SUBCOMMANDS and not argv[0].startswith("-")):
        argv = ["serve", *argv]
    unknown = unknown_option(parser, argv)
    if unknown is not None:
        print(f"kvs: {unknown}; `kvs help {argv[0]}` lists its options", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return args.func(args)
