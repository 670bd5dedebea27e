"""`POST /kv/_batch`: up to 1,000 puts and deletes applied in one transaction, all or none.

The body is read op by op (kvs/api/bodies.py); every op is checked (shape, key, size, TTL,
then scope and permission bits) before anything is written, and one bad op refuses the whole
batch with its index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import orjson
from quart import Response, g

from kvs.api import guard
from kvs.api.bodies import iter_batch_ops
from kvs.api.errors import ApiError, raw_json_response
from kvs.api.requests import parse_ttl, read_body
from kvs.auth.permissions import DELETE_SCOPE, WRITE_SCOPE, Principal
from kvs.model import InvalidKey, Record, canonical_json, json_number_shapes, validate_key
from kvs.store import Delete, Put, Written

if TYPE_CHECKING:
    from kvs.api.view import NodeView
    from kvs.config import Config

MAX_BATCH_OPS = 1000
MIN_BATCH_BODY = 32 * 1024 * 1024
_PUT_FIELDS = frozenset({"op", "key", "data", "ttl", "expires_at"})
_DELETE_FIELDS = frozenset({"op", "key"})


def max_op_chars(config: Config) -> int:
    """The longest JSON text one batch op may have: its value pretty-printed with room to
    spare, plus its key (1,024 UTF-8 bytes, up to 6 characters each when escaped) and fields."""
    return 2 * config.max_json_size + 16 * 1024


def batch_body_limit(config: Config) -> int:
    """The largest body any endpoint accepts (a `_batch`); also the app-wide Quart limit."""
    return max(config.max_json_size, MIN_BATCH_BODY)


async def batch(node: NodeView) -> Response:
    guard.require_writable(node)
    principal = g.principal
    if not {WRITE_SCOPE, DELETE_SCOPE} & principal.scopes:
        guard.require_scope(node, principal, WRITE_SCOPE)  # 401/403 before reading the body
    config = node.config
    body = await read_body(batch_body_limit(config))
    # One scan of the body's text says whether any value may hold a float: most bulk
    # writes hold none, and then no value's JSON is scanned again (see canonical_json).
    shapes = json_number_shapes(body)
    ops = iter_batch_ops(body, MAX_BATCH_OPS, max_op_chars(config), shapes=shapes)
    del body  # held by the iterator alone, which lets it go once it has the text
    now, may_hold_floats = node.clock.wall_ms(), shapes[0]
    owner = guard.new_key_owner(node, principal)  # of the keys this batch creates
    store_ops = [
        _store_op(config, index, op, now, may_hold_floats, owner) async for index, op in ops
    ]
    if node.auth.enabled:
        view = cast("NodeView", _LiveOnce(node, [op.key for op in store_ops]))
        for index, op in enumerate(store_ops):
            _authorize(view, index, op, principal)
    outcomes = await node.client_write(store_ops, principal.user, "batch") if store_ops else []
    results: list[dict[str, Any]] = []
    for op, outcome in zip(store_ops, outcomes, strict=True):
        if isinstance(op, Delete):
            results.append({"key": op.key, "deleted": isinstance(outcome, Written)})
        else:
            assert isinstance(outcome, Written)
            v = outcome.record.version
            results.append({"key": op.key, "uuid": v.uuid, "timestamp": v.timestamp})
    # Strings, integers and booleans only, which orjson writes byte for byte as json_response
    # does; json_response's float check trips on most UUIDs (`4e`), so skip it.
    return raw_json_response(orjson.dumps({"results": results}))


class _LiveOnce:
    """The node as guard's checks see it during one batch, each key's live record read once:
    the batch's own keys in one read transaction, their ancestors when first asked for. The
    keys of a batch share ancestors: 1,000 new keys under `a/b/` had `a/b` and `a` read 1,000
    times each (measured: a third of a key's cost with a token). The rule is guard's own,
    and what it sees is no less current: every check of one key sees the same version of
    it, and a write committing meanwhile (in the writer's thread) may be seen by some reads
    and not others, as before."""

    def __init__(self, node: NodeView, keys: list[str]) -> None:
        self.auth, self.clock, self._store = node.auth, node.clock, node.store
        self.store = self  # guard reads `node.store.get_live`
        now = node.clock.wall_ms()
        self._live: dict[str, Record | None] = dict.fromkeys(keys)
        for record in node.store.get_many(keys):
            self._live[record.key] = record if record.live(now) else None

    def get_live(self, key: str) -> Record | None:
        try:
            return self._live[key]
        except KeyError:
            record = self._live[key] = self._store.get_live(key)
            return record


def _authorize(node: NodeView, index: int, op: Put | Delete, principal: Principal) -> None:
    """Scope and permission bits for one batch op (a 401/403 naming its index)."""
    try:
        if isinstance(op, Delete):
            guard.require_may_delete(node, principal, op.key)
        else:
            guard.require_scope(node, principal, WRITE_SCOPE)
            guard.require_may_put(node, principal, op.key)
    except ApiError as exc:
        raise ApiError(exc.status, f"op {index}: {exc.message}", exc.headers, index=index) from None


def _store_op(
    config: Config,
    index: int,
    op: Any,
    now: int,
    may_hold_floats: bool = True,
    owner: tuple[str, str] = ("", ""),
) -> Put | Delete:
    """One op of the body as a store op, or a 400/413 naming its index. `may_hold_floats`
    False: the body holds no float, so neither does this op's value. A key a put creates
    gets `owner` (user, group)."""
    if not isinstance(op, dict):
        raise ApiError(400, f"op {index}: must be an object", index=index)
    kind = op.get("op")
    key = op.get("key")
    if not isinstance(key, str):
        raise ApiError(400, f"op {index}: key must be a string", index=index)
    try:
        validate_key(key)
    except InvalidKey as exc:
        raise ApiError(400, f"op {index}: invalid key: {exc}", index=index, key=key) from None
    allowed = _PUT_FIELDS if kind == "put" else _DELETE_FIELDS
    if not op.keys() <= allowed:
        unknown = set(op) - allowed
        raise ApiError(
            400, f"op {index}: unknown field(s) {', '.join(sorted(unknown))}", index=index
        )
    if kind == "delete":
        return Delete(key, must_exist=False)
    if kind != "put":
        raise ApiError(400, f"op {index}: op must be 'put' or 'delete', got {kind!r}", index=index)
    if "data" not in op:
        raise ApiError(400, f"op {index}: put needs a data field", index=index)
    value = canonical_json(op["data"], may_hold_floats=may_hold_floats)
    if len(value) > config.max_json_size:
        raise ApiError(
            413,
            f"op {index}: data is {len(value)} bytes; the limit is {config.max_json_size}",
            index=index,
        )
    expires_at = op.get("expires_at")  # absolute ms, as `kvs dump` writes it (`kvs load`)
    if expires_at is not None:
        if "ttl" in op or isinstance(expires_at, bool) or not isinstance(expires_at, int):
            raise ApiError(
                400, f"op {index}: expires_at must be an integer (ms), without ttl", index=index
            )
        if not now < expires_at < 2**47:
            raise ApiError(400, f"op {index}: expires_at must be in the future", index=index)
        return Put(key, value, expires_at, None, *owner)
    ttl = op.get("ttl")
    if ttl is None:  # most ops: spare parse_ttl's call
        return Put(key, value, None, None, *owner)
    try:
        ttl = parse_ttl(ttl)
    except ApiError as exc:
        raise ApiError(400, f"op {index}: {exc.message}", index=index) from None
    return Put(key, value, now + int(ttl * 1000) if ttl else None, None, *owner)
