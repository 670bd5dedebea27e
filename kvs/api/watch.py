"""`GET /kv/{prefix}/_watch` (root: `/kv/_watch`): changes under a prefix as server-sent events.

Plain ASGI in front of the Quart app (like kvs/api/keys.py): a stream that may last for days
needs none of Quart's per-request machinery, and must be able to end itself -- when the
client goes away, when the node shuts down, and when the client reads too slowly to keep up
(its buffer overflows: it is told so and disconnected, and resumes with `since=`).

Stream format (text/event-stream):

    id: <hlc>-<uuid>                one event per change, oldest first
    data: {"key", "uuid", "timestamp", "deleted", "id"}

    event: ready                    after the replay: everything since `since` has been sent
    data: {}

    event: error                    the stream ends: too slow (`overflow`) or node stopping
    data: {"error": "...", "reason": "overflow"|"shutdown"}

    : keep-alive                    a comment every KEEPALIVE seconds
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import trio

from kvs.api.errors import ApiError
from kvs.api.guard import client_of_scope, identify, readable_by, require_scope
from kvs.api.requests import check_key
from kvs.auth.permissions import READ_SCOPE, Principal
from kvs.watch import ResumePoint, Watcher, WatchHub, parse_resume, sse_control, sse_event

if TYPE_CHECKING:
    from kvs.api.view import NodeView

Scope = dict[str, Any]
KEEPALIVE = 15.0
# A slow client gets this long to take the final error event. (A client that has stopped
# reading altogether is not cut off by this: Hypercorn shields its socket writes. Its
# watcher is dropped all the same, so it costs a connection, not events.)
OVERFLOW_GRACE = 1.0
SUFFIX = "_watch"


def is_watch_path(path: str) -> bool:
    return path == "/kv/_watch" or (path.startswith("/kv/") and path.endswith("/_watch"))


class WatchRoutes:
    """Serves `_watch` paths; passes every other request on to `app`."""

    def __init__(self, app: Any, node: NodeView, hub: WatchHub) -> None:
        self.app = app
        self.node = node
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.endswith("_watch") or not is_watch_path(path):
            return await self.app(scope, receive, send)
        try:
            prefix, resume = self._parse(scope, path)
            principal = await self._authorize(scope)
        except ApiError as exc:
            return await _send_error(send, exc)
        await self._stream(prefix, resume, receive, send, principal)

    async def _authorize(self, scope: Scope) -> Principal:
        """As for a listing: a token with the read scope (or anonymous reads allowed); each
        event is then shown only if the caller may read the key (`guard.readable_by`)."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
        principal = await identify(self.node, authorization, client_of_scope(scope))
        require_scope(self.node, principal, READ_SCOPE)
        return principal

    def _parse(self, scope: Scope, path: str) -> tuple[str, ResumePoint | None]:
        if scope["method"] != "GET":
            raise ApiError(405, "use GET for _watch", headers={"Allow": "GET"})
        prefix = path[len("/kv/") : -len(SUFFIX)]
        if prefix:  # "a/b/" of /kv/a/b/_watch
            prefix = check_key(prefix[:-1])
        since = None
        for name, value in _query(scope):
            if name == "since":
                since = value
        if since is None:
            for name, value in scope["headers"]:
                if name == b"last-event-id":
                    since = value.decode("latin-1")
        if since is None or since == "":
            return prefix, None
        try:
            return prefix, parse_resume(since)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    async def _stream(
        self, prefix: str, resume: ResumePoint | None, receive: Any, send: Any, who: Principal
    ) -> None:
        # Subscribed before the replay reads: nothing falls between the two. The replay and
        # the live events pass the same filter: the caller's read rule, which also hides
        # users, groups and tokens from a watch of everything (`/kv/_watch`).
        watcher = self.hub.subscribe(prefix, readable_by(self.node, who))
        try:
            async with trio.open_nursery() as nursery:
                scope = nursery.cancel_scope

                def overflowed() -> None:
                    # The stream wakes to say why; it is cut off if even that cannot be sent.
                    scope.deadline = min(scope.deadline, trio.current_time() + OVERFLOW_GRACE)

                watcher.on_overflow = overflowed

                async def until_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    scope.cancel()

                async def until_shutdown() -> None:
                    await self.node.stopping.wait()
                    watcher.end("shutdown")

                nursery.start_soon(until_disconnect)
                nursery.start_soon(until_shutdown)
                await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
                await self._pump(watcher, resume, send)
                scope.cancel()
        finally:
            watcher.end("closed")

    async def _pump(self, watcher: Watcher, resume: ResumePoint | None, send: Any) -> None:
        """Replay, then live events, until the watcher ends; then say why and finish."""

        async def emit(body: bytes) -> None:
            await send({"type": "http.response.body", "body": body, "more_body": True})

        if resume is not None:
            for event in watcher.replay(self.node.store, resume):
                await emit(sse_event(event))
                self.hub.events_sent += 1
        if watcher.ended is None:
            await emit(sse_control("ready", {}))
        while watcher.ended is None:
            with trio.move_on_after(KEEPALIVE):
                await watcher.wait()
            events = watcher.take()
            if events:
                await emit(b"".join(sse_event(e) for e in events))
                self.hub.events_sent += len(events)
            elif watcher.ended is None:
                await emit(b": keep-alive\n\n")
        message = _END_MESSAGES.get(watcher.ended or "", "the watch ended")
        final = sse_control("error", {"error": message, "reason": watcher.ended})
        await send({"type": "http.response.body", "body": final, "more_body": False})


_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_END_MESSAGES = {
    "overflow": "this watcher fell too far behind and was disconnected;"
    " reconnect with since=<the last event id> to resume",
    "shutdown": "the node is shutting down; reconnect to another node with since=<the last"
    " event id> to resume",
}


def _query(scope: Scope) -> list[tuple[str, str]]:
    raw: bytes = scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else []


async def _send_error(send: Any, exc: ApiError) -> None:
    body = json.dumps({"error": exc.message, **exc.extra}, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
