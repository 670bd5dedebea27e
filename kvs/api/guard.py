"""Authentication, rate limiting and permission checks as the HTTP layer applies them.

Shared by the raw-ASGI key path (kvs/api/keys.py), the watch stream (kvs/api/watch.py) and
the Quart blueprints, so all refuse the same requests with the same statuses and messages,
and decide what a caller may read with one rule (`may_read`, through `readable_by`,
`require_read` and `read_live`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvs.api.errors import ApiError
from kvs.auth.permissions import (
    BIT_NAMES,
    CREATE,
    DELETE,
    DELETE_SCOPE,
    WRITE,
    Principal,
    may_read,
)
from kvs.auth.service import AuthError
from kvs.model import Filed, Record

if TYPE_CHECKING:
    from kvs.api.view import NodeView


def api_error(exc: AuthError) -> ApiError:
    return ApiError(exc.status, exc.message, headers=exc.headers)


async def identify(node: NodeView, authorization: str | None, client: str) -> Principal:
    """Authenticate (when auth is on) and count the request against the caller's rate."""
    auth = node.auth
    try:
        principal = auth.authenticate(authorization) if auth.enabled else auth.anonymous
    except AuthError as exc:
        try:
            # Limits first, the audit after: a refused attempt writes nothing, so bad tokens
            # cannot grow the audit log at request speed. Failed attempts count against the
            # client's address (no free guessing), and against their own budget (failed()).
            auth.rate_limit(auth.anonymous, client)
            await auth.failed(client, exc.message)
        except AuthError as limited:
            raise api_error(limited) from None
        raise api_error(exc) from None
    try:
        auth.rate_limit(principal, client)
    except AuthError as exc:
        raise api_error(exc) from None
    return principal


def require_scope(node: NodeView, principal: Principal, scope: str) -> None:
    if node.auth.enabled:
        try:
            node.auth.require_scope(principal, scope)
        except AuthError as exc:
            raise api_error(exc) from None


def require_bit(node: NodeView, principal: Principal, record: Record, bit: int) -> None:
    """The key's permission bits must grant `bit` to the caller (403, or 401 if anonymous)."""
    if node.auth.enabled:
        try:
            node.auth.require_bit(
                principal,
                record.owner,
                record.group,
                record.permissions,
                bit,
                f"{BIT_NAMES[bit]} key {record.key!r}",
            )
        except AuthError as exc:
            raise api_error(exc) from None


def readable_by(node: NodeView, principal: Principal) -> Callable[[Filed], bool]:
    """The read rule bound to one caller: the filter of listings, change feeds and watches
    (what it refuses is left out, as if it did not exist)."""
    enabled = node.auth.enabled

    def readable(record: Filed) -> bool:
        return may_read(principal, enabled, record)

    return readable


def require_read(node: NodeView, principal: Principal, record: Record) -> None:
    """403 (401 if anonymous) unless the caller may read the key `record` holds -- a live
    version, an expired one or a tombstone alike: a key it may not read answers the same
    whether it is live or gone, so not even when it was deleted leaks."""
    if not may_read(principal, node.auth.enabled, record):
        raise api_error(node.auth.denied(principal, f"read key {record.key!r}"))


def read_live(node: NodeView, principal: Principal, key: str) -> Record:
    """The live record of `key` for a caller who may read it: 404 if there is none (never
    written, or its tombstone collected), 401/403 if it may not be read (`require_read`),
    then 404 if it is deleted or expired."""
    record = node.store.get(key)
    if record is None:
        raise ApiError(404, "key not found", key=key)
    require_read(node, principal, record)
    if not record.live(node.clock.wall_ms()):
        raise ApiError(404, "key not found", key=key)
    return record


def nearest_ancestor(node: NodeView, key: str) -> Record | None:
    """The closest live key above `key` (`a/b` for `a/b/c`, else `a`), or None."""
    parts = key.split("/")
    for end in range(len(parts) - 1, 0, -1):
        record = node.store.get_live("/".join(parts[:end]))
        if record is not None:
            return record
    return None


def require_create(node: NodeView, principal: Principal, key: str) -> None:
    """Creating a key needs Create on its nearest existing ancestor key, if it has one."""
    if node.auth.enabled:
        parent = nearest_ancestor(node, key)
        if parent is not None:
            require_bit(node, principal, parent, CREATE)


def require_may_put(node: NodeView, principal: Principal, key: str) -> None:
    """The rule for writing a key (the `write` scope checked before): Write on the key when
    it exists, else Create on its nearest existing ancestor."""
    if node.auth.enabled:
        current = node.store.get_live(key)
        if current is not None:
            require_bit(node, principal, current, WRITE)
        else:
            require_create(node, principal, key)


def require_may_delete(node: NodeView, principal: Principal, key: str) -> None:
    """The rule for deleting a key: the `delete` scope (which anonymous callers never hold),
    and Delete on the key when it exists."""
    if node.auth.enabled:
        require_scope(node, principal, DELETE_SCOPE)
        current = node.store.get_live(key)
        if current is not None:
            require_bit(node, principal, current, DELETE)


def new_key_owner(node: NodeView, principal: Principal) -> tuple[str, str]:
    return (principal.user, principal.primary_group) if node.auth.enabled else ("", "")


def client_of_scope(scope: dict) -> str:  # type: ignore[type-arg]
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def require_writable(node: NodeView) -> None:
    """Writes are refused (503) on a read-only node, on one still bootstrapping, and on a
    stale one (cut off longer than tombstone_ttl: it no longer replicates)."""
    mode = node.mode
    if mode == "read-only":
        raise ApiError(
            503, "this node is read-only (read_only: true); writes are refused", mode=mode
        )
    if mode == "syncing":
        raise ApiError(
            503,
            "this node is syncing its data from the cluster; writes are refused until it finishes",
            mode=mode,
        )
    if mode == "stale":
        raise ApiError(
            503,
            "this node was cut off from the cluster for longer than tombstone_ttl and must be "
            "re-bootstrapped; writes are refused",
            mode=mode,
        )


def require_auth_on(node: NodeView) -> None:
    """The users, groups and tokens endpoints exist only with authentication on."""
    if not node.auth.enabled:
        raise ApiError(404, "authentication is disabled on this node (auth_enabled: false)")


async def audit(
    node: NodeView, principal: Principal, action: str, target: str, detail: str = ""
) -> None:
    """Append to the tamper-evident log, when it is on, in the caller's name."""
    if node.audit is not None:
        await node.audit_event(action, principal.user, target, detail)
