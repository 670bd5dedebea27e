"""The tamper-evident log (issues 5 and 14): what is recorded, reading it, finding an edited
entry (in the API and with `kvs audit verify CONFIG`), and the key: a chain recomputed
without it, or checked with another, does not verify."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct

import msgpack
import trio

from kvs import cli
from kvs.audit import AUDIT_DIR, GENESIS, audit_key, chain_hash
from tests.support.api import client_of, expect_error, expect_json
from tests.support.auth import Admin, bearer
from tests.support.config import write_config

KEY = audit_key("test-secret")  # tests/support/config.py's cluster_secret


def _config(tmp_path, secret: str = "test-secret") -> str:
    return str(
        write_config(
            tmp_path / f"config-{secret}.yaml",
            node_id="test-node",
            data_dir=str(tmp_path / "data"),
            cluster_secret=secret,
        )
    )


async def _stop(node) -> None:
    node.request_shutdown()
    with trio.fail_after(10):
        while node.store is not None:
            await trio.sleep(0.01)


async def test_changes_and_failed_logins_are_chained_and_verify(start_node):
    node = await start_node(auth_enabled=True, tamper_logging_enabled=True)
    admin = Admin(node)
    actor = await admin.actor("audited")
    client = client_of(node)
    await client.put("/kv/a", data=b"1", headers=actor.headers)
    await client.put("/kv/a/metadata", data=b'{"permissions": 3840}', headers=actor.headers)
    await client.post(
        "/kv/_batch",
        data=json.dumps({"ops": [{"op": "put", "key": "b", "data": 2}]}).encode(),
        headers=actor.headers,
    )
    await client.delete("/kv/a", headers=actor.headers)
    await client.get("/kv/a", headers=bearer("garbage"))
    await admin.call("DELETE", f"/api/tokens/{actor.token_id}", status=204)
    # reads are not audited
    await client.get("/kv/b", headers=admin.headers)

    entries = (await admin.call("GET", "/api/audit?limit=1000"))["entries"]
    actions = [(e["action"], e["target"]) for e in entries]
    assert actions[:2] == [("user.create", actor.uuid), ("token.create", actor.token_id)]
    assert ("put", "a") in actions and ("metadata", "a") in actions
    assert ("put", "b") in actions and ("delete", "a") in actions
    assert ("token.revoke", actor.token_id) in actions
    failed = [e for e in entries if e["action"] == "auth.failed"]
    assert len(failed) == 1 and "garbage" not in json.dumps(failed)
    put_a = next(e for e in entries if e["action"] == "put" and e["target"] == "a")
    assert put_a["user"] == actor.uuid and put_a["node"] == "test-node"
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    # paging: since is exclusive
    page = await admin.call("GET", "/api/audit?since=2&limit=2")
    assert [e["seq"] for e in page["entries"]] == [3, 4] and page["next"] == 4
    # the chain: each hash covers the previous one. Computed here from the documented formula
    # (HMAC-SHA3-512 over the previous hash and the msgpack'd fields), not with the code's own
    # chain_hash, which a bug could have made forget the predecessor.
    previous = GENESIS
    for entry in entries:
        fields = [
            entry[k] for k in ("seq", "timestamp", "node", "action", "user", "target", "detail")
        ]
        packed = msgpack.packb(fields, use_bin_type=True)
        assert KEY is not None
        assert hmac.digest(KEY, previous + packed, "sha3_512").hex() == entry["hash"]
        if previous != GENESIS:  # and not without its predecessor
            assert hmac.digest(KEY, GENESIS + packed, "sha3_512").hex() != entry["hash"]
        assert hashlib.sha3_512(previous + packed).hexdigest() != entry["hash"]  # keyed
        previous = bytes.fromhex(entry["hash"])
    verdict = await admin.call("GET", "/api/audit/verify")
    assert verdict == {
        "ok": True,
        "entries": len(entries),
        "last_hash": entries[-1]["hash"],
        "keyed": True,
        "unkeyed_entries": 0,
        "earlier_key_entries": 0,
    }


async def test_an_edited_entry_is_found_by_the_api_and_the_cli(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=True, tamper_logging_enabled=True)
    admin = Admin(node)
    for i in range(5):
        await admin.call("PUT", f"/kv/k{i}", i)
    entries = (await admin.call("GET", "/api/audit"))["entries"]
    victim = next(e for e in entries if e["target"] == "k2")
    key = struct.pack(">Q", victim["seq"])
    with node.audit.env.begin(write=True) as txn:  # an attacker with the file
        fields = msgpack.unpackb(txn.get(key), raw=False)
        fields[5] = "k2-innocent"
        txn.put(key, msgpack.packb(fields, use_bin_type=True))
    verdict = await admin.call("GET", "/api/audit/verify")
    assert verdict["ok"] is False and verdict["first_bad_seq"] == victim["seq"]
    assert verdict["entries"] == victim["seq"] - 1

    await _stop(node)
    data_dir = str(tmp_path / "data")
    assert (tmp_path / "data" / AUDIT_DIR / "data.mdb").exists()
    capsys.readouterr()
    config = _config(tmp_path)
    assert cli.main(["audit", "verify", config]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at entry {victim['seq']}" in out
    assert cli.main(["audit", "verify", config, "--data-dir", data_dir, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_seq"] == victim["seq"]


async def test_a_removed_entry_is_found_too(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    client = client_of(node)
    for i in range(4):
        await expect_json(await client.put(f"/kv/k{i}", data=b"1"))
    with node.audit.env.begin(write=True) as txn:
        txn.delete(struct.pack(">Q", 2))
    await _stop(node)
    assert cli.main(["audit", "verify", _config(tmp_path)]) == 1
    assert "BROKEN at entry 2" in capsys.readouterr().out


async def test_an_intact_log_verifies_with_the_cli_and_survives_a_restart(
    start_node, tmp_path, capsys
):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    client = client_of(node)
    await expect_json(await client.put("/kv/x", data=b"1"))
    await _stop(node)
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    await expect_json(await client_of(node).put("/kv/y", data=b"1"))
    await _stop(node)
    capsys.readouterr()
    assert cli.main(["audit", "verify", _config(tmp_path)]) == 0
    assert "audit log OK: 2 entries, keyed" in capsys.readouterr().out


async def test_audit_endpoints_need_the_log_and_the_scope(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=True)
    admin = Admin(node)
    await admin.call("GET", "/api/audit", status=404)
    reader = await admin.actor("reader", scopes=["read"])
    await expect_error(await client_of(node).get("/api/audit/verify", headers=reader.headers), 403)
    assert cli.main(["audit", "verify", "--data-dir", str(tmp_path / "nowhere")]) == 2


def _recompute_without_the_key(env, target: str) -> int:
    """An attacker with the file but not the secret: edit the entry of `target`, then
    recompute every hash from there on as the unkeyed chain did (and, second try, under a
    key of their own). Returns the edited entry's seq."""
    with env.begin(write=True) as txn:
        rows = [msgpack.unpackb(v, raw=False) for _, v in txn.cursor()]
        seq = next(r[0] for r in rows if r[5] == target)
        previous = GENESIS if seq == 1 else rows[seq - 2][7]
        for row in rows[seq - 1 :]:
            if row[0] == seq:
                row[5] = target + "-innocent"
            row[7] = chain_hash(previous, row[:7])
            previous = row[7]
            txn.put(struct.pack(">Q", row[0]), msgpack.packb(row, use_bin_type=True))
    return seq


