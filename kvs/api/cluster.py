"""Cluster endpoints: `GET /members/` (the member table), `GET /cluster/info` (how a
joining node learns this node's gossip address; needs proof of the cluster secret) and
`GET /cluster/stats` (membership counters: traffic, drops by reason, push-pulls, local
health; no secrets, no addresses beyond what /members/ shows), and
`POST /auth/cluster-bootstrap` (`admin:cluster:bootstrap`: what `kvs join` needs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, g, request

from kvs.api import guard
from kvs.api.errors import ApiError, json_response
from kvs.net.seeds import AUTH_HEADER, verify_auth

if TYPE_CHECKING:
    from kvs.api.view import ClusterView, NodeView


def _cluster(node: NodeView) -> ClusterView:
    if node.cluster is None:
        raise ApiError(404, "clustering is disabled on this node (clustering_enabled: false)")
    return node.cluster


def cluster_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("cluster", __name__)

    @bp.route("/members/", methods=["GET"])
    @bp.route("/members", methods=["GET"])
    async def members() -> Response:
        return json_response(_cluster(node).members_table(node.clock.wall_ms()))

    @bp.route("/cluster/stats", methods=["GET"])
    async def cluster_stats() -> Response:
        cluster = _cluster(node)
        return json_response({**cluster.membership_stats(), "sync": cluster.sync_stats()})

    @bp.route("/merkle_tree/root", methods=["GET"])
    async def merkle_root() -> Response:
        stats = _cluster(node).sync_stats()
        return json_response({"root": stats["root"], "keys": stats["keys"]})

    @bp.route("/cluster/info", methods=["GET"])
    async def cluster_info() -> Response:
        if not verify_auth(node.keyring, request.headers.get(AUTH_HEADER), node.clock.wall_ms()):
            if node.cluster is not None:
                # Counted, so a node with the wrong secret knocking at its seed shows up in
                # the seed's /cluster/stats too, not only in the joiner's log.
                node.cluster.refuse_cluster_info()
            raise ApiError(
                401, f"missing or invalid {AUTH_HEADER}: this node belongs to another cluster"
            )
        me = _cluster(node).self_info()
        return json_response(
            {
                "node_id": me.node_id,
                "joined_timestamp": me.joined_timestamp,
                "gossip_address": f"{me.gossip[0]}:{me.gossip[1]}",
                "sync_address": f"{me.sync[0]}:{me.sync[1]}",
                "http_address": f"{me.http[0]}:{me.http[1]}",
            }
        )

    @bp.route("/auth/cluster-bootstrap", methods=["POST"])
    async def cluster_bootstrap() -> Response:
        """What a new node needs to join (`kvs join`): the secret, a seed, its id."""
        guard.require_auth_on(node)
        guard.require_scope(node, g.principal, "admin:cluster:bootstrap")
        c = node.config
        await guard.audit(node, g.principal, "cluster.bootstrap", request.remote_addr or "")
        return json_response(
            {
                # The whole keyring, as configured now: a node joining mid-rotation must
                # accept what every peer sends.
                "cluster_secret": node.keyring[0] if len(node.keyring) == 1 else list(node.keyring),
                # With its scheme when it serves TLS, so the joiner asks it over https.
                "seed": f"{'https://' if c.tls_cert_file else ''}"
                f"{c.effective_advertise_address}:{c.port}",
                "node_id": node.node_id,
            },
            headers={"Cache-Control": "no-store"},
        )

    return bp
