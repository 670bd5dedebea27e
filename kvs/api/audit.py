"""The tamper-evident log over HTTP: `GET /api/audit?since=&limit=` and
`GET /api/audit/verify` (the keyed chain's check, and the peers' witness report), both
needing `admin:audit:read`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, g

from kvs.api import guard
from kvs.api.errors import ApiError, json_response
from kvs.api.requests import int_arg

if TYPE_CHECKING:
    from kvs.api.view import NodeView
    from kvs.audit import AuditLog


def audit_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("audit", __name__)

    def audit_log() -> AuditLog:
        guard.require_scope(node, g.principal, "admin:audit:read")
        if node.audit is None:
            raise ApiError(404, "the tamper-evident log is off (tamper_logging_enabled: false)")
        return node.audit

    @bp.route("/api/audit", methods=["GET"])
    async def audit_read() -> Response:
        log = audit_log()
        since = int_arg("since", 0, 2**63 - 1, minimum=0)
        limit = int_arg("limit", 100, 1000)
        entries = log.read(since, limit)
        return json_response(
            {
                "entries": [e.to_json() for e in entries],
                "next": entries[-1].seq if entries else since,
            }
        )

    @bp.route("/api/audit/verify", methods=["GET"])
    async def audit_verify() -> Response:
        """The chain's check, and what the peers' exchange of chain heads showed (absent
        with clustering off): `witness.ok` is false if a peer's chain was found cut short
        or rewritten, or a peer says so of ours (`about_this_node`)."""
        answer = audit_log().verify().to_json()
        cluster = node.cluster
        witness = None if cluster is None else cluster.audit_witness()
        if witness is not None:
            answer["witness"] = witness
        return json_response(answer)

    return bp
