"""Authentication and authorization through the HTTP API (issue 5), in process with real LMDB:
every "bad input and attack" of the issue is a test here or in test_auth_bits.py."""

from __future__ import annotations

import json
import logging
import math

import jwt
import pytest
import trio

from kvs.auth import tokens
from kvs.model import DEFAULT_PERMISSIONS
from tests.support.api import client_of, expect_error, expect_json
from tests.support.auth import Admin, bearer, root_token

SECRET = "test-secret"  # make_config's cluster_secret
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
async def anode(start_node, wall):
    return await start_node(wall_ms=wall, auth_enabled=True)


# --- the root account --------------------------------------------------------------------------


async def test_first_start_creates_root_user_admin_group_and_a_24h_all_scopes_token(anode, wall):
    path = anode.root_token_path
    assert path.stat().st_mode & 0o777 == 0o600
    admin = Admin(anode)
    users = (await admin.call("GET", "/api/users"))["users"]
    groups = (await admin.call("GET", "/api/groups"))["groups"]
    assert [u["nickname"] for u in users] == ["root"]
    assert [g["groupname"] for g in groups] == ["admin"]
    assert users[0]["groups"] == [groups[0]["uuid"]]
    listed = (await admin.call("GET", f"/api/tokens?user_uuid={users[0]['uuid']}"))["tokens"]
    assert len(listed) == 1 and "token" not in listed[0] and "token_hash" not in listed[0]
    assert listed[0]["expires_at"] == wall.now_ms // 1000 * 1000 + 24 * 3600 * 1000
    assert "admin:cluster:bootstrap" in listed[0]["scopes"]


async def test_root_is_not_created_again_on_a_later_start(start_node, tmp_path, nursery):
    node = await start_node(auth_enabled=True)
    first = root_token(node)
    node.root_token_path.unlink()
    node.request_shutdown()
    with trio.fail_after(10):
        while node.store is not None:
            await trio.sleep(0.01)
    again = await start_node(auth_enabled=True)
    assert not again.root_token_path.exists()
    # ... and the first token still works on the restarted node
    assert (await client_of(again).get("/api/users", headers=bearer(first))).status_code == 200


async def test_no_root_on_a_node_with_seeds(start_node):
    node = await start_node(auth_enabled=True, seed_nodes=["127.0.0.1:1"])
    assert not node.root_token_path.exists()
    assert node.auth.directory.list("users") == []


# --- 401: who are you? ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c"],
    ids=["missing", "empty", "no-token", "blank-token", "basic", "garbled", "garbled-jwt"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/kv/a/b"),
        ("PUT", "/kv/a/b"),
        ("DELETE", "/kv/a/b"),
        ("GET", "/kv/a/_ls"),
        ("POST", "/kv/_batch"),
        ("GET", "/api/backup/status"),
        ("POST", "/api/backup/run"),
        ("GET", "/api/users"),
        ("GET", "/members/"),
        ("GET", "/kv/a/b/metadata"),
    ],
)
async def test_missing_or_garbled_authorization_is_401(anode, header, method, path):
    headers = {} if header is None else {"Authorization": header}
    response = await client_of(anode).open(path, method=method, data=b"{}", headers=headers)
    body = await expect_error(response, 401)
    assert "Bearer" in response.headers.get("WWW-Authenticate", "")
    if header:
        assert header.partition(" ")[2] not in body["error"] or not header.partition(" ")[2]


async def test_health_stays_open_and_shows_no_secrets(anode):
    response = await client_of(anode).get("/health")
    text = (await response.get_data()).decode()
    assert response.status_code == 200
    assert SECRET not in text and root_token(anode) not in text


def forged(payload: dict, key: bytes | str | None, alg: str) -> str:
    return jwt.encode(payload, key, algorithm=alg)


async def _claims(anode, wall) -> dict:
    admin = Admin(anode)
    user = await admin.user("eve")
    _, token_id = await admin.token(user, ["read"])
    now = wall.now_ms // 1000
    return {"iss": "kvs", "sub": user, "jti": token_id, "iat": now, "nbf": now, "exp": now + 600}


