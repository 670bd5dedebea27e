"""The key-value endpoints: `/kv/{path}` (GET, PUT, DELETE, `_ls`, `_tree`), `/kv/_batch`,
`/kv_changes` and `/api/data/{path}/history`."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import orjson
import trio
from quart import Blueprint, Response, g, request
from werkzeug.exceptions import RequestTimeout

from kvs import listing
from kvs.api import guard
from kvs.api.bodies import iter_batch_ops
from kvs.api.errors import ApiError, json_response, raw_json_response
from kvs.auth.permissions import DELETE, DELETE_SCOPE, READ_SCOPE, WRITE, WRITE_SCOPE
from kvs.model import (
    InvalidKey,
    Record,
    canonical_json,
    hlc_ms,
    hlc_pack,
    parse_duration,
    validate_key,
)
from kvs.store import Delete, Put, Written

if TYPE_CHECKING:
    from kvs.config import Config
    from kvs.node import Node

MAX_BATCH_OPS = 1000
MIN_BATCH_BODY = 32 * 1024 * 1024
MAX_TTL_SECONDS = 100 * 365 * 86400  # far beyond any real use, far inside the u64 ms index
TTL_HEADER = "X-KVS-TTL"
KEY_METHODS = "GET, HEAD, PUT, DELETE"
_HISTORY = re.compile(r"^(?P<key>.+)/history(?:/(?P<n>[^/]+))?$")
_PUT_FIELDS = frozenset({"op", "key", "data", "ttl"})
_DELETE_FIELDS = frozenset({"op", "key"})


def max_op_chars(config: Config) -> int:
    """The longest JSON text one batch op may have: its value pretty-printed with room to
    spare, plus its key (1,024 UTF-8 bytes, up to 6 characters each when escaped) and fields."""
    return 2 * config.max_json_size + 16 * 1024


def batch_body_limit(config: Config) -> int:
    """The largest body any endpoint accepts (a `_batch`); also the app-wide Quart limit."""
    return max(config.max_json_size, MIN_BATCH_BODY)


def allowed_methods(rest: str) -> str:
    """The `Allow` header for `/kv/{rest}`, the same whether the router or a handler refuses."""
    if rest == "_batch":
        return "POST"
    if rest.rpartition("/")[2] in ("_ls", "_tree"):
        return "GET, HEAD"
    return KEY_METHODS


def check_key(key: str) -> str:
    try:
        return validate_key(key)
    except InvalidKey as exc:
        raise ApiError(400, f"invalid key: {exc}", key=key) from None


def parse_ttl(raw: Any, *, what: str = "ttl") -> float | None:
    if raw is None or raw == "":
        return None
    try:
        seconds = parse_duration(raw, what=what)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    # Under 1 ms rounds to an already-expired key; a huge TTL overflowed the expiry index (500).
    if seconds < 0.001:
        raise ApiError(400, f"{what} must be at least 1ms")
    if seconds > MAX_TTL_SECONDS:
        raise ApiError(400, f"{what} must be at most {MAX_TTL_SECONDS} seconds (100 years)")
    return seconds


def int_arg(name: str, default: int, maximum: int, minimum: int = 1) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ApiError(400, f"query parameter {name} must be at least {minimum}")
    return min(value, maximum)


def bool_arg(name: str) -> bool:
    raw = request.args.get(name, "").lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ApiError(400, f"query parameter {name} must be true or false, got {raw!r}")


def etag_value(raw: str) -> str:
    """`If-Match` accepts the ETag as sent ("\"uuid\"", W/ prefix) or the bare uuid."""
    value = raw.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def stored_value_json(record: Record) -> bytes:
    """The Go KVS StoredValue shape, spliced around the stored JSON bytes without re-parsing."""
    v = record.version
    assert record.value is not None
    return b'{"uuid":"%s","timestamp":%d,"data":%s}' % (v.uuid.encode(), v.timestamp, record.value)


def version_json(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"uuid": record.version.uuid, "timestamp": record.version.timestamp}
    if record.deleted:
        out["deleted"] = True
    else:
        out["data"] = record.data()
    return out


async def read_body(limit: int) -> bytearray:
    """The request body, refused with 413 as soon as it passes `limit` (never fully buffered).

    Quart fixes a body's limit when the request is created (app-wide MAX_CONTENT_LENGTH, set
    to the largest per-endpoint limit), so the per-endpoint limit is enforced here, chunk by
    chunk, whether or not the client sent a Content-Length."""
    request.max_content_length = limit
    too_large = ApiError(413, f"request body is too large; the limit is {limit} bytes")
    length = request.content_length
    if length is not None and length > limit:
        raise too_large
    body = bytearray()
    timeout = request.body_timeout if request.body_timeout is not None else math.inf
    with trio.move_on_after(timeout) as scope:
        async for chunk in request.body:
            body += chunk
            if len(body) > limit:
                raise too_large
    if scope.cancelled_caught:
        raise RequestTimeout()
    return body  # not copied into bytes: a batch body may be tens of MiB


def require_writable(node: Node) -> None:
    """Writes are refused (503) on a read-only node, on one still bootstrapping, and on a
    stale one (cut off longer than tombstone_ttl: it no longer replicates)."""
    mode = node.mode
    if mode == "read-only":
        raise ApiError(
            503, "this node is read-only (read_only: true); writes are refused", mode=mode
        )
    if mode == "syncing":
        raise ApiError(
            503,
            "this node is syncing its data from the cluster; writes are refused until it finishes",
            mode=mode,
        )
    if mode == "stale":
        raise ApiError(
            503,
            "this node was cut off from the cluster for longer than tombstone_ttl and must be "
            "re-bootstrapped; writes are refused",
            mode=mode,
        )


def kv_blueprint(node: Node) -> Blueprint:
    bp = Blueprint("kv", __name__)
    store = node.store
    config = node.config

    @bp.route("/kv", methods=["GET", "PUT", "DELETE", "POST"])
    @bp.route("/kv/", methods=["GET", "PUT", "DELETE", "POST"])
    async def kv_root() -> Response:
        raise ApiError(
            400, "invalid key: key is empty (use /kv/{key}, or /kv/_ls and /kv/_tree to list)"
        )

    # Single keys (GET/HEAD/PUT/DELETE /kv/{key}) are served by the KeyRoutes middleware in
    # front of this app (kvs/api/keys.py); everything else under /kv/ is routed here.
    @bp.route("/kv/<path:rest>", methods=["GET", "PUT", "DELETE", "POST"])
    async def kv(rest: str) -> Response:
        method = request.method
        if rest == "_batch":
            if method != "POST":
                raise ApiError(
                    405, "use POST for /kv/_batch", headers={"Allow": allowed_methods(rest)}
                )
            return await batch()
        prefix, _, last = rest.rpartition("/")
        if last not in ("_ls", "_tree"):
            raise ApiError(404, "not found")  # unreachable behind KeyRoutes
        if method not in ("GET", "HEAD"):
            raise ApiError(405, f"use GET for {last}", headers={"Allow": allowed_methods(rest)})
        if prefix:
            check_key(prefix)
        guard.require_scope(node, g.principal, READ_SCOPE)
        return ls(prefix) if last == "_ls" else tree(prefix)

    def ls(prefix: str) -> Response:
        limit = int_arg("limit", 100, 1000)
        include_metadata = bool_arg("include_metadata")
        children, total = listing.list_children(
            store, prefix, limit, node.clock.wall_ms(), guard.readable_by(node, g.principal)
        )
        return json_response(
            {
                "path": prefix,
                "children": [c.to_json(include_metadata) for c in children],
                "total": total,
                "truncated": total > len(children),
            }
        )

    def tree(prefix: str) -> Response:
        limit = int_arg("limit", 500, 5000)
        depth = int_arg("depth", 1_000_000, 1_000_000)
        fmt = request.args.get("format", "json")
        if fmt not in ("json", "nested"):
            raise ApiError(400, f"query parameter format must be json or nested, got {fmt!r}")
        records, total = listing.list_tree(
            store, prefix, depth, limit, node.clock.wall_ms(), guard.readable_by(node, g.principal)
        )
        body: dict[str, Any] = {"path": prefix}
        if fmt == "nested":
            body["children"] = listing.nest(records, prefix)
        else:
            body["keys"] = [
                {"key": r.key, "uuid": r.version.uuid, "timestamp": r.version.timestamp}
                for r in records
            ]
        body["total"] = total
        body["truncated"] = total > len(records)
        return json_response(body)

    async def batch() -> Response:
        require_writable(node)
        principal = g.principal
        if not {WRITE_SCOPE, DELETE_SCOPE} & principal.scopes:
            guard.require_scope(node, principal, WRITE_SCOPE)  # 401/403 before reading the body
        # The body is held by the iterator alone, which lets it go once it has the text.
        ops = iter_batch_ops(
            await read_body(batch_body_limit(config)), MAX_BATCH_OPS, max_op_chars(config)
        )
        now = node.clock.wall_ms()
        store_ops = [batch_op(index, op, now) async for index, op in ops]
        if node.auth.enabled:
            store_ops = [authorize_op(index, op, principal) for index, op in enumerate(store_ops)]
        outcomes = await store.write(store_ops) if store_ops else []
        if node.audit is not None:
            for op, outcome in zip(store_ops, outcomes, strict=True):
                if isinstance(outcome, Written):
                    action = "delete" if isinstance(op, Delete) else "put"
                    await node.audit_event(action, principal.user, op.key, "batch")
        results: list[dict[str, Any]] = []
        for op, outcome in zip(store_ops, outcomes, strict=True):
            if isinstance(op, Delete):
                results.append({"key": op.key, "deleted": isinstance(outcome, Written)})
            else:
                assert isinstance(outcome, Written)
                v = outcome.record.version
                results.append({"key": op.key, "uuid": v.uuid, "timestamp": v.timestamp})
        # Strings, integers and booleans only, which orjson writes byte for byte as
        # json_response does; json_response's float check trips on most UUIDs (`4e`), so skip it.
        return raw_json_response(orjson.dumps({"results": results}))

    def authorize_op(index: int, op: Put | Delete, principal: Any) -> Put | Delete:
        """Scope and permission bits for one batch op; a new key gets the caller as owner."""
        try:
            current = store.get_live(op.key)
            if isinstance(op, Delete):
                guard.require_scope(node, principal, DELETE_SCOPE)
                if current is not None:
                    guard.require_bit(node, principal, current, DELETE)
                return op
            guard.require_scope(node, principal, WRITE_SCOPE)
            if current is not None:
                guard.require_bit(node, principal, current, WRITE)
            else:
                guard.require_create(node, principal, op.key)
        except ApiError as exc:
            raise ApiError(
                exc.status, f"op {index}: {exc.message}", exc.headers, index=index
            ) from None
        owner, group = guard.new_key_owner(node, principal)
        return Put(op.key, op.value, op.expires_at, None, owner, group)

    def batch_op(index: int, op: Any, now: int) -> Put | Delete:
        if not isinstance(op, dict):
            raise ApiError(400, f"op {index}: must be an object", index=index)
        kind = op.get("op")
        key = op.get("key")
        if not isinstance(key, str):
            raise ApiError(400, f"op {index}: key must be a string", index=index)
        try:
            validate_key(key)
        except InvalidKey as exc:
            raise ApiError(400, f"op {index}: invalid key: {exc}", index=index, key=key) from None
        allowed = _PUT_FIELDS if kind == "put" else _DELETE_FIELDS
        if not op.keys() <= allowed:
            unknown = set(op) - allowed
            raise ApiError(
                400, f"op {index}: unknown field(s) {', '.join(sorted(unknown))}", index=index
            )
        if kind == "delete":
            return Delete(key, must_exist=False)
        if kind != "put":
            raise ApiError(
                400, f"op {index}: op must be 'put' or 'delete', got {kind!r}", index=index
            )
        if "data" not in op:
            raise ApiError(400, f"op {index}: put needs a data field", index=index)
        value = canonical_json(op["data"])
        if len(value) > config.max_json_size:
            raise ApiError(
                413,
                f"op {index}: data is {len(value)} bytes; the limit is {config.max_json_size}",
                index=index,
            )
        try:
            ttl = parse_ttl(op.get("ttl"))
        except ApiError as exc:
            raise ApiError(400, f"op {index}: {exc.message}", index=index) from None
        return Put(key, value, now + int(ttl * 1000) if ttl else None)

    @bp.route("/kv_changes", methods=["GET"])
    async def kv_changes() -> Response:
        guard.require_scope(node, g.principal, READ_SCOPE)
        since = int_arg("since", 0, 2**47, minimum=0)
        limit = int_arg("limit", 100, 1000)
        after = hlc_pack(since + 1) - 1  # every entry in millisecond `since` or earlier
        # The current millisecond is still open: a write may land in it after this read, and
        # `since` is exclusive, so listing it now would skip that write for good. Hold it back.
        open_ms = max(node.clock.wall_ms(), hlc_ms(node.clock.last))
        records = [
            r for r in store.changes_after(after, None, limit + 1) if r.version.timestamp < open_ms
        ]
        more = len(records) > limit
        page = records[:limit]
        if more and page[-1].version.timestamp == records[limit].version.timestamp:
            # `since` is exclusive and in milliseconds, so a page must never end inside one:
            # drop the trailing millisecond, or, if the page holds nothing else, take all of it.
            last_ms = page[-1].version.timestamp
            trimmed = [r for r in page if r.version.timestamp != last_ms]
            if trimmed:
                page = trimmed
            else:
                while True:
                    tail = page[-1]
                    following = store.changes_after(tail.version.hlc, tail.key, 1000)
                    same = [r for r in following if r.version.timestamp == last_ms]
                    page.extend(same)
                    if len(same) < len(following) or not following:
                        rest = following[len(same) :]
                        more = bool(rest) and rest[0].version.timestamp < open_ms
                        break
        # Filtered after paging: `next` and `more` follow what was scanned, hidden entries
        # included, so a page may be short (even empty, with `more`) but a caller paging on
        # `next` always gets past keys it may not read (and users, groups and tokens).
        readable = guard.readable_by(node, g.principal)
        changes = [
            {
                "key": r.key,
                "uuid": r.version.uuid,
                "timestamp": r.version.timestamp,
                "deleted": r.deleted,
            }
            for r in page
            if readable(r)
        ]
        next_since = page[-1].version.timestamp if page else since
        return json_response({"changes": changes, "next": next_since, "more": more})

    @bp.route("/api/data/<path:rest>", methods=["GET"])
    async def history(rest: str) -> Response:
        match = _HISTORY.match(rest)
        if match is None:
            raise ApiError(
                404, "not found: use /api/data/{key}/history or /api/data/{key}/history/{n}"
            )
        key = check_key(match.group("key"))
        guard.require_scope(node, g.principal, READ_SCOPE)
        # The stored record decides, live or not: a tombstone or an expired record keeps the
        # owner and bits of the last live version, so a deleted private key's history stays
        # private. No record at all (never written, or its tombstone collected, which drops
        # its history too): nothing to show.
        # Each previous version is then shown only to a caller who may read that version
        # too, by its own owner and bits: loosening a key's bits, or a new owner re-creating
        # a deleted key, must not open the versions written while it was private (found by
        # the HTTP fuzzer: a deleted private key re-created by a writer showed its history).
        current = store.get(key)
        versions: list[Record] = []
        if current is not None:
            guard.require_read(node, g.principal, current)
            readable = guard.readable_by(node, g.principal)
            history = store.history(key, limit=config.revision_history_depth)
            versions = [r for r in history if readable(r)]
        n_raw = match.group("n")
        if n_raw is None:
            return json_response({"key": key, "versions": [version_json(r) for r in versions]})
        try:
            n = int(n_raw)
        except ValueError:
            n = 0
        if n < 1:  # not an index at all (0, negative, text): a bad request, not "past the end"
            raise ApiError(400, f"history index must be a positive integer, got {n_raw!r}")
        if n > len(versions):
            raise ApiError(
                404,
                f"key {key!r} has {len(versions)} previous version(s); {n} is past the end",
                key=key,
            )
        return json_response({"key": key, "version": n, **version_json(versions[n - 1])})

    return bp
