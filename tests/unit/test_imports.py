"""What a node loads at start-up: the libraries only some commands or settings need stay out.

Start-up time (≤ 1 s) and idle RSS (≤ 60 MB) are benchmark targets that once slipped
unnoticed when the node began importing the HTTP client (httpx), pyjwt (which loads
cryptography) and croniter at start-up; this keeps them out of the import path."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

LAZY = ("httpx", "jwt", "cryptography", "croniter")


def loaded_after(code: str) -> set[str]:
    """The top-level packages loaded by a fresh interpreter running `code`."""
    script = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return {name.partition(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_running_a_node_does_not_import_what_only_some_commands_need() -> None:
    loaded = loaded_after("import kvs.cli, kvs.node, kvs.api")
    assert {"trio", "hypercorn", "quart", "lmdb"} <= loaded  # the check can see imports
    assert not loaded & set(LAZY), f"imported at start-up: {sorted(loaded & set(LAZY))}"


@pytest.mark.parametrize(
    ("code", "needed"),
    [
        (
            "from kvs.auth import tokens; tokens.issue(b'k' * 32, user='u', token_id='t',"
            " now_s=0, expires_in_s=60)",
            "jwt",
        ),  # fmt: skip
        (
            "import datetime as dt; from kvs.backup_service import next_run;"
            " next_run('0 0 * * *', dt.datetime.now(dt.UTC))",
            "croniter",
        ),  # fmt: skip
    ],
)
def test_each_lazy_library_is_loaded_where_it_is_used(code: str, needed: str) -> None:
    assert needed in loaded_after(code)


def test_production_code_never_imports_the_test_tooling() -> None:
    """kvs.testing (fuzzers, harnesses) may reach into internals and hammer ports: the node
    must not load it, and no module outside it may import it."""
    root = Path(__file__).resolve().parents[2] / "kvs"
    offenders = [
        str(path.relative_to(root.parent))
        for path in root.rglob("*.py")
        if "testing" not in path.relative_to(root).parts
        and re.search(r"^\s*(from|import)\s+kvs\.testing", path.read_text(), re.MULTILINE)
    ]
    assert not offenders, f"production modules importing kvs.testing: {offenders}"
    script = "import kvs.cli, kvs.node, kvs.api, sys; print('kvs.testing' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "False"
