"""Operational endpoints: `/health` (open, no secrets: what launchers and checks poll)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response

from kvs.api.errors import json_response

if TYPE_CHECKING:
    from kvs.api.view import NodeView


def ops_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("ops", __name__)

    @bp.route("/health", methods=["GET"])
    async def health() -> Response:
        body = {
            "status": "ok",
            "node_id": node.node_id,
            "mode": node.mode,
            "keys": node.store.count(),
            "uptime_s": round(node.uptime_s(), 3),
        }
        if node.cluster is not None:
            body["members_alive"] = node.cluster.alive_count()
            if body["mode"] == "syncing":  # a joining node's bootstrap, as far as it knows
                progress = node.cluster.sync_stats().get("bootstrap")
                if progress is not None:
                    body["sync"] = progress
        return json_response(body)

    return bp
