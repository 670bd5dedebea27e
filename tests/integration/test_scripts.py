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


@pytest.mark.parametrize(
    "argv",
    [["cluster.py", "--help"], ["conflict.py", "--help"], ["bench.py", "--help"],
     ["fuzz.py", "http", "--help"]],
)  # fmt: skip
def test_a_script_started_without_the_venv_reruns_itself_with_it(argv: list[str]) -> None:
    """`-S`: no site-packages, as a plain `python3` outside the venv: the script finds the
    checkout's .venv and re-runs itself with it (scripts/venv_check.py)."""
    result = subprocess.run(
        [sys.executable, "-S", str(SCRIPTS / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SCRIPTS.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower() and "Traceback" not in result.stderr


def test_without_a_venv_a_script_says_in_one_line_how_to_make_one(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("cluster.py", "venv_check.py"):
        (checkout / "scripts" / name).write_text((SCRIPTS / name).read_text())
    result = subprocess.run(
        [sys.executable, "-S", str(checkout / "scripts" / "cluster.py"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=checkout,
    )
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("cluster.py: needs httpx")
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[test]'" in line


def test_the_launchers_folder_is_ignored_by_git() -> None:
    ignored = (SCRIPTS.parent / ".gitignore").read_text().splitlines()
    assert "/cluster/" in ignored