async def test_alg_none_is_401(anode, wall):
    token = forged(await _claims(anode, wall), None, "none")
    body = await expect_error(await client_of(anode).get("/kv/x", headers=bearer(token)), 401)
    assert "algorithm" in body["error"] or "malformed" in body["error"]


async def test_token_signed_with_another_key_is_401(anode, wall):
    claims = await _claims(anode, wall)
    for key in (tokens.signing_key("another-cluster"), SECRET.encode()):
        token = forged(claims, key, "HS256")
        body = await expect_error(await client_of(anode).get("/kv/x", headers=bearer(token)), 401)
        assert "signature" in body["error"]


async def test_token_with_another_hs_algorithm_is_401(anode, wall):
    token = forged(await _claims(anode, wall), tokens.signing_key(SECRET), "HS512")
    await expect_error(await client_of(anode).get("/kv/x", headers=bearer(token)), 401)


async def test_forged_token_for_a_real_id_with_the_right_key_but_other_bytes_is_401(anode, wall):
    """The stored hash binds the record to one exact token: a re-signed variant is unknown."""
    claims = await _claims(anode, wall)
    claims["exp"] += 1
    token = forged(claims, tokens.signing_key(SECRET), "HS256")
    body = await expect_error(await client_of(anode).get("/kv/x", headers=bearer(token)), 401)
    assert "revoked or is unknown" in body["error"]


async def test_expired_token_is_401(anode, wall):
    admin = Admin(anode)
    user = await admin.user("u", [])
    token, _ = await admin.token(user, ["read"], expires_in="1h")
    client = client_of(anode)
    assert (await client.get("/kv/x", headers=bearer(token))).status_code == 404  # works
    wall.advance(3600 + tokens.LEEWAY_S + 1)
    body = await expect_error(await client.get("/kv/x", headers=bearer(token)), 401)
    assert "expired" in body["error"]


async def test_not_yet_valid_token_is_401(anode, wall):
    claims = await _claims(anode, wall)
    claims["nbf"] = claims["iat"] = claims["iat"] + 3600
    token = forged(claims, tokens.signing_key(SECRET), "HS256")
    body = await expect_error(await client_of(anode).get("/kv/x", headers=bearer(token)), 401)
    assert "not valid yet" in body["error"]


async def test_revoked_token_is_401_at_once(anode):
    admin = Admin(anode)
    actor = await admin.actor("bob")
    client = client_of(anode)
    assert (await client.get("/kv/x", headers=actor.headers)).status_code == 404  # cached now
    await admin.call("DELETE", f"/api/tokens/{actor.token_id}", status=204)
    body = await expect_error(await client.get("/kv/x", headers=actor.headers), 401)
    assert "revoked" in body["error"]
    await expect_error(await client.put("/kv/x", data=b"1", headers=actor.headers), 401)
    await admin.call("DELETE", f"/api/tokens/{actor.token_id}", status=404)


async def test_a_user_may_revoke_their_own_token_but_not_anothers(anode):
    admin = Admin(anode)
    alice = await admin.actor("alice")
    bob = await admin.actor("bob")
    client = client_of(anode)
    await expect_error(
        await client.delete(f"/api/tokens/{bob.token_id}", headers=alice.headers), 403
    )
    assert (
        await client.delete(f"/api/tokens/{alice.token_id}", headers=alice.headers)
    ).status_code == 204
    await expect_error(await client.get("/kv/x", headers=alice.headers), 401)
    assert (await client.get("/kv/x", headers=bob.headers)).status_code == 404


async def test_token_of_a_deleted_user_is_401(anode):
    admin = Admin(anode)
    actor = await admin.actor("carol")
    client = client_of(anode)
    assert (await client.get("/kv/x", headers=actor.headers)).status_code == 404
    await admin.call("DELETE", f"/api/users/{actor.uuid}", status=204)
    body = await expect_error(await client.get("/kv/x", headers=actor.headers), 401)
    assert "revoked" in body["error"] or "no longer exists" in body["error"]


