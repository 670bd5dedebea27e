"""The scripts/ commands start: an import broken by a move fails here, not in a benchmark run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.parametrize(
    "argv",
    [
        ["bench.py", "--help"],
        ["bench.py", "http", "--help"],
        ["bench.py", "replication", "--help"],
        ["bench.py", "gossip", "--help"],
        ["cluster.py", "--help"],
        ["fuzz.py", "http", "--help"],
        ["fuzz.py", "wire", "--help"],
    ],
)
def test_a_script_starts_and_prints_its_usage(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SCRIPTS.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower(), result.stdout
