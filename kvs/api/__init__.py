"""The HTTP API: a Quart-Trio app built per node from one blueprint per area."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from kvs.api.accounts import accounts_blueprint
from kvs.api.admin import admin_blueprint
from kvs.api.audit import audit_blueprint
from kvs.api.backup import backup_blueprint
from kvs.api.batch import batch_body_limit
from kvs.api.changes import changes_blueprint
from kvs.api.cluster import cluster_blueprint
from kvs.api.console import console_blueprint, is_console_path, load_assets, wants_html
from kvs.api.errors import ApiError, error_response, not_durable
from kvs.api.guard import identify, require_scope
from kvs.api.history import history_blueprint
from kvs.api.instruments import make_registry
from kvs.api.keys import KeyRoutes
from kvs.api.kv import allowed_methods, kv_blueprint
from kvs.api.metadata import metadata_blueprint
from kvs.api.metrics import MetricsMiddleware, metrics_blueprint
from kvs.api.ops import ops_blueprint
from kvs.api.tokens import tokens_blueprint
from kvs.api.watch import WatchRoutes
from kvs.auth.permissions import READ_SCOPE
from kvs.model import InvalidKey, validate_key
from kvs.store import StoreError
from kvs.watch import WatchHub

if TYPE_CHECKING:
    from kvs.api.listener import HttpStats
    from kvs.api.view import NodeView

log = logging.getLogger(__name__)

# Open without a token: liveness (no secrets in it), and the HMAC-authenticated join lookup
# and admin recovery (which prove the cluster secret instead).
OPEN_PATHS = frozenset({"/health", "/cluster/info", "/api/admin/recover"})
# The topology and sync state: a token (read scope) unless anonymous reads are allowed.
CLUSTER_PATHS = frozenset(
    {"/members", "/members/", "/cluster/stats", "/merkle_tree/root", "/metrics"}
)


def create_app(node: NodeView, stats: HttpStats) -> QuartTrio:
    """The node's API: the Quart app, with the single-key fast path, watch streams and the
    request metrics in front of it. `stats` are the HTTP front's counters (errors are
    counted there too)."""
    app = QuartTrio(__name__)
    # Keys are paths: `a//b` must reach the handler (and be refused as a bad key), not be
    # redirected to `a/b`, and `/kv/x/` must not be redirected either.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    # The largest body any endpoint takes; each endpoint enforces its own limit (read_body).
    app.config["MAX_CONTENT_LENGTH"] = batch_body_limit(node.config)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint(node))
    # The console (kvs/ui/static/): public files, served without a token.
    app.register_blueprint(console_blueprint(load_assets()))
    app.before_request(partial(_authenticate, node))
    # Watch and metrics (issue 6): the hub follows the store's commits; the metrics
    # middleware sits outermost so it counts every request, fast path included.
    hub = WatchHub(node.store, buffer=node.config.watch_buffer)
    registry, http_metrics = make_registry(node, hub, stats)
    app.register_blueprint(metrics_blueprint(registry))
    app.extensions["kvs.http_metrics"] = http_metrics  # HTTP workers report into it
    app.extensions["kvs.metrics_registry"] = registry  # and the write link (kvs/server.py)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(StoreError, _store_failed)
    app.register_error_handler(HTTPException, partial(_http_error, node))
    app.register_error_handler(Exception, partial(_unexpected, stats))
    app.asgi_app = KeyRoutes(app.asgi_app, node)  # type: ignore[method-assign]
    app.asgi_app = MetricsMiddleware(WatchRoutes(app.asgi_app, node, hub), http_metrics)  # type: ignore[method-assign]
    return app


BLUEPRINTS = (
    kv_blueprint,
    ops_blueprint,
    cluster_blueprint,
    backup_blueprint,
    changes_blueprint,
    history_blueprint,
    accounts_blueprint,
    tokens_blueprint,
    metadata_blueprint,
    audit_blueprint,
    admin_blueprint,
)


async def _authenticate(node: NodeView) -> None:
    """Every request but the open ones: who is calling (401 for a bad token), and the rate
    limit; the handlers check scopes and permission bits."""
    if request.path in OPEN_PATHS or is_console_path(request.path):
        return
    if (
        request.path == "/"
        and request.method == "GET"
        and wants_html(request.headers.get("Accept", ""))
    ):
        return  # a browser at the node's root is sent to the console
    g.principal = await identify(
        node, request.headers.get("Authorization"), request.remote_addr or "unknown"
    )
    if request.path in CLUSTER_PATHS:
        require_scope(node, g.principal, READ_SCOPE)


async def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers, **exc.extra)


async def _store_failed(exc: StoreError) -> Response:
    """The disk refused a commit (the writer logged it): 503, never acknowledged."""
    return await _api_error(not_durable(exc))


async def _http_error(node: NodeView, exc: HTTPException) -> Response:
    """The router's own refusals (404, 405, 413), as JSON errors."""
    status = exc.code or 500
    if status == 404 and request.path.startswith("/kv/"):
        # The router refuses some malformed keys itself (`/kv//a`): say why, as a 400.
        key = request.path[len("/kv/") :]
        try:
            validate_key(key)
        except InvalidKey as bad:
            return error_response(400, f"invalid key: {bad}", key=key)
    if status == 413:
        limit = request.max_content_length or node.config.max_json_size
        return error_response(413, f"request body is too large; the limit is {limit} bytes")
    headers = {}
    if status == 405:
        allowed = getattr(exc, "valid_methods", None)
        if request.path.startswith("/kv/"):
            # The router would list every method of the shared /kv/ rule (POST included).
            headers["Allow"] = allowed_methods(request.path[len("/kv/") :])
        elif allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    if status == 404:  # our own words, not the framework's paragraph
        return error_response(404, f"no such endpoint: {request.path} (see docs/reference.md)")
    return error_response(status, exc.description or exc.name, headers)


async def _unexpected(stats: HttpStats, exc: Exception) -> Response:
    """A bug, not bad input: counted, and logged with its traceback, but rate-limited so a
    client that found it cannot flood the log. The path may hold a key: not logged."""
    stats.app_errors += 1
    stats.limiter.log(
        logging.ERROR,
        "app",
        "unhandled %s serving %s %s",
        type(exc).__name__,
        request.method,
        request.url_rule.rule if request.url_rule else "(no route)",
        exc_info=exc,
    )
    return error_response(500, "internal error; see the node's log")
