"""A `_watch` stream driven through a node's ASGI app in process (no socket, no HTTP client),
so that authorization tests can open one per caller cheaply and read what each was sent."""

from __future__ import annotations

from typing import Any

import trio

from kvs.node import Node
from tests.support.api import app_of


class WatchStream:
    """One `GET /kv/{prefix}/_watch` request: its status and everything sent so far."""

    def __init__(self, node: Node, path: str, query: str, headers: dict[str, str]) -> None:
        self.node = node
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }
        self.status = 0
        self.body = b""
        self.finished = trio.Event()
        self._disconnect = trio.Event()
        self._requested = False

    async def _receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.finished.set()

    async def _run(self) -> None:
        await app_of(self.node).asgi_app(self.scope, self._receive, self._send)
        self.finished.set()

    async def wait_for(self, needle: bytes, timeout: float = 5.0) -> None:
        """Until `needle` was sent (or the stream ended: a refused request ends at once)."""
        with trio.fail_after(timeout):
            while needle not in self.body and not self.finished.is_set():
                await trio.sleep(0.001)

    async def close(self) -> None:
        self._disconnect.set()
        with trio.fail_after(5):
            await self.finished.wait()


async def open_watch(
    nursery: trio.Nursery,
    node: Node,
    path: str = "/kv/_watch",
    query: str = "",
    headers: dict[str, str] | None = None,
) -> WatchStream:
    """Open a watch and wait until it is live (`event: ready`) or refused."""
    stream = WatchStream(node, path, query, headers or {})
    nursery.start_soon(stream._run)
    await stream.wait_for(b"event: ready")
    return stream
