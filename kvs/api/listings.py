"""`GET /kv/{prefix}/_ls` (direct children) and `GET /kv/{prefix}/_tree` (every key below),
as range scans (kvs/listing.py), leaving out what the caller may not read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Response, g, request

from kvs import listing
from kvs.api import guard
from kvs.api.errors import ApiError, json_response
from kvs.api.requests import bool_arg, int_arg

if TYPE_CHECKING:
    from kvs.api.view import NodeView
    from kvs.model import Record


def ls(node: NodeView, prefix: str) -> Response:
    limit = int_arg("limit", 100, 1000)
    include_metadata = bool_arg("include_metadata")
    after = request.args.get("after", "")
    if not _segment(after):
        raise ApiError(400, "query parameter after must be one path segment (a subkey)")
    children, total = listing.list_children(
        node.store,
        prefix,
        limit,
        node.clock.wall_ms(),
        guard.readable_by(node, g.principal),
        after=after,
    )
    return json_response(
        {
            "path": prefix,
            "children": [c.to_json(include_metadata) for c in children],
            "total": total,
            "truncated": total > len(children),
        }
    )


def tree(node: NodeView, prefix: str) -> Response:
    limit = int_arg("limit", 500, 5000)
    depth = int_arg("depth", 1_000_000, 1_000_000)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "nested"):
        raise ApiError(400, f"query parameter format must be json or nested, got {fmt!r}")
    after = request.args.get("after", "")
    if not all(_segment(part) for part in after.split("/")):
        raise ApiError(400, "query parameter after must be a key (the last of a page)")
    values = bool_arg("values")  # a page of keys with their values: `kvs get --prefix`, dump
    now = node.clock.wall_ms()
    records, total = listing.list_tree(
        node.store,
        prefix,
        depth,
        limit,
        now,
        guard.readable_by(node, g.principal),
        after=after,
        count_all=not values,
    )
    body: dict[str, Any] = {"path": prefix}
    if fmt == "nested":
        body["children"] = listing.nest(records, prefix)
    elif values:
        body["keys"] = [_with_value(r) for r in records]
        body["truncated"] = total > len(records)
        body["next"] = records[-1].key if records else after
        return json_response(body)
    else:
        body["keys"] = [
            {"key": r.key, "uuid": r.version.uuid, "timestamp": r.version.timestamp}
            for r in records
        ]
    body["total"] = total
    body["truncated"] = total > len(records)
    return json_response(body)


def _with_value(record: Record) -> dict[str, Any]:
    """A key of a `values=true` page: its value, absolute expiry and permissions."""
    item: dict[str, Any] = {
        "key": record.key,
        "uuid": record.version.uuid,
        "timestamp": record.version.timestamp,
        "data": record.data(),
        "owner_uuid": record.owner,
        "group_uuid": record.group,
        "permissions": record.permissions,
    }
    if record.expires_at is not None:
        item["expires_at"] = record.expires_at
    return item


def _segment(text: str) -> bool:
    """Whether `text` could be a key's path segment (or is empty): no slash, no control
    character, no lone surrogate, at most 1024 bytes."""
    if any(ch == "/" or ch < " " or "\ud800" <= ch <= "\udfff" for ch in text):
        return False
    return len(text.encode()) <= 1024
