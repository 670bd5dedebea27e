"""Small helpers shared by the HTTP API tests (tests/unit/test_api_*.py)."""

from __future__ import annotations

import json
from typing import Any

from kvs.node import Node
from kvs.server import ApiServer


async def expect_error(response: Any, status: int) -> dict[str, Any]:
    """Assert a JSON error with `status` (never a 500, never HTML); return its body."""
    raw = await response.get_data()
    assert response.status_code == status, (response.status_code, raw[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = json.loads(raw)
    assert isinstance(body, dict), body
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


async def expect_json(response: Any, status: int = 200) -> Any:
    raw = await response.get_data()
    assert response.status_code == status, (response.status_code, raw[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    return json.loads(raw)


async def put(client: Any, key: str, value: Any, **kwargs: Any) -> dict[str, Any]:
    """PUT a JSON value; return the `{"uuid", "timestamp"}` answer."""
    data = json.dumps(value).encode()
    return await expect_json(await client.put(f"/kv/{key}", data=data, **kwargs))


async def get_value(client: Any, key: str) -> Any:
    return (await expect_json(await client.get(f"/kv/{key}")))["data"]


async def batch(client: Any, ops: list[Any]) -> Any:
    return await client.post("/kv/_batch", data=json.dumps({"ops": ops}).encode())


def client_of(node: Node) -> Any:
    return app_of(node).test_client()


def app_of(node: Node) -> Any:
    """The Quart app of a node started with an `ApiServer` (tests drive it in process)."""
    assert isinstance(node.api, ApiServer) and node.api.app is not None, "no API on this node"
    return node.api.app
