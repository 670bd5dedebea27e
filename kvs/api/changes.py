"""`GET /kv_changes?since=<ms>&limit=`: keys changed after a millisecond, oldest first, in
pages that never split a millisecond, leaving out what the caller may not read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quart import Blueprint, Response, g

from kvs.api import guard
from kvs.api.errors import json_response
from kvs.api.requests import int_arg
from kvs.auth.permissions import READ_SCOPE
from kvs.model import Record, hlc_ms, hlc_pack

if TYPE_CHECKING:
    from kvs.api.view import NodeView
    from kvs.store import Store


def changes_blueprint(node: NodeView) -> Blueprint:
    bp = Blueprint("changes", __name__)

    @bp.route("/kv_changes", methods=["GET"])
    async def kv_changes() -> Response:
        guard.require_scope(node, g.principal, READ_SCOPE)
        since = int_arg("since", 0, 2**47, minimum=0)
        limit = int_arg("limit", 100, 1000)
        # The current millisecond is still open: a write may land in it after this read, and
        # `since` is exclusive, so listing it now would skip that write for good. Hold it back.
        open_ms = max(node.clock.wall_ms(), hlc_ms(node.clock.last))
        readable = guard.readable_by(node, g.principal)
        next_since = since
        # Filtered after paging: `next` and `more` follow what was scanned, hidden entries
        # included, so a caller paging on `next` always gets past keys it may not read (and
        # users, groups and tokens). A page is never empty while more follow: pages that
        # held only hidden entries are skipped here, not handed to the caller.
        while True:
            page, more = _page(node.store, next_since, limit, open_ms)
            changes = [
                {
                    "key": r.key,
                    "uuid": r.version.uuid,
                    "timestamp": r.version.timestamp,
                    "deleted": r.deleted,
                }
                for r in page
                if readable(r)
            ]
            next_since = page[-1].version.timestamp if page else next_since
            if changes or not more:
                break
        return json_response({"changes": changes, "next": next_since, "more": more})

    return bp


def _page(store: Store, since: int, limit: int, open_ms: int) -> tuple[list[Record], bool]:
    """The records changed after millisecond `since` and before `open_ms`, about `limit` of
    them, ending at a millisecond's end; and whether more follow."""
    after = hlc_pack(since + 1) - 1  # every entry in millisecond `since` or earlier
    records = [
        r for r in store.changes_after(after, None, limit + 1) if r.version.timestamp < open_ms
    ]
    more = len(records) > limit
    page = records[:limit]
    if not more or page[-1].version.timestamp != records[limit].version.timestamp:
        return page, more
    # `since` is exclusive and in milliseconds, so a page must never end inside one: drop the
    # trailing millisecond, or, if the page holds nothing else, take all of it.
    last_ms = page[-1].version.timestamp
    trimmed = [r for r in page if r.version.timestamp != last_ms]
    if trimmed:
        return trimmed, more
    while True:
        tail = page[-1]
        following = store.changes_after(tail.version.hlc, tail.key, 1000)
        same = [r for r in following if r.version.timestamp == last_ms]
        page.extend(same)
        if len(same) < len(following) or not following:
            rest = following[len(same) :]
            return page, bool(rest) and rest[0].version.timestamp < open_ms
