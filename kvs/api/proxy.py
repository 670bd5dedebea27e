"""Between an HTTP worker process and its node: what a worker answers itself, and how it
passes everything else to the node over the node's private Unix socket.

Rule: a worker answers itself only reads that need nothing but the store, and key writes
up to their store ops, which it sends the node over the write link (`served_locally`);
every other write, and everything that needs the node's memory (watch streams, metrics, cluster
state, the audit chain, accounts, backups, the HLC's open millisecond behind `/kv_changes`),
is passed to the node unchanged (its body read whole first, its answer streamed back),
with the real client's address in `CLIENT_HEADER`. The
node believes that header only on its Unix-socket listener (`ForwardedClient`), which only
processes of its own user can reach (the socket is 0600): rate limits, the failed-login
budget and the audit log see the real client, whichever process it reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import trio

from kvs.api.instruments import LATENCY_BUCKETS, HttpMetrics
from kvs.api.keys import key_of_path
from kvs.api.watch import is_watch_path
from kvs.auth.service import AuthError, AuthService
from kvs.logs import LogLimiter

log = logging.getLogger("kvs.http")

CLIENT_HEADER = b"x-kvs-client"
WORKER_HEADER = b"kvs-worker"  # on every answer a worker sends: which process served it
# Never passed on either way (RFC 9110 §7.6.1): they describe one connection, not the message.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"expect",  # 100-continue was the worker's to answer
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        CLIENT_HEADER,
    }
)
_LOCAL_PREFIXES = ("/kv/", "/api/data/")
_NODE_ONLY_SUFFIXES = ("/_watch",)
CONNECT_TIMEOUT = 5.0
REPORT_PATH = "/_workers/metrics"  # answered on the node's Unix socket only
REPORT_INTERVAL = 1.0
MAX_REPORT = 4 * 1024 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def served_locally(method: str, path: str) -> bool:
    """Whether a worker answers this request itself: from the store, GET/HEAD of a key, its
    metadata, `_ls`, `_tree` and `/api/data/<key>/history` (never a watch stream); through
    the write link (kvs/api/writelink.py), PUT/DELETE of a key and `POST /kv/_batch`."""
    if method in ("PUT", "DELETE"):
        return key_of_path(path) is not None
    if method == "POST":
        return path == "/kv/_batch"
    if method not in ("GET", "HEAD"):
        return False
    if path in ("/kv", "/kv/"):
        return True
    return path.startswith(_LOCAL_PREFIXES) and not is_watch_path(path)


class ForwardedClient:
    """The node's side of the Unix socket: takes the client's address from CLIENT_HEADER
    (a worker always sets it) and passes the request on as if it came from that client.
    A worker's own report of its request counters (`REPORT_PATH`) goes to `metrics`."""

    def __init__(self, app: Any, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.refused_reports = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == REPORT_PATH
            and scope["method"] == "POST"
            and all(name != CLIENT_HEADER for name, _ in scope["headers"])
        ):  # a worker's own request (one it passes on for a client always names the client)
            await self._report(receive, send)
            return
        if scope["type"] == "http":
            client: tuple[str, int] = ("unknown", 0)
            kept = []
            for name, value in scope["headers"]:
                if name == CLIENT_HEADER:
                    host, _, port = value.decode("latin-1").rpartition(":")
                    client = (host or "unknown", int(port) if port.isdigit() else 0)
                else:
                    kept.append((name, value))
            scope = {**scope, "headers": kept, "client": client}
        await self.app(scope, receive, send)

    async def _report(self, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_REPORT or not message.get("more_body", False):
                break
        try:
            index, pid, rows = _check_report(body)
        except (ValueError, TypeError, orjson.JSONDecodeError):
            self.refused_reports += 1
            await _send_error(send, 400, "not a worker's report")
            return
        self.metrics.absorb(index, pid, rows)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _check_report(body: bytes) -> tuple[int, int, list[list[Any]]]:
    """{"index", "pid", "rows": [[route, method, status, count, sum, buckets], ...]}."""
    if len(body) > MAX_REPORT:
        raise ValueError("too large")
    report = orjson.loads(body)
    index, pid, rows = report["index"], report["pid"], report["rows"]
    if not (type(index) is int and type(pid) is int and isinstance(rows, list)):
        raise ValueError("bad report")
    for row in rows:
        route, method, status, count, total, buckets = row
        if not (
            isinstance(route, str)
            and isinstance(method, str)
            and type(status) is int
            and type(count) is int
            and isinstance(total, int | float)
            and isinstance(buckets, list)
            and len(buckets) == len(LATENCY_BUCKETS) + 1
            and all(type(b) is int for b in buckets)
        ):
            raise ValueError("bad row")
    return index, pid, rows


async def report_metrics(proxy: NodeProxy, index: int, metrics: HttpMetrics) -> None:
    """A worker's task: its request counters to the node every REPORT_INTERVAL."""
    while True:
        await trio.sleep(REPORT_INTERVAL)
        body = orjson.dumps({"index": index, "pid": os.getpid(), "rows": metrics.rows()})
        with contextlib.suppress(httpx.HTTPError):  # the node is stopping: next time
            await proxy.client.post("http://kvs-node" + REPORT_PATH, content=body)


class WorkerRouter:
    """A worker's app: each request is answered by `local` (the node's own API app over the
    worker's store) or streamed to the node by `proxy`. `follow` runs first (the store
    catches up with the node: kvs/store/follower.py)."""

    def __init__(
        self,
        local: Any,
        proxy: NodeProxy,
        auth: AuthService,
        follow: Callable[[], None],
        index: int,
    ) -> None:
        self.local = local
        self.proxy = proxy
        self.auth = auth
        self.follow = follow
        self.tag = str(index).encode()
        self.counters = {"local": 0, "proxied": 0, "proxy_failed": 0}
        # A client's request budget is counted where all its requests pass: the node.
        self._rate_limited = auth.limiter is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.local(scope, receive, send)
            return

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (WORKER_HEADER, self.tag)]}
            await send(message)

        if self._local(scope):
            self.counters["local"] += 1
            await self.local(scope, receive, tagged)
        else:
            self.counters["proxied"] += 1
            await self.proxy(scope, receive, tagged)

    def _local(self, scope: Scope) -> bool:
        if self._rate_limited or not served_locally(scope["method"], scope["path"]):
            return False
        self.follow()
        if not self.auth.enabled:
            return True
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:  # cached: the local app's own check then costs a dictionary look-up
            self.auth.authenticate(authorization)
        except AuthError:
            return False  # a failed login is the node's to count, limit and audit
        return True


