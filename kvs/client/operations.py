"""Every API operation as data, shared by both clients: a `Call` (method, path, query,
headers, body, and how to decode the answer) built by a pure function of the `calls`
namespace, the results it decodes to, and where a client finds its node (URL and token).
Only the sending differs between `Client` and `AsyncClient`.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from kvs.client.env import CACERT_ENV, DEFAULT_URL, TOKEN_ENV, URL_ENV
from kvs.client.errors import ConnectionFailed, UnexpectedResponse, error_for

DEFAULT_TIMEOUT = 10.0
WATCH_READ_TIMEOUT = 60.0  # the node sends a keep-alive every 15 s on an idle watch

T = TypeVar("T")


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


def resolve_verify(verify: bool | str | ssl.SSLContext | None) -> bool | ssl.SSLContext:
    """How an https node's certificate is checked: a CA bundle's path (PEM), an SSLContext,
    `False` (not at all), or None: `$KVS_CACERT` if set, else the system's CA store.
    Raises ValueError for a CA bundle that cannot be read."""
    if verify is None:
        verify = os.environ.get(CACERT_ENV) or True
    if not isinstance(verify, str):
        return verify
    try:
        return ssl.create_default_context(cafile=verify)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ValueError(f"cannot read the CA bundle {verify!r}: {reason}") from None


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
    def page(prefix: str, after: str, limit: int | None) -> Call[dict[str, Any]]:
        """One page of keys below `prefix` past `after`, with their values, expiry and
        permissions (`_tree?values=true`): `{"keys", "truncated", "next"}`."""
        params = _optional({"values": True, "after": after or None, "limit": limit})
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
    def batch_body(body: bytes) -> Call[list[dict[str, Any]]]:
        """`batch` with a body already serialized (`{"ops": [...]}`): bulk loads."""
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

    # users, groups, tokens (`/api/...`, see docs/security.md)

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


def token_fields(
    user_uuid: str, scopes: list[str], expires_in: float | str | None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"user_uuid": user_uuid, "scopes": list(scopes)}
    if expires_in is not None:
        fields["expires_in"] = expires_in
    return fields


def without_none(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def check_answer(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_for(response)
    return call.decode(response)


def request_args(call: Call[Any]) -> dict[str, Any]:
    return {
        "params": call.params or None,
        "headers": call.headers or None,
        "content": call.body,
    }


def connection_failed(base: str, exc: httpx.HTTPError) -> ConnectionFailed:
    seen: BaseException | None = exc
    while seen is not None:  # httpx on trio often carries the reason only in the cause
        if isinstance(seen, ssl.SSLCertVerificationError):
            reason = seen.verify_message or seen.reason or "verification failed"
            return ConnectionFailed(
                f"cannot reach {base}: its TLS certificate is not trusted ({reason});"
                f" give its CA with --cacert FILE or ${CACERT_ENV}"
            )
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ConnectionFailed(
            f"cannot reach {base}: its TLS certificate is not trusted ({text});"
            f" give its CA with --cacert FILE or ${CACERT_ENV}"
        )
    return ConnectionFailed(f"cannot reach {base}: {text}")


class ClientBase:
    """What both clients hold: the resolved URL and token, the timeout, the auth header."""

    def __init__(
        self,
        url: str | None,
        token: str | None,
        timeout: float,
        verify: bool | str | ssl.SSLContext | None = None,
    ) -> None:
        self.url = resolve_url(url)
        self.token = resolve_token(token)
        self.timeout = timeout
        self.verify = resolve_verify(verify)
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
