"""Users, groups and token records, stored as JSON records under the system prefix.

They are ordinary records to the store and to sync (so they replicate, with the same
last-writer-wins rule); this module gives them names and shapes. Reads are short LMDB read
transactions in the event loop; writes go through the store's group commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from kvs.model import SYSTEM_PREFIX
from kvs.store import Delete, Put

if TYPE_CHECKING:
    from kvs.store import Store

USERS = SYSTEM_PREFIX + "users/"
GROUPS = SYSTEM_PREFIX + "groups/"
TOKENS = SYSTEM_PREFIX + "tokens/"
KINDS = {"users": USERS, "groups": GROUPS, "tokens": TOKENS}


def _end(prefix: str) -> str:
    return prefix[:-1] + "0"  # the first key past every "prefix..." key


class Directory:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, kind: str, ident: str) -> dict[str, Any] | None:
        if not ident or "/" in ident:
            return None
        record = self.store.get_live(KINDS[kind] + ident)
        return None if record is None else orjson.loads(record.value or b"null")

    def list(self, kind: str) -> list[dict[str, Any]]:
        prefix = KINDS[kind]
        now = self.store.clock.wall_ms()
        return [
            orjson.loads(r.value or b"null")
            for r in self.store.scan(prefix, _end(prefix))
            if r.live(now)
        ]

    async def put(
        self, kind: str, ident: str, body: dict[str, Any], expires_at_ms: int | None = None
    ) -> None:
        value = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        await self.store.write([Put(KINDS[kind] + ident, value, expires_at_ms)])

    async def delete(self, kind: str, ident: str) -> bool:
        return await self.delete_many(kind, [ident]) > 0

    async def delete_many(self, kind: str, idents: list[str]) -> int:
        if not idents:
            return 0
        ops = [Delete(KINDS[kind] + i, must_exist=False) for i in idents]
        outcomes = await self.store.write(ops)
        return sum(1 for o in outcomes if type(o).__name__ == "Written")

    def groups_of(self, user: dict[str, Any]) -> list[str]:
        """A user's groups: those their record names, then those whose members name them."""
        named = [g for g in user.get("groups", []) if self.get("groups", g) is not None]
        listed = [
            g["uuid"]
            for g in self.list("groups")
            if user["uuid"] in g.get("members", []) and g["uuid"] not in named
        ]
        return named + sorted(listed)