# --- 403: scopes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "method", "path", "body"),
    [
        (["write"], "GET", "/kv/k", None),
        (["read"], "PUT", "/kv/k", b"1"),
        (["read", "write"], "DELETE", "/kv/k", None),
        (["write"], "GET", "/kv/_ls", None),
        (["read"], "POST", "/kv/_batch", b'{"ops":[{"op":"put","key":"k","data":1}]}'),
        (["read", "write"], "POST", "/kv/_batch", b'{"ops":[{"op":"delete","key":"k"}]}'),
        (["read"], "GET", "/api/users", None),
        (["read"], "POST", "/api/users", b'{"nickname":"x"}'),
        (["admin:users:read"], "POST", "/api/groups", b'{"groupname":"x"}'),
        (["read"], "POST", "/api/tokens", b'{"user_uuid":"x","scopes":[]}'),
        (["read"], "GET", "/api/audit", None),
        (["read"], "POST", "/auth/cluster-bootstrap", None),
        (["read"], "GET", "/api/backup/status", None),
        (["admin:backup:read"], "POST", "/api/backup/run", None),
    ],
)
async def test_valid_token_without_the_scope_is_403(anode, scopes, method, path, body):
    admin = Admin(anode)
    await admin.call("PUT", "/kv/k", 1)
    await admin.call("PUT", "/kv/k/metadata", {"permissions": 0xFFF})
    user = await admin.user("limited")
    token, _ = await admin.token(user, scopes)
    response = await client_of(anode).open(path, method=method, data=body, headers=bearer(token))
    message = (await expect_error(response, 403))["error"]
    assert "scope" in message


async def test_a_token_cannot_grant_scopes_its_maker_lacks(anode):
    admin = Admin(anode)
    maker = await admin.user("maker")
    token, _ = await admin.token(maker, ["admin:tokens:create", "read"])
    body = {"user_uuid": maker, "scopes": ["read", "write"]}
    response = await client_of(anode).post(
        "/api/tokens", data=json.dumps(body).encode(), headers=bearer(token)
    )
    assert "write" in (await expect_error(response, 403))["error"]
    body["scopes"] = ["read"]
    response = await client_of(anode).post(
        "/api/tokens", data=json.dumps(body).encode(), headers=bearer(token)
    )
    assert response.status_code == 201


# --- 400: user, group and token payloads -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/users", {"nickname": 5}),
        ("/api/users", {"nickname": "x", "groups": "admin"}),
        ("/api/users", {"nickname": "x", "groups": [1]}),
        ("/api/users", {"nickname": "x", "groups": ["no-such-group"]}),
        ("/api/users", {"nickname": "x", "password": "hunter2"}),
        ("/api/users", {"groups": []}),
        ("/api/users", {"nickname": ""}),
        ("/api/users", {"nickname": True}),
        ("/api/users", ["nickname"]),
        ("/api/users", "x"),
        ("/api/groups", {"groupname": None}),
        ("/api/groups", {"groupname": "g", "members": {"a": 1}}),
        ("/api/groups", {"groupname": "g", "owner": "me"}),
        ("/api/tokens", {"user_uuid": "x", "scopes": ["read"]}),
        ("/api/tokens", {"user_uuid": 1, "scopes": ["read"]}),
        ("/api/tokens", {"user_uuid": "ROOT", "scopes": "read"}),
        ("/api/tokens", {"user_uuid": "ROOT", "scopes": ["fly"]}),
        ("/api/tokens", {"user_uuid": "ROOT", "scopes": ["read"], "expires_in": "soon"}),
        ("/api/tokens", {"user_uuid": "ROOT", "scopes": ["read"], "expires_in": 0}),
        ("/api/tokens", {"user_uuid": "ROOT", "scopes": ["read"], "extra": 1}),
    ],
)
async def test_bad_admin_payloads_are_400(anode, path, body):
    admin = Admin(anode)
    root = (await admin.call("GET", "/api/users"))["users"][0]["uuid"]
    if isinstance(body, dict) and body.get("user_uuid") == "ROOT":
        body = {**body, "user_uuid": root}
    response = await admin.client.post(path, data=json.dumps(body).encode(), headers=admin.headers)
    await expect_error(response, 400)


