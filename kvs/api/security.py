"""Security endpoints: users, groups, tokens, key metadata, the audit log, and the cluster
bootstrap that lets a new node join securely.

    POST/GET /api/users, GET/PUT/DELETE /api/users/{uuid}      admin:users:{create,read,update,delete}
    POST/GET /api/groups, GET/PUT/DELETE /api/groups/{uuid}    admin:groups:{...}
    POST /api/tokens, GET /api/tokens?user_uuid=, DELETE /api/tokens/{id}
                                            admin:tokens:{create,read,revoke} (none for your own)
    GET/PUT /kv/{key}/metadata (also /kv/{key}/_metadata)
    GET /api/audit?since=&limit=, GET /api/audit/verify          admin:audit:read
    POST /auth/cluster-bootstrap                                 admin:cluster:bootstrap
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from quart import Blueprint, Response, g, request

from kvs.api.bodies import parse_json_document
from kvs.api.errors import ApiError, json_response
from kvs.api.guard import read_live, require_scope
from kvs.api.kv import (
    check_key,
    int_arg,
    parse_ttl,
    read_body,
    require_writable,
)
from kvs.auth.permissions import ALL_SCOPES, READ_SCOPE, Principal
from kvs.auth.service import DEFAULT_TOKEN_LIFETIME_S, MAX_TOKEN_LIFETIME_S
from kvs.model import parse_duration
from kvs.store import Conflict, Put, Written

if TYPE_CHECKING:
    from kvs.node import Node

MAX_ADMIN_BODY = 64 * 1024
MAX_NAME = 256
MAX_LIST = 1000
_UUID_CHARS = frozenset("0123456789abcdef-")


def _principal() -> Principal:
    return g.principal


async def _object_body(
    allowed: dict[str, type | tuple[type, ...]], required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The JSON object body, with only `allowed` fields of the right types (else 400)."""
    body = parse_json_document(await read_body(MAX_ADMIN_BODY))
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(
            400, f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    for name in required:
        if name not in body:
            raise ApiError(400, f"field {name!r} is required")
    for name, value in body.items():
        kinds = allowed[name]
        if isinstance(value, bool) and bool not in (
            kinds if isinstance(kinds, tuple) else (kinds,)
        ):
            raise ApiError(400, f"field {name!r} has the wrong type")
        if not isinstance(value, kinds):
            raise ApiError(400, f"field {name!r} has the wrong type")
    return body


def _name(body: dict[str, Any], field: str) -> None:
    if field in body and not 1 <= len(body[field]) <= MAX_NAME:
        raise ApiError(400, f"field {field!r} must be 1 to {MAX_NAME} characters")


def _uuid_list(node: Node, body: dict[str, Any], field: str, kind: str) -> list[str]:
    """A list of existing user or group uuids (400 if any is not one)."""
    values = body.get(field, [])
    if len(values) > MAX_LIST or not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"field {field!r} must be a list of at most {MAX_LIST} uuid strings")
    for value in values:
        if node.auth.directory.get(kind, value) is None:
            raise ApiError(400, f"field {field!r}: no {kind[:-1]} with uuid {value!r}")
    return list(dict.fromkeys(values))


def _ident(value: str) -> str:
    if not value or len(value) > 64 or not set(value) <= _UUID_CHARS:
        raise ApiError(404, "not found")
    return value


