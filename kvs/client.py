"""Python client for a KVS node: `Client` (blocking) and `AsyncClient` (Trio or asyncio).

    from kvs.client import Client, NotFound

    with Client("http://127.0.0.1:8080", token="...") as kvs:
        written = kvs.put("home/room/socks", {"colour": "red"}, ttl="1h")
        value = kvs.get("home/room/socks")          # Value(key, data, uuid, timestamp)
        kvs.put("home/room/socks", {"colour": "blue"}, if_match=value.uuid)
        for event in kvs.watch("home", since=written.timestamp - 1):
            print(event.key, event.deleted)

The URL defaults to `$KVS_URL`, then http://127.0.0.1:8080; the token to `$KVS_TOKEN`.
Every error answer raises a `KvsError` subclass named after its status (`NotFound`,
`Conflict`, `RateLimited`, ...) carrying the node's JSON error message; an unreachable node
raises `ConnectionFailed`.

Both clients share everything but the I/O: each request is built as a `Call` by a pure
function (method, path, query, headers, body, and how to decode the answer), and the two
clients only send it -- httpx's `Client` or `AsyncClient` (which runs on Trio through anyio).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from kvs.client_env import DEFAULT_URL, TOKEN_ENV, URL_ENV

DEFAULT_TIMEOUT = 10.0
WATCH_READ_TIMEOUT = 60.0  # the node sends a keep-alive every 15 s on an idle watch

T = TypeVar("T")


# --- errors ---------------------------------------------------------------------------------


class KvsError(Exception):
    """An error answer from the node (or no answer: `status` None)."""

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.headers: dict[str, str] = dict(headers or {})


class ConnectionFailed(KvsError):
    """The node could not be reached, or the connection broke."""


class BadRequest(KvsError):
    status = 400


class Unauthorized(KvsError):
    status = 401


class Forbidden(KvsError):
    status = 403


class NotFound(KvsError):
    status = 404


class MethodNotAllowed(KvsError):
    status = 405


class Conflict(KvsError):
    """A conditional write (`if_match`) found another version; `current_uuid` names it."""

    status = 409

    @property
    def current_uuid(self) -> str | None:
        value = self.body.get("current_uuid")
        return value if isinstance(value, str) else None


PreconditionFailed = Conflict  # the node answers a failed If-Match with 409


class PayloadTooLarge(KvsError):
    status = 413


class RateLimited(KvsError):
    """Too many requests; `retry_after` is how many seconds the node asks to wait."""

    status = 429

    @property
    def retry_after(self) -> float | None:
        try:
            return float(self.headers.get("retry-after", ""))
        except ValueError:
            return None


class Unavailable(KvsError):
    """503: the node refuses writes (`mode` says why) or cannot serve now."""

    status = 503

    @property
    def mode(self) -> str | None:
        value = self.body.get("mode")
        return value if isinstance(value, str) else None


class ReadOnly(Unavailable):
    pass


class Syncing(Unavailable):
    pass


class ServerError(KvsError):
    """A 5xx other than 503."""


class UnexpectedResponse(KvsError):
    """An answer that is not what the API documents (wrong status or not JSON)."""


class WatchEnded(KvsError):
    """The node ended a watch: `reason` is "overflow" (this client read too slowly) or
    "shutdown"; resume with `watch(prefix, since=error.last_id)`."""

    def __init__(self, message: str, *, reason: str | None, last_id: str | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.last_id = last_id


_BY_STATUS: dict[int, type[KvsError]] = {
    cls.status: cls  # type: ignore[misc]
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        RateLimited,
        Unavailable,
    )
}
_BY_STATUS[412] = Conflict


def error_for(response: httpx.Response) -> KvsError:
    """The typed exception for an error answer, with the node's message."""
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    message = body.get("error")
    if not isinstance(message, str):
        message = response.text.strip()[:200] or response.reason_phrase
    status = response.status_code
    cls = _BY_STATUS.get(status)
    if cls is Unavailable:
        cls = {"read-only": ReadOnly, "syncing": Syncing}.get(str(body.get("mode")), Unavailable)
    if cls is None:
        cls = ServerError if status >= 500 else KvsError
    return cls(message, status=status, body=body, headers=dict(response.headers))


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    key: str
    data: Any
    uuid: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class Written:
    key: str
    uuid: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: `id` is the position to resume after."""

    key: str
    uuid: str
    timestamp: int
    deleted: bool
    id: str


# --- requests, shared by both clients --------------------------------------------------------


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def resolve_url(url: str | None) -> str:
    """`http://host:port` from an argument, `$KVS_URL` or the default; `host:port` is
    taken as http. Raises ValueError for anything that is not an http(s) URL with a host."""
    given = url or os.environ.get(URL_ENV) or DEFAULT_URL
    text = given.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parsed = httpx.URL(text)
    except (httpx.InvalidURL, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{given!r} is not an http:// URL (for example {DEFAULT_URL})")
    return text.rstrip("/")


def resolve_token(token: str | None) -> str | None:
    return token if token is not None else (os.environ.get(TOKEN_ENV) or None)


def key_path(key: str) -> str:
    """A key as a URL path: each segment percent-encoded, the `/` kept."""
    if not key:
        raise ValueError("a key must not be empty")
    return quote(key, safe="/")


def _prefix_path(prefix: str, endpoint: str) -> str:
    prefix = prefix.strip("/")
    return f"/kv/{quote(prefix, safe='/')}/{endpoint}" if prefix else f"/kv/{endpoint}"


def _json_body(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _ttl(ttl: float | str | None) -> dict[str, str]:
    if ttl is None:
        return {}
    return {"ttl": ttl if isinstance(ttl, str) else f"{float(ttl):g}"}


def _json(expect: int = 200) -> Callable[[httpx.Response], Any]:
    def decode(response: httpx.Response) -> Any:
        if response.status_code != expect:
            raise UnexpectedResponse(
                f"expected {expect}, got {response.status_code}", status=response.status_code
            )
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponse(
                "the answer is not JSON", status=response.status_code
            ) from None

    return decode


def _field(name: str, decode: Callable[[httpx.Response], Any]) -> Callable[[httpx.Response], Any]:
    def pick(response: httpx.Response) -> Any:
        body = decode(response)
        if not isinstance(body, dict) or name not in body:
            raise UnexpectedResponse(f"the answer has no {name!r}", status=response.status_code)
        return body[name]

    return pick


def _nothing(response: httpx.Response) -> None:
    return None


def _value(key: str) -> Callable[[httpx.Response], Value]:
    def decode(response: httpx.Response) -> Value:
        body = _json()(response)
        return Value(key, body["data"], body["uuid"], body["timestamp"])

    return decode


def _written(key: str) -> Callable[[httpx.Response], Written]:
    def decode(response: httpx.Response) -> Written:
        body = _json()(response)
        return Written(key, body["uuid"], body["timestamp"])

    return decode


def _optional(params: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in params.items():
        if value is None or value is False:
            continue
        out[name] = "true" if value is True else str(value)
    return out


class calls:  # noqa: N801 - a namespace of request builders, one per API operation
    """Request builders shared by `Client` and `AsyncClient` (pure: no I/O)."""

    @staticmethod
    def get(key: str) -> Call[Value]:
        return Call("GET", f"/kv/{key_path(key)}", _value(key))

    @staticmethod
    def put(
        key: str,
        data: Any,
        *,
        ttl: float | str | None = None,
        if_match: str | None = None,
        raw: bool = False,
    ) -> Call[Written]:
        body = (data.encode() if isinstance(data, str) else bytes(data)) if raw else None
        headers = {"Content-Type": "application/json"}
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        return Call(
            "PUT",
            f"/kv/{key_path(key)}",
            _written(key),
            params=_ttl(ttl),
            headers=headers,
            body=body if body is not None else _json_body(data),
        )

    @staticmethod
    def delete(key: str) -> Call[None]:
        return Call("DELETE", f"/kv/{key_path(key)}", _nothing)

    @staticmethod
    def ls(prefix: str, limit: int | None, include_metadata: bool) -> Call[dict[str, Any]]:
        params = _optional({"limit": limit, "include_metadata": include_metadata})
        return Call("GET", _prefix_path(prefix, "_ls"), _json(), params=params)

    @staticmethod
    def tree(
        prefix: str, depth: int | None, limit: int | None, nested: bool
    ) -> Call[dict[str, Any]]:
        params = _optional({"depth": depth, "limit": limit, "format": "nested" if nested else None})
        return Call("GET", _prefix_path(prefix, "_tree"), _json(), params=params)

    @staticmethod
    def history(key: str) -> Call[list[dict[str, Any]]]:
        return Call("GET", f"/api/data/{key_path(key)}/history", _field("versions", _json()))

    @staticmethod
    def metadata(key: str) -> Call[dict[str, Any]]:
        return Call("GET", f"/kv/{key_path(key)}/metadata", _json())

    @staticmethod
    def set_metadata(key: str, fields: Mapping[str, Any]) -> Call[dict[str, Any]]:
        return Call("PUT", f"/kv/{key_path(key)}/metadata", _json(), body=_json_body(dict(fields)))

    @staticmethod
    def members() -> Call[list[dict[str, Any]]]:
        return Call("GET", "/members/", _json())

    @staticmethod
    def health() -> Call[dict[str, Any]]:
        return Call("GET", "/health", _json())

    @staticmethod
    def batch(ops: list[Mapping[str, Any]]) -> Call[list[dict[str, Any]]]:
        body = _json_body({"ops": [dict(op) for op in ops]})
        return Call("POST", "/kv/_batch", _field("results", _json()), body=body)

    @staticmethod
    def changes(since: int, limit: int | None) -> Call[dict[str, Any]]:
        params = _optional({"since": since, "limit": limit})
        return Call("GET", "/kv_changes", _json(), params=params)

    @staticmethod
    def watch(prefix: str, since: int | str | None) -> Call[None]:
        params = _optional({"since": since})
        return Call(
            "GET",
            _prefix_path(prefix, "_watch"),
            _nothing,
            params=params,
            headers={"Accept": "text/event-stream"},
        )

    # users, groups, tokens (`/api/...`, see the security section of the README)

    @staticmethod
    def create(kind: str, fields: Mapping[str, Any]) -> Call[dict[str, Any]]:
        return Call("POST", f"/api/{kind}", _json(201), body=_json_body(dict(fields)))

    @staticmethod
    def read(kind: str, ident: str) -> Call[dict[str, Any]]:
        return Call("GET", f"/api/{kind}/{quote(ident, safe='')}", _json())

    @staticmethod
    def list_all(kind: str, params: Mapping[str, Any] | None = None) -> Call[list[dict[str, Any]]]:
        return Call("GET", f"/api/{kind}", _field(kind, _json()), params=_optional(params or {}))

    @staticmethod
    def update(kind: str, ident: str, fields: Mapping[str, Any]) -> Call[dict[str, Any]]:
        path = f"/api/{kind}/{quote(ident, safe='')}"
        return Call("PUT", path, _json(), body=_json_body(dict(fields)))

    @staticmethod
    def remove(kind: str, ident: str) -> Call[None]:
        return Call("DELETE", f"/api/{kind}/{quote(ident, safe='')}", _nothing)


def _token_fields(
    user_uuid: str, scopes: list[str], expires_in: float | str | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"user_uuid": user_uuid, "scopes": list(scopes)}
    if expires_in is not None:
        fields["expires_in"] = expires_in
    return fields


def _fields(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _check(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_for(response)
    return call.decode(response)


def _request_args(call: Call[Any]) -> dict[str, Any]:
    return {
        "params": call.params or None,
        "headers": call.headers or None,
        "content": call.body,
    }


def _connection_failed(base: str, exc: httpx.HTTPError) -> ConnectionFailed:
    return ConnectionFailed(f"cannot reach {base}: {exc or type(exc).__name__}")


# --- server-sent events ---------------------------------------------------------------------


class WatchStream:
    """Turns the lines of a watch stream into `Event`s (shared by both clients)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self.ready = False
        self._kind = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """Take one line; return an Event when one is complete. Raises WatchEnded when the
        node ends the stream with an error event."""
        if line == "":
            kind, data = self._kind, "\n".join(self._data)
            self._kind, self._data = "message", []
            if not data:
                return None
            payload = json.loads(data)
            if kind == "message":
                event = Event(
                    payload["key"],
                    payload["uuid"],
                    payload["timestamp"],
                    payload["deleted"],
                    payload["id"],
                )
                self.last_id = event.id
                return event
            if kind == "ready":
                self.ready = True
            elif kind == "error":
                raise WatchEnded(
                    str(payload.get("error", "the watch ended")),
                    reason=payload.get("reason"),
                    last_id=self.last_id,
                )
            return None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None

    def closed(self) -> ConnectionFailed:
        return ConnectionFailed("the node closed the watch stream")


