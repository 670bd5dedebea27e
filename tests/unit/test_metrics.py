"""GET /metrics: parsed with prometheus-client's own parser; counters follow real traffic,
and two nodes in one process keep separate registries."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import trio

from kvs.client import AsyncClient, NotFound
from tests.support.live_node import start_live_node
from tests.support.metrics import requests, scrape, value


async def test_counters_follow_traffic(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, url = await start_live_node(nursery, tmp_path)
    before = await scrape(url)
    assert value(before, "kvs_node_info", node_id="node") == 1
    assert value(before, "kvs_node_mode", mode="normal") == 1
    assert value(before, "kvs_node_mode", mode="stale") == 0  # every mode has its series
    async with AsyncClient(url) as kvs:
        for i in range(3):
            await kvs.put(f"m/{i}", i)
        await kvs.get("m/0")
        await kvs.get("m/1")
        with contextlib.suppress(NotFound):
            await kvs.get("m/none")
        await kvs.delete("m/2")
        await kvs.batch([{"op": "put", "key": f"b/{i}", "data": i} for i in range(10)])
        await kvs.ls("m")
        await kvs.history("m/0")
        await kvs.health()
    async with httpx.AsyncClient() as http:
        await http.get(f"{url}/no/such/route")
    after = await scrape(url)

    def moved(route: str, method: str, status: str) -> float:
        return requests(after, route, method, status) - requests(before, route, method, status)

    assert moved("/kv/{key}", "PUT", "200") == 3
    assert moved("/kv/{key}", "GET", "200") == 2
    assert moved("/kv/{key}", "GET", "404") == 1
    assert moved("/kv/{key}", "DELETE", "204") == 1
    assert moved("/kv/_batch", "POST", "200") == 1
    assert moved("/kv/{prefix}/_ls", "GET", "200") == 1
    assert moved("/api/data/<path:rest>", "GET", "200") == 1
    assert moved("/health", "GET", "200") == 1
    assert moved("unmatched", "GET", "404") == 1
    assert requests(before, "/metrics", "GET", "200") == 0
    assert requests(after, "/metrics", "GET", "200") == 1  # the first scrape
    latency = "kvs_http_request_duration_seconds_count"
    put_latency = value(after, latency, route="/kv/{key}", method="PUT", status="200")
    assert put_latency == 3
    le = value(
        after,
        "kvs_http_request_duration_seconds_bucket",
        route="/kv/{key}",
        method="PUT",
        status="200",
        le="+Inf",
    )
    assert le == 3

    assert value(after, "kvs_keys") == 2 + 10  # m/0, m/1 and the batch
    assert value(after, "kvs_tombstones") == 1
    assert value(after, "kvs_store_size_bytes") > 0
    ops = value(after, "kvs_store_ops_total") - value(before, "kvs_store_ops_total")
    assert ops == 3 + 1 + 10
    batches = value(after, "kvs_store_commit_batch_size_count") - value(
        before, "kvs_store_commit_batch_size_count"
    )
    assert batches == 5  # one commit per request here: 3 puts, 1 delete, 1 batch
    # The batch of 10 falls in the le=16 bucket and not in le=8.
    small = value(after, "kvs_store_commit_batch_size_bucket", le="8.0")
    assert value(after, "kvs_store_commit_batch_size_bucket", le="16.0") == small + 1


async def test_watchers_are_counted(nursery: trio.Nursery, tmp_path: Path) -> None:
    _, url = await start_live_node(nursery, tmp_path)
    seen = trio.Event()

    async def watch() -> None:
        async with AsyncClient(url) as kvs:
            async for _ in kvs.watch("w"):
                seen.set()

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        async with AsyncClient(url) as kvs:
            with trio.fail_after(10):
                while value(await scrape(url), "kvs_watchers") != 1:
                    await trio.sleep(0.01)
            await kvs.put("w/x", 1)
            with trio.fail_after(10):
                await seen.wait()
        during = await scrape(url)
        inner.cancel_scope.cancel()
    assert value(during, "kvs_watch_events_sent_total") == 1
    with trio.fail_after(10):
        while value(await scrape(url), "kvs_watchers") != 0:  # gone when the client left
            await trio.sleep(0.01)


async def test_two_nodes_in_one_process_keep_separate_metrics(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    _, url_a = await start_live_node(nursery, tmp_path, name="a")
    _, url_b = await start_live_node(nursery, tmp_path, name="b")
    async with AsyncClient(url_a) as kvs:
        for i in range(4):
            await kvs.put(f"k{i}", i)
    a, b = await scrape(url_a), await scrape(url_b)
    assert requests(a, "/kv/{key}", "PUT", "200") == 4
    assert requests(b, "/kv/{key}", "PUT", "200") == 0
    assert (value(a, "kvs_keys"), value(b, "kvs_keys")) == (4, 0)
    assert value(b, "kvs_node_info", node_id="b") == 1
    assert value(b, "kvs_node_info", node_id="a") == 0
