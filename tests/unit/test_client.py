"""kvs.client against a real node (in-process, real HTTP socket): every operation, the typed
errors, URL/token resolution, and the same calls through the async client under Trio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from kvs import client as kc
from kvs.client import AsyncClient, Client
from kvs.testing.ports import free_ports
from tests.support.live_node import start_live_node


async def in_thread(fn: Any) -> Any:
    """The blocking client must not block the event loop the node runs on."""
    return await trio.to_thread.run_sync(fn)


async def test_sync_client_round_trip(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, url = await start_live_node(nursery, tmp_path)

    def scenario() -> None:
        with Client(url) as kvs:
            first = kvs.put("home/room/socks", {"colour": "red", "pairs": 3})
            assert first.key == "home/room/socks" and len(first.uuid) == 36
            value = kvs.get("home/room/socks")
            assert value.data == {"colour": "red", "pairs": 3}
            assert (value.uuid, value.timestamp) == (first.uuid, first.timestamp)

            second = kvs.put("home/room/socks", {"colour": "blue"}, if_match=first.uuid)
            with pytest.raises(kc.Conflict) as conflict:
                kvs.put("home/room/socks", {"colour": "green"}, if_match=first.uuid)
            assert conflict.value.status == 409
            assert conflict.value.current_uuid == second.uuid
            assert "version conflict" in conflict.value.message
            assert kc.PreconditionFailed is kc.Conflict

            kvs.put("home/room/big", "12345678901234567890123", raw=True)  # exact JSON text
            assert kvs.get("home/room/big").data == 12345678901234567890123
            kvs.put("home/hall/lamp", True, ttl="1h")
            kvs.put("home/unicode/ключ", {"ü": "ß"})
            assert kvs.get("home/unicode/ключ").data == {"ü": "ß"}

            history = kvs.history("home/room/socks")
            assert [v["uuid"] for v in history] == [first.uuid]
            assert history[0]["data"] == {"colour": "red", "pairs": 3}

            listing = kvs.ls("home")
            assert [c["subkey"] for c in listing["children"]] == ["hall", "room", "unicode"]
            tree = kvs.tree("home/room")
            assert [k["key"] for k in tree["keys"]] == ["home/room/big", "home/room/socks"]
            assert kvs.tree("home", depth=1)["keys"] == []
            nested = kvs.tree("home", nested=True)
            assert {c["subkey"] for c in nested["children"]} == {"hall", "room", "unicode"}

            results = kvs.batch(
                [
                    {"op": "put", "key": "batch/a", "data": 1},
                    {"op": "delete", "key": "home/hall/lamp"},
                ]
            )
            assert results[0]["key"] == "batch/a" and results[1] == {
                "key": "home/hall/lamp",
                "deleted": True,
            }
            changes = kvs.changes(0, limit=1000)
            assert {c["key"] for c in changes["changes"]} >= {"batch/a", "home/room/socks"}

            kvs.delete("home/room/socks")
            with pytest.raises(kc.NotFound) as missing:
                kvs.get("home/room/socks")
            assert missing.value.body["key"] == "home/room/socks"
            with pytest.raises(kc.NotFound):
                kvs.delete("home/room/socks")

            health = kvs.health()
            assert health["status"] == "ok" and health["node_id"] == "node"
            with pytest.raises(kc.NotFound, match="clustering is disabled"):
                kvs.members()

    await in_thread(scenario)


async def test_typed_errors_carry_the_nodes_message(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, url = await start_live_node(nursery, tmp_path, max_json_size=64)
    _, ro_url = await start_live_node(nursery, tmp_path, name="ro", read_only=True)

    def scenario() -> None:
        with Client(url) as kvs:
            with pytest.raises(kc.BadRequest, match="invalid key"):
                kvs.get("a//b")
            with pytest.raises(kc.BadRequest, match="not valid JSON"):
                kvs.put("a", "{nope", raw=True)
            with pytest.raises(kc.BadRequest, match="ttl"):
                kvs.put("a", 1, ttl="soon")
            with pytest.raises(kc.PayloadTooLarge, match="limit is 64 bytes"):
                kvs.put("a", "x" * 100)
            with pytest.raises(kc.BadRequest) as bad_batch:
                kvs.batch([{"op": "put", "key": "ok", "data": 1}, {"op": "jump", "key": "b"}])
            assert bad_batch.value.body["index"] == 1
        with Client(ro_url) as ro:
            with pytest.raises(kc.ReadOnly) as read_only:
                ro.put("a", 1)
            assert read_only.value.status == 503 and read_only.value.mode == "read-only"
            assert isinstance(read_only.value, kc.Unavailable)
        (dead,) = free_ports(1)
        with Client(f"127.0.0.1:{dead}", timeout=2) as nobody:
            with pytest.raises(kc.ConnectionFailed, match="cannot reach") as unreachable:
                nobody.health()
            assert unreachable.value.status is None

    await in_thread(scenario)


def test_error_for_maps_statuses_and_retry_after() -> None:
    def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
        content = json.dumps(body).encode() if body is not None else b"plain text"
        return httpx.Response(status, content=content, headers=headers)

    limited = kc.error_for(answer(429, {"error": "slow down"}, **{"Retry-After": "3"}))
    assert isinstance(limited, kc.RateLimited)
    assert (limited.message, limited.retry_after) == ("slow down", 3.0)
    assert kc.error_for(answer(429, {"error": "x"})).retry_after is None  # type: ignore[attr-defined]
    assert isinstance(kc.error_for(answer(401, {"error": "no token"})), kc.Unauthorized)
    assert isinstance(kc.error_for(answer(403, {"error": "scope"})), kc.Forbidden)
    assert isinstance(kc.error_for(answer(412, {"error": "x"})), kc.Conflict)
    syncing = kc.error_for(answer(503, {"error": "busy", "mode": "syncing"}))
    assert isinstance(syncing, kc.Syncing) and syncing.mode == "syncing"
    server = kc.error_for(answer(500))
    assert isinstance(server, kc.ServerError) and server.message == "plain text"
    assert type(kc.error_for(answer(418, {"error": "teapot"}))) is kc.KvsError


def test_url_and_token_from_arguments_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kc.URL_ENV, raising=False)
    monkeypatch.delenv(kc.TOKEN_ENV, raising=False)
    assert Client().url == kc.DEFAULT_URL and Client().token is None
    monkeypatch.setenv(kc.URL_ENV, "example.org:9000/")
    monkeypatch.setenv(kc.TOKEN_ENV, "from-env")
    from_env = Client()
    assert (from_env.url, from_env.token) == ("http://example.org:9000", "from-env")
    assert from_env._http.headers["Authorization"] == "Bearer from-env"
    explicit = Client("https://kvs.example", token="given")
    assert (explicit.url, explicit.token) == ("https://kvs.example", "given")
    for bad in ("ftp://example", "http://"):
        with pytest.raises(ValueError, match="not an http"):
            Client(bad)


def test_keys_are_percent_encoded_segment_by_segment() -> None:
    call = kc.calls.get("a b/c?d#e/%")
    assert call.path == "/kv/a%20b/c%3Fd%23e/%25"
    assert kc.calls.ls("", None, False).path == "/kv/_ls"
    assert kc.calls.watch("x/y/", None).path == "/kv/x/y/_watch"


async def test_async_client_under_trio(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, url = await start_live_node(nursery, tmp_path)
    async with AsyncClient(url) as kvs:
        written = await kvs.put("cfg/a", {"n": 1}, ttl=60)
        assert (await kvs.get("cfg/a")).data == {"n": 1}
        with pytest.raises(kc.Conflict):
            await kvs.put("cfg/a", 2, if_match="0" * 36)
        assert [k["key"] for k in (await kvs.tree("cfg"))["keys"]] == ["cfg/a"]
        assert (await kvs.ls())["children"] == [{"subkey": "cfg"}]
        await kvs.put("cfg/a", 2)
        assert [v["uuid"] for v in await kvs.history("cfg/a")] == [written.uuid]
        await kvs.delete("cfg/a")
        with pytest.raises(kc.NotFound):
            await kvs.get("cfg/a")
        assert (await kvs.health())["mode"] == "normal"
