"""HTTP tests for `GET /kv/{prefix}/_ls` and `GET /kv/{prefix}/_tree` (issue 2)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.api import batch, client_of, expect_error, expect_json, put


async def fill(client: Any, keys: list[str], value: Any = 1) -> dict[str, Any]:
    """Write `keys` in batches of 1000; return {key: result}."""
    out: dict[str, Any] = {}
    for start in range(0, len(keys), 1000):
        ops = [{"op": "put", "key": k, "data": value} for k in keys[start : start + 1000]]
        for result in (await expect_json(await batch(client, ops)))["results"]:
            out[result["key"]] = result
    return out


TREE = ["a", "a/b/c", "a/b/d", "a/e", "a/f/g/h", "z", "a0/x", "a-b", "ab", "a/é"]


# --- _ls ---------------------------------------------------------------------------------------


async def test_ls_lists_direct_children_sorted(client):
    written = await fill(client, TREE)
    body = await expect_json(await client.get("/kv/a/_ls"))
    assert body == {
        "path": "a",
        "children": [
            {"subkey": "b"},
            {"subkey": "e", "timestamp": written["a/e"]["timestamp"]},
            {"subkey": "f"},
            {"subkey": "é", "timestamp": written["a/é"]["timestamp"]},
        ],
        "total": 4,
        "truncated": False,
    }
    body = await expect_json(await client.get("/kv/a/b/_ls"))
    assert [c["subkey"] for c in body["children"]] == ["c", "d"]
    # Keys that merely start with the same characters ("a0/x", "a-b", "ab") are not children.
    root = await expect_json(await client.get("/kv/_ls"))
    assert root["path"] == ""
    assert [c["subkey"] for c in root["children"]] == ["a", "a-b", "a0", "ab", "z"]
    assert root["children"][0]["timestamp"] == written["a"]["timestamp"]  # a is a key too
    assert "timestamp" not in root["children"][2]  # a0 only has children


async def test_ls_sorts_by_utf8_bytes(client):
    names = ["b", "B", "a", "é", "ä", "Z", "10", "9", "~", "日"]
    await fill(client, [f"s/{n}" for n in names])
    body = await expect_json(await client.get("/kv/s/_ls"))
    assert [c["subkey"] for c in body["children"]] == sorted(names, key=str.encode)


async def test_ls_include_metadata(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    written = await put(client, "m/key", {"v": "12345"}, query_string={"ttl": "1h"})
    await put(client, "m/dir/child", 1)
    await put(client, "m/both", 2)
    await put(client, "m/both/child", 3)
    body = await expect_json(await client.get("/kv/m/_ls?include_metadata=true"))
    by_name = {c["subkey"]: c for c in body["children"]}
    assert by_name["key"] == {
        "subkey": "key",
        "timestamp": written["timestamp"],
        "is_key": True,
        "has_children": False,
        "uuid": written["uuid"],
        "size": len(b'{"v": "12345"}'),
        "expires_at": wall.now_ms + 3600_000,
    }
    assert by_name["dir"] == {"subkey": "dir", "is_key": False, "has_children": True}
    assert by_name["both"]["is_key"] is True and by_name["both"]["has_children"] is True
    assert "expires_at" not in by_name["both"]
    for flag in ("false", "0", ""):
        plain = await expect_json(await client.get(f"/kv/m/_ls?include_metadata={flag}"))
        assert "is_key" not in plain["children"][0]


async def test_ls_limit_total_and_truncated(client):
    await fill(client, [f"p/{i:04d}" for i in range(1001)])
    default = await expect_json(await client.get("/kv/p/_ls"))
    assert len(default["children"]) == 100
    assert default["children"][-1]["subkey"] == "0099"
    assert default["total"] == 1001 and default["truncated"] is True
    small = await expect_json(await client.get("/kv/p/_ls?limit=3"))
    assert [c["subkey"] for c in small["children"]] == ["0000", "0001", "0002"]
    clamped = await expect_json(await client.get("/kv/p/_ls?limit=5000"))
    assert len(clamped["children"]) == 1000
    assert clamped["total"] == 1001 and clamped["truncated"] is True
    exact = await expect_json(await client.get("/kv/p/0000/_ls"))
    assert exact == {"path": "p/0000", "children": [], "total": 0, "truncated": False}


async def test_ls_and_tree_skip_deleted_and_expired_keys(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    await fill(client, ["d/live", "d/gone", "d/dir/only", "d/dir2/x", "d/dir2/y"])
    await put(client, "d/short", 1, query_string={"ttl": "10s"})
    await put(client, "d/dir3/short", 1, query_string={"ttl": "10s"})
    for key in ("d/gone", "d/dir/only", "d/dir2/x"):
        assert (await client.delete(f"/kv/{key}")).status_code == 204
    wall.advance(10)
    ls = await expect_json(await client.get("/kv/d/_ls"))
    assert [c["subkey"] for c in ls["children"]] == ["dir2", "live"]
    assert ls["total"] == 2
    tree = await expect_json(await client.get("/kv/d/_tree"))
    assert [k["key"] for k in tree["keys"]] == ["d/dir2/y", "d/live"]
    assert tree["total"] == 2


@pytest.mark.parametrize(
    "query",
    ["limit=abc", "limit=0", "limit=-1", "limit=1.5", "include_metadata=maybe"],
)
async def test_ls_bad_query_is_400(client, query):
    error = await expect_error(await client.get(f"/kv/a/_ls?{query}"), 400)
    assert query.split("=")[0] in error["error"]


@pytest.mark.parametrize(
    "path",
    ["/kv/a//_ls", "/kv//_ls", "/kv/_x/_ls", "/kv/./_ls", "/kv/a/../_tree", "/kv/a%00/_tree"],
)
async def test_listing_an_invalid_prefix_is_400(client, path):
    error = await expect_error(await client.get(path), 400)
    assert "invalid key" in error["error"]


@pytest.mark.parametrize("path", ["/kv/_ls", "/kv/a/_ls", "/kv/_tree", "/kv/a/_tree"])
@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST", "PATCH"])
async def test_listing_with_another_method_is_405(client, path, method):
    response = await client.open(path, method=method, data=b"1")
    await expect_error(response, 405)
    assert response.headers["Allow"] == "GET, HEAD"


# --- _tree -------------------------------------------------------------------------------------


async def test_tree_lists_every_key_below_the_prefix_flat(client):
    written = await fill(client, TREE)
    body = await expect_json(await client.get("/kv/a/_tree"))
    expected = ["a/b/c", "a/b/d", "a/e", "a/f/g/h", "a/é"]
    assert body == {
        "path": "a",
        "keys": [
            {"key": k, "uuid": written[k]["uuid"], "timestamp": written[k]["timestamp"]}
            for k in expected
        ],
        "total": 5,
        "truncated": False,
    }
    same = await expect_json(await client.get("/kv/a/_tree?format=json"))
    assert same == body
    root = await expect_json(await client.get("/kv/_tree"))
    assert [k["key"] for k in root["keys"]] == sorted(TREE, key=str.encode)


async def test_tree_depth(client):
    await fill(client, TREE)
    keys = {}
    for depth in (1, 2, 3, 100):
        body = await expect_json(await client.get(f"/kv/a/_tree?depth={depth}"))
        keys[depth] = [k["key"] for k in body["keys"]]
        assert body["total"] == len(keys[depth])
    assert keys[1] == ["a/e", "a/é"]
    assert keys[2] == ["a/b/c", "a/b/d", "a/e", "a/é"]
    assert keys[3] == keys[100] == ["a/b/c", "a/b/d", "a/e", "a/f/g/h", "a/é"]


async def test_tree_nested_format(client):
    written = await fill(client, ["n/x", "n/x/y", "n/x/y/z", "n/w/v"])
    body = await expect_json(await client.get("/kv/n/_tree?format=nested"))
    ts = {k: r["timestamp"] for k, r in written.items()}
    assert body == {
        "path": "n",
        "children": [
            {"subkey": "w", "children": [{"subkey": "v", "timestamp": ts["n/w/v"]}]},
            {
                "subkey": "x",
                "timestamp": ts["n/x"],
                "children": [
                    {
                        "subkey": "y",
                        "timestamp": ts["n/x/y"],
                        "children": [{"subkey": "z", "timestamp": ts["n/x/y/z"]}],
                    }
                ],
            },
        ],
        "total": 4,
        "truncated": False,
    }
    shallow = await expect_json(await client.get("/kv/n/_tree?format=nested&depth=1"))
    assert shallow["children"] == [{"subkey": "x", "timestamp": ts["n/x"]}]


async def test_tree_limit_default_500_and_max_5000(client):
    await fill(client, [f"t/{i // 100:02d}/{i % 100:02d}" for i in range(5001)])
    default = await expect_json(await client.get("/kv/t/_tree"))
    assert len(default["keys"]) == 500
    assert default["total"] == 5001 and default["truncated"] is True
    assert default["keys"][-1]["key"] == "t/04/99"
    clamped = await expect_json(await client.get("/kv/t/_tree?limit=100000"))
    assert len(clamped["keys"]) == 5000
    assert clamped["total"] == 5001 and clamped["truncated"] is True
    small = await expect_json(await client.get("/kv/t/_tree?limit=2&format=nested"))
    assert [c["subkey"] for c in small["children"]] == ["00"]
    assert [c["subkey"] for c in small["children"][0]["children"]] == ["00", "01"]
    assert small["total"] == 5001 and small["truncated"] is True
    under = await expect_json(await client.get("/kv/t/50/_tree"))
    assert [k["key"] for k in under["keys"]] == ["t/50/00"]


@pytest.mark.parametrize(
    "query",
    ["format=xml", "format=", "format=JSON", "depth=0", "depth=x", "limit=0", "limit=many"],
)
async def test_tree_bad_query_is_400(client, query):
    error = await expect_error(await client.get(f"/kv/a/_tree?{query}"), 400)
    assert query.split("=")[0] in error["error"]


async def test_long_keys_list_sort_expire_and_keep_history(start_node, wall):
    """Keys past LMDB's 511-byte key limit that share a long prefix still list in key order."""
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    prefix = "p" * 300 + "/" + "q" * 200  # 501 bytes
    names = ["b", "a", "c/d", "é", "a0", "a/x"]
    written = await fill(client, [f"{prefix}/{n}" for n in names])
    await put(client, f"{prefix}/short-lived", 1, query_string={"ttl": "1s"})
    ls = await expect_json(await client.get(f"/kv/{prefix}/_ls"))
    assert [c["subkey"] for c in ls["children"]] == ["a", "a0", "b", "c", "short-lived", "é"]
    wall.advance(1)
    ls = await expect_json(await client.get(f"/kv/{prefix}/_ls"))
    assert [c["subkey"] for c in ls["children"]] == ["a", "a0", "b", "c", "é"]
    tree = await expect_json(await client.get(f"/kv/{prefix}/_tree"))
    expected = sorted((f"{prefix}/{n}" for n in names), key=str.encode)
    assert [k["key"] for k in tree["keys"]] == expected
    assert tree["keys"][0]["uuid"] == written[expected[0]]["uuid"]
    root = await expect_json(await client.get("/kv/_tree?depth=2"))
    assert root["keys"] == []  # every key is deeper than two levels
    key = f"{prefix}/b"
    await put(client, key, 2)
    history = await expect_json(await client.get(f"/api/data/{key}/history"))
    assert [v["data"] for v in history["versions"]] == [1]


