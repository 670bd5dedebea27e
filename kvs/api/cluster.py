"""Cluster endpoints: `GET /members/` (the member table), `GET /cluster/info` (how a
joining node learns this node's gossip address; needs proof of the cluster secret) and
`GET /cluster/stats` (membership counters: traffic, drops by reason, push-pulls, local
health; no secrets, no addresses beyond what /members/ shows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, request

from kvs.api.errors import ApiError, json_response
from kvs.net.seeds import AUTH_HEADER, verify_auth

if TYPE_CHECKING:
    from kvs.node import Node


def cluster_blueprint(node: Node) -> Blueprint:
    bp = Blueprint("cluster", __name__)

    @bp.route("/members/", methods=["GET"])
    @bp.route("/members", methods=["GET"])
    async def members() -> Response:
        if node.membership is None:
            raise ApiError(404, "clustering is disabled on this node (clustering_enabled: false)")
        return json_response(node.membership.table(node.clock.wall_ms()))

    @bp.route("/cluster/stats", methods=["GET"])
    async def cluster_stats() -> Response:
        if node.membership is None:
            raise ApiError(404, "clustering is disabled on this node (clustering_enabled: false)")
        body = node.membership.stats()
        if node.sync is not None:
            body["sync"] = node.sync.stats()
        return json_response(body)

    @bp.route("/merkle_tree/root", methods=["GET"])
    async def merkle_root() -> Response:
        if node.sync is None:
            raise ApiError(404, "clustering is disabled on this node (clustering_enabled: false)")
        return json_response({"root": node.sync.tree.root_hex(), "keys": node.sync.tree.size})

    @bp.route("/cluster/info", methods=["GET"])
    async def cluster_info() -> Response:
        if not verify_auth(
            node.config.cluster_secret, request.headers.get(AUTH_HEADER), node.clock.wall_ms()
        ):
            if node.membership is not None:
                # Counted, so a node with the wrong secret knocking at its seed shows up in
                # the seed's /cluster/stats too, not only in the joiner's log.
                node.membership.counters["cluster_info_refused"] += 1
            raise ApiError(
                401, f"missing or invalid {AUTH_HEADER}: this node belongs to another cluster"
            )
        if node.membership is None:
            raise ApiError(404, "clustering is disabled on this node (clustering_enabled: false)")
        me = node.membership.core.me_info
        return json_response(
            {
                "node_id": me.node_id,
                "joined_timestamp": me.joined_timestamp,
                "gossip_address": f"{me.gossip[0]}:{me.gossip[1]}",
                "sync_address": f"{me.sync[0]}:{me.sync[1]}",
                "http_address": f"{me.http[0]}:{me.http[1]}",
            }
        )

    return bp
