"""The audit chain through a rotation of the cluster secret (issue 14): the keyring's first
secret writes, a change of it appends a REKEY entry whose digest covers everything before
it, and verify with any later keyring accepts the old part only through that digest."""

from __future__ import annotations

import json
import struct

import msgpack
import trio

from kvs import cli
from kvs.audit import LEDGER, REKEY
from tests.support.api import client_of, expect_json
from tests.support.config import write_config

OLD, NEW = "test-secret", "the-next-secret"  # OLD: tests/support/config.py's cluster_secret


def _config(tmp_path, *secrets: str) -> str:
    name = "-".join(secrets)
    return str(
        write_config(
            tmp_path / f"config-{name}.yaml",
            node_id="test-node",
            data_dir=str(tmp_path / "data"),
            cluster_secret=list(secrets),
        )
    )


async def _stop(node) -> None:
    node.request_shutdown()
    with trio.fail_after(10):
        while node.store is not None:
            await trio.sleep(0.01)


def _rows(env) -> list[list]:
    with env.begin() as txn:
        return [msgpack.unpackb(v, raw=False) for _, v in txn.cursor()]


def _verify(capsys, config: str) -> tuple[int, dict]:
    capsys.readouterr()
    status = cli.main(["audit", "verify", config, "--json"])
    return status, json.loads(capsys.readouterr().out.splitlines()[-1])


async def test_a_rolling_rotation_rekeys_the_chain_and_every_later_keyring_verifies_it(
    start_node, tmp_path, capsys
):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    client = client_of(node)
    for i in range(3):
        await expect_json(await client.put(f"/kv/before{i}", data=b"1"))
    node.reload_keyring((OLD, NEW))  # step 1: the first secret stays: no rekey
    await expect_json(await client.put("/kv/added", data=b"1"))
    assert [r[3] for r in _rows(node.audit.env)].count(REKEY) == 0
    node.reload_keyring((NEW, OLD))  # step 2: the new secret writes from a REKEY entry on
    for i in range(2):
        await expect_json(await client.put(f"/kv/after{i}", data=b"1"))
    rows = _rows(node.audit.env)
    [rekey] = [r for r in rows if r[3] == REKEY]
    assert rekey[5].startswith(LEDGER) and rekey[0] == 5  # after 4 entries under OLD
    verdict = node.audit.verify()
    assert verdict.ok and verdict.entries == 7 and verdict.earlier_key_entries == 0
    node.reload_keyring((NEW,))  # step 3: the old secret is gone
    verdict = node.audit.verify()
    assert verdict.ok and verdict.entries == 7 and verdict.earlier_key_entries == 4
    await _stop(node)

    for keyring in ((NEW,), (NEW, OLD), (OLD, NEW)):
        status, report = _verify(capsys, _config(tmp_path, *keyring))
        assert status == 0 and report["ok"] and report["entries"] == 7, (keyring, report)
    # The old config alone cannot vouch for what the new secret wrote.
    status, report = _verify(capsys, _config(tmp_path, OLD))
    assert status == 1 and report["first_bad_seq"] == 5 and report["entries"] == 4
    assert OLD not in json.dumps(report) and NEW not in json.dumps(report)


async def test_an_entry_edited_under_the_old_secret_breaks_the_rekey_digest(
    start_node, tmp_path, capsys
):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    client = client_of(node)
    for i in range(3):
        await expect_json(await client.put(f"/kv/k{i}", data=b"1"))
    node.reload_keyring((NEW, OLD))
    await expect_json(await client.put("/kv/later", data=b"1"))
    await _stop(node)
    # Someone without either secret changes entry 2's target, keeping its stored hash.
    from lmdb import open as lmdb_open

    env = lmdb_open(str(tmp_path / "data" / "audit"), max_dbs=1)
    with env.begin(write=True) as txn:
        row = msgpack.unpackb(txn.get(struct.pack(">Q", 2)), raw=False)
        row[5] = "k1-innocent"
        txn.put(struct.pack(">Q", 2), msgpack.packb(row, use_bin_type=True))
    env.close()
    # With the old secret at hand, verify names the edited entry itself.
    status, report = _verify(capsys, _config(tmp_path, NEW, OLD))
    assert status == 1 and report["first_bad_seq"] == 2 and report["entries"] == 1
    # With the new one only, the rekey digest no longer matches what came before it: the
    # whole part under the old secret is in doubt, from its first entry.
    status, report = _verify(capsys, _config(tmp_path, NEW))
    assert status == 1 and report["first_bad_seq"] == 1 and "digest" in report["reason"]


async def test_a_start_with_a_new_first_secret_rekeys_and_a_jump_is_reported(
    start_node, tmp_path, capsys
):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    await expect_json(await client_of(node).put("/kv/a", data=b"1"))
    await _stop(node)
    # A restart mid-rotation (config [NEW, OLD]): the node rekeys as it opens the log.
    node = await start_node(
        auth_enabled=False, tamper_logging_enabled=True, cluster_secret=[NEW, OLD]
    )
    await expect_json(await client_of(node).put("/kv/b", data=b"1"))
    assert [r[3] for r in _rows(node.audit.env)] == ["put", REKEY, "put"]
    assert node.audit.verify().ok
    await _stop(node)
    status, report = _verify(capsys, _config(tmp_path, NEW))
    assert status == 0 and report["earlier_key_entries"] == 1

    # A jump straight to a third secret (no keyring step): the node cannot vouch for the
    # chain, so it does not rekey; verify says where the unverifiable part starts.
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True, cluster_secret="x3")
    await expect_json(await client_of(node).put("/kv/c", data=b"1"))
    assert not node.audit.verify().ok
    await _stop(node)
    status, report = _verify(capsys, _config(tmp_path, "x3"))
    assert status == 1 and report["first_bad_seq"] == 1
    status, report = _verify(capsys, _config(tmp_path, NEW))
    assert status == 1 and report["first_bad_seq"] == 4 and report["entries"] == 3
