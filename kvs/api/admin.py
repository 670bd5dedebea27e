"""Admin recovery: `POST /api/admin/recover`, no token, the cluster secret proven instead
(`X-KVS-Recover-Auth`, see kvs/auth/recovery.py): a fresh root token, for an administrator
whose every token expired. `kvs admin recover CONFIG` sends it on the node's host.

A refused request is a 401, counted (`admin_recover_refused`, and as a failed login against
the caller's failure budget: guessing is throttled) and audited with its reason; an accepted
one is audited as `admin.recover` with the token's id. Neither is logged with a token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, request

from kvs.api import guard
from kvs.api.errors import ApiError, json_response
from kvs.auth.recovery import RECOVER_HEADER, RecoveryGate
from kvs.auth.service import AuthError

if TYPE_CHECKING:
    from kvs.api.view import NodeView


def admin_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("admin", __name__)
    gate = RecoveryGate(node.keyring, node.node_id, not_before_ms=node.clock.wall_ms())

    @bp.route("/api/admin/recover", methods=["POST"])
    async def recover() -> Response:
        guard.require_auth_on(node)
        client = request.remote_addr or "unknown"
        gate.set_secrets(node.keyring)  # after a keyring reload, its secrets prove it
        refused = gate.check(request.headers.get(RECOVER_HEADER), node.clock.wall_ms())
        if refused is not None:
            node.auth.counters["admin_recover_refused"] += 1
            try:
                await node.auth.failed(client, f"admin recovery refused: {refused}")
            except AuthError as limited:
                raise guard.api_error(limited) from None
            raise ApiError(401, f"admin recovery refused: {refused}")
        issued = await node.recover_root(f"http from {client}")
        return json_response(
            {"token": issued.token, "id": issued.token_id, "expires_at": issued.expires_at},
            headers={"Cache-Control": "no-store"},
        )

    return bp
