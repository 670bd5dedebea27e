"""Every example `kvs --help` and the subcommands' help show parses, and the client ones
run against a live node (issue 14: "`kvs --help` examples all run")."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from kvs.cli import SUBCOMMANDS, build_parser
from tests.support.procs import init_config, run_kvs, running


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and every subcommand parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found.extend(_parsers(sub))
    return found


def help_examples() -> list[str]:
    """The `kvs ...` lines of every help text's "examples:" section."""
    examples = []
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        if "examples:" not in text:
            continue
        section = text.split("examples:", 1)[1]
        examples += re.findall(r"^  (kvs .+)$", section, re.M)
    return list(dict.fromkeys(examples))


def argv_of(example: str) -> list[str]:
    """The arguments of an example line, without `kvs` and what a shell would redirect."""
    words = shlex.split(example.replace('"$KVS_TOKEN"', "T"))[1:]
    for i, word in enumerate(words):
        if word in (">", "|", "2>"):
            return words[:i]
    return words


def test_the_help_shows_examples_and_the_join_form_of_the_docs() -> None:
    examples = help_examples()
    assert len(examples) >= 15, examples
    commands = {argv_of(e)[0] for e in examples}
    assert {"put", "get", "join", "admin", "start"} <= commands
    # the form the README and the issue show, options between the arguments
    assert any(re.search(r"join \S+ --token .* node4\.yaml$", e) for e in examples)


@pytest.mark.parametrize("example", help_examples())
def test_every_help_example_parses(example: str) -> None:
    argv = argv_of(example)
    if argv[0] not in SUBCOMMANDS:
        argv = ["serve", *argv]  # `kvs CONFIG`, as main() reads it
    args = build_parser().parse_args(argv)
    assert callable(args.func), example


def test_join_takes_its_options_in_any_order() -> None:
    orders = (
        ["join", "http://h:1", "--token", "T", "--port", "8090", "node4.yaml"],
        ["join", "http://h:1", "node4.yaml", "--port", "8090", "--token", "T"],
        ["join", "--token", "T", "--port", "8090", "http://h:1", "node4.yaml"],
        ["join", "http://h:1", "--token", "T", "node4.yaml", "--port", "8090"],
    )
    for argv in orders:
        args = build_parser().parse_args(argv)
        assert (args.url, args.token, args.port, args.config) == (
            "http://h:1",
            "T",
            8090,
            "node4.yaml",
        ), argv


LIVE = ("put", "get", "ls", "tree", "history", "rm", "members")


def test_the_client_examples_run_against_a_live_node(tmp_path: Path) -> None:
    config = init_config(tmp_path / "node")
    runnable = [e for e in help_examples() if argv_of(e)[0] in LIVE and "--url" not in e]
    assert [argv_of(e)[0] for e in runnable] == list(LIVE), runnable
    with running(config) as node:
        env_url = node.base_url
        for example in runnable:
            result = _run(argv_of(example), tmp_path, env_url)
            assert result.returncode == 0, (example, result.stderr)
            assert "Traceback" not in result.stderr
            if argv_of(example)[0] == "get":
                assert '"colour": "red"' in result.stdout
    # `kvs init` from the examples, in an empty directory
    init = [argv_of(e) for e in help_examples() if argv_of(e)[0] == "init"][0]
    (tmp_path / "fresh").mkdir()
    assert run_kvs(*init, cwd=tmp_path / "fresh").returncode == 0
    assert (tmp_path / "fresh" / "config.yaml").is_file()


def _run(argv: list[str], cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    return run_kvs(*argv, cwd=cwd, env={"KVS_URL": url, "KVS_TOKEN": None}, timeout=60)
