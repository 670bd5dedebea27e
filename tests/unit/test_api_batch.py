"""HTTP tests for `POST /kv/_batch` (issue 2): one local transaction, all or nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.api import (
    batch,
    client_of,
    expect_error,
    expect_json,
    get_value,
    put,
)


async def test_puts_and_deletes_apply_in_order_with_results_in_op_order(client):
    await put(client, "existing", "old")
    response = await batch(
        client,
        [
            {"op": "put", "key": "a/1", "data": {"n": 1}},
            {"op": "delete", "key": "existing"},
            {"op": "put", "key": "a/2", "data": [1, 2]},
            {"op": "delete", "key": "never/was"},
            {"op": "put", "key": "b", "data": "text", "ttl": "1h"},
        ],
    )
    results = (await expect_json(response))["results"]
    assert [r["key"] for r in results] == ["a/1", "existing", "a/2", "never/was", "b"]
    assert set(results[0]) == {"key", "uuid", "timestamp"}
    assert results[1] == {"key": "existing", "deleted": True}
    assert results[3] == {"key": "never/was", "deleted": False}
    assert len({results[i]["uuid"] for i in (0, 2, 4)}) == 3
    assert await get_value(client, "a/1") == {"n": 1}
    assert await get_value(client, "a/2") == [1, 2]
    assert await get_value(client, "b") == "text"
    await expect_error(await client.get("/kv/existing"), 404)
    # The answer's versions are the stored versions.
    body = await expect_json(await client.get("/kv/a/1"))
    assert (body["uuid"], body["timestamp"]) == (results[0]["uuid"], results[0]["timestamp"])


async def test_order_within_a_batch_decides_put_then_delete_and_delete_then_put(client):
    response = await batch(
        client,
        [
            {"op": "put", "key": "x", "data": 1},
            {"op": "delete", "key": "x"},
            {"op": "delete", "key": "y"},
            {"op": "put", "key": "y", "data": 2},
        ],
    )
    results = (await expect_json(response))["results"]
    assert results[1] == {"key": "x", "deleted": True}
    assert results[2] == {"key": "y", "deleted": False}
    await expect_error(await client.get("/kv/x"), 404)
    assert await get_value(client, "y") == 2


async def test_values_are_stored_as_the_standard_library_writes_them(client, node):
    """With a float anywhere in the body each value is checked for floats (orjson spells
    `1e-07` as `1e-7`); without one, none is: both store the stdlib's bytes."""
    floats = {"f": 1e-07, "g": [2.5, 1e22], "s": "1e5 9.0"}
    plain = {"n": 10**18, "s": "user-1e@x.com 9.0", "t": [True, None], "u": "é"}
    for ops in (
        [{"op": "put", "key": "f", "data": floats}, {"op": "put", "key": "p", "data": plain}],
        [{"op": "put", "key": "p", "data": plain}],
    ):
        await expect_json(await batch(client, ops))
        for op in ops:
            expected = json.dumps(op["data"], separators=(",", ":"), ensure_ascii=False)
            assert node.store.get(op["key"]).value == expected.encode()


async def test_duplicate_keys_last_write_wins(client):
    response = await batch(
        client,
        [
            {"op": "put", "key": "dup", "data": 1},
            {"op": "put", "key": "dup", "data": 2},
            {"op": "put", "key": "dup", "data": 3},
        ],
    )
    results = (await expect_json(response))["results"]
    assert len(results) == 3
    body = await expect_json(await client.get("/kv/dup"))
    assert body["data"] == 3 and body["uuid"] == results[2]["uuid"]


@pytest.mark.parametrize(
    "value",
    [{"a": [1, {"b": None}]}, [], "ünï 🙂", 0, -2.5, 2**70, True, False, None],
    ids=repr,
)
async def test_every_json_type_round_trips_through_a_batch(client, value):
    await expect_json(await batch(client, [{"op": "put", "key": "v", "data": value}]))
    assert await get_value(client, "v") == value


async def test_1000_ops_are_accepted(client):
    ops = [{"op": "put", "key": f"bulk/{i:04d}", "data": i} for i in range(1000)]
    results = (await expect_json(await batch(client, ops)))["results"]
    assert [r["key"] for r in results] == [op["key"] for op in ops]
    assert await get_value(client, "bulk/0999") == 999
    health = await expect_json(await client.get("/health"))
    assert health["keys"] == 1000


