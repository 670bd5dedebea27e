"""The tamper-evident log (issue 5): what is recorded, reading it, and finding an edited entry
(in the API and with `kvs audit verify --data-dir`)."""

from __future__ import annotations

import json
import struct

import msgpack
import trio

from kvs import cli
from kvs.audit import AUDIT_DIR, GENESIS, chain_hash
from tests.support.api import client_of, expect_error, expect_json
from tests.support.auth import Admin, bearer


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
    # the chain: each hash covers the previous one
    previous = GENESIS
    for entry in entries:
        fields = [
            entry[k] for k in ("seq", "timestamp", "node", "action", "user", "target", "detail")
        ]
        assert chain_hash(previous, fields).hex() == entry["hash"]
        previous = bytes.fromhex(entry["hash"])
    verdict = await admin.call("GET", "/api/audit/verify")
    assert verdict == {"ok": True, "entries": len(entries), "last_hash": entries[-1]["hash"]}


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
    assert cli.main(["audit", "verify", "--data-dir", data_dir]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at entry {victim['seq']}" in out
    assert cli.main(["audit", "verify", "--data-dir", data_dir, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_seq"] == victim["seq"]


async def test_a_removed_entry_is_found_too(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=False, tamper_logging_enabled=True)
    client = client_of(node)
    for i in range(4):
        await expect_json(await client.put(f"/kv/k{i}", data=b"1"))
    with node.audit.env.begin(write=True) as txn:
        txn.delete(struct.pack(">Q", 2))
    await _stop(node)
    assert cli.main(["audit", "verify", "--data-dir", str(tmp_path / "data")]) == 1
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
    assert cli.main(["audit", "verify", "--data-dir", str(tmp_path / "data")]) == 0
    assert "audit log OK: 2 entries" in capsys.readouterr().out


async def test_audit_endpoints_need_the_log_and_the_scope(start_node, tmp_path, capsys):
    node = await start_node(auth_enabled=True)
    admin = Admin(node)
    await admin.call("GET", "/api/audit", status=404)
    reader = await admin.actor("reader", scopes=["read"])
    await expect_error(await client_of(node).get("/api/audit/verify", headers=reader.headers), 403)
    assert cli.main(["audit", "verify", "--data-dir", str(tmp_path / "nowhere")]) == 2
