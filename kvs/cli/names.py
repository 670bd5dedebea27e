"""Users and groups by name or UUID, and scope presets, for the `kvs user|group|token`
commands. Rule: a UUID-shaped argument is taken as is (no request); any other is looked up
in the node's list, and must name exactly one user (nickname) or group (groupname)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kvs.cli.usage import UsageError

if TYPE_CHECKING:
    from kvs.client import Client

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class NameError_(Exception):  # noqa: N801 - not the builtin NameError
    """A name that names no one, or more than one: exit status 1, the message says which."""


def _presets() -> dict[str, list[str]]:
    from kvs.auth.permissions import ALL_SCOPES

    admin = sorted(ALL_SCOPES)
    return {
        "admin": admin,
        "all": admin,
        "read-write": ["delete", "read", "write"],
        "read": ["read"],
    }


PRESET_NAMES = ("admin", "all", "read-write", "read")


def expand_scopes(scopes: list[str]) -> list[str]:
    """`--scope admin` (or `all`): every scope; `read-write`: read, write, delete; other
    scopes as given. Order kept, duplicates dropped."""
    presets = _presets()
    out: list[str] = []
    for scope in scopes:
        for one in presets.get(scope, [scope]):
            if one not in out:
                out.append(one)
    return out


def user_uuid(client: Client, ident: str) -> str:
    return _resolve(client, "users", "nickname", ident)


def group_uuid(client: Client, ident: str) -> str:
    return _resolve(client, "groups", "groupname", ident)


def user_uuids(client: Client, idents: list[str] | None) -> list[str] | None:
    return None if idents is None else [user_uuid(client, i) for i in idents]


def group_uuids(client: Client, idents: list[str] | None) -> list[str] | None:
    return None if idents is None else [group_uuid(client, i) for i in idents]


def _resolve(client: Client, kind: str, name_field: str, ident: str) -> str:
    if _UUID.match(ident):
        return ident.lower()
    if not ident:
        raise UsageError(f"an empty {kind[:-1]} name")
    items: list[dict[str, Any]] = client.users() if kind == "users" else client.groups()
    matches = [item for item in items if item.get(name_field) == ident]
    if len(matches) == 1:
        return str(matches[0]["uuid"])
    one = kind[:-1]
    if not matches:
        raise NameError_(f"no {one} named {ident!r} (`kvs {one} list` shows them)")
    uuids = ", ".join(str(m.get("uuid")) for m in matches)
    raise NameError_(f"{len(matches)} {kind} are named {ident!r}: {uuids}; give the UUID")
