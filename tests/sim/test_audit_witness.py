"""A node's audit log cut short is noticed by its peer (kvs/sync/witness.py), in the
deterministic simulator: whole nodes, simulated network, mock time."""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from kvs import cli
from kvs.audit import AUDIT_DIR
from kvs.testing.cluster import SimCluster
from kvs.testing.harness import run_simulation, seeds_from_env
from kvs.testing.network import SimNetwork
from tests.support.api import app_of
from tests.support.config import write_config

SEEDS = seeds_from_env([1, 2])
FAST_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kvs-sim-", dir=FAST_DIR) as base:
        yield Path(base)


def _truncate(data_dir: Path, keep: int) -> None:
    """Someone with the files drops the newest entries of a stopped node's log."""
    env = lmdb.open(str(data_dir / AUDIT_DIR), max_dbs=1)
    with env.begin(write=True) as txn:
        for seq in range(keep + 1, 1000):
            txn.delete(struct.pack(">Q", seq))
    env.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_a_peer_notices_a_truncated_audit_log(tmp_path, seed, capsys):
    async def scenario(net: SimNetwork) -> None:
        async with SimCluster.open(
            net, tmp_path, tamper_logging_enabled=True, sync_interval=1.0
        ) as cluster:
            a, b = await cluster.start_many(2)
            node_b = cluster.nodes[b].node
            for i in range(6):
                await node_b.audit_event("put", "", f"k{i}")
            count_b = node_b.audit.head()[0]

            def a_saw_b() -> bool:
                node_a = cluster.nodes[a].node
                memory = node_a.sync.witness.peers.get(b)
                return memory is not None and memory.checkpoints[-1][0] == count_b

            await cluster.wait_for(a_saw_b, timeout=60)
            await cluster.stop(b)
            _truncate(tmp_path / b, keep=2)
            await cluster.start(b, seeds=[cluster.nodes[a].http_address])
            node_a = cluster.nodes[a].node

            def flagged() -> bool:
                return node_a.sync.witness.peers[b].findings > 0

            await cluster.wait_for(flagged, timeout=60)
            notes = node_a.sync.witness.peers[b].notes
            assert any(f"it reported {count_b} before (cut short)" in n for n in notes), notes
            assert node_a.sync.counters["audit_findings"] >= 1
            # b's own chain still verifies (entries cut from the end leave a valid chain):
            # only the peer can tell, and it tells b.
            node_b = cluster.nodes[b].node
            assert node_b.audit.verify().ok

            def b_was_told() -> bool:
                return bool(node_b.sync.witness.report()["about_this_node"])

            await cluster.wait_for(b_was_told, timeout=60)
            answer = await app_of(node_b).test_client().get("/api/audit/verify")
            verdict = await answer.get_json()
            assert verdict["ok"] is True and verdict["witness"]["ok"] is False
            assert "cut short" in verdict["witness"]["about_this_node"][a]["last"]
            # and `kvs audit verify CONFIG` on b says so, exit status 1 (stopped first: LMDB
            # opens an environment once per process, and the CLI runs in this one)
            await cluster.stop(b)
            config = write_config(
                tmp_path / "b.yaml",
                node_id=b,
                data_dir=str(tmp_path / b),
                cluster_secret="simulated-cluster-secret",
            )
            capsys.readouterr()
            assert cli.main(["audit", "verify", str(config)]) == 1
            out = capsys.readouterr().out
            assert "audit log OK" in out and f"peer {a} REPORTS" in out

    run_simulation(scenario, seed)
