"""The `kvs` command line in the test's own process (a process per call costs about a second
on a loaded machine): what it printed and its exit status, as a subprocess would report."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from kvs.cli import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def in_process_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """`run(*args, stdin="", **env)`: `kvs ARGS` with `env` set for that call, KVS_URL and
    KVS_TOKEN unset unless given; stdin is not a terminal, nor are stdout and stderr."""
    monkeypatch.delenv("KVS_URL", raising=False)
    monkeypatch.delenv("KVS_TOKEN", raising=False)

    def run(*args: str, stdin: str | None = None, **env: str) -> Result:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: usage, --help, --version
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        for name in env:
            monkeypatch.delenv(name)
        return Result(code, out, err)

    return run
