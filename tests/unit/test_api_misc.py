"""HTTP tests for `/health`, `/kv_changes`, `/api/data/{key}/history` and generic errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import batch, client_of, expect_error, expect_json, put

# --- /health -----------------------------------------------------------------------------------


async def test_health_reports_status_node_mode_keys_and_uptime(client):
    body = await expect_json(await client.get("/health"))
    assert set(body) == {"status", "node_id", "mode", "keys", "uptime_s"}
    assert body["status"] == "ok"
    assert body["node_id"] == "test-node"
    assert body["mode"] == "normal"
    assert body["keys"] == 0
    assert isinstance(body["uptime_s"], (int, float)) and body["uptime_s"] >= 0


async def test_health_key_count_follows_puts_and_deletes(client):
    async def keys() -> int:
        return (await expect_json(await client.get("/health")))["keys"]

    await put(client, "a", 1)
    await put(client, "b", 1)
    assert await keys() == 2
    await put(client, "a", 2)  # an overwrite is not a new key
    assert await keys() == 2
    assert (await client.delete("/kv/a")).status_code == 204
    assert await keys() == 1
    await expect_json(
        await batch(client, [{"op": "put", "key": f"n/{i}", "data": i} for i in range(10)])
    )
    assert await keys() == 11


async def test_health_in_read_only_mode(start_node):
    node = await start_node(read_only=True)
    body = await expect_json(await client_of(node).get("/health"))
    assert body["mode"] == "read-only" and body["status"] == "ok"


async def test_health_only_answers_get(client):
    response = await client.post("/health")
    await expect_error(response, 405)
    assert "GET" in response.headers["Allow"]


# --- /kv_changes -------------------------------------------------------------------------------


async def changes(client: Any, **query: Any) -> dict[str, Any]:
    return await expect_json(await client.get("/kv_changes", query_string=query))


async def test_changes_oldest_first_since_exclusive_with_deleted_flag(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    a = await put(client, "a", 1)
    wall.advance(1)
    b = await put(client, "b", 1)
    wall.advance(1)
    c = await put(client, "c", 1)
    wall.advance(1)
    assert (await client.delete("/kv/a")).status_code == 204
    t_delete = wall.now_ms
    wall.advance(1)

    body = await changes(client)
    assert [(ch["key"], ch["deleted"]) for ch in body["changes"]] == [
        ("b", False),
        ("c", False),
        ("a", True),  # each key once, at its latest change
    ]
    assert body["changes"][0] == {
        "key": "b",
        "uuid": b["uuid"],
        "timestamp": b["timestamp"],
        "deleted": False,
    }
    assert body["changes"][2]["timestamp"] == t_delete
    assert body["changes"][2]["uuid"] != a["uuid"]
    assert body["next"] == t_delete and body["more"] is False

    after_b = await changes(client, since=b["timestamp"])
    assert [ch["key"] for ch in after_b["changes"]] == ["c", "a"]
    before_b = await changes(client, since=b["timestamp"] - 1)
    assert [ch["key"] for ch in before_b["changes"]] == ["b", "c", "a"]
    at_end = await changes(client, since=t_delete)
    assert at_end == {"changes": [], "next": t_delete, "more": False}
    assert c["timestamp"] < t_delete


async def test_changes_pages_resume_without_gaps_or_duplicates_in_one_millisecond(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    keys = [f"same/{i:02d}" for i in range(12)]
    for key in keys[:4]:
        await put(client, key, 1)
    await expect_json(await batch(client, [{"op": "put", "key": k, "data": 1} for k in keys[4:]]))
    wall.advance(0.001)  # close the millisecond every write landed in
    seen: list[str] = []
    since = 0
    for _ in range(20):
        page = await changes(client, since=since, limit=3)
        seen += [ch["key"] for ch in page["changes"]]
        since = page["next"]
        if not page["changes"]:
            break
    assert sorted(seen) == keys  # every key, each exactly once
    assert len(seen) == len(set(seen))


async def test_changes_pages_across_many_milliseconds(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    expected = []
    for ms in range(6):
        ops = [{"op": "put", "key": f"m{ms}/{i}", "data": i} for i in range(ms % 3 + 1)]
        await expect_json(await batch(client, ops))
        expected += [op["key"] for op in ops]
        wall.advance(0.001)
    for limit in (1, 2, 3, 4, 100):
        seen: list[str] = []
        since = 0
        while True:
            page = await changes(client, since=since, limit=limit)
            if not page["changes"]:
                assert page["more"] is False
                break
            stamps = [ch["timestamp"] for ch in page["changes"]]
            assert stamps == sorted(stamps)
            assert page["next"] == stamps[-1]
            seen += [ch["key"] for ch in page["changes"]]
            since = page["next"]
        assert seen == expected, limit


async def test_changes_never_skip_a_write_in_the_current_millisecond(start_node, wall):
    """Regression: a page must not end in the still-open millisecond, or a write landing in it
    after the read is lost (`since` is exclusive)."""
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    await put(client, "early", 1)
    wall.advance(0.001)
    await put(client, "a", 1)
    await put(client, "b", 1)
    page = await changes(client)
    assert [ch["key"] for ch in page["changes"]] == ["early"]  # a, b: their ms is still open
    await put(client, "c", 1)  # same millisecond as a and b
    wall.advance(0.001)
    page = await changes(client, since=page["next"])
    assert [ch["key"] for ch in page["changes"]] == ["a", "b", "c"]


async def test_changes_see_writes_made_later(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    await put(client, "one", 1)
    wall.advance(1)
    first = await changes(client)
    assert [ch["key"] for ch in first["changes"]] == ["one"]
    await put(client, "two", 1)
    await put(client, "one", 2)  # a rewritten key moves to its new position
    wall.advance(1)
    second = await changes(client, since=first["next"])
    assert [ch["key"] for ch in second["changes"]] == ["two", "one"]


@pytest.mark.parametrize("query", ["since=abc", "since=-1", "since=1.5", "limit=0", "limit=x"])
async def test_changes_bad_query_is_400(client, query):
    error = await expect_error(await client.get(f"/kv_changes?{query}"), 400)
    assert query.split("=")[0] in error["error"]


async def test_changes_limit_is_clamped_not_refused(client):
    body = await changes(client, limit=10**9)
    assert body["changes"] == []


# --- history -----------------------------------------------------------------------------------


async def test_history_lists_previous_versions_newest_first(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    written = []
    for version in range(5):
        written.append(await put(client, "doc", {"v": version}))
        wall.advance(1)
    body = await expect_json(await client.get("/api/data/doc/history"))
    assert body == {
        "key": "doc",
        "versions": [
            {"uuid": written[i]["uuid"], "timestamp": written[i]["timestamp"], "data": {"v": i}}
            for i in (3, 2, 1)  # depth 3 by default; the current version (4) is not history
        ],
    }
    for n, i in ((1, 3), (2, 2), (3, 1)):
        one = await expect_json(await client.get(f"/api/data/doc/history/{n}"))
        assert one == {
            "key": "doc",
            "version": n,
            "uuid": written[i]["uuid"],
            "timestamp": written[i]["timestamp"],
            "data": {"v": i},
        }
    error = await expect_error(await client.get("/api/data/doc/history/4"), 404)
    assert "past the end" in error["error"]


@pytest.mark.parametrize("n", ["0", "-1", "x", "1.5", "one"])
async def test_history_index_that_is_not_a_positive_integer_is_400(client, n):
    await put(client, "doc", 1)
    await put(client, "doc", 2)
    error = await expect_error(await client.get(f"/api/data/doc/history/{n}"), 400)
    assert "positive integer" in error["error"]


async def test_history_of_a_new_or_missing_key_is_empty(client):
    await put(client, "fresh", 1)
    assert await expect_json(await client.get("/api/data/fresh/history")) == {
        "key": "fresh",
        "versions": [],
    }
    await expect_error(await client.get("/api/data/fresh/history/1"), 404)
    assert await expect_json(await client.get("/api/data/missing/history")) == {
        "key": "missing",
        "versions": [],
    }


async def test_history_shows_tombstones(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    first = await put(client, "t", {"v": 1})
    wall.advance(1)
    assert (await client.delete("/kv/t")).status_code == 204
    deleted_at = wall.now_ms
    wall.advance(1)
    # While deleted, the tombstone is the current version: history holds what was deleted.
    body = await expect_json(await client.get("/api/data/t/history"))
    assert body["versions"] == [
        {"uuid": first["uuid"], "timestamp": first["timestamp"], "data": {"v": 1}}
    ]
    tombstone = (await changes(client))["changes"][0]
    assert tombstone["key"] == "t" and tombstone["deleted"] is True

    await put(client, "t", {"v": 2})
    body = await expect_json(await client.get("/api/data/t/history"))
    assert body["versions"] == [
        {"uuid": tombstone["uuid"], "timestamp": deleted_at, "deleted": True},
        {"uuid": first["uuid"], "timestamp": first["timestamp"], "data": {"v": 1}},
    ]
    one = await expect_json(await client.get("/api/data/t/history/1"))
    assert one == {
        "key": "t",
        "version": 1,
        "uuid": tombstone["uuid"],
        "timestamp": deleted_at,
        "deleted": True,
    }


async def test_history_depth_follows_config(start_node):
    node = await start_node(revision_history_depth=5)
    client = client_of(node)
    for version in range(8):
        await put(client, "doc", version)
    body = await expect_json(await client.get("/api/data/doc/history"))
    assert [v["data"] for v in body["versions"]] == [6, 5, 4, 3, 2]
    assert (await expect_json(await client.get("/api/data/doc/history/5")))["data"] == 2
    await expect_error(await client.get("/api/data/doc/history/6"), 404)


async def test_history_disabled_keeps_nothing(start_node):
    node = await start_node(revision_history_enabled=False)
    client = client_of(node)
    for version in range(3):
        await put(client, "doc", version)
    assert (await client.delete("/kv/doc")).status_code == 204
    await put(client, "doc", 9)
    body = await expect_json(await client.get("/api/data/doc/history"))
    assert body == {"key": "doc", "versions": []}
    await expect_error(await client.get("/api/data/doc/history/1"), 404)


async def test_history_of_keys_that_look_like_the_route(client):
    for key in ("a/history", "history", "a/history/2"):
        await put(client, key, 1)
        await put(client, key, 2)
        body = await expect_json(await client.get(f"/api/data/{key}/history"))
        assert body["key"] == key and [v["data"] for v in body["versions"]] == [1]
        one = await expect_json(await client.get(f"/api/data/{key}/history/1"))
        assert one["key"] == key and one["data"] == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/data/a//b/history", 400),
        ("/api/data/_x/history", 400),
        ("/api/data/a/../history", 400),
        ("/api/data/a%00/history", 400),
        ("/api/data/doc", 404),
        ("/api/data/doc/history/1/2", 404),
        ("/api/data/doc/versions", 404),
    ],
)
async def test_bad_history_paths(client, path, status):
    await expect_error(await client.get(path), status)


async def test_history_only_answers_get(client):
    await put(client, "doc", 1)
    for method in ("PUT", "POST", "DELETE"):
        await expect_error(await client.open("/api/data/doc/history", method=method), 405)


# --- generic errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/nope", "/kv_nope", "/api/nope", "/health/x", "/metricz"])
async def test_unknown_routes_are_404_json(client, path):
    for method in ("GET", "PUT", "DELETE", "POST"):
        await expect_error(await client.open(path, method=method, data=b"1"), 404)
