"""A write the disk refuses is a 503 with a JSON error, never an acknowledgement and never a
500 (issue 15's follow-up): nothing of it is visible afterwards, and writes work again once
the disk does. The fault is injected under the store (kvs.store.CommitGate)."""

from __future__ import annotations

import errno
import json
import random

import pytest
import trio

from kvs.node import Node
from kvs.server import ApiServer
from kvs.testing.faults import DiskFaults
from tests.support.api import app_of
from tests.support.config import make_config


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
async def test_a_refused_commit_is_503_and_nothing_is_written(tmp_path, nursery, code) -> None:
    disk = DiskFaults(random.Random(0), kinds=(code,))
    node = Node(make_config(tmp_path), api=ApiServer(), rng=random.Random(7), commit_gate=disk)
    await nursery.start(lambda task_status: node.run(http=False, task_status=task_status))
    client = app_of(node).test_client()
    assert (await client.put("/kv/before", data=b'{"a": 1}')).status_code == 200

    disk.rate = 1.0  # every commit fails
    attempts = [
        await client.put("/kv/k", data=b'{"a": 2}'),
        await client.put("/kv/before", data=b'{"a": 3}'),
        await client.delete("/kv/before"),
        await client.post(
            "/kv/_batch", data=json.dumps({"ops": [{"op": "put", "key": "b", "data": 1}]})
        ),
    ]
    for response in attempts:
        assert response.status_code == 503, await response.get_data()
        assert response.headers["Retry-After"] == "1"
        body = json.loads(await response.get_data())
        assert "not made durable" in body["error"]
    assert (await client.get("/kv/k")).status_code == 404
    assert (await client.get("/kv/b")).status_code == 404
    before = await client.get("/kv/before")
    assert json.loads(await before.get_data())["data"] == {"a": 1}

    disk.rate = 0.0  # the disk is back: writes work again
    assert (await client.put("/kv/k", data=b'{"a": 4}')).status_code == 200
    with trio.fail_after(5):
        assert json.loads(await (await client.get("/kv/k")).get_data())["data"] == {"a": 4}
