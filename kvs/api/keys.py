"""GET/HEAD/PUT/DELETE on `/kv/{key}`: the hot path, served as plain ASGI in front of Quart.

Quart builds a request context, a task nursery and a response object per request; for the
two requests that dominate a key-value store's traffic that machinery cost a third of the
server's throughput (measured: ~330 µs of Quart per GET against ~5 µs of LMDB). This
middleware answers single-key requests directly and passes every other request (listings,
batches, history, health, errors for unknown routes) to the Quart app unchanged. It sits on
`app.asgi_app`, so Hypercorn and Quart's test client both go through it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from kvs.api.answers import stored_value_json
from kvs.api.bodies import parse_json_document
from kvs.api.errors import ApiError, not_durable
from kvs.api.guard import (
    client_of_scope,
    identify,
    new_key_owner,
    read_live,
    readable_by,
    require_may_delete,
    require_may_put,
    require_scope,
    require_writable,
)
from kvs.api.requests import TTL_HEADER, check_key, etag_value, parse_ttl
from kvs.auth.permissions import (
    READ_SCOPE,
    WRITE_SCOPE,
    Principal,
)
from kvs.store import Conflict, Delete, NotFound, Put, StoreError, Written

if TYPE_CHECKING:
    from kvs.api.view import NodeView

Scope = dict[str, Any]
_JSON = (b"content-type", b"application/json")
_PASS_THROUGH = ("_ls", "_list", "_tree")  # `_list`: the Go KVS's alias of `_ls`
_METADATA = ("metadata", "_metadata")  # /kv/{key}/metadata: kvs/api/security.py


class _Disconnected(Exception):
    pass


def key_of_path(path: str) -> str | None:
    """The key a path names when this middleware answers it (`/kv/{key}`), or None when it
    passes the request on (`_batch`, listings, metadata, anything not under `/kv/`)."""
    if not path.startswith("/kv/"):
        return None
    rest = path[4:]
    _, slash, last = rest.rpartition("/")
    if rest in ("_batch", "") or last in _PASS_THROUGH or (slash and last in _METADATA):
        return None
    return rest


class KeyRoutes:
    def __init__(self, app: Any, node: NodeView) -> None:
        self.app = app
        self.node = node

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        rest = key_of_path(scope.get("path", "")) if scope["type"] == "http" else None
        if rest is None:
            return await self.app(scope, receive, send)
        try:
            try:
                status, headers, body = await self._handle(scope, receive, rest)
            except StoreError as failed:
                raise not_durable(failed) from None
        except ApiError as exc:
            payload = {"error": exc.message, **exc.extra}
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            status = exc.status
            headers = [_JSON] + [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
        except _Disconnected:
            return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def _handle(
        self, scope: Scope, receive: Any, rest: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        method = scope["method"]
        principal = await identify(
            self.node, _header(scope, b"authorization"), client_of_scope(scope)
        )
        if method in ("GET", "HEAD"):
            return self._get(scope, check_key(rest), principal)
        if method == "PUT":
            return await self._put(scope, receive, check_key(rest), principal)
        if method == "DELETE":
            return await self._delete(check_key(rest), principal)
        raise ApiError(
            405,
            f"method {method} is not allowed on a key",
            headers={"Allow": "GET, HEAD, PUT, DELETE"},
        )

    def _get(
        self, scope: Scope, key: str, principal: Principal
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        require_scope(self.node, principal, READ_SCOPE)
        record = read_live(self.node, principal, key)
        etag = b'"%s"' % record.version.uuid.encode()
        inm = _header(scope, b"if-none-match")
        if inm is not None and etag_value(inm) == record.version.uuid:
            return 304, [(b"etag", etag)], b""
        return 200, [_JSON, (b"etag", etag)], stored_value_json(record)

    async def _put(
        self, scope: Scope, receive: Any, key: str, principal: Principal
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        node = self.node
        require_writable(node)
        require_scope(node, principal, WRITE_SCOPE)
        raw_query = scope.get("query_string", b"")
        query = parse_qs(raw_query.decode("latin-1")) if raw_query else {}
        raw_ttl = (
            query["ttl"][-1] if "ttl" in query else _header(scope, TTL_HEADER.lower().encode())
        )
        ttl = parse_ttl(raw_ttl)
        raw_if_match = _header(scope, b"if-match")
        if_match = etag_value(raw_if_match) if raw_if_match is not None else None
        body = await _read_body(scope, receive, node.config.max_json_size)
        parse_json_document(body)
        expires_at = node.clock.wall_ms() + int(ttl * 1000) if ttl else None
        require_may_put(node, principal, key)
        owner, group = new_key_owner(node, principal)
        put = Put(key, body, expires_at, if_match, owner, group)
        (outcome,) = await node.client_write([put], principal.user)
        if isinstance(outcome, Conflict):
            message = (
                "version conflict: If-Match does not name the current version"
                if outcome.current_uuid
                else "version conflict: the key does not exist"
            )
            current_uuid = outcome.current_uuid
            if current_uuid is not None and not self._may_read(principal, key):
                current_uuid = None  # write without read: the version is not the caller's
            raise ApiError(409, message, key=key, current_uuid=current_uuid)
        assert isinstance(outcome, Written)
        v = outcome.record.version
        body = b'{"uuid":"%s","timestamp":%d}' % (v.uuid.encode(), v.timestamp)
        return 200, [_JSON, (b"etag", b'"%s"' % v.uuid.encode())], body

    def _may_read(self, principal: Principal, key: str) -> bool:
        record = self.node.store.get(key)
        return record is not None and readable_by(self.node, principal)(record)

    async def _delete(
        self, key: str, principal: Principal
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        node = self.node
        require_writable(node)
        require_may_delete(node, principal, key)  # always a token's, as in the Go KVS
        (outcome,) = await node.client_write([Delete(key)], principal.user)
        if isinstance(outcome, NotFound):
            raise ApiError(404, "key not found", key=key)
        return 204, [], b""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Any, limit: int) -> bytes:
    """Read the body, refusing with 413 as soon as it passes `limit` (declared or streamed)."""
    declared = _header(scope, b"content-length")
    too_large = ApiError(413, f"request body is too large; the limit is {limit} bytes")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