# --- _tree?values=true: the pages of `kvs get --prefix` and `kvs dump` ---------------------------


async def test_tree_values_pages_with_after(client):
    keys = [f"v/{i:03d}" for i in range(25)]
    await fill(client, keys, value={"x": [1, "é"]})
    ops = [{"op": "put", "key": "v/ttl", "data": 2, "expires_at": 2**46}]
    await expect_json(await batch(client, ops))
    seen, after = [], ""
    while True:
        page = await expect_json(
            await client.get(
                "/kv/v/_tree", query_string={"values": "true", "after": after, "limit": 10}
            )
        )
        assert set(page) == {"path", "keys", "truncated", "next"}
        seen += page["keys"]
        if not page["truncated"]:
            break
        after = page["next"]
    assert [k["key"] for k in seen] == [*keys, "v/ttl"]
    assert seen[0]["data"] == {"x": [1, "é"]} and "expires_at" not in seen[0]
    assert seen[-1]["expires_at"] == 2**46 and seen[-1]["data"] == 2
    assert {"owner_uuid", "group_uuid", "permissions", "uuid", "timestamp"} <= set(seen[0])
    # `after` past the range, or a value `values` does not take.
    empty = await expect_json(
        await client.get("/kv/v/_tree", query_string={"values": "true", "after": "w"})
    )
    assert empty["keys"] == [] and empty["truncated"] is False and empty["next"] == "w"
    await expect_error(await client.get("/kv/v/_tree", query_string={"values": "maybe"}), 400)
    for hostile in ("a\x01b", "k" * 1025, "a/" + "x" * 1025):
        error = await expect_error(
            await client.get("/kv/v/_tree", query_string={"values": "true", "after": hostile}), 400
        )
        assert "after" in error["error"]
    alias = await expect_json(await client.get("/kv/v/_list"))
    assert alias == await expect_json(await client.get("/kv/v/_ls"))
