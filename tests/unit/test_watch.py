"""Watch: the hub (prefix filter, bounded buffer, replay/live boundary) on a real store, and
`GET /kv/{prefix}/_watch` over a real HTTP socket through the async client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from kvs import client as kc
from kvs.client import AsyncClient, Event
from kvs.model import hlc_pack
from kvs.node import Node
from kvs.store import Change, Delete, Put
from kvs.watch import ResumePoint, WatchEvent, WatchHub, parse_resume
from tests.support.live_node import start_live_node


def test_parse_resume() -> None:
    assert parse_resume("1000") == ResumePoint(hlc_pack(1001) - 1)
    uuid = "6f9c0e2a-1d5b-4c8e-9a3f-0b1c2d3e4f50"
    assert parse_resume(f"123456-{uuid}") == ResumePoint(123455, (uuid, False))
    assert parse_resume(f"123456-{uuid}-d") == ResumePoint(123455, (uuid, True))
    for bad in ("yesterday", "-1", "12-short", f"x-{uuid}", str(1 << 47), f"0-{uuid}"):
        with pytest.raises(ValueError, match="since must be|not a millisecond"):
            parse_resume(bad)


async def put(node: Node, *keys: str) -> None:
    await node.store.write([Put(k, b"1") for k in keys])


async def test_hub_delivers_changes_under_the_prefix_only(node: Node) -> None:
    hub = WatchHub(node.store, buffer=node.config.watch_buffer)
    watcher = hub.subscribe("home/room")
    everything = hub.subscribe("")
    await put(node, "home/room", "home/room/socks", "home/roomy", "office/desk")
    await node.store.write([Delete("home/room/socks")])
    got = [(e.key, e.deleted) for e in watcher.take()]
    assert got == [("home/room", False), ("home/room/socks", False), ("home/room/socks", True)]
    assert len(everything.take()) == 5
    hub.unsubscribe(watcher)
    await put(node, "home/room/x")
    assert watcher.take() == [] and len(everything.take()) == 1


async def test_replay_then_live_without_gap_or_duplicate(node: Node) -> None:
    """A resumed watcher gets each change once: replayed ones from the time index, later
    ones live -- including changes committed while the replay is under way."""
    hub = WatchHub(node.store, buffer=node.config.watch_buffer)
    await put(node, *(f"k/{i:03}" for i in range(600)))  # more than two replay chunks
    last = node.store.get("k/009")
    assert last is not None
    since = WatchEvent.of(last).id  # resume after the 10th write
    watcher = hub.subscribe("k")
    replay = watcher.replay(node.store, parse_resume(since))
    seen: list[str] = []
    for i, event in enumerate(replay):
        seen.append(event.key)
        if i == 100:  # writes land mid-replay: rewrites of replayed and unreplayed keys
            await put(node, "k/005", "k/050", "k/500", "k/new")
    await put(node, "k/after")
    seen += [e.key for e in watcher.take()]
    expected = [f"k/{i:03}" for i in range(10, 600)]
    assert sorted(set(seen)) == sorted({*expected, "k/005", "k/new", "k/after"})
    # Rewritten keys appear twice (old version replayed, new one live); nothing else does.
    assert sorted(k for k in set(seen) if seen.count(k) > 1) == ["k/050"]
    assert seen.count("k/500") == 1  # rewritten before the replay reached it: once, new


async def test_a_version_read_during_a_commit_is_not_sent_twice(node: Node) -> None:
    """The replay may read a batch that is committed but not yet announced (the writer is
    between its commit and its listeners): its announcement must not repeat it."""
    hub = WatchHub(node.store, buffer=node.config.watch_buffer)
    await put(node, "a/1")
    watcher = hub.subscribe("a")
    node.store.publishing = True  # as the writer leaves it while a batch is in flight
    replayed = list(watcher.replay(node.store, parse_resume("0")))
    node.store.publishing = False
    assert [e.key for e in replayed] == ["a/1"]
    record = node.store.get("a/1")
    hub.on_changes([Change(None, record, local=True)])  # the late announcement
    assert watcher.take() == []
    hub.on_changes([Change(None, record, local=True)])  # a later batch is delivered again
    assert [e.key for e in watcher.take()] == ["a/1"]


async def test_a_watcher_that_falls_behind_is_cut_off(node: Node) -> None:
    hub = WatchHub(node.store, buffer=3)
    slow = hub.subscribe("")
    fast = hub.subscribe("")
    for i in range(3):
        await put(node, f"k{i}")
        assert len(fast.take()) == 1
    assert slow.ended is None
    await put(node, "k3")
    assert slow.ended == "overflow" and slow.take() == []
    assert hub.disconnected_slow == 1 and hub.watchers == {fast}
    await put(node, "k4")
    assert slow.take() == [] and len(fast.take()) == 2


# --- over HTTP ---------------------------------------------------------------------------------


async def collect(
    url: str, prefix: str, since: Any, count: int, into: list[Event], done: trio.Event
) -> None:
    async with AsyncClient(url) as kvs:
        async for event in kvs.watch(prefix, since=since):
            into.append(event)
            if len(into) == count:
                done.set()
                return


async def test_watch_stream_replays_then_follows(nursery: trio.Nursery, tmp_path: Path) -> None:
    node, url = await start_live_node(nursery, tmp_path)
    async with AsyncClient(url) as kvs:
        first = await kvs.put("home/a", 1)
        await kvs.put("other/b", 2)
        events: list[Event] = []
        done = trio.Event()
        nursery.start_soon(collect, url, "home", first.timestamp - 1, 3, events, done)
        with trio.fail_after(10):
            while not events:  # the replay has started: the watcher is subscribed
                await trio.sleep(0.01)
        await kvs.put("home/c/d", 3)
        await kvs.delete("home/a")
        with trio.fail_after(10):
            await done.wait()
    assert [(e.key, e.deleted) for e in events] == [
        ("home/a", False),
        ("home/c/d", False),
        ("home/a", True),
    ]
    assert events[0].uuid == first.uuid and events[0].timestamp == first.timestamp
    # Resuming after the second event replays exactly the third.
    resumed: list[Event] = []
    again = trio.Event()
    nursery.start_soon(collect, url, "home", events[1].id, 1, resumed, again)
    with trio.fail_after(10):
        await again.wait()
    assert resumed == [events[2]]
    assert node.store is not None


async def test_watch_refuses_bad_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, url = await start_live_node(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=url) as http:
        bad_since = await http.get("/kv/a/_watch", params={"since": "yesterday"})
        assert bad_since.status_code == 400 and "since must be" in bad_since.json()["error"]
        for bad in ("/kv/a//b/_watch", "/kv//_watch"):
            bad_key = await http.get(bad)
            assert bad_key.status_code == 400 and "invalid key" in bad_key.json()["error"]
        wrong_method = await http.put("/kv/a/_watch", content=b"1")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET"
    async with AsyncClient(url) as kvs:
        with pytest.raises(kc.BadRequest, match="since must be"):
            async for _ in kvs.watch("a", since="never"):
                pass


async def test_slow_watcher_is_told_and_disconnected(nursery: trio.Nursery, tmp_path: Path) -> None:
    """More changes at once than the watcher may hold: it gets an overflow error event with
    the id to resume from, and the node lets it go."""
    node, url = await start_live_node(nursery, tmp_path, watch_buffer=5)
    ended: list[kc.WatchEnded] = []
    got: list[Event] = []

    async def watch() -> None:
        async with AsyncClient(url) as kvs:
            try:
                async for event in kvs.watch("", since=0):
                    got.append(event)
            except kc.WatchEnded as exc:
                ended.append(exc)

    async with AsyncClient(url) as kvs:
        await kvs.put("seed", 0)
        nursery.start_soon(watch)
        with trio.fail_after(10):
            while not got:
                await trio.sleep(0.01)
        await kvs.batch([{"op": "put", "key": f"b/{i}", "data": i} for i in range(20)])
        with trio.fail_after(10):
            while not ended:
                await trio.sleep(0.01)
    assert ended[0].reason == "overflow" and "fell too far behind" in ended[0].message
    assert ended[0].last_id == got[-1].id
    assert [e.key for e in got] == ["seed"]


async def test_watch_ends_cleanly_when_the_node_stops(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node, url = await start_live_node(nursery, tmp_path)
    lines: list[str] = []

    async def read() -> None:
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            http.stream("GET", "/kv/_watch") as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                lines.append(line)

    async with trio.open_nursery() as inner:
        inner.start_soon(read)
        with trio.fail_after(10):
            while "event: ready" not in lines:
                await trio.sleep(0.01)
        node.request_shutdown()
    assert lines[-3] == "event: error"
    assert json.loads(lines[-2][len("data: ") :])["reason"] == "shutdown"


async def test_a_stalled_reader_stops_costing_memory(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A client that stops reading entirely: once the socket buffers are full its watcher
    overflows and is dropped, so the node holds no more events for it. (Hypercorn shields
    its socket writes, so the connection itself stays until the client reads or goes.)"""
    from tests.support.metrics import requests, scrape, value

    _, url = await start_live_node(nursery, tmp_path, watch_buffer=100)
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /kv/_watch HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    async with AsyncClient(url) as kvs:
        with trio.fail_after(10):
            while value(await scrape(url), "kvs_watchers") != 1:
                await trio.sleep(0.01)
        batches = 0
        with trio.fail_after(60):
            while value(await scrape(url), "kvs_watch_disconnected_slow_total") == 0:
                # 50 events per commit, within the buffer: only a stalled reader overflows.
                ops = [{"op": "put", "key": f"s/{batches}/{j}", "data": "x"} for j in range(50)]
                await kvs.batch(ops)
                batches += 1
        assert batches > 2  # the socket took events until its buffers filled
        stalled = await scrape(url)
        assert value(stalled, "kvs_watchers") == 0  # dropped: no more events kept for it
        await kvs.put("after", 1)  # writes go on unaffected
        await stream.aclose()  # the client goes: its blocked response ends too
        with trio.fail_after(10):
            while requests(await scrape(url), "/kv/{prefix}/_watch", "GET", "200") != 1:
                await trio.sleep(0.05)


async def test_last_event_id_header_resumes_like_since(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Browsers' EventSource resends the last id as `Last-Event-ID` when it reconnects."""
    _, url = await start_live_node(nursery, tmp_path)
    async with AsyncClient(url) as kvs:
        first = await kvs.put("r/a", 1)
        second = await kvs.put("r/b", 2)
        with trio.fail_after(10):
            async for event in kvs.watch("r", since=0):  # the id a watcher got for `first`
                if event.uuid == first.uuid:
                    first_id = event.id
                    break
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        with trio.fail_after(10):
            async with http.stream(
                "GET", "/kv/r/_watch", headers={"Last-Event-ID": first_id}
            ) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if line == "event: ready":
                        break
    data = [json.loads(line[len("data: ") :]) for line in lines if line.startswith('data: {"')]
    assert [(d["key"], d["uuid"]) for d in data] == [("r/b", second.uuid)]
