"""Admin recovery (issue 14): with every token expired, proving the cluster secret to
`POST /api/admin/recover` gives a working root token; a wrong, missing, stale, foreign or
replayed proof is a 401, counted and audited; the token never reaches a log line."""

from __future__ import annotations

import logging

import pytest

from kvs.auth import tokens
from kvs.auth.recovery import RECOVER_HEADER, RECOVER_WINDOW_MS, RecoveryGate, recover_proof
from tests.support.api import client_of, expect_error, expect_json
from tests.support.auth import bearer, root_token

SECRET = "test-secret"  # make_config's cluster_secret
DAY_S = 24 * 3600
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def _nonce(n: int) -> bytes:
    return n.to_bytes(16, "big")


# --- the proof, pure --------------------------------------------------------------------------


def test_the_gate_takes_a_fresh_proof_once() -> None:
    gate = RecoveryGate(SECRET, "n1")
    proof = recover_proof(SECRET, "n1", 1_000_000, _nonce(1))
    assert gate.check(proof, 1_000_000) is None
    assert gate.check(proof, 1_000_500) == "replayed request"
    assert gate.check(recover_proof(SECRET, "n1", 1_000_000, _nonce(2)), 1_000_000) is None


def test_the_gate_follows_the_keyring_in_force() -> None:
    """Mid-rotation the operator's config may name the new secret first: any secret of the
    node's current keyring proves it, and a secret removed by a reload no longer does."""
    gate = RecoveryGate(["old-secret"], "n1")
    new_proof = recover_proof("new-secret", "n1", 1_000_000, _nonce(1))
    assert (
        gate.check(new_proof, 1_000_000)
        == "wrong cluster secret (or a request made for another node)"
    )
    gate.set_secrets(["new-secret", "old-secret"])
    assert gate.check(new_proof, 1_000_000) is None
    assert gate.check(recover_proof("old-secret", "n1", 1_000_000, _nonce(2)), 1_000_000) is None
    gate.set_secrets(["new-secret"])
    old_proof = recover_proof("old-secret", "n1", 1_000_000, _nonce(3))
    assert (
        gate.check(old_proof, 1_000_000)
        == "wrong cluster secret (or a request made for another node)"
    )


@pytest.mark.parametrize(
    ("proof", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "malformed"),
        ("1.2.3.4", "malformed"),
        ("²³.00112233445566778899aabbccddeeff.ab", "malformed"),
        ("1000000.xyz.ab", "malformed"),
        ("9" * 5000 + ".00112233445566778899aabbccddeeff.ab", "malformed"),
        ("1000000.00112233445566778899aabbccddeeff." + "ü" * 64, "wrong cluster secret"),
        ("1000000.00112233445566778899aabbccddeeff.\udcff", "wrong cluster secret"),
        ("1000000." + "0" * 10000 + ".ab", "malformed"),
        (recover_proof("another-secret", "n1", 1_000_000, _nonce(1)), "wrong cluster secret"),
        (recover_proof(SECRET, "n2", 1_000_000, _nonce(1)), "wrong cluster secret"),
        (recover_proof(SECRET, "n1", 1_000_000 - RECOVER_WINDOW_MS - 1, _nonce(1)), "stale"),
        (recover_proof(SECRET, "n1", 1_000_000 + RECOVER_WINDOW_MS + 1, _nonce(1)), "stale"),
    ],
)
def test_the_gate_refuses_bad_proofs(proof: str | None, reason: str) -> None:
    refused = RecoveryGate(SECRET, "n1").check(proof, 1_000_000)
    assert refused is not None and reason in refused
    assert SECRET not in refused


def test_a_node_without_a_secret_takes_no_proof() -> None:
    assert recover_proof("", "n1", 1, _nonce(1)) is None
    assert "no cluster_secret" in (RecoveryGate("", "n1").check("1.2.3", 1) or "")


def test_the_gate_forgets_old_nonces_but_a_replay_of_one_is_stale() -> None:
    gate = RecoveryGate(SECRET, "n1")
    proof = recover_proof(SECRET, "n1", 1_000_000, _nonce(1))
    assert gate.check(proof, 1_000_000) is None
    later = 1_000_000 + 3 * RECOVER_WINDOW_MS
    assert gate.check(recover_proof(SECRET, "n1", later, _nonce(2)), later) is None
    assert len(gate._seen) == 1  # the first nonce is forgotten...
    assert "stale" in (gate.check(proof, later) or "")  # ...and its replay is still refused


# --- through the API, every token expired ----------------------------------------------------


@pytest.fixture
async def expired(start_node, wall):
    """A node with auth and the audit log on, whose root token has expired."""
    node = await start_node(wall_ms=wall, auth_enabled=True, tamper_logging_enabled=True)
    old = root_token(node)
    wall.advance(DAY_S + tokens.LEEWAY_S + 1)
    await expect_error(await client_of(node).get("/api/users", headers=bearer(old)), 401)
    return node


