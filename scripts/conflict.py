#!/usr/bin/env python3
"""Write same-timestamp conflicting data into two STOPPED nodes' data dirs (the Go KVS's
`test_conflict.go`), and print which value the conflict rule must make win.

    python scripts/conflict.py DIR1 DIR2 [--key KEY]... [--json]

The same as `kvs conflict DIR1 DIR2`; see kvs/conflict.py. Start both nodes as one cluster
afterwards: once they have synced, both hold the printed winner.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import kvs  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvs.conflict import main

if __name__ == "__main__":
    sys.exit(main())