async def test_bad_json_and_bad_updates_are_400(anode):
    admin = Admin(anode)
    user = await admin.user("u")
    client = admin.client
    await expect_error(await client.post("/api/users", data=b"{nope", headers=admin.headers), 400)
    await expect_error(
        await client.put(f"/api/users/{user}", data=b'{"nickname": []}', headers=admin.headers), 400
    )
    await expect_error(
        await client.put(f"/api/users/{user}", data=b'{"uuid": "x"}', headers=admin.headers), 400
    )
    await expect_error(await client.get("/api/users/no-such", headers=admin.headers), 404)


# --- users, groups and tokens round trip -------------------------------------------------------


async def test_user_and_group_crud(anode):
    admin = Admin(anode)
    group = await admin.group("staff")
    user = await admin.user("dave", [group])
    assert (await admin.call("GET", f"/api/users/{user}"))["groups"] == [group]
    updated = await admin.call("PUT", f"/api/users/{user}", {"nickname": "david"})
    assert updated["nickname"] == "david" and updated["groups"] == [group]
    await admin.call("PUT", f"/api/groups/{group}", {"members": [user]})
    assert (await admin.call("GET", f"/api/groups/{group}"))["members"] == [user]
    await admin.call("DELETE", f"/api/groups/{group}", status=204)
    await admin.call("GET", f"/api/groups/{group}", status=404)
    await admin.call("DELETE", f"/api/users/{user}", status=204)
    assert [u["nickname"] for u in (await admin.call("GET", "/api/users"))["users"]] == ["root"]


async def test_token_create_answers_token_expiry_and_id_and_lists_without_secrets(anode, wall):
    admin = Admin(anode)
    user = await admin.user("erin")
    answer = await admin.call(
        "POST", "/api/tokens", {"user_uuid": user, "scopes": ["read"], "expires_in": "2h"}, 201
    )
    assert set(answer) == {"token", "expires_at", "id"}
    assert answer["expires_at"] == wall.now_ms // 1000 + 7200
    listed = (await admin.call("GET", f"/api/tokens?user_uuid={user}"))["tokens"]
    assert [t["id"] for t in listed] == [answer["id"]]
    assert answer["token"] not in json.dumps(listed)
    stored = anode.store.get(f"_sys/tokens/{answer['id']}")
    assert answer["token"].encode() not in stored.value  # only its hash is stored
    default = await admin.call("POST", "/api/tokens", {"user_uuid": user, "scopes": []}, 201)
    assert default["expires_at"] == wall.now_ms // 1000 + 3600


# --- key metadata ------------------------------------------------------------------------------


async def test_new_keys_belong_to_their_creator_and_primary_group_with_0xF31(anode, wall):
    admin = Admin(anode)
    group = await admin.group("team")
    actor = await admin.actor("frank", [group])
    client = client_of(anode)
    assert (await client.put("/kv/docs/a", data=b"1", headers=actor.headers)).status_code == 200
    meta = await expect_json(await client.get("/kv/docs/a/metadata", headers=actor.headers))
    assert meta == {
        "owner_uuid": actor.uuid,
        "group_uuid": group,
        "permissions": DEFAULT_PERMISSIONS,
        "ttl": None,
        "created_at": wall.now_ms,
        "updated_at": wall.now_ms,
    }
    assert DEFAULT_PERMISSIONS == 0xF31 == 3889