# --- the clients ----------------------------------------------------------------------------


class _Base:
    def __init__(self, url: str | None, token: str | None, timeout: float) -> None:
        self.url = resolve_url(url)
        self.token = resolve_token(token)
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}


class Client(_Base):
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **_request_args(call))
        except httpx.HTTPError as exc:
            raise _connection_failed(self.url, exc) from None
        return _check(call, response)

    def get(self, key: str) -> Value:
        return self.call(calls.get(key))

    def put(
        self,
        key: str,
        data: Any,
        *,
        ttl: float | str | None = None,
        if_match: str | None = None,
        raw: bool = False,
    ) -> Written:
        """Write `data` (any JSON value; with `raw=True`, JSON text sent as is). `ttl` in
        seconds or a duration ("30s", "1h"); `if_match` writes only over that version."""
        return self.call(calls.put(key, data, ttl=ttl, if_match=if_match, raw=raw))

    def delete(self, key: str) -> None:
        self.call(calls.delete(key))

    def ls(
        self, prefix: str = "", *, limit: int | None = None, include_metadata: bool = False
    ) -> dict[str, Any]:
        return self.call(calls.ls(prefix, limit, include_metadata))

    def tree(
        self,
        prefix: str = "",
        *,
        depth: int | None = None,
        limit: int | None = None,
        nested: bool = False,
    ) -> dict[str, Any]:
        return self.call(calls.tree(prefix, depth, limit, nested))

    def history(self, key: str) -> list[dict[str, Any]]:
        return self.call(calls.history(key))

    def metadata(self, key: str) -> dict[str, Any]:
        return self.call(calls.metadata(key))

    def set_metadata(self, key: str, **fields: Any) -> dict[str, Any]:
        return self.call(calls.set_metadata(key, fields))

    def members(self) -> list[dict[str, Any]]:
        return self.call(calls.members())

    def health(self) -> dict[str, Any]:
        return self.call(calls.health())

    def batch(self, ops: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return self.call(calls.batch(ops))

    def changes(self, since: int = 0, *, limit: int | None = None) -> dict[str, Any]:
        return self.call(calls.changes(since, limit))

    def watch(self, prefix: str = "", *, since: int | str | None = None) -> Iterator[Event]:
        """Changes under `prefix` as they happen. `since` (a millisecond timestamp, or an
        event's `id`) first replays what changed after it. Raises WatchEnded when the node
        ends the stream (carrying the id to resume from)."""
        call = calls.watch(prefix, since)
        timeout = httpx.Timeout(self.timeout, read=WATCH_READ_TIMEOUT)
        stream = WatchStream()
        try:
            with self._http.stream(
                call.method, call.path, timeout=timeout, **_request_args(call)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                for line in response.iter_lines():
                    event = stream.feed(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise _connection_failed(self.url, exc) from None
        raise stream.closed()

    # users, groups and tokens

    def create_user(self, nickname: str, groups: list[str] | None = None) -> dict[str, Any]:
        return self.call(calls.create("users", _fields(nickname=nickname, groups=groups)))

    def user(self, uuid: str) -> dict[str, Any]:
        return self.call(calls.read("users", uuid))

    def users(self) -> list[dict[str, Any]]:
        return self.call(calls.list_all("users"))

    def update_user(
        self, uuid: str, *, nickname: str | None = None, groups: list[str] | None = None
    ) -> dict[str, Any]:
        return self.call(calls.update("users", uuid, _fields(nickname=nickname, groups=groups)))

    def delete_user(self, uuid: str) -> None:
        self.call(calls.remove("users", uuid))

    def create_group(self, groupname: str, members: list[str] | None = None) -> dict[str, Any]:
        return self.call(calls.create("groups", _fields(groupname=groupname, members=members)))

    def group(self, uuid: str) -> dict[str, Any]:
        return self.call(calls.read("groups", uuid))

    def groups(self) -> list[dict[str, Any]]:
        return self.call(calls.list_all("groups"))

    def update_group(
        self, uuid: str, *, groupname: str | None = None, members: list[str] | None = None
    ) -> dict[str, Any]:
        fields = _fields(groupname=groupname, members=members)
        return self.call(calls.update("groups", uuid, fields))

    def delete_group(self, uuid: str) -> None:
        self.call(calls.remove("groups", uuid))

    def create_token(
        self, user_uuid: str, scopes: list[str], *, expires_in: float | str | None = None
    ) -> dict[str, Any]:
        return self.call(calls.create("tokens", _token_fields(user_uuid, scopes, expires_in)))

    def tokens(self, user_uuid: str | None = None) -> list[dict[str, Any]]:
        return self.call(calls.list_all("tokens", {"user_uuid": user_uuid}))

    def revoke_token(self, token_id: str) -> None:
        self.call(calls.remove("tokens", token_id))


class AsyncClient(_Base):
    """Async client (Trio or asyncio). Use `async with`, or `await aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, **_request_args(call))
        except httpx.HTTPError as exc:
            raise _connection_failed(self.url, exc) from None
        return _check(call, response)

    async def get(self, key: str) -> Value:
        return await self.call(calls.get(key))

    async def put(
        self,
        key: str,
        data: Any,
        *,
        ttl: float | str | None = None,
        if_match: str | None = None,
        raw: bool = False,
    ) -> Written:
        return await self.call(calls.put(key, data, ttl=ttl, if_match=if_match, raw=raw))

    async def delete(self, key: str) -> None:
        await self.call(calls.delete(key))

    async def ls(
        self, prefix: str = "", *, limit: int | None = None, include_metadata: bool = False
    ) -> dict[str, Any]:
        return await self.call(calls.ls(prefix, limit, include_metadata))

    async def tree(
        self,
        prefix: str = "",
        *,
        depth: int | None = None,
        limit: int | None = None,
        nested: bool = False,
    ) -> dict[str, Any]:
        return await self.call(calls.tree(prefix, depth, limit, nested))

    async def history(self, key: str) -> list[dict[str, Any]]:
        return await self.call(calls.history(key))

    async def metadata(self, key: str) -> dict[str, Any]:
        return await self.call(calls.metadata(key))

    async def set_metadata(self, key: str, **fields: Any) -> dict[str, Any]:
        return await self.call(calls.set_metadata(key, fields))

    async def members(self) -> list[dict[str, Any]]:
        return await self.call(calls.members())

    async def health(self) -> dict[str, Any]:
        return await self.call(calls.health())

    async def batch(self, ops: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return await self.call(calls.batch(ops))

    async def changes(self, since: int = 0, *, limit: int | None = None) -> dict[str, Any]:
        return await self.call(calls.changes(since, limit))

    async def watch(
        self, prefix: str = "", *, since: int | str | None = None
    ) -> AsyncIterator[Event]:
        """As `Client.watch`; break out of the loop (or cancel) to stop watching."""
        call = calls.watch(prefix, since)
        timeout = httpx.Timeout(self.timeout, read=WATCH_READ_TIMEOUT)
        stream = WatchStream()
        try:
            async with self._http.stream(
                call.method, call.path, timeout=timeout, **_request_args(call)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for(response)
                async for line in response.aiter_lines():
                    event = stream.feed(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise _connection_failed(self.url, exc) from None
        raise stream.closed()

    # users, groups and tokens

    async def create_user(self, nickname: str, groups: list[str] | None = None) -> dict[str, Any]:
        return await self.call(calls.create("users", _fields(nickname=nickname, groups=groups)))

    async def user(self, uuid: str) -> dict[str, Any]:
        return await self.call(calls.read("users", uuid))

    async def users(self) -> list[dict[str, Any]]:
        return await self.call(calls.list_all("users"))

    async def update_user(
        self, uuid: str, *, nickname: str | None = None, groups: list[str] | None = None
    ) -> dict[str, Any]:
        fields = _fields(nickname=nickname, groups=groups)
        return await self.call(calls.update("users", uuid, fields))

    async def delete_user(self, uuid: str) -> None:
        await self.call(calls.remove("users", uuid))

    async def create_group(
        self, groupname: str, members: list[str] | None = None
    ) -> dict[str, Any]:
        fields = _fields(groupname=groupname, members=members)
        return await self.call(calls.create("groups", fields))

    async def group(self, uuid: str) -> dict[str, Any]:
        return await self.call(calls.read("groups", uuid))

    async def groups(self) -> list[dict[str, Any]]:
        return await self.call(calls.list_all("groups"))

    async def update_group(
        self, uuid: str, *, groupname: str | None = None, members: list[str] | None = None
    ) -> dict[str, Any]:
        fields = _fields(groupname=groupname, members=members)
        return await self.call(calls.update("groups", uuid, fields))

    async def delete_group(self, uuid: str) -> None:
        await self.call(calls.remove("groups", uuid))

    async def create_token(
        self, user_uuid: str, scopes: list[str], *, expires_in: float | str | None = None
    ) -> dict[str, Any]:
        fields = _token_fields(user_uuid, scopes, expires_in)
        return await self.call(calls.create("tokens", fields))

    async def tokens(self, user_uuid: str | None = None) -> list[dict[str, Any]]:
        return await self.call(calls.list_all("tokens", {"user_uuid": user_uuid}))

    async def revoke_token(self, token_id: str) -> None:
        await self.call(calls.remove("tokens", token_id))
