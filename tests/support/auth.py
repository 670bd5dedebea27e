"""Helpers for the auth tests: a node with auth on, users, groups and tokens made through the
HTTP API with the root token, as an operator would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kvs.node import Node
from tests.support.api import client_of, expect_json

ALL_KEY_SCOPES = ["read", "write", "delete"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def root_token(node: Node) -> str:
    return node.root_token_path.read_text().strip()


@dataclass
class Actor:
    uuid: str
    token: str
    token_id: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


class Admin:
    """Makes users, groups and tokens with the root token."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.client = client_of(node)
        self.headers = bearer(root_token(node))

    async def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        data = None if body is None else json.dumps(body).encode()
        response = await self.client.open(path, method=method, data=data, headers=self.headers)
        if status == 204:
            assert response.status_code == 204, await response.get_data()
            return None
        return await expect_json(response, status)

    async def group(self, name: str, members: list[str] | None = None) -> str:
        body = {"groupname": name, "members": members or []}
        return (await self.call("POST", "/api/groups", body, 201))["uuid"]

    async def user(self, name: str, groups: list[str] | None = None) -> str:
        body = {"nickname": name, "groups": groups or []}
        return (await self.call("POST", "/api/users", body, 201))["uuid"]

    async def token(self, user: str, scopes: list[str], **extra: Any) -> tuple[str, str]:
        body = {"user_uuid": user, "scopes": scopes, **extra}
        answer = await self.call("POST", "/api/tokens", body, 201)
        return answer["token"], answer["id"]

    async def actor(
        self, name: str, groups: list[str] | None = None, scopes: list[str] | None = None
    ) -> Actor:
        uuid = await self.user(name, groups)
        token, token_id = await self.token(uuid, ALL_KEY_SCOPES if scopes is None else scopes)
        return Actor(uuid, token, token_id)
