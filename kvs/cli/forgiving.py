"""The `kvs` command line forgives what etcdctl and consul users type: the client options
anywhere (`kvs --url U get a`), `kvs help [COMMAND]`, and a "did you mean" for a mistyped
command or option (difflib). Rule: this file only rewrites and explains argv; it never
talks to a node and never runs a command.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

# The options every client command takes: given before the command, they are moved after it.
GLOBAL_WITH_VALUE = ("--url", "--token", "--cacert", "--timeout")
GLOBAL_FLAGS = ("--json", "--yes")


def suggest(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'get'?)`, or `` when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def hoist_globals(argv: Sequence[str]) -> list[str]:
    """`--url U get a` -> `get a --url U`: client options before the command go after it
    (at the end, or before a `--`), where the command's own parser reads them."""
    moved: list[str] = []
    rest = list(argv)
    while rest:
        head = rest[0]
        name = head.split("=", 1)[0]
        if name in GLOBAL_WITH_VALUE:
            take = 1 if "=" in head else 2
            moved += rest[:take]
            rest = rest[take:]
        elif head in GLOBAL_FLAGS:
            moved.append(head)
            rest = rest[1:]
        else:
            break
    if not moved:
        return rest
    if "--" in rest:
        at = rest.index("--")
        return [*rest[:at], *moved, *rest[at:]]
    return [*rest, *moved]


def looks_like_config(word: str) -> bool:
    """`kvs CONFIG` runs a node (the Go KVS's habit): a word is taken for a config file when
    it names one, or has a path's or a file name's shape."""
    return os.path.exists(word) or "/" in word or os.sep in word or "." in word


class ForgivingParser(argparse.ArgumentParser):
    """argparse, whose usage errors add the closest command or option."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}{self._hint(message)}\n")

    def _hint(self, message: str) -> str:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            return suggest(choice.group(1), options)
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if unknown and unknown.group(1).startswith("-"):
            word = unknown.group(1).split("=", 1)[0]
            return suggest(word, option_strings(self))
        return ""


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every `--option` of a parser and of its subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def unknown_option(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """`unknown option '--scoep' (did you mean '--scope'?)` for the first `--word` that no
    command takes (nor abbreviates), before argparse reports something less to the point
    (a required option missing); None when every one is known somewhere."""
    known = option_strings(parser) | {"--help", "--version"}
    for word in argv:
        if word == "--":
            break
        if not word.startswith("--") or len(word) == 2:
            continue
        name = word.split("=", 1)[0]
        if not any(option.startswith(name) for option in known):
            return f"unknown option {name!r}{suggest(name, known)}"
    return None


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def show_help(parser: argparse.ArgumentParser, words: Sequence[str]) -> int:
    """`kvs help [COMMAND [ACTION]]`: that parser's help on stdout, exit 0; an unknown
    command is a usage error with a suggestion."""
    target: Any = parser
    for word in words:
        names = subcommand_names(target)
        if word not in names:
            print(f"kvs: no command {word!r}{suggest(word, names)}", file=sys.stderr)
            return 2
        target = _choices(target)[word]
    target.print_help()
    return 0


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
