"""Scopes and the 12-bit key permissions: pure functions, no I/O.

A key's permissions are three nibbles, owner (bits 8-11), group (4-7), others (0-3); each
nibble is Create=8, Delete=4, Write=2, Read=1. As in Unix, exactly one nibble applies to a
caller: the owner's if the caller owns the key, else the group's if the caller is in the
key's group, else the others'. Create on a key governs creating new keys below it.

`may_read` is the one rule for "may this caller see this key" (its name, value, uuid,
timestamp): every read path of the API -- single keys, metadata, listings, history,
`/kv_changes`, watches -- asks it, and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvs.model import SYSTEM_PREFIX, Filed

CREATE, DELETE, WRITE, READ = 8, 4, 2, 1
BIT_NAMES = {CREATE: "create", DELETE: "delete", WRITE: "write", READ: "read"}

READ_SCOPE, WRITE_SCOPE, DELETE_SCOPE = "read", "write", "delete"
ALL_SCOPES = frozenset(
    {
        READ_SCOPE,
        WRITE_SCOPE,
        DELETE_SCOPE,
        *(f"admin:users:{op}" for op in ("create", "read", "update", "delete")),
        *(f"admin:groups:{op}" for op in ("create", "read", "update", "delete")),
        "admin:tokens:create",
        "admin:tokens:read",
        "admin:tokens:revoke",
        "admin:metadata:read",
        "admin:metadata:update",
        "admin:audit:read",
        "admin:cluster:bootstrap",
        "admin:backup:read",
        "admin:backup:create",
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user through a token (cached per token), or anonymous."""

    user: str  # the user's uuid; "" for anonymous
    groups: frozenset[str]
    primary_group: str  # the first of the user's groups: the group of keys they create
    scopes: frozenset[str]
    token_id: str
    expires_at: float  # seconds since the epoch

    @property
    def anonymous(self) -> bool:
        return not self.user


ANONYMOUS = Principal("", frozenset(), "", frozenset(), "", float("inf"))


def nibble(principal: Principal, owner: str, group: str, permissions: int) -> int:
    """The 4 permission bits that apply to `principal` on a key (owner, else group, else others)."""
    if principal.user and principal.user == owner:
        return (permissions >> 8) & 0xF
    if principal.user and group and group in principal.groups:
        return (permissions >> 4) & 0xF
    return permissions & 0xF


def allows(principal: Principal, owner: str, group: str, permissions: int, bit: int) -> bool:
    return bool(nibble(principal, owner, group, permissions) & bit)


def may_read(principal: Principal, auth_enabled: bool, record: Filed) -> bool:
    """Whether `principal` may see `record`'s key at all: its value, and that it exists.

    `record` is what the store holds for the key: a live version, an expired one or a
    tombstone. Deletes and expiries keep the owner, group and bits of the last live version
    (kvs/store/transaction.py), so a key that was private stays private once it is gone: its
    history, its tombstone in change feeds and watches. System records (users, groups,
    tokens) are never client keys, whoever asks; with auth off every other key is readable."""
    if record.key.startswith(SYSTEM_PREFIX):
        return False
    if not auth_enabled:
        return True
    return allows(principal, record.owner, record.group, record.permissions, READ)
