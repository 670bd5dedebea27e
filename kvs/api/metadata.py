"""Key metadata: `GET/PUT /kv/{key}/metadata` (also `/kv/{key}/_metadata`): owner, group,
the 12 permission bits and the TTL. Reading needs what reading the key needs (or
`admin:metadata:read`); changing it is for the owner with `write` or a holder of
`admin:metadata:update`. A change is a new version of the key with the same value, written
by compare-and-set against the version it was decided on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from quart import Blueprint, Response, g, request

from kvs.api import guard
from kvs.api.answers import metadata_json
from kvs.api.errors import ApiError, json_response
from kvs.api.requests import check_key, object_body, parse_ttl
from kvs.auth.permissions import READ_SCOPE, Principal
from kvs.model import Record
from kvs.store import Conflict, Put, Written

if TYPE_CHECKING:
    from kvs.api.view import NodeView

_FIELDS: dict[str, Any] = {
    "owner_uuid": str,
    "group_uuid": str,
    "permissions": int,
    "ttl": (int, float, str, type(None)),
}
_CAS_ATTEMPTS = 10  # a write slipping in between the read and the compare-and-set: retried


def metadata_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("metadata", __name__)

    @bp.route("/kv/<path:key>/metadata", methods=["GET", "PUT"])
    @bp.route("/kv/<path:key>/_metadata", methods=["GET", "PUT"])
    async def metadata(key: str) -> Response:
        check_key(key)
        if request.method == "GET":
            return json_response(metadata_json(_readable(node, key), node.clock.wall_ms()))
        return await _change(node, key)

    return bp


def _readable(node: NodeView, key: str) -> Record:
    principal = g.principal
    if node.auth.enabled and "admin:metadata:read" in principal.scopes:
        record = node.store.get_live(key)  # an administrator sees every key's metadata
        if record is None:
            raise ApiError(404, "key not found", key=key)
        return record
    guard.require_scope(node, principal, READ_SCOPE)  # as a GET of the key: the one read rule
    return guard.read_live(node, principal, key)


async def _change(node: NodeView, key: str) -> Response:
    guard.require_writable(node)
    body = await object_body(_FIELDS)
    if "permissions" in body and not 0 <= body["permissions"] <= 0xFFF:
        raise ApiError(400, "permissions must be an integer from 0 to 4095 (0xFFF)")
    ttl = parse_ttl(body["ttl"]) if body.get("ttl") is not None else None
    for field, kind in (("owner_uuid", "users"), ("group_uuid", "groups")):
        if body.get(field) and node.auth.directory.get(kind, body[field]) is None:
            raise ApiError(400, f"field {field!r}: no {kind[:-1]} with uuid {body[field]!r}")
    for _ in range(_CAS_ATTEMPTS):
        record = node.store.get_live(key)
        _require_changer(node, g.principal, record)
        if record is None:
            raise ApiError(404, "key not found", key=key)
        meta = (
            body.get("owner_uuid", record.owner),
            body.get("group_uuid", record.group),
            body.get("permissions", record.permissions),
        )
        if "ttl" in body:
            expires_at = node.clock.wall_ms() + int(ttl * 1000) if ttl else None
        else:
            expires_at = record.expires_at
        assert record.value is not None
        put = Put(key, record.value, expires_at, record.version.uuid, meta=meta)
        (outcome,) = await node.store.write([put])
        if isinstance(outcome, Conflict):
            continue
        assert isinstance(outcome, Written)
        detail = orjson.dumps({k: body[k] for k in body}).decode()
        await guard.audit(node, g.principal, "metadata", key, detail)
        return json_response(metadata_json(outcome.record, node.clock.wall_ms()))
    raise ApiError(409, "the key kept changing; try again", key=key)


def _require_changer(node: NodeView, principal: Principal, record: Record | None) -> None:
    """The key's owner with `write`, or a holder of `admin:metadata:update`."""
    if not node.auth.enabled or "admin:metadata:update" in principal.scopes:
        return
    if principal.anonymous:
        guard.require_scope(node, principal, "admin:metadata:update")  # 401
    if record is not None and record.owner != principal.user:
        raise ApiError(
            403,
            "only the key's owner or a holder of admin:metadata:update may change its metadata",
        )
    guard.require_scope(node, principal, "write")
