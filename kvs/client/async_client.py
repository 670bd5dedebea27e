"""`AsyncClient`: the async client (Trio or asyncio), over httpx's `AsyncClient` (which runs
on Trio through anyio)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
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


class AsyncClient(ClientBase):
    """Async client (Trio or asyncio). Use `async with`, or `await aclose()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str | ssl.SSLContext | None = None,
    ) -> None:
        """`verify`: how an https node's certificate is checked -- a CA bundle's path, an
        SSLContext, False; default `$KVS_CACERT`, else the system's CA store."""
        super().__init__(url, token, timeout, verify)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=self._headers,
            timeout=timeout,
            transport=transport,
            verify=self.verify,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, **request_args(call))
        except httpx.HTTPError as exc:
            raise connection_failed(self.url, exc) from None
        return check_answer(call, response)

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

    async def page(
        self, prefix: str = "", *, after: str = "", limit: int | None = None
    ) -> dict[str, Any]:
        """One page of `Client.scan`: `{"keys", "truncated", "next"}` (pass `next` as after)."""
        return await self.call(calls.page(prefix, after, limit))

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
                call.method, call.path, timeout=timeout, **request_args(call)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_for(response)
                async for line in response.aiter_lines():
                    event = stream.feed(line)
                    if event is not None:
                        yield event
        except httpx.HTTPError as exc:
            raise connection_failed(self.url, exc) from None
        raise stream.closed()

    # users, groups and tokens

    async def create_user(self, nickname: str, groups: list[str] | None = None) -> dict[str, Any]:
        return await self.call(
            calls.create("users", without_none(nickname=nickname, groups=groups))
        )

    async def user(self, uuid: str) -> dict[str, Any]:
        return await self.call(calls.read("users", uuid))

    async def users(self) -> list[dict[str, Any]]:
        return await self.call(calls.list_all("users"))

    async def update_user(
        self, uuid: str, *, nickname: str | None = None, groups: list[str] | None = None
    ) -> dict[str, Any]:
        fields = without_none(nickname=nickname, groups=groups)
        return await self.call(calls.update("users", uuid, fields))

    async def delete_user(self, uuid: str) -> None:
        await self.call(calls.remove("users", uuid))

    async def create_group(
        self, groupname: str, members: list[str] | None = None
    ) -> dict[str, Any]:
        fields = without_none(groupname=groupname, members=members)
        return await self.call(calls.create("groups", fields))

    async def group(self, uuid: str) -> dict[str, Any]:
        return await self.call(calls.read("groups", uuid))

    async def groups(self) -> list[dict[str, Any]]:
        return await self.call(calls.list_all("groups"))

    async def update_group(
        self, uuid: str, *, groupname: str | None = None, members: list[str] | None = None
    ) -> dict[str, Any]:
        fields = without_none(groupname=groupname, members=members)
        return await self.call(calls.update("groups", uuid, fields))

    async def delete_group(self, uuid: str) -> None:
        await self.call(calls.remove("groups", uuid))

    async def create_token(
        self, user_uuid: str, scopes: list[str], *, expires_in: float | str | None = None
    ) -> dict[str, Any]:
        fields = token_fields(user_uuid, scopes, expires_in)
        return await self.call(calls.create("tokens", fields))

    async def tokens(self, user_uuid: str | None = None) -> list[dict[str, Any]]:
        return await self.call(calls.list_all("tokens", {"user_uuid": user_uuid}))

    async def revoke_token(self, token_id: str) -> None:
        await self.call(calls.remove("tokens", token_id))
