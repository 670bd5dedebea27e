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
# Bytecode once, up front: the suite starts many real node processes, and where
# PYTHONDONTWRITEBYTECODE is set each of them would compile every module again.
.venv/bin/python -m compileall -q kvs scripts
exec .venv/bin/python -m pytest "$@"
