"""The node's authentication service: who is calling, what they may do, how often.

The hot path (every key request) is: hash the bearer token, look it up in a small cache of
verified principals, check a scope and the key's permission bits. A cache miss verifies the
JWT (HS256) and reads the token, user and group records. Any change to a system record
(a revocation, a user or group change, local or replicated) clears the cache, so a revoked
token is refused as soon as the revocation reaches a node.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvs.auth import tokens
from kvs.auth.directory import GROUPS, TOKENS, USERS, Directory
from kvs.auth.permissions import (
    ALL_SCOPES,
    READ_SCOPE,
    WRITE_SCOPE,
    Principal,
    allows,
)
from kvs.auth.ratelimit import RateLimiter, retry_after_header
from kvs.model import SYSTEM_PREFIX

if TYPE_CHECKING:
    from kvs.config import Config
    from kvs.store import Change, Store

log = logging.getLogger(__name__)

CACHE_TTL_S = 30.0  # a cached principal is re-read at least this often (besides invalidation)
CACHE_MAX = 50_000
DEFAULT_TOKEN_LIFETIME_S = 3600
MAX_TOKEN_LIFETIME_S = 365 * 86400
FAILED_AUTH_WINDOW_S = 60.0
FAILED_AUTH_PER_CLIENT = 30
"""Failed authentications one client address may make per FAILED_AUTH_WINDOW_S; beyond it
a bad token is answered 429 and not audited. Applies whether or not rate limiting is on:
without it, bad tokens grew the audit log (and its disk) at request speed."""
FAILED_AUTH_PER_NODE = 300
"""The same bound for all clients together (many addresses are cheap to come by): at most
this many failed logins are audited per FAILED_AUTH_WINDOW_S (5/s, a few hundred bytes
each); a valid token is never refused by it."""


class AuthError(Exception):
    """A refused request: 401 (who are you?), 403 (not allowed), 429 (too many)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def unauthorized(message: str) -> AuthError:
    return AuthError(401, message, {"WWW-Authenticate": 'Bearer realm="kvs"'})


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    token_id: str
    expires_at: int  # seconds since the epoch


AuditHook = Callable[[str, str, str, str], Awaitable[None]]  # action, user, target, detail


