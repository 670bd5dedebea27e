"""`GET /api/data/{key}/history` and `/history/{n}`: a key's previous versions, newest
first, each shown only to a caller who may read it."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from quart import Blueprint, Response, g

from kvs.api import guard
from kvs.api.answers import version_json
from kvs.api.errors import ApiError, json_response
from kvs.api.requests import check_key
from kvs.auth.permissions import READ_SCOPE
from kvs.model import Record

if TYPE_CHECKING:
    from kvs.api.view import NodeView

_HISTORY = re.compile(r"^(?P<key>.+)/history(?:/(?P<n>[^/]+))?$")


def history_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("history", __name__)

    @bp.route("/api/data/<path:rest>", methods=["GET"])
    async def history(rest: str) -> Response:
        match = _HISTORY.match(rest)
        if match is None:
            raise ApiError(
                404, "not found: use /api/data/{key}/history or /api/data/{key}/history/{n}"
            )
        key = check_key(match.group("key"))
        guard.require_scope(node, g.principal, READ_SCOPE)
        # The stored record decides, live or not: a tombstone or an expired record keeps the
        # owner and bits of the last live version, so a deleted private key's history stays
        # private. No record at all (never written, or its tombstone collected, which drops
        # its history too): nothing to show.
        # Each previous version is then shown only to a caller who may read that version
        # too, by its own owner and bits: loosening a key's bits, or a new owner re-creating
        # a deleted key, must not open the versions written while it was private (found by
        # the HTTP fuzzer: a deleted private key re-created by a writer showed its history).
        current = node.store.get(key)
        versions: list[Record] = []
        if current is not None:
            guard.require_read(node, g.principal, current)
            readable = guard.readable_by(node, g.principal)
            history = node.store.history(key, limit=node.config.revision_history_depth)
            versions = [r for r in history if readable(r)]
        n_raw = match.group("n")
        if n_raw is None:
            return json_response({"key": key, "versions": [version_json(r) for r in versions]})
        try:
            n = int(n_raw)
        except ValueError:
            n = 0
        if n < 1:  # not an index at all (0, negative, text): a bad request, not "past the end"
            raise ApiError(400, f"history index must be a positive integer, got {n_raw!r}")
        if n > len(versions):
            raise ApiError(
                404,
                f"key {key!r} has {len(versions)} previous version(s); {n} is past the end",
                key=key,
            )
        return json_response({"key": key, "version": n, **version_json(versions[n - 1])})

    return bp