async def test_owner_sets_metadata_and_gets_200_with_the_new_metadata(anode, wall):
    admin = Admin(anode)
    group = await admin.group("team")
    actor = await admin.actor("gina")
    client = client_of(anode)
    await client.put("/kv/m", data=b'{"v": 1}', headers=actor.headers)
    body = {"group_uuid": group, "permissions": 0xF00, "ttl": "1h"}
    meta = await expect_json(
        await client.put("/kv/m/metadata", data=json.dumps(body).encode(), headers=actor.headers)
    )
    assert (meta["group_uuid"], meta["permissions"], meta["ttl"]) == (group, 0xF00, 3600.0)
    # the value is untouched
    assert (await expect_json(await client.get("/kv/m", headers=actor.headers)))["data"] == {"v": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"permissions": 4096},
        {"permissions": -1},
        {"permissions": "0xF31"},
        {"owner": "x"},
        {"owner_uuid": "nobody"},
        {"ttl": "forever"},
        [1],
    ],
)
async def test_bad_metadata_is_400(anode, body):
    admin = Admin(anode)
    await admin.call("PUT", "/kv/m", 1)
    response = await admin.client.put(
        "/kv/m/metadata", data=json.dumps(body).encode(), headers=admin.headers
    )
    await expect_error(response, 400)


async def test_metadata_change_by_a_non_owner_without_admin_scope_is_403(anode):
    admin = Admin(anode)
    owner = await admin.actor("owner")
    other = await admin.actor("other")
    client = client_of(anode)
    await client.put("/kv/mine", data=b"1", headers=owner.headers)
    body = json.dumps({"permissions": 0xFFF}).encode()
    message = (
        await expect_error(
            await client.put("/kv/mine/metadata", data=body, headers=other.headers), 403
        )
    )["error"]
    assert "owner" in message
    # an admin:metadata:update token may (root has it)
    assert (
        await client.put("/kv/mine/metadata", data=body, headers=admin.headers)
    ).status_code == 200
    await expect_error(await client.put("/kv/mine/metadata", data=body), 401)


async def test_metadata_of_a_missing_key_is_404(anode):
    admin = Admin(anode)
    await admin.call("GET", "/kv/none/metadata", status=404)


# --- anonymous access ------------------------------------------------------------------------


async def test_anonymous_read_and_write_follow_the_config_and_the_others_bits(start_node):
    node = await start_node(
        auth_enabled=True, allow_anonymous_read=True, allow_anonymous_write=True
    )
    admin = Admin(node)
    client = client_of(node)
    await admin.call("PUT", "/kv/pub", 1)
    assert (await client.get("/kv/pub")).status_code == 200  # others: read (0xF31)
    await expect_error(await client.put("/kv/pub", data=b"2"), 401)  # others lack write
    assert (await client.put("/kv/anon-new", data=b"2")).status_code == 200
    await expect_error(await client.delete("/kv/anon-new"), 401)  # DELETE always needs a token
    await admin.call("PUT", "/kv/pub/metadata", {"permissions": 0xF00})
    await expect_error(await client.get("/kv/pub"), 401)
    assert (await client.get("/members/")).status_code == 404  # open (clustering is off here)


async def test_anonymous_is_refused_by_default(anode):
    admin = Admin(anode)
    await admin.call("PUT", "/kv/pub", 1)
    client = client_of(anode)
    await expect_error(await client.get("/kv/pub"), 401)
    await expect_error(await client.put("/kv/new", data=b"1"), 401)


# --- rate limiting -----------------------------------------------------------------------------


async def test_10000_requests_from_one_user_are_429_with_retry_after_others_unaffected(start_node):
    node = await start_node(
        auth_enabled=True, rate_limiting_enabled=True, rate_limit_requests=500, rate_limit_window=60
    )
    admin = Admin(node)
    greedy = await admin.actor("greedy")
    calm = await admin.actor("calm")
    await admin.call("PUT", "/kv/r", 1)
    client = client_of(node)
    statuses: dict[int, int] = {}
    last = None
    started = trio.current_time()
    for _ in range(10_000):
        last = await client.get("/kv/r", headers=greedy.headers)
        statuses[last.status_code] = statuses.get(last.status_code, 0) + 1
    # A sliding window lets the rate (500 per 60 s) through as time passes: the loop takes
    # seconds on a slow machine, and more when it crosses a window boundary.
    allowed = 500 + math.ceil(500 * (trio.current_time() - started) / 60) + 1
    assert statuses[200] <= allowed and statuses[429] >= 10_000 - allowed, statuses
    body = await expect_error(last, 429)
    assert "rate limit" in body["error"]
    assert 1 <= int(last.headers["Retry-After"]) <= 60
    assert (await client.get("/kv/r", headers=calm.headers)).status_code == 200
    # the admin API is limited too, and anonymous callers count per client address
    await expect_error(await client.get("/api/users", headers=greedy.headers), 429)


