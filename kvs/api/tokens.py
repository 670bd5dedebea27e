"""Tokens: `POST /api/tokens` (`admin:tokens:create`), `GET /api/tokens?user_uuid=`
(`admin:tokens:read`; your own with any token), `DELETE /api/tokens/{id}`
(`admin:tokens:revoke`; your own with any token). Never anonymous, never the token itself
in a listing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart import Blueprint, Response, g, request

from kvs.api import guard
from kvs.api.accounts import ident
from kvs.api.errors import ApiError, json_response
from kvs.api.requests import object_body
from kvs.auth.permissions import ALL_SCOPES, Principal
from kvs.auth.service import DEFAULT_TOKEN_LIFETIME_S, MAX_TOKEN_LIFETIME_S
from kvs.model import parse_duration

if TYPE_CHECKING:
    from kvs.api.view import NodeView

_LISTED = ("id", "user_uuid", "scopes", "created_at", "expires_at")


def tokens_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("tokens", __name__)
    directory = node.auth.directory

    @bp.route("/api/tokens", methods=["POST"])
    async def token_create() -> Response:
        guard.require_auth_on(node)
        guard.require_scope(node, g.principal, "admin:tokens:create")
        guard.require_writable(node)
        body = await object_body(
            {"user_uuid": str, "scopes": list, "expires_in": (int, float, str)},
            required=("user_uuid", "scopes"),
        )
        user = directory.get("users", body["user_uuid"])
        if user is None:
            raise ApiError(400, f"no user with uuid {body['user_uuid']!r}")
        scopes = _grantable_scopes(body["scopes"], g.principal)
        lifetime = _lifetime(body)
        issued = await node.auth.issue_token(user["uuid"], scopes, lifetime)
        await guard.audit(
            node, g.principal, "token.create", issued.token_id, f"user {user['uuid']}"
        )
        return json_response(
            {"token": issued.token, "expires_at": issued.expires_at, "id": issued.token_id}, 201
        )

    @bp.route("/api/tokens", methods=["GET"])
    async def token_list() -> Response:
        guard.require_auth_on(node)
        principal = g.principal
        user = request.args.get("user_uuid", "")
        # Your own tokens (`?user_uuid=<you>`) you may always list, with any token; anonymous
        # callers have no tokens (their user is ""), so they never pass that way.
        if principal.anonymous or user != principal.user:
            _require_token_reader(node, principal)
        items = [
            {k: t[k] for k in _LISTED}
            for t in directory.list("tokens")
            if not user or t.get("user_uuid") == user
        ]
        return json_response({"tokens": items})

    @bp.route("/api/tokens/<token_id>", methods=["DELETE"])
    async def token_revoke(token_id: str) -> Response:
        guard.require_auth_on(node)
        guard.require_writable(node)
        token = directory.get("tokens", ident(token_id))
        principal = g.principal
        if token is None or principal.anonymous or token.get("user_uuid") != principal.user:
            guard.require_scope(node, principal, "admin:tokens:revoke")  # your own: always
        if token is None or not await directory.delete("tokens", token_id):
            raise ApiError(404, f"no token with id {token_id!r}")
        await guard.audit(node, principal, "token.revoke", token_id)
        return Response(b"", status=204)

    return bp


def _grantable_scopes(scopes: list[Any], principal: Principal) -> list[str]:
    """Known scopes the caller holds itself: a token never carries more than its maker's."""
    if not all(isinstance(s, str) for s in scopes):
        raise ApiError(400, "field 'scopes' must be a list of strings")
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise ApiError(
            400, f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(sorted(ALL_SCOPES))}"
        )
    beyond = sorted(set(scopes) - principal.scopes)
    if beyond:
        raise ApiError(403, f"you cannot grant scope(s) you do not hold: {', '.join(beyond)}")
    return sorted(set(scopes))


def _lifetime(body: dict[str, Any]) -> int:
    if "expires_in" not in body:
        return DEFAULT_TOKEN_LIFETIME_S
    try:
        seconds = parse_duration(body["expires_in"], what="expires_in")
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if not 1 <= seconds <= MAX_TOKEN_LIFETIME_S:
        raise ApiError(400, f"expires_in must be between 1 s and {MAX_TOKEN_LIFETIME_S} s")
    return int(seconds)


def _require_token_reader(node: NodeView, principal: Principal) -> None:
    """`admin:tokens:read`, or `admin:users:read`, which listed tokens before that scope
    existed: a cluster bootstrapped then has no token that could grant the new one."""
    if "admin:users:read" not in principal.scopes:
        guard.require_scope(node, principal, "admin:tokens:read")