class AuthService:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        wall_ms: Callable[[], int],
        monotonic: Callable[[], float],
        new_uuid: Callable[[], str],
        nonce: Callable[[], bytes],
    ) -> None:
        self.config = config
        self.enabled = config.auth_enabled
        self.store = store
        self.directory = Directory(store)
        self.wall_ms = wall_ms
        self.new_uuid = new_uuid
        self.nonce = nonce
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._keys: tuple[bytes, ...] = ()
        self.set_secrets(config.cluster_secrets)
        anon_scopes = set()
        if config.allow_anonymous_read:
            anon_scopes.add(READ_SCOPE)
        if config.allow_anonymous_write:
            anon_scopes.add(WRITE_SCOPE)
        self.anonymous = Principal("", frozenset(), "", frozenset(anon_scopes), "", float("inf"))
        self.limiter = (
            RateLimiter(config.rate_limit_requests, config.rate_limit_window, monotonic)
            if config.rate_limiting_enabled
            else None
        )
        # Checked only when authentication fails, so they never slow or refuse a valid token.
        self.failures_per_client = RateLimiter(
            FAILED_AUTH_PER_CLIENT, FAILED_AUTH_WINDOW_S, monotonic
        )
        self.failures_per_node = RateLimiter(FAILED_AUTH_PER_NODE, FAILED_AUTH_WINDOW_S, monotonic)
        self.audit_hook: AuditHook | None = None
        self.counters = {
            "auth_failed": 0,
            "auth_failed_limited": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "rate_limited": 0,
            "admin_recoveries": 0,
            "admin_recover_refused": 0,
        }
        store.listeners.append(self._on_changes)
        # A bootstrap by snapshot brings users, groups and tokens without a Change each.
        store.replaced_listeners.append(self._cache.clear)

    def set_secrets(self, secrets: tuple[str, ...]) -> None:
        """The keyring (reloadable): tokens are signed with the first secret's key and
        accepted under any of them, so a rotation does not log anybody out until the old
        secret is removed."""
        self._keys = tuple(tokens.signing_key(s) for s in secrets) or (
            tokens.signing_key(self._node_local_secret()),
        )
        self._cache.clear()

    def _node_local_secret(self) -> str:
        """Without a cluster secret, tokens are signed with a random key kept in this node's
        system data: they work, but only on this node."""
        secret = self.store.get_system("jwt_local_secret")
        if secret is None:
            secret = self.nonce().hex() + self.nonce().hex()
            self.store.set_system_now("jwt_local_secret", secret)
        if self.enabled:
            log.warning(
                "no cluster_secret: tokens are signed with a key local to this node and "
                "will not be accepted by other nodes"
            )
        return str(secret)

    # --- who is calling ------------------------------------------------------------------------

    def _on_changes(self, changes: list[Change]) -> None:
        """Forget cached principals a system change may affect (local or replicated): a
        token's own record (revoked), its user's record, or any group (membership)."""
        if not self._cache:
            return
        tokens_hit: set[str] = set()
        users_hit: set[str] = set()
        for change in changes:
            key = (change.new or change.old).key  # type: ignore[union-attr]
            if not key.startswith(SYSTEM_PREFIX):
                continue
            if key.startswith(GROUPS):
                self._cache.clear()
                return
            if key.startswith(TOKENS):
                tokens_hit.add(key[len(TOKENS) :])
            else:
                users_hit.add(key[len(USERS) :])
        if tokens_hit or users_hit:
            stale = [
                digest
                for digest, (p, _) in self._cache.items()
                if p.token_id in tokens_hit or p.user in users_hit
            ]
            for digest in stale:
                del self._cache[digest]

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by an `Authorization` header value (None: no header: anonymous).
        Raises AuthError(401) for a header that is present but not a valid, live token."""
        if authorization is None:
            return self.anonymous
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("malformed Authorization header: use 'Bearer <token>'")
        digest = tokens.token_hash(token)
        now_s = self.wall_ms() / 1000
        cached = self._cache.get(digest)
        if cached is not None and now_s < cached[1]:
            self.counters["cache_hits"] += 1
            return cached[0]
        self.counters["cache_misses"] += 1
        principal = self._verify(token, digest, now_s)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (principal, min(principal.expires_at, now_s + CACHE_TTL_S))
        return principal

    def _verify_signed(self, token: str, now_s: float) -> tokens.Claims:
        """The claims of a token signed under any key of the keyring (first key first)."""
        first: tokens.TokenError | None = None
        for key in self._keys:
            try:
                return tokens.verify(key, token, now_s)
            except tokens.TokenError as exc:
                if str(exc) != "token signature is invalid":
                    raise  # signed with this key (or none), refused for another reason
                first = first or exc
        assert first is not None
        raise first

    def _verify(self, token: str, digest: str, now_s: float) -> Principal:
        try:
            claims = self._verify_signed(token, now_s)
        except tokens.TokenError as exc:
            raise unauthorized(str(exc)) from None
        record = self.directory.get("tokens", claims.token_id)
        if record is None or not hmac.compare_digest(record.get("token_hash", ""), digest):
            raise unauthorized("token has been revoked or is unknown")
        if record.get("user_uuid") != claims.user:
            raise unauthorized("token has been revoked or is unknown")
        user = self.directory.get("users", claims.user)
        if user is None:
            raise unauthorized("the token's user no longer exists")
        groups = self.directory.groups_of(user)
        return Principal(
            user=claims.user,
            groups=frozenset(groups),
            primary_group=groups[0] if groups else "",
            scopes=frozenset(record.get("scopes", [])),
            token_id=claims.token_id,
            expires_at=float(claims.expires_at),
        )

    async def failed(self, client: str, message: str) -> None:
        """Count a failed authentication, then audit it (never with the token in it) -- or,
        past the failure budget of this client or of the whole node, raise AuthError(429)
        having written nothing: the audit log grows at most FAILED_AUTH_PER_NODE entries
        per window, whatever the clients send. Nothing is written to the node's log."""
        self.counters["auth_failed"] += 1
        wait = self.failures_per_client.check("ip:" + client)
        if wait is None:
            wait = self.failures_per_node.check("")
        if wait is not None:
            self.counters["auth_failed_limited"] += 1
            raise AuthError(
                429,
                "too many failed authentications; try again later",
                {"Retry-After": retry_after_header(wait)},
            )
        if self.audit_hook is not None:
            await self.audit_hook("auth.failed", "", client, message)

    def rate_limit(self, principal: Principal, client: str) -> None:
        if self.limiter is None:
            return
        wait = self.limiter.check(principal.user or "ip:" + client)
        if wait is not None:
            self.counters["rate_limited"] += 1
            raise AuthError(
                429,
                f"rate limit exceeded: at most {self.limiter.limit} requests per "
                f"{self.limiter.window:g} s",
                {"Retry-After": retry_after_header(wait)},
            )

    # --- what they may do ------------------------------------------------------------------------

    def require_scope(self, principal: Principal, scope: str) -> None:
        if scope in principal.scopes:
            return
        if principal.anonymous:
            raise unauthorized("authentication required: send 'Authorization: Bearer <token>'")
        raise AuthError(403, f"token lacks the {scope!r} scope")

    def require_bit(
        self, principal: Principal, owner: str, group: str, permissions: int, bit: int, what: str
    ) -> None:
        if not allows(principal, owner, group, permissions, bit):
            raise self.denied(principal, what)

    def denied(self, principal: Principal, what: str) -> AuthError:
        """The refusal of `what` ("read key 'a'"): 401 for anonymous callers (a token might
        help), else 403."""
        if principal.anonymous:
            return unauthorized(f"authentication required to {what}")
        return AuthError(403, f"permission denied: you may not {what}")

    # --- tokens and the root account --------------------------------------------------------

    async def issue_token(self, user_uuid: str, scopes: list[str], lifetime_s: int) -> IssuedToken:
        token_id = self.nonce().hex()
        now_s = self.wall_ms() // 1000
        token = tokens.issue(
            self._keys[0], user=user_uuid, token_id=token_id, now_s=now_s, expires_in_s=lifetime_s
        )
        expires_at = now_s + lifetime_s
        body: dict[str, Any] = {
            "id": token_id,
            "user_uuid": user_uuid,
            "scopes": sorted(scopes),
            "token_hash": tokens.token_hash(token),
            "created_at": now_s * 1000,
            "expires_at": expires_at * 1000,
        }
        # The record expires with the token (plus the leeway), and is swept like any TTL key.
        await self.directory.put(
            "tokens", token_id, body, (expires_at + tokens.LEEWAY_S + 1) * 1000
        )
        return IssuedToken(token, token_id, expires_at)

    @property
    def root_token_lifetime_s(self) -> int:
        return int(self.config.root_token_lifetime)

    async def bootstrap_root(self) -> IssuedToken | None:
        """On the first start of a node with no users and no seeds: a root user, an `admin`
        group and an all-scopes token (`root_token_lifetime`). Never again (a system flag
        remembers it)."""
        if not self.enabled or self.config.seed_nodes:
            return None
        if self.store.get_system("auth_bootstrapped") or self.directory.list("users"):
            return None
        root = await self._ensure_root()
        issued = await self.issue_token(root, sorted(ALL_SCOPES), self.root_token_lifetime_s)
        await self.store.put_system("auth_bootstrapped", True)
        return issued

    async def recover_root(self) -> tuple[IssuedToken, str]:
        """Admin recovery (`kvs admin recover`): a fresh all-scopes token for the `root` user
        (re-created, with its `admin` group, if it was deleted); (the token, root's uuid)."""
        root = await self._ensure_root()
        issued = await self.issue_token(root, sorted(ALL_SCOPES), self.root_token_lifetime_s)
        return issued, root

    async def _ensure_root(self) -> str:
        """The uuid of the user `root` (the oldest, if several), created with an `admin`
        group holding it when there is none."""
        roots = sorted(
            (u for u in self.directory.list("users") if u.get("nickname") == "root"),
            key=lambda u: (u.get("created_at", 0), u.get("uuid", "")),
        )
        if roots:
            return str(roots[0]["uuid"])
        now = self.wall_ms()
        root, admin = self.new_uuid(), self.new_uuid()
        await self.directory.put(
            "groups",
            admin,
            {
                "uuid": admin,
                "groupname": "admin",
                "members": [root],
                "created_at": now,
                "updated_at": now,
            },
        )
        await self.directory.put(
            "users",
            root,
            {
                "uuid": root,
                "nickname": "root",
                "groups": [admin],
                "created_at": now,
                "updated_at": now,
            },
        )
        return root

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["cached_tokens"] = len(self._cache)
        return out
