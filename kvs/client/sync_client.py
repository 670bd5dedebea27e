"""`Client`: the blocking client, over httpx's `Client`."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import httpx

from kvs.client.errors import error_for
from kvs.client.events import Event, WatchStream
from kvs.client.operations import (
    DEFAULT_TIMEOUT,
    WATCH_READ_TIMEOUT,
    Call,
    ClientBase,
    Value,
    Written,
    calls,
    check_answer,
    connection_failed,
    request_args,
    token_fields,
    without_none,
)

T = TypeVar("T")


class Client(ClientBase):
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        verify: bool | str | ssl.SSLContext | None = None,
    ) -> None:
        """`verify`: how an https node's certificate is checked -- a CA bundle's path, an
        SSLContext, False; default `$KVS_CACERT`, else the system's CA store."""
        super().__init__(url, token, timeout, verify)
        self._http = httpx.Client(
            base_url=self.url,
            headers=self._headers,
            timeout=timeout,
            transport=transport,
            verify=self.verify,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, **request_args(call))
        except httpx.HTTPError as exc:
            raise connection_failed(self.url, exc) from None
        return check_answer(call, response)

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

    def scan(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every live key below `prefix`, in key order, with its value (`data`), `uuid`,
        `timestamp`, `expires_at` (absolute ms, if any), `owner_uuid`, `group_uuid` and
        `permissions`; fetched a page at a time."""
        after = ""
        while True:
            page = self.call(calls.page(prefix, after, page_size))
            yield from page["keys"]
            if not page.get("truncated") or not page["keys"]:
                return
            after = page["next"]

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
                call.method, call.path, timeout=timeout, **request_args(call)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                for line in response.iter_lines():
                    event = stream.feed(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise connection_failed(self.url, exc) from None
        raise stream.closed()

    # users, groups and tokens

    def create_user(self, nickname: str, groups: list[str] | None = None) -> dict[str, Any]:
        return self.call(calls.create("users", without_none(nickname=nickname, groups=groups)))

    def user(self, uuid: str) -> dict[str, Any]:
        return self.call(calls.read("users", uuid))

    def users(self) -> list[dict[str, Any]]:
        return self.call(calls.list_all("users"))

    def update_user(
        self, uuid: str, *, nickname: str | None = None, groups: list[str] | None = None
    ) -> dict[str, Any]:
        return self.call(
            calls.update("users", uuid, without_none(nickname=nickname, groups=groups))
        )

    def delete_user(self, uuid: str) -> None:
        self.call(calls.remove("users", uuid))

    def create_group(self, groupname: str, members: list[str] | None = None) -> dict[str, Any]:
        return self.call(calls.create("groups", without_none(groupname=groupname, members=members)))

    def group(self, uuid: str) -> dict[str, Any]:
        return self.call(calls.read("groups", uuid))

    def groups(self) -> list[dict[str, Any]]:
        return self.call(calls.list_all("groups"))

    def update_group(
        self, uuid: str, *, groupname: str | None = None, members: list[str] | None = None
    ) -> dict[str, Any]:
        fields = without_none(groupname=groupname, members=members)
        return self.call(calls.update("groups", uuid, fields))

    def delete_group(self, uuid: str) -> None:
        self.call(calls.remove("groups", uuid))

    def create_token(
        self, user_uuid: str, scopes: list[str], *, expires_in: float | str | None = None
    ) -> dict[str, Any]:
        return self.call(calls.create("tokens", token_fields(user_uuid, scopes, expires_in)))

    def tokens(self, user_uuid: str | None = None) -> list[dict[str, Any]]:
        return self.call(calls.list_all("tokens", {"user_uuid": user_uuid}))

    def revoke_token(self, token_id: str) -> None:
        self.call(calls.remove("tokens", token_id))
