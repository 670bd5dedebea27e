#!/bin/sh
# Set up everything the tests need and run the whole suite, lint included.
# Works on a fresh machine with only Python 3.11 and pip: `sh scripts/test.sh`.
set -eu
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The layer order and no import circles (pyproject.toml, [tool.importlinter]).
.venv/bin/lint-imports
# Bytecode once, up front: the suite starts many real node processes, and where
# PYTHONDONTWRITEBYTECODE is set each of them would compile every module again.
.venv/bin/python -m compileall -q kvs scripts
# Three workers on two cores: the real-process tests spend most of their time waiting for
# nodes, so a third worker fills the gaps (about 2m50s instead of 4m45s here). Work
# stealing balances the long simulations. KVS_TEST_WORKERS=0 runs everything in one process.
# Tests marked `timing` assert wall-clock bounds: they run afterwards, alone (exit status 5
# means the arguments selected none of them).
.venv/bin/python -m pytest -n "${KVS_TEST_WORKERS:-3}" --dist worksteal -m "not timing" "$@"
.venv/bin/python -m pytest -m timing "$@" || [ $? -eq 5 ]
