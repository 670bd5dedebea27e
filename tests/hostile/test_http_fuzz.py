"""The seeded hostile HTTP fuzzer (kvs.testing.fuzz_http) against a real 3-node cluster with
auth on, for a few seconds: no node goes down, /health stays fast, memory stays bounded, no
5xx but the allowed 503s, no traceback, no acknowledged write lost, no private value shown
to a caller who may not read it.

The seed is random on every run and printed; `KVS_FUZZ_SEED=<seed>` replays the same inputs,
and `python -m kvs.testing.fuzz_http --seed <seed> --replay <index>` replays one interaction.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from kvs.testing import fuzz_http

FUZZ_SECONDS = 10.0  # with start-up, seeding, settling and stopping: about 18 s in all
WORKERS_FUZZ_SECONDS = 6.0  # the proxy path on top of the same node code: a shorter run


# /health within a second is a wall-clock bound: run with the other timing tests, alone.
@pytest.mark.timing
def test_hostile_http_traffic_never_takes_a_node_down(tmp_path: Path) -> None:
    raw = os.environ.get("KVS_FUZZ_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**63)
    print(f"KVS_FUZZ_SEED={seed}")
    report = fuzz_http.run(
        fuzz_http.Options(
            seconds=FUZZ_SECONDS,
            seed=seed,
            nodes=3,
            workers=8,
            drain=2.0,
            directory=tmp_path / "cluster",
        )
    )
    assert report.interactions > 50, report.text()  # it really ran
    assert report.ok, f"KVS_FUZZ_SEED={seed}\n" + report.text()


@pytest.mark.timing
def test_hostile_http_traffic_through_http_workers(tmp_path: Path) -> None:
    """The same, against nodes that each serve with two HTTP processes (`http_workers: 2`):
    every request a worker passes on to its node is judged like one the node took itself."""
    raw = os.environ.get("KVS_FUZZ_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**63)
    print(f"KVS_FUZZ_SEED={seed} (http_workers: 2)")
    report = fuzz_http.run(
        fuzz_http.Options(
            seconds=WORKERS_FUZZ_SECONDS,
            seed=seed,
            nodes=2,
            workers=8,
            drain=2.0,
            http_workers=2,
            directory=tmp_path / "cluster",
        )
    )
    assert report.interactions > 50, report.text()
    assert report.ok, f"KVS_FUZZ_SEED={seed} (http_workers: 2)\n" + report.text()
