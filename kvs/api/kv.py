"""The `/kv/...` routes Quart serves: `_ls`, `_tree` and `_batch` (single keys are served
in front of Quart, by kvs/api/keys.py), and the answers for `/kv` itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, g, request

from kvs.api import guard
from kvs.api.batch import batch
from kvs.api.errors import ApiError
from kvs.api.listings import ls, tree
from kvs.api.requests import check_key
from kvs.auth.permissions import READ_SCOPE

if TYPE_CHECKING:
    from kvs.api.view import NodeView

KEY_METHODS = "GET, HEAD, PUT, DELETE"
LISTINGS = ("_ls", "_list", "_tree")  # `_list`: the Go KVS's alias of `_ls`


def allowed_methods(rest: str) -> str:
    """The `Allow` header for `/kv/{rest}`, the same whether the router or a handler refuses."""
    if rest == "_batch":
        return "POST"
    if rest.rpartition("/")[2] in LISTINGS:
        return "GET, HEAD"
    return KEY_METHODS


def kv_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("kv", __name__)

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
            return await batch(node)
        prefix, _, last = rest.rpartition("/")
        if last not in LISTINGS:
            raise ApiError(404, "not found")  # unreachable behind KeyRoutes
        if method not in ("GET", "HEAD"):
            raise ApiError(405, f"use GET for {last}", headers={"Allow": allowed_methods(rest)})
        if prefix:
            check_key(prefix)
        guard.require_scope(node, g.principal, READ_SCOPE)
        return tree(node, prefix) if last == "_tree" else ls(node, prefix)

    return bp
