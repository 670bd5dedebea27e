"""Backup endpoints: `GET /api/backup/status` and `POST /api/backup/run` (take one now).

Both live under `/api/backup/` so that authentication can protect the prefix as a whole."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, g

from kvs.api.errors import ApiError, json_response
from kvs.api.guard import require_scope
from kvs.backup import BackupError

if TYPE_CHECKING:
    from kvs.api.view import NodeView


def backup_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("backup", __name__)

    @bp.route("/api/backup/status", methods=["GET"])
    async def status() -> Response:
        require_scope(node, g.principal, "admin:backup:read")
        return json_response(node.backups.status())

    @bp.route("/api/backup/run", methods=["POST"])
    async def run() -> Response:
        """Take a backup now and answer when it is on disk (a running one is waited for
        first: backups never overlap)."""
        require_scope(node, g.principal, "admin:backup:create")
        try:
            result = await node.backups.run_once()
        except BackupError as exc:
            raise ApiError(500, str(exc)) from None
        return json_response(
            {
                "path": str(result.path),
                "size": result.size,
                "raw_size": result.raw_size,
                "duration_s": round(result.seconds, 3),
                "node_id": result.manifest.node_id,
                "created_ms": result.manifest.created_ms,
            }
        )

    return bp
