"""HTTP tests for `PUT/GET/HEAD/DELETE /kv/{key}` through the Quart test client (issue 2).

The Quart test client sends no Content-Length unless a test sets one, and passes the path to
the app exactly as given (after percent-decoding): no `.`/`..` or `//` normalisation, which
real HTTP clients may do before a request ever reaches the node.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from kvs.model import MAX_KEY_BYTES
from kvs.node import Node
from tests.support.api import client_of, expect_error, expect_json, get_value, put

# --- put / get ---------------------------------------------------------------------------------


async def test_put_answers_uuid_and_timestamp_and_get_answers_stored_value(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    response = await client.put("/kv/home/room/socks", data=b'{"colour": "red"}')
    written = await expect_json(response)
    assert set(written) == {"uuid", "timestamp"}
    assert written["timestamp"] == wall.now_ms
    assert response.headers["ETag"] == f'"{written["uuid"]}"'

    response = await client.get("/kv/home/room/socks")
    body = await expect_json(response)
    assert body == {
        "uuid": written["uuid"],
        "timestamp": written["timestamp"],
        "data": {"colour": "red"},
    }
    assert response.headers["ETag"] == f'"{written["uuid"]}"'


async def test_overwrite_gets_a_new_version(client):
    first = await put(client, "k", 1)
    second = await put(client, "k", 2)
    assert second["uuid"] != first["uuid"]
    assert second["timestamp"] >= first["timestamp"]
    body = await expect_json(await client.get("/kv/k"))
    assert body["uuid"] == second["uuid"] and body["data"] == 2


@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"list": [1, 2.5, None, True, "x"], "empty": {}}},
        [],
        [1, "two", {"three": 3}, [4]],
        "a string",
        "",
        0,
        -17,
        3.14159,
        1e300,
        2**70,
        True,
        False,
        None,
    ],
    ids=repr,
)
async def test_every_json_type_round_trips(client, value):
    await put(client, "typed/value", value)
    assert await get_value(client, "typed/value") == value


async def test_body_is_stored_as_sent_and_read_back_as_valid_json(client):
    raw = b'\n  {"b": [1, 2,\n 3],  "a": "x"}  \n'
    await expect_json(await client.put("/kv/spacing", data=raw))
    response = await client.get("/kv/spacing")
    assert (await expect_json(response))["data"] == {"b": [1, 2, 3], "a": "x"}


async def test_unicode_keys_and_values(client):
    value = {"text": "日本語 — ünïcödé 🙂", "emoji_key_🙂": 1}
    key = "héllo/wörld/日本/🙂"
    await put(client, key, value)
    assert await get_value(client, key) == value
    # The percent-encoded UTF-8 spelling of the same path names the same key.
    encoded = "h%C3%A9llo/w%C3%B6rld/%E6%97%A5%E6%9C%AC/%F0%9F%99%82"
    assert await get_value(client, encoded) == value
    # JSON \u escapes (a surrogate pair too) and raw UTF-8 bytes both read back as text.
    await expect_json(await client.put("/kv/esc", data=b'"\\u00e9\\ud83d\\ude42"'))
    assert await get_value(client, "esc") == "é🙂"
    await expect_json(await client.put("/kv/raw", data='"«ça va?»"'.encode()))
    assert await get_value(client, "raw") == "«ça va?»"


async def test_percent_encoded_punctuation_in_keys(client):
    await put(client, "with%20space/q%3Fmark/hash%23", "ok")
    assert await get_value(client, "with%20space/q%3Fmark/hash%23") == "ok"
    listing = await expect_json(await client.get("/kv/with%20space/q%3Fmark/_ls"))
    assert listing["children"][0]["subkey"] == "hash#"


async def test_value_of_exactly_max_json_size_is_accepted(client, node: Node):
    limit = node.config.max_json_size
    assert limit == 1024 * 1024
    body = b'{"v": "' + b"x" * (limit - 10) + b'"}'
    assert len(body) == limit - 1
    body = body[:-1] + b" }"  # exactly the limit
    assert len(body) == limit
    await expect_json(await client.put("/kv/big", data=body))
    assert await get_value(client, "big") == {"v": "x" * (limit - 10)}
    await expect_error(await client.put("/kv/big2", data=body + b" "), 413)
    await expect_error(await client.get("/kv/big2"), 404)


async def test_get_missing_key_is_404_json(client):
    body = await expect_error(await client.get("/kv/no/such/key"), 404)
    assert body == {"error": "key not found", "key": "no/such/key"}


async def test_head_answers_headers_of_get(client):
    written = await put(client, "h", {"a": 1})
    response = await client.head("/kv/h")
    assert response.status_code == 200
    assert response.headers["ETag"] == f'"{written["uuid"]}"'
    assert response.headers["Content-Type"] == "application/json"
    assert await response.get_data() == b""  # HEAD: headers of a GET, no body
    missing = await client.head("/kv/nothing")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"


# --- conditional requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "form", ['"{}"', "{}", 'W/"{}"', ' "{}" '], ids=["quoted", "bare", "weak", "spaces"]
)
async def test_if_match_accepts_quoted_bare_and_weak_etags(client, form):
    first = await put(client, "cas", 1)
    second = await put(client, "cas", 2, headers={"If-Match": form.format(first["uuid"])})
    assert await get_value(client, "cas") == 2
    # The old uuid no longer matches: 409 naming the current version, value unchanged.
    response = await client.put(
        "/kv/cas", data=b"3", headers={"If-Match": form.format(first["uuid"])}
    )
    body = await expect_error(response, 409)
    assert body["current_uuid"] == second["uuid"]
    assert body["key"] == "cas"
    assert await get_value(client, "cas") == 2


async def test_if_match_on_missing_or_deleted_key_is_409(client):
    body = await expect_error(
        await client.put("/kv/absent", data=b"1", headers={"If-Match": '"whatever"'}), 409
    )
    assert body["current_uuid"] is None
    await expect_error(await client.get("/kv/absent"), 404)

    written = await put(client, "gone", 1)
    assert (await client.delete("/kv/gone")).status_code == 204
    body = await expect_error(
        await client.put("/kv/gone", data=b"2", headers={"If-Match": written["uuid"]}), 409
    )
    assert body["current_uuid"] is None
    await expect_error(await client.get("/kv/gone"), 404)


async def test_if_none_match_answers_304_when_unchanged(client):
    written = await put(client, "cached", {"a": 1})
    etag = f'"{written["uuid"]}"'
    response = await client.get("/kv/cached", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.headers["ETag"] == etag
    assert await response.get_data() == b""
    response = await client.get("/kv/cached", headers={"If-None-Match": f"W/{etag}"})
    assert response.status_code == 304
    response = await client.get("/kv/cached", headers={"If-None-Match": '"something-else"'})
    assert (await expect_json(response))["data"] == {"a": 1}


# --- TTL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "seconds"), [("30s", 30), ("5m", 300), ("24h", 86400), ("1500ms", 1.5), ("90", 90)]
)
async def test_ttl_query_parameter_expires_the_key(start_node, wall, ttl, seconds):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    await put(client, "session", {"user": 1}, query_string={"ttl": ttl})
    wall.advance(seconds - 0.001)
    assert await get_value(client, "session") == {"user": 1}
    wall.advance(0.001)
    await expect_error(await client.get("/kv/session"), 404)
    await expect_error(await client.delete("/kv/session"), 404)
    children = (await expect_json(await client.get("/kv/_ls")))["children"]
    assert children == []


async def test_ttl_header_expires_the_key(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    await put(client, "h", 1, headers={"X-KVS-TTL": "5m"})
    wall.advance(299)
    assert await get_value(client, "h") == 1
    wall.advance(1)
    await expect_error(await client.get("/kv/h"), 404)


async def test_rewrite_without_ttl_clears_the_expiry(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    await put(client, "k", 1, query_string={"ttl": "10s"})
    await put(client, "k", 2)
    wall.advance(3600)
    assert await get_value(client, "k") == 2


async def test_expired_key_can_be_written_again(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    old = await put(client, "k", 1, query_string={"ttl": "1s"})
    wall.advance(2)
    # Compare-and-set against an expired version fails: it is not the current version.
    await expect_error(await client.put("/kv/k", data=b"2", headers={"If-Match": old["uuid"]}), 409)
    await put(client, "k", 3)
    assert await get_value(client, "k") == 3


@pytest.mark.parametrize(
    "ttl", ["abc", "5x", "-5s", "-1", "0", "0s", "0ms", "nan", "inf", "1e300s", " ", "s", "0.0001s"]
)
async def test_bad_ttl_is_400_and_nothing_is_written(client, ttl):
    body = await expect_error(await client.put("/kv/t", data=b"1", query_string={"ttl": ttl}), 400)
    assert "ttl" in body["error"]
    await expect_error(await client.put("/kv/t", data=b"1", headers={"X-KVS-TTL": ttl}), 400)
    await expect_error(await client.get("/kv/t"), 404)


# --- delete ------------------------------------------------------------------------------------


async def test_delete_then_get_404_then_delete_404(client):
    await put(client, "d", {"x": 1})
    response = await client.delete("/kv/d")
    assert response.status_code == 204
    assert await response.get_data() == b""
    await expect_error(await client.get("/kv/d"), 404)
    body = await expect_error(await client.delete("/kv/d"), 404)
    assert body["key"] == "d"
    await expect_error(await client.delete("/kv/never/existed"), 404)
    # A deleted key can be written again.
    await put(client, "d", 2)
    assert await get_value(client, "d") == 2


# --- bad bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"   \n\t ", "empty"),
        (b"{", "not valid JSON"),
        (b'{"a": 1,}', "not valid JSON"),
        (b"{'a': 1}", "not valid JSON"),
        (b"undefined", "not valid JSON"),
        (b"1 2", "not valid JSON"),
        (b"NaN", "NaN"),
        (b"Infinity", "Infinity"),
        (b"-Infinity", "Infinity"),
        (b'{"a": NaN}', "NaN"),
        (b"1e400", "out of range"),
        (b"[-1e999]", "out of range"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'"caf\xe9"', "UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b"1" * 5000, "not valid JSON"),
    ],
    ids=lambda v: repr(v[:12]) if isinstance(v, bytes) else None,
)
async def test_bad_body_is_400_and_nothing_is_written(client, body, fragment):
    error = await expect_error(await client.put("/kv/bad", data=body), 400)
    assert fragment in error["error"]
    await expect_error(await client.get("/kv/bad"), 404)


async def test_oversize_body_with_content_length_is_413(start_node):
    node = await start_node(max_json_size=1000)
    client = client_of(node)
    body = b'"' + b"a" * 1000 + b'"'
    response = await client.put("/kv/big", data=body, headers={"Content-Length": str(len(body))})
    error = await expect_error(response, 413)
    assert "1000" in error["error"]
    await expect_error(await client.get("/kv/big"), 404)
    # One byte under the limit is fine.
    ok = b'"' + b"a" * 996 + b'"'
    await expect_json(
        await client.put("/kv/big", data=ok, headers={"Content-Length": str(len(ok))})
    )


async def test_oversize_body_without_content_length_is_413(start_node):
    node = await start_node(max_json_size=1000)
    client = client_of(node)
    # The test client sends no Content-Length (like chunked transfer encoding).
    response = await client.put("/kv/big", data=b'"' + b"a" * 5000 + b'"')
    await expect_error(response, 413)
    await expect_error(await client.get("/kv/big"), 404)


async def _stream(
    node: Node, path: str, chunks: list[bytes], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """Send `chunks` without ever finishing the body; return the status and JSON answer.

    An answer that arrives before the body is complete proves the node refused it without
    reading it all."""
    client = client_of(node)
    async with client.request(path, method="PUT", headers=headers) as connection:
        for chunk in chunks:
            await connection.send(chunk)
        with trio.fail_after(5):
            first = await connection.receive()
    raw = first + bytes(connection.response_data)
    assert connection.status_code is not None
    return connection.status_code, json.loads(raw)


async def test_streamed_oversize_body_is_refused_before_it_ends(start_node):
    node = await start_node(max_json_size=1000)
    status, body = await _stream(node, "/kv/big", [b'"' + b"a" * 600, b"a" * 600], {})
    assert status == 413 and "1000" in body["error"]
    assert node.store.get("big") is None


async def test_declared_oversize_content_length_is_refused_without_reading(start_node):
    node = await start_node(max_json_size=1000)
    status, body = await _stream(node, "/kv/big", [], {"Content-Length": "1000000"})
    assert status == 413 and "error" in body
    assert node.store.get("big") is None


async def test_streamed_body_in_many_chunks_is_accepted(start_node):
    node = await start_node(max_json_size=1000)
    client = client_of(node)
    async with client.request("/kv/chunked", method="PUT") as connection:
        for part in (b'{"a":', b" [1, ", b"2, 3]", b"}"):
            await connection.send(part)
        await connection.send_complete()
    response = await connection.as_response()
    await expect_json(response)
    assert await get_value(client, "chunked") == {"a": [1, 2, 3]}


# --- bad keys ------------------------------------------------------------------------------------


def key_of_bytes(size: int) -> str:
    """A one-segment key of exactly `size` UTF-8 bytes, mostly two-byte characters."""
    return "é" * (size // 2) + "k" * (size % 2)


assert MAX_KEY_BYTES == 1024  # issue 2: keys are 1..1024 UTF-8 bytes
LONG_BAD = key_of_bytes(MAX_KEY_BYTES + 1)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/kv/a//b", "empty segment"),
        ("/kv//a", "empty segment"),
        ("/kv///", "empty segment"),
        ("/kv/a/", "empty segment"),
        ("/kv/a/b//", "empty segment"),
        ("/kv/%2Fa", "empty segment"),
        ("/kv/.", "'.'"),
        ("/kv/..", "'..'"),
        ("/kv/a/./b", "'.'"),
        ("/kv/a/../b", "'..'"),
        ("/kv/a/..", "'..'"),
        ("/kv/a%00b", "U+0000"),
        ("/kv/a%01b", "U+0001"),
        ("/kv/a%0Ab", "U+000A"),
        ("/kv/a%0D", "U+000D"),
        ("/kv/tab%09", "U+0009"),
        ("/kv/a%1Fb", "U+001F"),
        ("/kv/a%7Fb", "U+007F"),
        ("/kv/_x", "reserved"),
        ("/kv/a/_x", "reserved"),
        ("/kv/a/_ls/b", "reserved"),
        ("/kv/_batch/x", "reserved"),
        (f"/kv/{LONG_BAD}", f"{MAX_KEY_BYTES + 1} bytes long; the limit is {MAX_KEY_BYTES}"),
        ("/kv", "empty"),
        ("/kv/", "empty"),
    ],
)
async def test_invalid_key_is_400_saying_why_never_a_redirect(client, path, fragment):
    for method in ("GET", "PUT", "DELETE"):
        response = await client.open(path, method=method, data=b"1")
        assert "Location" not in response.headers
        error = await expect_error(response, 400)
        assert "invalid key" in error["error"] and fragment in error["error"], (method, error)
    tree = await expect_json(await client.get("/kv/_tree"))
    assert tree["keys"] == [] and tree["total"] == 0


# LMDB takes keys of at most 511 bytes and the store's indexes add up to 9 bytes to a key, so
# keys from ~503 bytes up need the store's long-key handling (found by these tests: they
# answered 500 with MDB_BAD_VALSIZE and failed other clients' writes in the same group commit).


async def test_key_of_502_bytes_works_in_every_index(start_node, wall):
    node = await start_node(wall_ms=wall)
    client = client_of(node)
    key = key_of_bytes(502)
    await put(client, key, 1, query_string={"ttl": "1h"})
    await put(client, key, 2)
    assert (await client.delete(f"/kv/{key}")).status_code == 204
    await put(client, key, 3)
    history = await expect_json(await client.get(f"/api/data/{key}/history"))
    assert len(history["versions"]) == 3


@pytest.mark.parametrize("size", [503, 504, 600, MAX_KEY_BYTES])
async def test_longest_valid_key_can_be_written_overwritten_and_deleted(client, size):
    key = key_of_bytes(size)
    assert len(key.encode()) == size
    await put(client, key, 1)
    await put(client, key, 2)
    assert await get_value(client, key) == 2
    assert (await client.delete(f"/kv/{key}")).status_code == 204
    nested = ("abc/" * 300)[: size - 1] + "x"  # many segments, no empty one
    assert len(nested.encode()) == size
    await put(client, nested, 3)
    assert await get_value(client, nested) == 3


async def test_long_key_write_does_not_fail_concurrent_writes(client):
    statuses: dict[str, int] = {}

    async def write(key: str) -> None:
        statuses[key] = (await client.put(f"/kv/{key}", data=b"1")).status_code

    async with trio.open_nursery() as nursery:
        for index in range(30):
            nursery.start_soon(write, f"good{index}")
            if index == 15:
                nursery.start_soon(write, key_of_bytes(MAX_KEY_BYTES))
    assert set(statuses.values()) == {200}, statuses
    assert await get_value(client, key_of_bytes(MAX_KEY_BYTES)) == 1


# --- methods and routes --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PATCH", "OPTIONS", "TRACE"])
async def test_unknown_method_on_a_key_is_405_with_allow(client, method):
    await put(client, "k", 1)
    response = await client.open("/kv/k", method=method, data=b"2")
    await expect_error(response, 405)
    assert response.headers["Allow"] == "GET, HEAD, PUT, DELETE"
    assert await get_value(client, "k") == 1


@pytest.mark.parametrize("path", ["/nope", "/kv_nope", "/api", "/api/nope", "/kv_changes/x"])
async def test_unknown_route_is_404_json(client, path):
    await expect_error(await client.get(path), 404)
    await expect_error(await client.put(path, data=b"1"), 404)


# --- read-only mode ------------------------------------------------------------------------------


async def _restart(start_node, node: Node, **overrides: Any) -> Node:
    """Stop `node` and start a new one on the same data directory."""
    node.request_shutdown()
    with trio.fail_after(5):
        while node.store is not None:
            await trio.sleep(0.005)
    return await start_node(**overrides)


async def test_read_only_node_refuses_writes_with_503_and_serves_reads(start_node):
    node = await start_node()
    client = client_of(node)
    await put(client, "kept", {"v": 1})
    node = await _restart(start_node, node, read_only=True)
    client = client_of(node)
    assert await get_value(client, "kept") == {"v": 1}
    for response in (
        await client.put("/kv/kept", data=b"2"),
        await client.put("/kv/new", data=b"2"),
        await client.delete("/kv/kept"),
        await client.post("/kv/_batch", data=b'{"ops": [{"op": "delete", "key": "kept"}]}'),
    ):
        body = await expect_error(response, 503)
        assert "read-only" in body["error"]
        assert body["mode"] == "read-only"
    assert await get_value(client, "kept") == {"v": 1}
    await expect_error(await client.get("/kv/new"), 404)
    listing = await expect_json(await client.get("/kv/_ls"))
    assert [c["subkey"] for c in listing["children"]] == ["kept"]
    health = await expect_json(await client.get("/health"))
    assert health["mode"] == "read-only" and health["keys"] == 1