async def test_1001_ops_are_refused_and_nothing_is_written(client):
    ops = [{"op": "put", "key": f"bulk/{i:04d}", "data": i} for i in range(1001)]
    error = await expect_error(await batch(client, ops), 400)
    assert "1000" in error["error"]
    await expect_error(await client.get("/kv/bulk/0000"), 404)


async def test_empty_batch_writes_nothing(client):
    assert await expect_json(await batch(client, [])) == {"results": []}


BAD_OPS: list[tuple[str, Any, str]] = [
    ("empty segment", {"op": "put", "key": "a//b", "data": 1}, "invalid key"),
    ("reserved", {"op": "put", "key": "_x", "data": 1}, "reserved"),
    ("dot", {"op": "delete", "key": "a/../b"}, "invalid key"),
    ("empty key", {"op": "put", "key": "", "data": 1}, "invalid key"),
    ("control", {"op": "put", "key": "a\u0000b", "data": 1}, "U+0000"),
    ("long key", {"op": "put", "key": "k" * 1025, "data": 1}, "1024"),
    ("key not a string", {"op": "put", "key": 5, "data": 1}, "key"),
    ("missing key", {"op": "put", "data": 1}, "key"),
    ("missing data", {"op": "put", "key": "k"}, "data"),
    ("unknown op", {"op": "patch", "key": "k", "data": 1}, "op"),
    ("missing op", {"key": "k", "data": 1}, "op"),
    ("unknown field", {"op": "put", "key": "k", "data": 1, "colour": "red"}, "colour"),
    ("data on delete", {"op": "delete", "key": "k", "data": 1}, "data"),
    ("ttl on delete", {"op": "delete", "key": "k", "ttl": "1s"}, "ttl"),
    ("bad ttl", {"op": "put", "key": "k", "data": 1, "ttl": "soon"}, "ttl"),
    ("negative ttl", {"op": "put", "key": "k", "data": 1, "ttl": "-5s"}, "ttl"),
    ("zero ttl", {"op": "put", "key": "k", "data": 1, "ttl": 0}, "ttl"),
    ("bool ttl", {"op": "put", "key": "k", "data": 1, "ttl": True}, "ttl"),
    ("huge ttl", {"op": "put", "key": "k", "data": 1, "ttl": 1e300}, "ttl"),
    ("past expires_at", {"op": "put", "key": "k", "data": 1, "expires_at": 1000}, "future"),
    ("string expires_at", {"op": "put", "key": "k", "data": 1, "expires_at": "1h"}, "expires_at"),
    ("bool expires_at", {"op": "put", "key": "k", "data": 1, "expires_at": True}, "expires_at"),
    ("float expires_at", {"op": "put", "key": "k", "data": 1, "expires_at": 1e15}, "expires_at"),
    ("huge expires_at", {"op": "put", "key": "k", "data": 1, "expires_at": 2**60}, "future"),
    (
        "expires_at and ttl",
        {"op": "put", "key": "k", "data": 1, "expires_at": 2**46, "ttl": "1h"},
        "without ttl",
    ),
    ("expires_at on delete", {"op": "delete", "key": "k", "expires_at": 2**46}, "expires_at"),
    ("string op", "put k", "object"),
    ("list op", ["put", "k", 1], "object"),
    ("null op", None, "object"),
    ("number op", 7, "object"),
]


@pytest.mark.parametrize(("bad", "fragment"), [b[1:] for b in BAD_OPS], ids=[b[0] for b in BAD_OPS])
@pytest.mark.parametrize("index", [0, 2])
async def test_bad_op_rejects_the_whole_batch_with_its_index(client, bad, fragment, index):
    await put(client, "pre/existing", "before")
    good = [
        {"op": "put", "key": "first", "data": 1},
        {"op": "delete", "key": "pre/existing"},
        {"op": "put", "key": "pre/existing", "data": "after"},
    ]
    ops = [*good[:index], bad, *good[index:]]
    error = await expect_error(await batch(client, ops), 400)
    assert error["index"] == index
    assert f"op {index}" in error["error"]
    assert fragment in error["error"], error
    # Nothing was written: not the ops before the bad one, nor those after it.
    await expect_error(await client.get("/kv/first"), 404)
    await expect_error(await client.get("/kv/k"), 404)
    assert await get_value(client, "pre/existing") == "before"


