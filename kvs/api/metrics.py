"""`GET /metrics` (Prometheus text format) and the middleware that counts and times requests.

The middleware is the outermost ASGI layer of the app, so it sees every request: the raw
single-key fast path (kvs/api/keys.py), watch streams and Quart's routes alike. It labels
each with its route template, never the raw path (keys would make the label set unbounded):
`/kv/...` paths are classified here by their shape, other routes by the Quart URL rule
that matched (stored in the ASGI scope by a `before_request` hook), else `unmatched`.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Blueprint, Response, request

from kvs.api.instruments import HttpMetrics

Scope = dict[str, Any]
ROUTE_KEY = "kvs.route"
_KV_ENDPOINTS = {
    "_ls": "/kv/{prefix}/_ls",
    "_list": "/kv/{prefix}/_ls",
    "_tree": "/kv/{prefix}/_tree",
    "_watch": "/kv/{prefix}/_watch",
    "metadata": "/kv/{key}/metadata",
}


def route_of(scope: Scope) -> str:
    path: str = scope["path"]
    if path.startswith("/kv/"):
        rest = path[4:]
        if rest == "_batch":
            return "/kv/_batch"
        return _KV_ENDPOINTS.get(rest.rpartition("/")[2], "/kv/{key}")
    route = scope.get(ROUTE_KEY)
    return route if route is not None else "unmatched"


class MetricsMiddleware:
    def __init__(self, app: Any, http: HttpMetrics) -> None:
        self.app = app
        self.http = http

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0
        started = perf_counter()

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.http.observe(route_of(scope), scope["method"], status, perf_counter() - started)


def metrics_blueprint(registry: CollectorRegistry) -> Blueprint:
    bp = Blueprint("metrics", __name__)

    @bp.before_app_request
    async def remember_route() -> None:
        rule = request.url_rule
        if rule is not None:
            request.scope[ROUTE_KEY] = rule.rule

    @bp.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return bp