class NodeProxy:
    """Passes a request to the node over its Unix socket and streams the answer back (a
    watch stream flows as the node sends it). A node that cannot be reached is a 503."""

    def __init__(self, socket_path: str) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path, retries=1),
            timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self.failures = 0
        self._limiter = LogLimiter(log, burst=5)  # a node that is down fails every request

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # The body whole first (the worker's front holds it to the body budget): the
            # node sees a request only once complete, at socket speed, so a slow client
            # holds no connection of the node's, and an early answer (413) is never lost.
            body = await _read_body(receive) if _has_body(scope) else b""
        except _ClientLeft:
            return  # nothing to answer (the front answers 503 if its body budget was full)
        try:
            request = self._request(scope, body)
        except (httpx.InvalidURL, ValueError, UnicodeError):
            await _send_error(send, 400, "the request target cannot be passed on")
            return
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.failures += 1
            self._limiter.log(
                logging.WARNING,
                "proxy",
                "cannot reach the node to pass a request on: %s",
                type(exc).__name__,
            )
            await _send_error(
                send, 503, "the node is not answering; retry shortly", {b"retry-after": b"1"}
            )
            return
        try:
            headers = [
                (k.lower(), v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
            ]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
                with contextlib.suppress(httpx.HTTPError):  # the node stopped mid-stream
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(httpx.HTTPError):
                await response.aclose()

    def _request(self, scope: Scope, body: bytes) -> httpx.Request:
        target = scope.get("raw_path") or scope["path"].encode()
        if not target.startswith(b"/"):  # absolute-form (`GET http://host/path`): the path
            _, _, rest = target.partition(b"://")
            target = b"/" + rest.partition(b"/")[2]
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        # The body goes whole, with its own Content-Length (set by httpx).
        headers = [
            (k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP and k != b"content-length"
        ]
        client = scope.get("client") or ("unknown", 0)
        headers.append((CLIENT_HEADER, f"{client[0]}:{client[1]}".encode("latin-1")))
        url = httpx.URL("http://kvs-node").copy_with(raw_path=target)
        return self.client.build_request(scope["method"], url, headers=headers, content=body)


def _has_body(scope: Scope) -> bool:
    return any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])


class _ClientLeft(Exception):
    """The client went away (or its body would pass the body budget) before its body was
    whole: nothing is passed on."""


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientLeft()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """A client that leaves ends the stream from the node (a watch, say) at once."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _send_error(
    send: Send, status: int, message: str, extra: dict[bytes, bytes] | None = None
) -> None:
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *(extra or {}).items(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