async def test_oversize_value_is_413_with_its_index_and_nothing_is_written(start_node):
    node = await start_node(max_json_size=1000)
    client = client_of(node)
    ops = [
        {"op": "put", "key": "small", "data": "x" * 900},
        {"op": "put", "key": "big", "data": "x" * 1000},  # 1002 bytes of JSON
    ]
    error = await expect_error(await batch(client, ops), 413)
    assert error["index"] == 1
    assert "1000" in error["error"]
    await expect_error(await client.get("/kv/small"), 404)
    await expect_error(await client.get("/kv/big"), 404)


async def test_batch_body_may_exceed_max_json_size(start_node):
    """Regression: the per-value limit applies to each value, not the whole batch body."""
    node = await start_node(max_json_size=1000)
    client = client_of(node)
    ops = [{"op": "put", "key": f"k{i}", "data": "x" * 900} for i in range(50)]
    body = json.dumps({"ops": ops}).encode()
    assert len(body) > 40_000
    for headers in ({}, {"Content-Length": str(len(body))}):
        response = await client.post("/kv/_batch", data=body, headers=headers)
        assert len((await expect_json(response))["results"]) == 50
    assert await get_value(client, "k49") == "x" * 900


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"  ", 400),
        (b"{", 400),
        (b"[]", 400),
        (b'"ops"', 400),
        (b"{}", 400),
        (b'{"ops": {}}', 400),
        (b'{"ops": "put"}', 400),
        (b'{"ops": null}', 400),
        (b'{"ops": [{"op": "put", "key": "k", "data": NaN}]}', 400),
        (b'{"ops": [{"op": "put", "key": "k", "data": 1e400}]}', 400),
        (b'{"ops": [{"op": "put", "key": "k", "data": "\xff"}]}', 400),
    ],
    ids=repr,
)
async def test_malformed_batch_body_is_400(client, body, status):
    await expect_error(await client.post("/kv/_batch", data=body), status)
    await expect_error(await client.get("/kv/k"), 404)


async def test_ttl_in_a_batch_op_expires(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    ops = [
        {"op": "put", "key": "short", "data": 1, "ttl": "30s"},
        {"op": "put", "key": "seconds", "data": 2, "ttl": 60},
        {"op": "put", "key": "forever", "data": 3},
    ]
    await expect_json(await batch(client, ops))
    wall.advance(29.999)
    assert await get_value(client, "short") == 1
    wall.advance(0.001)
    await expect_error(await client.get("/kv/short"), 404)
    assert await get_value(client, "seconds") == 2
    wall.advance(30)
    await expect_error(await client.get("/kv/seconds"), 404)
    assert await get_value(client, "forever") == 3


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD"])
async def test_other_methods_on_batch_are_405(client, method):
    response = await client.open("/kv/_batch", method=method, data=b"{}")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    if method != "HEAD":
        await expect_error(response, 405)


async def test_batch_on_read_only_node_is_503(start_node):
    node = await start_node(read_only=True)
    client = client_of(node)
    error = await expect_error(await batch(client, [{"op": "put", "key": "k", "data": 1}]), 503)
    assert "read-only" in error["error"]
    await expect_error(await client.get("/kv/k"), 404)


@pytest.mark.parametrize(
    "ops",
    [
        '[{"op":"put","key":"\\ud800","data":1}]',
        '[{"op":"delete","key":"a/\\udc00"}]',
        '[{"op":"put","key":"a","data":"x\\ud800"}]',
        '[{"op":"put","key":"a","data":{"\\udfff":1}}]',
        '[{"op":"put","key":"a","data":1,"ttl":"\\ud800"}]',
    ],
)
async def test_lone_surrogate_escapes_are_refused_as_bad_json(client, ops):
    # The stdlib JSON parser takes them, but no UTF-8 text can hold them: once a 500.
    body = b'{"ops": ' + ops.encode() + b"}"
    response = await client.post(
        "/kv/_batch", data=body, headers={"content-type": "application/json"}
    )
    error = await expect_error(response, 400)
    assert "surrogate" in error["error"]
    await expect_error(await client.get("/kv/a"), 404)


async def test_lone_surrogate_in_a_single_put_is_refused(client):
    response = await client.put(
        "/kv/a", data=b'{"k": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert "surrogate" in (await expect_error(response, 400))["error"]
