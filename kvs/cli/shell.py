"""`kvs shell [--url U] [--token T]`: every client command at a prompt, as the Go KVS's
`kvs-sh` and `redis-cli` offer.

    kvs> put home/socks '{"colour": "red"}'
    kvs> get --prefix home
    kvs> connect http://10.0.0.2:8080      kvs> auth TOKEN       kvs> exit

On a terminal: a `kvs> ` prompt, readline history (`$KVS_HOME/shell_history`, default
~/.kvs; lines carrying a token are not kept) and tab completion of commands and of key
paths (asked of the node with `_ls`). When standard input is not a terminal it reads one
command a line with no prompt, so scripts can pipe into it (`#` starts a comment). Each line
is run as `kvs LINE --url U --token T` (the session's, unless the line gives its own); its
output and messages are those of the command. The exit status is the last command's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvs.cli.client import COMMANDS, add_client_args
from kvs.client.env import TOKEN_ENV, URL_ENV

EXIT_OK = 0
EXIT_USAGE = 2
SHELL_ONLY = ("connect", "auth", "exit", "quit", "help")
RUNS = (*COMMANDS, "backup")  # what a line may start with, besides SHELL_ONLY
KEY_COMMANDS = ("get", "put", "rm", "ls", "tree", "history", "watch", "count", "dump")

Main = Callable[[list[str]], int]


class Session:
    """The shell's state: where it connects, with which token, and the last exit status."""

    def __init__(self, args: argparse.Namespace, main: Main) -> None:
        self.url: str | None = args.url or os.environ.get(URL_ENV) or None
        self.token: str | None = args.token or os.environ.get(TOKEN_ENV) or None
        self.cacert: str | None = args.cacert
        self.timeout: float = args.timeout
        self.main = main
        self.status = EXIT_OK

    def run_line(self, line: str) -> bool:
        """Run one line; False when it asks to leave."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            print(f"kvs: {exc}", file=sys.stderr)
            self.status = EXIT_USAGE
            return True
        if not words:
            return True
        head = words[0]
        if head in ("exit", "quit"):
            return False
        if head == "connect" and len(words) == 2:
            self.url = words[1]
            print(f"connected to {self.url}")
        elif head == "auth" and len(words) == 2:
            self.token = words[1]
            print("token set for this session")
        elif head in SHELL_ONLY[:2]:
            print(f"kvs: usage: {head} {'URL' if head == 'connect' else 'TOKEN'}", file=sys.stderr)
            self.status = EXIT_USAGE
        else:
            self.status = self._run(words)
        return True

    def _run(self, words: list[str]) -> int:
        if words[0] not in (*RUNS, "help"):
            from kvs.cli.forgiving import suggest

            hint = suggest(words[0], (*RUNS, *SHELL_ONLY))
            print(f"kvs: {words[0]!r} is not a shell command{hint}", file=sys.stderr)
            return EXIT_USAGE
        argv = list(words)
        if words[0] != "help":
            for flag, value in (
                ("--url", self.url),
                ("--token", self.token),
                ("--cacert", self.cacert),
            ):
                if value and not any(w == flag or w.startswith(flag + "=") for w in words):
                    argv += [flag, value]
        try:
            return self.main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()

    # --- completion ------------------------------------------------------------------------

    def candidates(self, words: list[str], text: str) -> list[str]:
        """What may complete `text`, the last (partial) word after `words`."""
        if not words:
            return sorted(c + " " for c in (*RUNS, *SHELL_ONLY) if c.startswith(text))
        if words[0] not in KEY_COMMANDS or text.startswith("-"):
            return []
        prefix, _, _ = text.rpartition("/")
        try:
            children = self._children(prefix)
        except Exception:  # an unreachable node, a refusal: nothing to offer
            return []
        out = []
        for child in children:
            name = f"{prefix}/{child['subkey']}" if prefix else child["subkey"]
            if name.startswith(text):
                out.append(name + "/" if child.get("has_children") else name)
        return out

    def _children(self, prefix: str) -> list[dict[str, Any]]:
        from kvs.client import Client

        with Client(self.url, self.token, timeout=2.0, verify=self.cacert) as client:
            return client.ls(prefix, limit=1000, include_metadata=True).get("children", [])


def cmd_shell(args: argparse.Namespace, main: Main) -> int:
    session = Session(args, main)
    if not sys.stdin.isatty():
        for line in sys.stdin:
            if not session.run_line(line):
                break
        return session.status
    history = _setup_readline(session)
    print(f"kvs shell: {session.url or 'the default node'}; `help`, `exit`; Tab completes")
    while True:
        try:
            line = input("kvs> ")
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print()
            continue
        _forget_secrets(line)
        if not session.run_line(line):
            break
    _save_history(history)
    return session.status


def _setup_readline(session: Session) -> Path | None:
    try:
        import readline
    except ImportError:  # pragma: no cover - a Python built without it
        return None
    home = Path(os.environ.get("KVS_HOME") or Path.home() / ".kvs")
    history = home / "shell_history"
    with contextlib.suppress(OSError):
        readline.read_history_file(history)

    def complete(text: str, state: int) -> str | None:
        line = readline.get_line_buffer()[: readline.get_endidx()]
        words = line.split()
        if words and not line.endswith(" "):
            words = words[:-1]
        options = session.candidates(words, text)
        return options[state] if state < len(options) else None

    readline.set_completer_delims(" \t\n\"'")
    readline.set_completer(complete)
    readline.parse_and_bind("tab: complete")
    return history


def _forget_secrets(line: str) -> None:
    """A line with a token stays out of the history file."""
    if not (line.lstrip().startswith("auth ") or "--token" in line):
        return
    with contextlib.suppress(ImportError, ValueError):
        import readline

        last = readline.get_current_history_length()
        if last:
            readline.remove_history_item(last - 1)


def _save_history(history: Path | None) -> None:
    if history is None:
        return
    with contextlib.suppress(ImportError, OSError):
        import readline

        history.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        readline.set_history_length(1000)
        readline.write_history_file(history)
        history.chmod(0o600)


def register(sub: Any, main: Main) -> None:
    p = sub.add_parser(
        "shell",
        help="an interactive prompt running every client command (reads stdin in a pipe)",
        description=__doc__.split("\n\n")[0],
    )
    add_client_args(p, timeout=5.0)
    p.set_defaults(func=lambda args: cmd_shell(args, main))
