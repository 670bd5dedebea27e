"""Run a script of this checkout with any Python 3.11: when the modules it needs do not
import (a plain `python3` outside the project's venv), re-run it with the checkout's
`.venv/bin/python`; without one, say in one line how to make it (exit status 2).

    import venv_check
    venv_check.ensure("cluster.py", "httpx", "trio")     # first thing, before those imports
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
_MARK = "KVS_SCRIPT_VENV"  # set on the re-run, so a broken venv cannot loop


def ensure(script: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        if importlib.util.find_spec("kvs") is None:  # a checkout without `pip install -e .`
            sys.path.insert(0, str(ROOT))
        return
    if VENV_PYTHON.exists() and os.environ.get(_MARK) != "1":
        os.environ[_MARK] = "1"
        os.execv(
            str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(sys.argv[0]).resolve()), *sys.argv[1:]]
        )
    print(
        f"{script}: needs {', '.join(missing)} (the project's venv), and {VENV_PYTHON} "
        f"is missing: run `python3 -m venv .venv && .venv/bin/pip install -e '.[test]'` in "
        f"{ROOT}, then `.venv/bin/python scripts/{script} ...`",
        file=sys.stderr,
    )
    sys.exit(2)
