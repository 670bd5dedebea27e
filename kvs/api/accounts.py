"""Users and groups: `POST/GET /api/{users,groups}`, `GET/PUT/DELETE /api/{kind}/{uuid}`,
each needing its `admin:{kind}:{create,read,update,delete}` scope.

Both kinds are records in the replicated directory (kvs/auth/directory.py); they differ only
in their name field and in the list of the other kind each names, so one set of handlers
serves both, parametrised by a `_Kind`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, g

from kvs.api import guard
from kvs.api.errors import ApiError, json_response
from kvs.api.requests import object_body

if TYPE_CHECKING:
    from kvs.api.view import NodeView

MAX_NAME = 256
MAX_LIST = 1000
_UUID_CHARS = frozenset("0123456789abcdef-")


@dataclass(frozen=True)
class _Kind:
    kind: str  # "users" or "groups"
    name_field: str  # "nickname" or "groupname"
    list_field: str  # "groups" or "members"
    list_kind: str  # the kind the list names

    @property
    def one(self) -> str:
        return self.kind[:-1]

    @property
    def fields(self) -> dict[str, Any]:
        return {self.name_field: str, self.list_field: list}


USERS = _Kind("users", "nickname", "groups", "groups")
GROUPS = _Kind("groups", "groupname", "members", "users")


def ident(value: str) -> str:
    """A uuid or token id from the path (404 for anything that cannot be one)."""
    if not value or len(value) > 64 or not set(value) <= _UUID_CHARS:
        raise ApiError(404, "not found")
    return value


def accounts_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("accounts", __name__)
    for k in (USERS, GROUPS):
        for method, path, handler in (
            ("POST", f"/api/{k.kind}", _create),
            ("GET", f"/api/{k.kind}", _list),
            ("GET", f"/api/{k.kind}/<item_id>", _get),
            ("PUT", f"/api/{k.kind}/<item_id>", _update),
            ("DELETE", f"/api/{k.kind}/<item_id>", _delete),
        ):
            endpoint = f"{k.kind}_{handler.__name__.lstrip('_')}"
            bp.add_url_rule(path, endpoint, partial(handler, node, k), methods=[method])
    return bp


def _allowed(node: NodeView, k: _Kind, op: str, *, writes: bool = False) -> None:
    guard.require_auth_on(node)
    guard.require_scope(node, g.principal, f"admin:{k.kind}:{op}")
    if writes:
        guard.require_writable(node)


def _check_name(k: _Kind, body: dict[str, Any]) -> None:
    if k.name_field in body and not 1 <= len(body[k.name_field]) <= MAX_NAME:
        raise ApiError(400, f"field {k.name_field!r} must be 1 to {MAX_NAME} characters")


def _uuid_list(node: NodeView, k: _Kind, body: dict[str, Any]) -> list[str]:
    """The body's list of existing uuids of the other kind (400 if any is not one)."""
    field, kind = k.list_field, k.list_kind
    values = body.get(field, [])
    if len(values) > MAX_LIST or not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"field {field!r} must be a list of at most {MAX_LIST} uuid strings")
    for value in values:
        if node.auth.directory.get(kind, value) is None:
            raise ApiError(400, f"field {field!r}: no {kind[:-1]} with uuid {value!r}")
    return list(dict.fromkeys(values))


async def _create(node: NodeView, k: _Kind) -> Response:
    _allowed(node, k, "create", writes=True)
    body = await object_body(k.fields, required=(k.name_field,))
    _check_name(k, body)
    members = _uuid_list(node, k, body)
    now = node.clock.wall_ms()
    item_id = node.new_uuid()
    item = {
        "uuid": item_id,
        k.name_field: body[k.name_field],
        k.list_field: members,
        "created_at": now,
        "updated_at": now,
    }
    await node.auth.directory.put(k.kind, item_id, item)
    await guard.audit(node, g.principal, f"{k.one}.create", item_id)
    return json_response(item, 201)


async def _list(node: NodeView, k: _Kind) -> Response:
    _allowed(node, k, "read")
    return json_response({k.kind: node.auth.directory.list(k.kind)})


async def _get(node: NodeView, k: _Kind, item_id: str) -> Response:
    _allowed(node, k, "read")
    item = node.auth.directory.get(k.kind, ident(item_id))
    if item is None:
        raise ApiError(404, f"no {k.one} with uuid {item_id!r}")
    return json_response(item)


async def _update(node: NodeView, k: _Kind, item_id: str) -> Response:
    _allowed(node, k, "update", writes=True)
    body = await object_body(k.fields)
    item = node.auth.directory.get(k.kind, ident(item_id))
    if item is None:
        raise ApiError(404, f"no {k.one} with uuid {item_id!r}")
    _check_name(k, body)
    if k.list_field in body:
        item[k.list_field] = _uuid_list(node, k, body)
    if k.name_field in body:
        item[k.name_field] = body[k.name_field]
    item["updated_at"] = node.clock.wall_ms()
    await node.auth.directory.put(k.kind, item_id, item)
    await guard.audit(node, g.principal, f"{k.one}.update", item_id)
    return json_response(item)


async def _delete(node: NodeView, k: _Kind, item_id: str) -> Response:
    _allowed(node, k, "delete", writes=True)
    directory = node.auth.directory
    if not await directory.delete(k.kind, ident(item_id)):
        raise ApiError(404, f"no {k.one} with uuid {item_id!r}")
    if k is USERS:  # its tokens die with it (they are refused anyway)
        ids = [t["id"] for t in directory.list("tokens") if t.get("user_uuid") == item_id]
        await directory.delete_many("tokens", ids)
    await guard.audit(node, g.principal, f"{k.one}.delete", item_id)
    return Response(b"", status=204)
