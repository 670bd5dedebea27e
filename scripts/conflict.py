#!/usr/bin/env python3
"""Write same-timestamp conflicting data into two STOPPED nodes' data dirs (the Go KVS's
`test_conflict.go`), and print which value the conflict rule must make win.

    python scripts/conflict.py DIR1 DIR2 [--key KEY]... [--json]

The same as `kvs conflict DIR1 DIR2`; see kvs/conflict.py. Start both nodes as one cluster
afterwards: once they have synced, both hold the printed winner.
"""

# ruff: noqa: E402 - venv_check.ensure runs before the imports it makes possible
from __future__ import annotations

import sys

import venv_check

venv_check.ensure("conflict.py", "lmdb", "msgpack", "zstandard")

from kvs.conflict import main

if __name__ == "__main__":
    sys.exit(main())