async def test_anonymous_callers_are_limited_per_client_address(start_node):
    node = await start_node(
        auth_enabled=False, rate_limiting_enabled=True, rate_limit_requests=5, rate_limit_window=60
    )
    client = client_of(node)
    one, two = {"client": ("10.0.0.1", 1000)}, {"client": ("10.0.0.2", 1000)}
    for _ in range(5):
        assert (await client.get("/kv/x", scope_base=one)).status_code == 404
    await expect_error(await client.get("/kv/x", scope_base=one), 429)
    assert (await client.get("/kv/x", scope_base=two)).status_code == 404


# --- no secrets in logs ------------------------------------------------------------------------


async def test_no_token_or_secret_in_any_log_line(anode, caplog, wall):
    caplog.set_level(logging.DEBUG)
    admin = Admin(anode)
    actor = await admin.actor("logged")
    client = client_of(anode)
    await client.put("/kv/l", data=b"1", headers=actor.headers)
    await client.get("/kv/l", headers=bearer(actor.token + "x"))
    await client.get("/kv/l", headers=bearer(forged({"sub": "x"}, SECRET.encode(), "HS256")))
    await admin.call("DELETE", f"/api/tokens/{actor.token_id}", status=204)
    await client.get("/kv/l", headers=actor.headers)
    text = caplog.text
    for secret in (actor.token, root_token(anode), SECRET, tokens.signing_key(SECRET).hex()):
        assert secret not in text
    assert anode.auth.counters["auth_failed"] == 3


# --- listings and counts hide the system records ----------------------------------------------


async def test_listings_counts_and_changes_do_not_show_users_groups_or_tokens(anode, wall):
    admin = Admin(anode)
    await admin.actor("hidden")
    await admin.call("PUT", "/kv/visible", 1)
    ls = await admin.call("GET", "/kv/_ls")
    assert [c["subkey"] for c in ls["children"]] == ["visible"] and ls["total"] == 1
    tree = await admin.call("GET", "/kv/_tree")
    assert [k["key"] for k in tree["keys"]] == ["visible"]
    health = await expect_json(await admin.client.get("/health"))
    assert health["keys"] == 1
    # kv_changes "holds back" the open millisecond: read once the clock has moved past it, so
    # the page holds what was written (it once read an empty page, and so proved nothing).
    wall.advance(1)
    scanned = [r.key for r in anode.store.changes_after(0, None, 1000)]
    assert "visible" in scanned and any(k.startswith("_") for k in scanned)  # both on disk
    changes = await admin.call("GET", "/kv_changes?since=0&limit=1000")
    assert [c["key"] for c in changes["changes"]] == ["visible"]
    await expect_error(await admin.client.get("/kv/_sys/users", headers=admin.headers), 400)


async def test_listings_leave_out_keys_the_caller_may_not_read(anode):
    admin = Admin(anode)
    actor = await admin.actor("lister")
    await admin.call("PUT", "/kv/d/open", 1)
    await admin.call("PUT", "/kv/d/secret", 1)
    await admin.call("PUT", "/kv/d/secret/metadata", {"permissions": 0xF00})
    client = client_of(anode)
    ls = await expect_json(await client.get("/kv/d/_ls", headers=actor.headers))
    assert [c["subkey"] for c in ls["children"]] == ["open"] and ls["total"] == 1
    tree = await expect_json(await client.get("/kv/d/_tree", headers=actor.headers))
    assert [k["key"] for k in tree["keys"]] == ["d/open"]
    await expect_error(await client.get("/api/data/d/secret/history", headers=actor.headers), 403)


# --- read-only mode refuses admin mutations -------------------------------------------------------


