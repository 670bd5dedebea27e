"""The wire fuzzer (kvs.testing.fuzz_wire) against a real node process, briefly.

A random seed each run, printed; `KVS_FUZZ_SEED=<seed>` replays one. The same run, longer:
`python -m kvs.testing.fuzz_wire --seconds 60 --seed <seed>`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from kvs.testing.fuzz_wire import FuzzOptions, run

SECONDS = 10.0  # the whole suite must stay under 5 minutes on 2 cores


def test_a_node_survives_the_wire_fuzzer(tmp_path: Path) -> None:
    seed = int(os.environ.get("KVS_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nKVS_FUZZ_SEED={seed}")
    # Gentler than the command's defaults: other tests share the two cores meanwhile, and
    # /health must still answer within a second. `run` has its own deadline (seconds + 2 min).
    report = run(FuzzOptions(seconds=SECONDS, seed=seed, rate=400, workers=2, workdir=tmp_path))
    print(report.text())
    assert report.ok, f"KVS_FUZZ_SEED={seed}\n{report.text()}"
    assert report.datagrams > 1000 and report.connections > 100
    assert any(name.startswith("gossip.dropped_") for name in report.drops)
    assert any(name.startswith("gossip.stream_dropped_") for name in report.drops)
    assert any(name.startswith("sync.dropped_") for name in report.drops)
    # Sealed datagrams replayed, or stamped outside the window, are refused and counted.
    assert report.drops.get("gossip.dropped_replay", 0) > 0, report.text()
    assert report.drops.get("gossip.dropped_stale", 0) > 0, report.text()
