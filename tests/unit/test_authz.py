"""Authorization leaks of issue 12, one test (or a few) per item: token listing, deleted and
expired private keys' history, `/kv_changes`, failed logins and the audit log, the one read
rule every read path asks, and the other paths checked for the same leaks. The full grid of
endpoints x callers x key states is tests/unit/test_authz_matrix.py."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from kvs.api import guard
from kvs.auth.permissions import ALL_SCOPES, ANONYMOUS, Principal, may_read
from kvs.auth.service import FAILED_AUTH_PER_CLIENT, FAILED_AUTH_PER_NODE
from kvs.model import SYSTEM_PREFIX, Record, Version
from kvs.store import Delete, Put
from tests.support.api import client_of, expect_error, expect_json
from tests.support.auth import Admin, bearer
from tests.support.watch import open_watch

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
async def anode(start_node, wall):
    return await start_node(wall_ms=wall, auth_enabled=True, tamper_logging_enabled=True)


async def private_key(anode, owner, key: str, *values: str, ttl: str = "") -> None:
    """`key` written by `owner` (first value), made owner-only (0xF00), then rewritten."""
    client = client_of(anode)
    first, *rest = values
    await expect_json(await client.put(f"/kv/{key}", data=first.encode(), headers=owner.headers))
    meta = b'{"permissions": 3840}'
    await expect_json(await client.put(f"/kv/{key}/metadata", data=meta, headers=owner.headers))
    for value in rest:
        path = f"/kv/{key}?ttl={ttl}" if ttl else f"/kv/{key}"
        await expect_json(await client.put(path, data=value.encode(), headers=owner.headers))


def audited_failures(node) -> int:
    return sum(1 for e in node.audit.read(0, 100_000) if e.action == "auth.failed")


# --- 1. listing tokens needs its admin scope ---------------------------------------------------


@pytest.mark.parametrize("anonymous_read", [False, True])
async def test_anonymous_callers_never_list_tokens(start_node, anonymous_read):
    node = await start_node(auth_enabled=True, allow_anonymous_read=anonymous_read)
    admin = Admin(node)
    actor = await admin.actor("someone")
    client = client_of(node)
    for path in ("/api/tokens", "/api/tokens?user_uuid=", f"/api/tokens?user_uuid={actor.uuid}"):
        response = await client.get(path)
        body = await expect_error(response, 401)
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert actor.token_id not in json.dumps(body) and actor.uuid not in json.dumps(body)


async def test_token_listing_needs_admin_tokens_read_except_for_your_own(anode):
    admin = Admin(anode)
    reader = await admin.actor("reader", scopes=["read"])
    lister = await admin.actor("lister", scopes=["admin:tokens:read"])
    legacy = await admin.actor("legacy", scopes=["admin:users:read"])
    client = client_of(anode)
    await expect_error(await client.get("/api/tokens", headers=reader.headers), 403)
    other = f"/api/tokens?user_uuid={lister.uuid}"
    await expect_error(await client.get(other, headers=reader.headers), 403)
    own = await expect_json(
        await client.get(f"/api/tokens?user_uuid={reader.uuid}", headers=reader.headers)
    )
    assert [t["id"] for t in own["tokens"]] == [reader.token_id]
    for actor in (lister, legacy):  # the scope, or the one that listed tokens before it
        listed = await expect_json(await client.get("/api/tokens", headers=actor.headers))
        assert {reader.token_id, lister.token_id, legacy.token_id} <= {
            t["id"] for t in listed["tokens"]
        }
    assert "admin:tokens:read" in ALL_SCOPES


# --- 2. a deleted or expired private key's values stay private ------------------------------------


@pytest.mark.parametrize("state", ["deleted", "expired", "expired and swept"])
async def test_history_of_a_gone_private_key_stays_private(start_node, wall, state):
    node = await start_node(wall_ms=wall, auth_enabled=True)
    admin = Admin(node)
    owner = await admin.actor("owner")
    reader = await admin.actor("reader", scopes=["read"])
    await private_key(node, owner, "p/k", '"SECRET-1"', '"SECRET-2"', ttl="5s")
    client = client_of(node)
    if state == "deleted":
        assert (await client.delete("/kv/p/k", headers=owner.headers)).status_code == 204
    else:
        wall.advance(10)
        if state == "expired and swept":
            await node.sweep()
    for path in ("/api/data/p/k/history", "/api/data/p/k/history/1"):
        for headers, status in ((reader.headers, 403), ({}, 401)):
            body = await expect_error(await client.get(path, headers=headers), status)
            assert "SECRET" not in json.dumps(body)
    # The owner still reads it (until the sweep, which drops an expired key's history).
    mine = await expect_json(await client.get("/api/data/p/k/history", headers=owner.headers))
    assert ("SECRET" in json.dumps(mine)) == (state != "expired and swept")


async def test_history_of_a_deleted_private_key_with_history_off(start_node):
    node = await start_node(auth_enabled=True, revision_history_enabled=False)
    admin = Admin(node)
    owner = await admin.actor("owner")
    reader = await admin.actor("reader", scopes=["read"])
    await private_key(node, owner, "p/k", '"SECRET-1"', '"SECRET-2"')
    client = client_of(node)
    assert (await client.delete("/kv/p/k", headers=owner.headers)).status_code == 204
    await expect_error(await client.get("/api/data/p/k/history", headers=reader.headers), 403)
    mine = await expect_json(await client.get("/api/data/p/k/history", headers=owner.headers))
    assert mine["versions"] == []


async def test_a_deleted_private_key_re_created_by_another_user_keeps_its_past_private(
    start_node,
):
    # Found by the HTTP fuzzer: a writer re-created a deleted owner-only key with the default
    # bits, and its history then showed the owner's private values to every reader.
    node = await start_node(auth_enabled=True, allow_anonymous_read=True)
    admin = Admin(node)
    owner = await admin.actor("owner")
    writer = await admin.actor("writer", scopes=["read", "write"])
    reader = await admin.actor("reader", scopes=["read"])
    await private_key(node, owner, "p/k", '"SECRET-1"', '"SECRET-2"')
    client = client_of(node)
    assert (await client.delete("/kv/p/k", headers=owner.headers)).status_code == 204
    await expect_json(await client.put("/kv/p/k", data=b'"public"', headers=writer.headers))
    for headers in (writer.headers, reader.headers, {}):
        seen = await expect_json(await client.get("/api/data/p/k/history", headers=headers))
        assert "SECRET" not in json.dumps(seen)
        assert (await client.get("/api/data/p/k/history/1", headers=headers)).status_code == 404
    # Loosening the bits later opens new versions, not those written while it was private.
    # (A new key starts readable: a placeholder first, as the README advises.)
    await private_key(node, owner, "q/k", '"placeholder"', '"SECRET-3"', '"SECRET-4"')
    loose = b'{"permissions": 3889}'
    await expect_json(await client.put("/kv/q/k/metadata", data=loose, headers=owner.headers))
    seen = await expect_json(await client.get("/api/data/q/k/history", headers=reader.headers))
    assert "SECRET-3" not in json.dumps(seen)
    mine = await expect_json(await client.get("/api/data/q/k/history", headers=owner.headers))
    assert "SECRET-3" in json.dumps(mine)


# --- 3. /kv_changes lists only what the caller may read, and pages past the rest ------------------


async def test_kv_changes_hides_unreadable_keys_and_pages_past_them(start_node, wall):
    node = await start_node(wall_ms=wall, auth_enabled=True)
    admin = Admin(node)
    owner = await admin.actor("owner")
    reader = await admin.actor("reader", scopes=["read"])
    client = client_of(node)
    visible = []
    for i in range(30):  # runs of hidden keys longer than a page, some sharing a millisecond
        wall.advance(0.001 if i % 3 else 0)
        if i % 7 == 0:
            visible.append(f"open/{i}")
            await expect_json(await client.put(f"/kv/open/{i}", data=b"1", headers=owner.headers))
        else:
            await private_key(node, owner, f"hidden-{i}", "1")
            if i % 5 == 0:  # a private key's tombstone is private too
                await client.delete(f"/kv/hidden-{i}", headers=owner.headers)
    wall.advance(1)
    seen, since, pages = [], 0, 0
    while True:
        pages += 1
        assert pages < 100, "paging does not get past the hidden keys"
        page = await expect_json(
            await client.get(f"/kv_changes?since={since}&limit=2", headers=reader.headers)
        )
        assert "hidden" not in json.dumps(page)
        seen += [c["key"] for c in page["changes"]]
        assert page["next"] >= since
        if not page["more"]:
            break
        assert page["next"] > since  # always past what was scanned, shown or not
        since = page["next"]
    assert seen == visible
    everything = await expect_json(
        await client.get("/kv_changes?limit=1000", headers=owner.headers)
    )
    assert len(everything["changes"]) == 30


# --- 4. failed logins are limited before anything is written ---------------------------------------


async def test_failed_logins_over_the_rate_limit_are_not_audited(start_node):
    node = await start_node(
        auth_enabled=True,
        tamper_logging_enabled=True,
        rate_limiting_enabled=True,
        rate_limit_requests=20,
        rate_limit_window=60,
    )
    stand_still = lambda: 1_000.0  # noqa: E731 (no window boundary while the test runs)
    node.auth.limiter.now = node.auth.failures_per_client.now = stand_still
    client = client_of(node)
    attacker = {"client": ("10.9.9.9", 1)}
    for i in range(60):
        response = await client.get("/kv/x", headers=bearer(f"guess{i}"), scope_base=attacker)
        if i >= 20:
            await expect_error(response, 429)
            assert int(response.headers["Retry-After"]) >= 1
    assert audited_failures(node) == 20


async def test_failed_logins_have_their_own_budget_even_without_rate_limiting(anode, caplog):
    caplog.set_level(logging.DEBUG)
    # The budgets' clock stands still: a window boundary crossed while the test runs would
    # let one more attempt through (the sliding window's previous-window weight dips).
    anode.auth.failures_per_client.now = anode.auth.failures_per_node.now = lambda: 1_000.0
    client = client_of(anode)
    attacker = {"client": ("10.9.9.9", 1)}
    statuses = []
    for i in range(FAILED_AUTH_PER_CLIENT + 20):
        response = await client.get("/kv/x", headers=bearer(f"guess{i}"), scope_base=attacker)
        statuses.append(response.status_code)
    assert statuses == [401] * FAILED_AUTH_PER_CLIENT + [429] * 20
    assert audited_failures(anode) == FAILED_AUTH_PER_CLIENT
    assert anode.auth.counters["auth_failed_limited"] == 20
    assert not [r for r in caplog.records if "guess" in r.getMessage()]
    # A valid token from the same address is not refused by the failure budget.
    admin = Admin(anode)
    response = await client.get("/kv/x", headers=admin.headers, scope_base=attacker)
    await expect_error(response, 404)


async def test_failed_logins_from_many_addresses_are_bounded_per_node(anode):
    client = client_of(anode)
    refused = 0
    for i in range(FAILED_AUTH_PER_NODE + 40):
        address = {"client": (f"10.{i // 250}.{i % 250}.1", 1)}
        response = await client.get("/kv/x", headers=bearer("guess"), scope_base=address)
        refused += response.status_code == 429
    assert refused == 40
    assert audited_failures(anode) == FAILED_AUTH_PER_NODE


# --- 5. one rule decides what a caller may read ----------------------------------------------------


def _record(key: str, owner: str = "u1", permissions: int = 0xF00, deleted: bool = False) -> Record:
    value = None if deleted else b"1"
    return Record(key, value, Version(1, 1, "n", "x"), None, owner, "g", permissions)


def test_may_read_is_the_read_bit_of_the_last_live_version_and_never_system_records():
    owner = Principal("u1", frozenset(), "", frozenset({"read"}), "t", 0)
    other = Principal("u2", frozenset(), "", frozenset({"read"}), "t", 0)
    for deleted in (False, True):  # a tombstone is judged by the bits it kept
        assert may_read(owner, True, _record("k", deleted=deleted))
        assert not may_read(other, True, _record("k", deleted=deleted))
        assert not may_read(ANONYMOUS, True, _record("k", deleted=deleted))
        assert may_read(other, False, _record("k", deleted=deleted))  # auth off
    for auth in (True, False):
        assert not may_read(owner, auth, _record(SYSTEM_PREFIX + "tokens/t", permissions=0xFFF))


async def test_a_delete_and_an_expiry_keep_the_owner_group_and_bits(node, wall):
    store = node.store
    now = node.clock.wall_ms()
    await store.write([Put("d", b"1", None, None, "u1", "g1", meta=("u1", "g1", 0xF00))])
    await store.write([Put("e", b"1", now + 1, None, "u1", "g1", meta=("u1", "g1", 0xF00))])
    await store.write([Delete("d")])
    await trio.sleep(0.01)
    await node.sweep()
    for key in ("d", "e"):
        record = store.get(key)
        assert record is not None and record.deleted
        assert (record.owner, record.group, record.permissions) == ("u1", "g1", 0xF00)


async def test_every_read_path_asks_the_one_rule(node, nursery, monkeypatch, wall):
    """With the rule replaced by one that refuses a single key -- auth is off, so nothing
    else would -- every read path hides or refuses that key: they all ask it."""
    client = client_of(node)
    for key in ("spy/denied", "spy/allowed"):
        await expect_json(await client.put(f"/kv/{key}", data=b'"VALUE"'))
        await expect_json(await client.put(f"/kv/{key}", data=b'"VALUE2"'))
    asked: list[str] = []

    def rule(principal, auth_enabled, record):
        asked.append(record.key)
        return record.key != "spy/denied" and may_read(principal, auth_enabled, record)

    monkeypatch.setattr(guard, "may_read", rule)
    watch = await open_watch(nursery, node)
    for path in ("/kv/spy/denied", "/kv/spy/denied/metadata", "/api/data/spy/denied/history"):
        await expect_error(await client.get(path), 401)  # refused; the caller is anonymous
    assert (await client.head("/kv/spy/denied")).status_code == 401
    for path in ("/kv/spy/_ls", "/kv/spy/_tree", "/kv/_tree?format=nested", "/kv_changes"):
        body = json.dumps(await expect_json(await client.get(path)))
        assert "spy/allowed" in body or "allowed" in body
        assert "denied" not in body
    replay = await open_watch(nursery, node, query="since=0")
    await replay.close()
    assert b"spy/allowed" in replay.body and b"spy/denied" not in replay.body
    await client.delete("/kv/spy/denied")
    await client.delete("/kv/spy/allowed")
    await watch.wait_for(b'"spy/allowed"')
    await watch.close()
    assert b"spy/denied" not in watch.body
    assert {"spy/denied", "spy/allowed"} <= set(asked)


async def test_a_writer_who_may_not_read_gets_no_version_uuid_in_a_conflict(anode):
    admin = Admin(anode)
    owner = await admin.actor("owner")
    writer = await admin.actor("writer")
    client = client_of(anode)
    await expect_json(await client.put("/kv/drop", data=b"1", headers=owner.headers))
    meta = b'{"permissions": 3842}'  # 0xF02: others may write, not read
    current = await expect_json(
        await client.put("/kv/drop/metadata", data=meta, headers=owner.headers)
    )
    assert current["permissions"] == 0xF02
    uuid = anode.store.get("drop").version.uuid
    stale = {"If-Match": "00000000-0000-0000-0000-000000000000"}
    response = await client.put("/kv/drop", data=b"2", headers={**writer.headers, **stale})
    body = await expect_error(response, 409)
    assert body["current_uuid"] is None and uuid not in json.dumps(body)
    response = await client.put("/kv/drop", data=b"2", headers={**owner.headers, **stale})
    assert (await expect_error(response, 409))["current_uuid"] == uuid


# --- 6. the other paths ------------------------------------------------------------------------------


async def test_ls_shows_no_directory_whose_keys_are_all_hidden(anode):
    admin = Admin(anode)
    owner = await admin.actor("owner")
    reader = await admin.actor("reader", scopes=["read"])
    client = client_of(anode)
    await expect_json(await client.put("/kv/d/open", data=b"1", headers=owner.headers))
    for i in range(5):
        await private_key(anode, owner, f"d/secret-dir/k{i}", "1")
    await private_key(anode, owner, "d/mixed/hidden", "1")
    await expect_json(await client.put("/kv/d/mixed/shown", data=b"1", headers=owner.headers))
    ls = await expect_json(
        await client.get("/kv/d/_ls?include_metadata=true", headers=reader.headers)
    )
    assert [c["subkey"] for c in ls["children"]] == ["mixed", "open"] and ls["total"] == 2
    assert "secret-dir" not in json.dumps(ls)
    mine = await expect_json(await client.get("/kv/d/_ls", headers=owner.headers))
    assert [c["subkey"] for c in mine["children"]] == ["mixed", "open", "secret-dir"]


async def test_listing_totals_do_not_count_hidden_keys_past_the_limit(anode):
    admin = Admin(anode)
    owner = await admin.actor("owner")
    reader = await admin.actor("reader", scopes=["read"])
    client = client_of(anode)
    await expect_json(await client.put("/kv/t/a", data=b"1", headers=owner.headers))
    for i in range(4):
        await private_key(anode, owner, f"t/z{i}", "1")
    tree = await expect_json(await client.get("/kv/t/_tree?limit=1", headers=reader.headers))
    assert tree["total"] == 1 and not tree["truncated"]
    ls = await expect_json(await client.get("/kv/t/_ls?limit=1", headers=reader.headers))
    assert ls["total"] == 1 and not ls["truncated"]


async def test_reading_a_private_key_answers_the_same_live_or_gone(anode, wall):
    """A key the caller may not read is a 403 whether it is live, deleted or expired: the
    caller cannot watch it disappear. Its metadata likewise."""
    admin = Admin(anode)
    owner = await admin.actor("owner")
    reader = await admin.actor("reader", scopes=["read"])
    await private_key(anode, owner, "gone", '"SECRET"')
    await private_key(anode, owner, "ttl", '"SECRET"', '"SECRET"', ttl="5s")
    client = client_of(anode)
    for path in ("/kv/gone", "/kv/gone/metadata", "/kv/ttl", "/kv/ttl/metadata"):
        await expect_error(await client.get(path, headers=reader.headers), 403)
    assert (await client.delete("/kv/gone", headers=owner.headers)).status_code == 204
    wall.advance(10)
    for path in ("/kv/gone", "/kv/gone/metadata", "/kv/ttl", "/kv/ttl/metadata"):
        await expect_error(await client.get(path, headers=reader.headers), 403)
        await expect_error(await client.get(path, headers=owner.headers), 404)
    await expect_error(await client.get("/kv/never-written", headers=reader.headers), 404)
