"""Hostile-input runs longer than CI's, against real node processes (not a test).

    python scripts/fuzz.py http --seconds 300 [--seed N] [--nodes 3] [...]
    python scripts/fuzz.py wire --seconds 120 [--seed N] [...]
    python scripts/fuzz.py all --seconds 300      # both, one after the other

Each prints its seed first and a report at the end, and exits 1 if a node crashed, slowed,
grew, answered a 5xx, logged a traceback, lost a write or leaked a private value. The
options after the subcommand are the fuzzer's own (`--help` lists them); `tests/hostile/`
runs the same fuzzers for about 15 s each. The fuzzers live in kvs/testing/.
"""

# ruff: noqa: E402 - venv_check.ensure runs before the imports it makes possible
from __future__ import annotations

import sys

import venv_check

venv_check.ensure("fuzz.py", "trio", "hypercorn", "lmdb")

from kvs.testing import fuzz_http, fuzz_wire

FUZZERS = {"http": fuzz_http.main, "wire": fuzz_wire.main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*FUZZERS, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name != "all":
        return FUZZERS[name](rest)
    return max(fuzzer(rest) for fuzzer in FUZZERS.values())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