async def test_read_only_node_refuses_admin_mutations_with_503(start_node, tmp_path):
    node = await start_node(auth_enabled=True)
    token = root_token(node)
    node.config.read_only = True  # as a restart with read_only: true would
    client = client_of(node)
    headers = bearer(token)
    for method, path, body in (
        ("POST", "/api/users", b'{"nickname":"x"}'),
        ("POST", "/api/groups", b'{"groupname":"x"}'),
        ("POST", "/api/tokens", b'{"user_uuid":"x","scopes":[]}'),
        ("PUT", "/kv/k/metadata", b'{"permissions":1}'),
        ("PUT", "/kv/k", b"1"),
    ):
        response = await client.open(path, method=method, data=body, headers=headers)
        await expect_error(response, 503)
    assert (await client.get("/api/users", headers=headers)).status_code == 200


async def test_group_membership_changes_apply_at_once_despite_the_token_cache(anode):
    admin = Admin(anode)
    owner = await admin.actor("owner")
    friend = await admin.actor("friend")
    team = await admin.group("team", [friend.uuid])  # membership named by the group only
    client = client_of(anode)
    await client.put("/kv/shared", data=b"1", headers=owner.headers)
    await admin.call("PUT", "/kv/shared/metadata", {"group_uuid": team, "permissions": 0xF10})
    assert (await client.get("/kv/shared", headers=friend.headers)).status_code == 200
    await admin.call("PUT", f"/api/groups/{team}", {"members": []})
    await expect_error(await client.get("/kv/shared", headers=friend.headers), 403)
    await admin.call("PUT", f"/api/users/{friend.uuid}", {"groups": [team]})
    assert (await client.get("/kv/shared", headers=friend.headers)).status_code == 200


async def test_creating_tokens_does_not_flush_other_cached_tokens(anode):
    admin = Admin(anode)
    actor = await admin.actor("cached")
    client = client_of(anode)
    await client.get("/kv/x", headers=actor.headers)
    misses = anode.auth.counters["cache_misses"]
    await admin.token(actor.uuid, ["read"])
    await client.get("/kv/x", headers=actor.headers)
    assert anode.auth.counters["cache_misses"] == misses


async def test_failed_logins_count_against_the_client_address(start_node):
    node = await start_node(
        auth_enabled=True, rate_limiting_enabled=True, rate_limit_requests=20, rate_limit_window=60
    )
    client = client_of(node)
    attacker, other = {"client": ("10.9.9.9", 1)}, {"client": ("10.1.1.1", 1)}
    statuses = [
        (await client.get("/kv/x", headers=bearer(f"guess{i}"), scope_base=attacker)).status_code
        for i in range(40)
    ]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    admin = Admin(node)
    response = await client.get("/kv/x", headers=admin.headers, scope_base=other)
    assert response.status_code == 404


async def test_without_a_cluster_secret_tokens_use_a_node_local_key_kept_across_restarts(
    start_node,
):
    node = await start_node(auth_enabled=True, cluster_secret="")
    token = root_token(node)
    assert (await client_of(node).get("/api/users", headers=bearer(token))).status_code == 200
    forged_token = jwt.encode(
        {"iss": "kvs", "sub": "x", "jti": "y", "iat": 1, "nbf": 1, "exp": 2**40},
        tokens.signing_key(""),
        algorithm="HS256",
    )
    await expect_error(await client_of(node).get("/kv/x", headers=bearer(forged_token)), 401)
    node.request_shutdown()
    with trio.fail_after(10):
        while node.store is not None:
            await trio.sleep(0.01)
    again = await start_node(auth_enabled=True, cluster_secret="")
    assert (await client_of(again).get("/api/users", headers=bearer(token))).status_code == 200


async def test_backup_endpoints_answer_with_the_backup_scopes(anode, tmp_path):
    admin = Admin(anode)
    user = await admin.user("operator")
    token, _ = await admin.token(user, ["admin:backup:read", "admin:backup:create"])
    client = client_of(anode)
    status = await expect_json(await client.get("/api/backup/status", headers=bearer(token)))
    assert status["count"] == 0
    taken = await expect_json(await client.post("/api/backup/run", headers=bearer(token)))
    assert taken["size"] > 0
