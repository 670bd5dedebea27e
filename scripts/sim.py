#!/usr/bin/env python3
"""The simulation swarm: fresh random seeds, each a whole cluster scenario judged by an
independent reference model (kvs/testing/swarm.py, kvs/testing/judge.py).

    python scripts/sim.py swarm --seconds S [--nodes N] [--reference]
    python scripts/sim.py replay SEED

`swarm` prints one line per failing seed with the command that replays it, then
`swarm: N seeds, F failures, simulated X s in Y s wall (Z× real time)`; it exits 1 on any
failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import kvs  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvs.testing.swarm_runner import main

if __name__ == "__main__":
    sys.exit(main())