def security_blueprint(node: Node) -> Blueprint:
    bp = Blueprint("security", __name__)
    directory = node.auth.directory

    def scope(name: str) -> None:
        require_scope(node, _principal(), name)

    def require_auth_on() -> None:
        if not node.auth.enabled:
            raise ApiError(404, "authentication is disabled on this node (auth_enabled: false)")

    async def audit(action: str, target: str, detail: str = "") -> None:
        if node.audit is not None:
            await node.audit_event(action, _principal().user, target, detail)

    # --- users and groups ------------------------------------------------------------------------

    def crud(kind: str, name_field: str, list_field: str, list_kind: str) -> None:
        fields: dict[str, Any] = {name_field: str, list_field: list}

        @bp.route(f"/api/{kind}", methods=["POST"], endpoint=f"{kind}_create")
        async def create() -> Response:
            require_auth_on()
            scope(f"admin:{kind}:create")
            require_writable(node)
            body = await _object_body(fields, required=(name_field,))
            _name(body, name_field)
            members = _uuid_list(node, body, list_field, list_kind)
            now = node.clock.wall_ms()
            ident = node.new_uuid()
            item = {
                "uuid": ident,
                name_field: body[name_field],
                list_field: members,
                "created_at": now,
                "updated_at": now,
            }
            await directory.put(kind, ident, item)
            await audit(f"{kind[:-1]}.create", ident)
            return json_response(item, 201)

        @bp.route(f"/api/{kind}", methods=["GET"], endpoint=f"{kind}_list")
        async def list_all() -> Response:
            require_auth_on()
            scope(f"admin:{kind}:read")
            return json_response({kind: directory.list(kind)})

        @bp.route(f"/api/{kind}/<ident>", methods=["GET"], endpoint=f"{kind}_get")
        async def get_one(ident: str) -> Response:
            require_auth_on()
            scope(f"admin:{kind}:read")
            item = directory.get(kind, _ident(ident))
            if item is None:
                raise ApiError(404, f"no {kind[:-1]} with uuid {ident!r}")
            return json_response(item)

        @bp.route(f"/api/{kind}/<ident>", methods=["PUT"], endpoint=f"{kind}_update")
        async def update(ident: str) -> Response:
            require_auth_on()
            scope(f"admin:{kind}:update")
            require_writable(node)
            body = await _object_body(fields)
            item = directory.get(kind, _ident(ident))
            if item is None:
                raise ApiError(404, f"no {kind[:-1]} with uuid {ident!r}")
            _name(body, name_field)
            if list_field in body:
                item[list_field] = _uuid_list(node, body, list_field, list_kind)
            if name_field in body:
                item[name_field] = body[name_field]
            item["updated_at"] = node.clock.wall_ms()
            await directory.put(kind, ident, item)
            await audit(f"{kind[:-1]}.update", ident)
            return json_response(item)

        @bp.route(f"/api/{kind}/<ident>", methods=["DELETE"], endpoint=f"{kind}_delete")
        async def delete(ident: str) -> Response:
            require_auth_on()
            scope(f"admin:{kind}:delete")
            require_writable(node)
            if not await directory.delete(kind, _ident(ident)):
                raise ApiError(404, f"no {kind[:-1]} with uuid {ident!r}")
            if kind == "users":  # its tokens die with it (they are refused anyway)
                ids = [t["id"] for t in directory.list("tokens") if t.get("user_uuid") == ident]
                await directory.delete_many("tokens", ids)
            await audit(f"{kind[:-1]}.delete", ident)
            return Response(b"", status=204)

    crud("users", "nickname", "groups", "groups")
    crud("groups", "groupname", "members", "users")

    # --- tokens ----------------------------------------------------------------------------------

    @bp.route("/api/tokens", methods=["POST"])
    async def token_create() -> Response:
        require_auth_on()
        scope("admin:tokens:create")
        require_writable(node)
        body = await _object_body(
            {"user_uuid": str, "scopes": list, "expires_in": (int, float, str)},
            required=("user_uuid", "scopes"),
        )
        user = directory.get("users", body["user_uuid"])
        if user is None:
            raise ApiError(400, f"no user with uuid {body['user_uuid']!r}")
        scopes = body["scopes"]
        if not all(isinstance(s, str) for s in scopes):
            raise ApiError(400, "field 'scopes' must be a list of strings")
        unknown = sorted(set(scopes) - ALL_SCOPES)
        if unknown:
            raise ApiError(
                400,
                f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(sorted(ALL_SCOPES))}",
            )
        beyond = sorted(set(scopes) - _principal().scopes)
        if beyond:  # no escalation: a token never carries more than the one that made it
            raise ApiError(403, f"you cannot grant scope(s) you do not hold: {', '.join(beyond)}")
        lifetime = DEFAULT_TOKEN_LIFETIME_S
        if "expires_in" in body:
            try:
                seconds = parse_duration(body["expires_in"], what="expires_in")
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            if not 1 <= seconds <= MAX_TOKEN_LIFETIME_S:
                raise ApiError(400, f"expires_in must be between 1 s and {MAX_TOKEN_LIFETIME_S} s")
            lifetime = int(seconds)
        issued = await node.auth.issue_token(user["uuid"], sorted(set(scopes)), lifetime)
        await audit("token.create", issued.token_id, f"user {user['uuid']}")
        return json_response(
            {"token": issued.token, "expires_at": issued.expires_at, "id": issued.token_id}, 201
        )

    def require_token_reader(principal: Principal) -> None:
        """`admin:tokens:read`, or `admin:users:read`, which listed tokens before that scope
        existed: a cluster bootstrapped then has no token that could grant the new one."""
        if "admin:users:read" not in principal.scopes:
            scope("admin:tokens:read")

    def _token_json(t: dict[str, Any]) -> dict[str, Any]:
        return {k: t[k] for k in ("id", "user_uuid", "scopes", "created_at", "expires_at")}

    @bp.route("/api/tokens", methods=["GET"])
    async def token_list() -> Response:
        require_auth_on()
        principal = _principal()
        user = request.args.get("user_uuid", "")
        # Your own tokens (`?user_uuid=<you>`) you may always list, with any token; anonymous
        # callers have no tokens (their user is ""), so they never pass that way.
        if principal.anonymous or user != principal.user:
            require_token_reader(principal)
        items = [
            _token_json(t)
            for t in directory.list("tokens")
            if not user or t.get("user_uuid") == user
        ]
        return json_response({"tokens": items})

    @bp.route("/api/tokens/<ident>", methods=["DELETE"])
    async def token_revoke(ident: str) -> Response:
        require_auth_on()
        require_writable(node)
        token = directory.get("tokens", _ident(ident))
        principal = _principal()
        if token is None or principal.anonymous or token.get("user_uuid") != principal.user:
            scope("admin:tokens:revoke")  # your own tokens you may always revoke
        if token is None or not await directory.delete("tokens", ident):
            raise ApiError(404, f"no token with id {ident!r}")
        await audit("token.revoke", ident)
        return Response(b"", status=204)

    # --- key metadata ----------------------------------------------------------------------------

    def metadata_json(record: Any) -> dict[str, Any]:
        ttl = None
        if record.expires_at is not None:
            ttl = max(0.0, (record.expires_at - node.clock.wall_ms()) / 1000)
        return {
            "owner_uuid": record.owner,
            "group_uuid": record.group,
            "permissions": record.permissions,
            "ttl": ttl,
            "created_at": record.created_at,
            "updated_at": record.version.timestamp,
        }

    @bp.route("/kv/<path:key>/metadata", methods=["GET", "PUT"])
    @bp.route("/kv/<path:key>/_metadata", methods=["GET", "PUT"])
    async def metadata(key: str) -> Response:
        check_key(key)
        principal = _principal()
        if request.method == "GET":
            if node.auth.enabled and "admin:metadata:read" in principal.scopes:
                record = node.store.get_live(key)  # an administrator sees every key's metadata
                if record is None:
                    raise ApiError(404, "key not found", key=key)
            else:  # as a GET of the key: the read scope and the one read rule
                scope(READ_SCOPE)
                record = read_live(node, principal, key)
            return json_response(metadata_json(record))
        require_writable(node)
        body = await _object_body(
            {
                "owner_uuid": str,
                "group_uuid": str,
                "permissions": int,
                "ttl": (int, float, str, type(None)),
            }
        )
        if "permissions" in body and not 0 <= body["permissions"] <= 0xFFF:
            raise ApiError(400, "permissions must be an integer from 0 to 4095 (0xFFF)")
        ttl = parse_ttl(body["ttl"]) if body.get("ttl") is not None else None
        for field, kind in (("owner_uuid", "users"), ("group_uuid", "groups")):
            if body.get(field) and directory.get(kind, body[field]) is None:
                raise ApiError(400, f"field {field!r}: no {kind[:-1]} with uuid {body[field]!r}")
        for _ in range(10):  # retried when a write slips in between the read and the CAS
            record = node.store.get_live(key)
            if node.auth.enabled and "admin:metadata:update" not in principal.scopes:
                if principal.anonymous:
                    scope("admin:metadata:update")  # 401
                if record is not None and record.owner != principal.user:
                    raise ApiError(
                        403,
                        "only the key's owner or a holder of admin:metadata:update may change its metadata",
                    )
                scope("write")
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
            await audit("metadata", key, orjson.dumps({k: body[k] for k in body}).decode())
            return json_response(metadata_json(outcome.record))
        raise ApiError(409, "the key kept changing; try again", key=key)

    # --- audit and cluster bootstrap --------------------------------------------------------------

    @bp.route("/api/audit", methods=["GET"])
    async def audit_read() -> Response:
        scope("admin:audit:read")
        if node.audit is None:
            raise ApiError(404, "the tamper-evident log is off (tamper_logging_enabled: false)")
        since = int_arg("since", 0, 2**63 - 1, minimum=0)
        limit = int_arg("limit", 100, 1000)
        entries = node.audit.read(since, limit)
        return json_response(
            {
                "entries": [e.to_json() for e in entries],
                "next": entries[-1].seq if entries else since,
            }
        )

    @bp.route("/api/audit/verify", methods=["GET"])
    async def audit_verify() -> Response:
        scope("admin:audit:read")
        if node.audit is None:
            raise ApiError(404, "the tamper-evident log is off (tamper_logging_enabled: false)")
        return json_response(node.audit.verify().to_json())

    @bp.route("/auth/cluster-bootstrap", methods=["POST"])
    async def cluster_bootstrap() -> Response:
        require_auth_on()
        scope("admin:cluster:bootstrap")
        c = node.config
        await audit("cluster.bootstrap", request.remote_addr or "")
        return json_response(
            {
                "cluster_secret": c.cluster_secret,
                "seed": f"{c.effective_advertise_address}:{c.port}",
                "node_id": node.node_id,
            },
            headers={"Cache-Control": "no-store"},
        )

    return bp