async def test_a_chain_recomputed_without_the_key_is_found(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    client = client_of(node)
    for i in range(5):
        await expect_json(await client.put(f"/kv/k{i}", data=b"1"))
    seq = _recompute_without_the_key(node.audit.env, "k2")
    verdict = node.audit.verify()
    assert verdict.ok is False and verdict.first_bad == seq
    await _stop(node)
    capsys.readouterr()
    assert cli.main(["audit", "verify", _config(tmp_path)]) == 1
    assert f"BROKEN at entry {seq}" in capsys.readouterr().out
    # Without the key the CLI cannot tell: it says so, and does not say "OK".
    assert cli.main(["audit", "verify", "--data-dir", str(tmp_path / "data")]) == 2
    captured = capsys.readouterr()
    assert "OK" not in captured.out and "pass the node's CONFIG" in captured.err


async def test_an_intact_chain_does_not_verify_under_another_key(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    await expect_json(await client_of(node).put("/kv/a", data=b"1"))
    await _stop(node)
    capsys.readouterr()
    assert cli.main(["audit", "verify", _config(tmp_path)]) == 0
    assert cli.main(["audit", "verify", _config(tmp_path, "another-secret"), "--json"]) == 1
    verdict = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert verdict["ok"] is False and verdict["first_bad_seq"] == 1
    assert "another-secret" not in json.dumps(verdict)


async def test_an_unkeyed_log_is_sealed_once_and_its_prefix_stays_covered(
    start_node, tmp_path, capsys
):
    # A log from before keyed chains: what a node without a secret writes.
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True, cluster_secret="")
    for i in range(3):
        await expect_json(await client_of(node).put(f"/kv/old{i}", data=b"1"))
    assert node.audit.verify().to_json()["keyed"] is False
    await _stop(node)
    # The first keyed start seals it: a marker, keyed, after the 3 unkeyed entries.
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    await expect_json(await client_of(node).put("/kv/new", data=b"1"))
    marker = node.audit.read(3, 1)[0]
    assert marker.action == "audit.keyed" and "entries 1-3" in marker.detail
    verdict = node.audit.verify()
    assert verdict.ok and verdict.keyed and verdict.unkeyed_entries == 3 and verdict.entries == 5
    # Rewriting the unkeyed prefix (recomputed, without the key) breaks at the marker.
    _recompute_prefix_only(node.audit.env, "old1", upto=3)
    verdict = node.audit.verify()
    assert verdict.ok is False and verdict.first_bad == 4
    await _stop(node)


def _recompute_prefix_only(env, target: str, upto: int) -> None:
    with env.begin(write=True) as txn:
        rows = [msgpack.unpackb(v, raw=False) for _, v in txn.cursor()][:upto]
        previous = GENESIS
        for row in rows:
            if row[5] == target:
                row[5] = "rewritten"
            row[7] = chain_hash(previous, row[:7])
            previous = row[7]
            txn.put(struct.pack(">Q", row[0]), msgpack.packb(row, use_bin_type=True))


async def test_unkeyed_entries_after_keyed_ones_are_not_sealed(start_node, tmp_path):
    """Someone without the key cuts the keyed entries and writes unkeyed ones: the node,
    whose store remembers keying its log, does not seal them, and verify says so."""
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    for i in range(3):
        await expect_json(await client_of(node).put(f"/kv/k{i}", data=b"1"))
    with node.audit.env.begin(write=True) as txn:
        txn.drop(node.audit.env.open_db(None), delete=False)
        previous = GENESIS
        for seq in (1, 2):
            fields = [seq, 1, "test-node", "put", "", f"forged{seq}", ""]
            digest = chain_hash(previous, fields)
            txn.put(struct.pack(">Q", seq), msgpack.packb([*fields, digest], use_bin_type=True))
            previous = digest
    await _stop(node)
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    assert all(e.action != "audit.keyed" for e in node.audit.read(0, 10))
    await expect_json(await client_of(node).put("/kv/after", data=b"1"))
    verdict = node.audit.verify()
    assert verdict.ok is False and verdict.first_bad == 3
    assert "without a seal" in verdict.reason
    await _stop(node)