async def _recover(node, proof):  # type: ignore[no-untyped-def]
    headers = {RECOVER_HEADER: proof} if proof is not None else {}
    return await client_of(node).post("/api/admin/recover", headers=headers)


async def test_recovery_gives_a_working_root_token_audited_never_logged(
    expired, wall, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    node = expired
    proof = recover_proof(SECRET, node.node_id, wall.now_ms, _nonce(7))
    answer = await _recover(node, proof)
    body = await expect_json(answer, 200)
    assert answer.headers["Cache-Control"] == "no-store"
    assert body["expires_at"] == wall.now_ms // 1000 + DAY_S
    token = body["token"]
    client = client_of(node)
    users = await expect_json(await client.get("/api/users", headers=bearer(token)), 200)
    assert [u["nickname"] for u in users["users"]] == ["root"]
    made = await client.post(
        "/api/users", headers=bearer(token), json={"nickname": "alice", "groups": []}
    )
    await expect_json(made, 201)
    audit = await expect_json(await client.get("/api/audit", headers=bearer(token)), 200)
    recovered = [e for e in audit["entries"] if e["action"] == "admin.recover"]
    assert len(recovered) == 1 and body["id"] in recovered[0]["detail"]
    assert token not in str(audit)
    assert node.auth.counters["admin_recoveries"] == 1
    # a replay of the same request is refused, counted and audited
    replay = await expect_error(await _recover(node, proof), 401)
    assert "replayed" in replay["error"]
    assert node.auth.counters["admin_recover_refused"] == 1
    assert token not in caplog.text
    assert "admin recovery" in caplog.text


@pytest.mark.parametrize(
    "proof",
    [None, "1.2.3", "wrong", "1." + "0" * 32 + "." + "g" * 10000],
    ids=["missing", "malformed", "garbage", "long"],
)
async def test_recovery_without_a_proof_is_401_and_counted(expired, proof) -> None:
    body = await expect_error(await _recover(expired, proof), 401)
    assert "admin recovery refused" in body["error"]
    assert expired.auth.counters["admin_recover_refused"] == 1
    assert expired.auth.counters["auth_failed"] == 2  # the expired root token, then this


async def test_recovery_with_a_wrong_secret_is_401_and_audited(expired, wall) -> None:
    proof = recover_proof("not-the-secret", expired.node_id, wall.now_ms, _nonce(1))
    body = await expect_error(await _recover(expired, proof), 401)
    assert "wrong cluster secret" in body["error"]
    entries = expired.audit.read(0, 100)
    assert any(e.action == "auth.failed" and "admin recovery" in e.detail for e in entries)
    assert expired.auth.counters["admin_recover_refused"] == 1


async def test_recovery_re_creates_a_deleted_root_user(start_node, wall) -> None:
    node = await start_node(wall_ms=wall, auth_enabled=True)
    headers = bearer(root_token(node))
    client = client_of(node)
    users = await expect_json(await client.get("/api/users", headers=headers), 200)
    root = users["users"][0]["uuid"]
    assert (await client.delete(f"/api/users/{root}", headers=headers)).status_code == 204
    proof = recover_proof(SECRET, node.node_id, wall.now_ms, _nonce(3))
    token = (await expect_json(await _recover(node, proof), 200))["token"]
    again = await expect_json(await client.get("/api/users", headers=bearer(token)), 200)
    assert [u["nickname"] for u in again["users"]] == ["root"]


async def test_root_token_lifetime_is_a_setting(start_node, wall) -> None:
    node = await start_node(wall_ms=wall, auth_enabled=True, root_token_lifetime=3600)
    client = client_of(node)
    listed = await expect_json(
        await client.get("/api/tokens", headers=bearer(root_token(node))), 200
    )
    assert listed["tokens"][0]["expires_at"] == (wall.now_ms // 1000 + 3600) * 1000


async def test_recovery_is_404_with_auth_off(start_node, wall) -> None:
    node = await start_node(wall_ms=wall)
    proof = recover_proof(SECRET, node.node_id, wall.now_ms, _nonce(1))
    await expect_error(await _recover(node, proof), 404)


def test_a_proof_made_before_the_node_started_is_refused() -> None:
    """Used nonces live in memory only: a restart forgets them, so the gate refuses proofs
    stamped before it existed (one captured before a restart cannot be replayed after)."""
    gate = RecoveryGate(SECRET, "n1", not_before_ms=1_000_000)
    before = recover_proof(SECRET, "n1", 999_999, _nonce(1))
    assert gate.check(before, 1_000_001) == "request made before this node started (replayed?)"
    assert gate.check(recover_proof(SECRET, "n1", 1_000_000, _nonce(2)), 1_000_001) is None
