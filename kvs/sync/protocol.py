"""The sync protocol's requests and replies, and the checks every peer message must pass.

Requests travel as msgpack maps over an authenticated `FrameStream` (purpose "sync"):

    {"op": "root"}                               -> {"root": bytes16, "size": int, "syncing": bool}
    {"op": "children", "nodes": [[level, i]...]} -> {"hashes": [[bytes16 * 16], ...]}
    {"op": "leaves", "leaves": [leaf, ...]}      -> {"entries": [summary, ...], "count": n}
    {"op": "fetch", "keys": [key, ...]}          -> {"records": [encoded record, ...], "count": n}
    {"op": "take", "leaves": [leaf, ...]}        -> {"records": [encoded record, ...], "count": n}
    {"op": "push", "records": [encoded, ...], "durable": bool}  -> {"applied": int}
    {"op": "snapshot", "format": {...}}          -> a stream of frames (kvs/sync/snapshot.py)
    {"op": "audit", ...}                         -> audit chain heads (kvs/sync/witness.py)
    {"op": "done"}                               -> {}: the exchange reconciled (or found the
                                                    roots equal); the server is in step too

A push is answered once its records are committed, or with "durable": false (the push
link, where anti-entropy is the safety net) once they are validated and queued for the
next group commit, so the next batch need not wait for the receiver's fsync.

"take" answers with every record of the first `count` leaves, whole leaves only: what a node
that holds nothing of a leaf needs (a bootstrap), without listing it first. `count` is 0 when
the first leaf alone does not fit one frame; the client then lists that leaf instead.
A node that is "stale" (see kvs/sync/health.py) refuses "leaves", "take" and "fetch".

A summary is `[key, hlc, origin_joined, origin, uuid, deleted, expires_at]`. A reply must fit
one frame, so "leaves" and "fetch" answer for the first `count` (>= 1) leaves or keys asked
for, and the client asks again for the rest. Anything that does not have exactly this shape
raises `ProtocolError`, and the connection is dropped.

Bounds: every integer is within 0..MAX_INT (HLCs, timestamps, counts; the store packs them as
unsigned 64-bit integers, and the HLC adds to them), every key passes `validate_key`, and the
other strings of a record or summary (origin, uuid, owner, group) are at most MAX_ID_LEN
characters: what a peer lists, we may ask for again in one frame. Records whose HLC is too
far in the future are refused by `Intake`, which knows the time (see SyncSettings).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from kvs.model import MAX_KEY_BYTES, InvalidKey, Record, RecordCodec, Version, validate_key
from kvs.store import Summary
from kvs.store.layout import summary_fields

MAX_NODES_PER_REQUEST = 4096
MAX_LEAVES_PER_REQUEST = 1024
MAX_KEYS_PER_REQUEST = 2000
MAX_RECORDS_PER_PUSH = 2000
MAX_RECORDS_PER_REPLY = 1 << 20  # "take" and "fetch" replies (their frame bounds them anyway)
_U63 = (1 << 63) - 1
MAX_INT = _U63  # every integer in a record or summary (HLCs, timestamps) is within 0..MAX_INT
MAX_ID_LEN = 256  # origin (a node id, <= 64), uuid (36), owner and group (uuids), in characters


class ProtocolError(Exception):
    """A peer sent something that is not this protocol; `reason` is a counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bounded_int(value: Any, lo: int = 0, hi: int = _U63) -> int:
    """`value` if it is an int (not a bool) within lo..hi, else ProtocolError("shape")."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError("shape")
    return value


def bounded_list(value: Any, limit: int) -> list[Any]:
    """`value` if it is a list of at most `limit` items, else ProtocolError("shape")."""
    if not isinstance(value, list) or len(value) > limit:
        raise ProtocolError("shape")
    return value


def request_op(request: Any) -> str:
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise ProtocolError("shape")
    return request["op"]


def parse_nodes(request: dict[str, Any], depth: int) -> list[tuple[int, int]]:
    nodes = []
    for item in bounded_list(request.get("nodes"), MAX_NODES_PER_REQUEST):
        pair = bounded_list(item, 2)
        if len(pair) != 2:
            raise ProtocolError("shape")
        level = bounded_int(pair[0], 0, depth - 1)
        nodes.append((level, bounded_int(pair[1], 0, 16**level - 1)))
    return nodes


def parse_leaves(request: dict[str, Any], leaves: int) -> list[int]:
    return [
        bounded_int(x, 0, leaves - 1)
        for x in bounded_list(request.get("leaves"), MAX_LEAVES_PER_REQUEST)
    ]


def parse_keys(request: dict[str, Any]) -> list[str]:
    keys = bounded_list(request.get("keys"), MAX_KEYS_PER_REQUEST)
    if not all(isinstance(k, str) and 0 < len(k) <= MAX_KEY_BYTES for k in keys):
        raise ProtocolError("shape")
    return keys


def _key(value: Any) -> str:
    try:
        return validate_key(value, allow_reserved=True)  # not a str: TypeError or AttributeError
    except (InvalidKey, TypeError, AttributeError):
        raise ProtocolError("shape") from None


def _id(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_ID_LEN:
        raise ProtocolError("shape")
    return value


def parse_records(value: Any, limit: int = MAX_RECORDS_PER_PUSH) -> list[bytes]:
    records = bounded_list(value, limit)
    if not all(isinstance(r, bytes) for r in records):
        raise ProtocolError("shape")
    return records


def encode_hash(value: int) -> bytes:
    return value.to_bytes(16, "big")


def decode_hashes(reply: Any, count: int) -> list[list[int]]:
    groups = bounded_list(reply.get("hashes") if isinstance(reply, dict) else None, count)
    if len(groups) != count:
        raise ProtocolError("shape")
    out = []
    for group in groups:
        hashes = bounded_list(group, 16)
        if len(hashes) != 16 or not all(isinstance(h, bytes) and len(h) == 16 for h in hashes):
            raise ProtocolError("shape")
        out.append([int.from_bytes(h, "big") for h in hashes])
    return out


def decode_count(reply: Any, requested: int, *, at_least: int = 1) -> int:
    """How many of the `requested` leaves or keys a reply covers: at least one (unless the
    caller allows 0), so that a client asking again for the rest always makes progress."""
    count = reply.get("count") if isinstance(reply, dict) else None
    return bounded_int(count, min(at_least, requested), requested)


encode_summary = summary_fields  # on the wire as in the bucket index (kvs/store/layout.py)


def decode_summaries(reply: Any, limit: int) -> list[Summary]:
    entries = bounded_list(reply.get("entries") if isinstance(reply, dict) else None, limit)
    out = []
    for entry in entries:
        fields = bounded_list(entry, 7)
        if len(fields) != 7:
            raise ProtocolError("shape")
        key, hlc, joined, origin, uid, deleted, expires_at = fields
        if not isinstance(deleted, bool):
            raise ProtocolError("shape")
        version = Version(bounded_int(hlc), bounded_int(joined), _id(origin), _id(uid))
        expires = None if expires_at is None else bounded_int(expires_at)
        out.append(Summary(_key(key), version, deleted, expires))
    return out


def check_record(codec: RecordCodec, raw: bytes, max_value_size: int) -> Record:
    """Decode a record from a peer (pushed, fetched, or in a snapshot), or raise
    ProtocolError("bad_record"): it must be one we could have stored ourselves."""
    try:
        record = codec.decode(raw, max_value_size=max_value_size)
        validate_key(record.key, allow_reserved=True)
        if record.value is not None:
            try:  # orjson is ~5x faster; what it refuses (huge integers, deep nesting)
                orjson.loads(record.value)  # the stdlib, which the API uses, decides
            except orjson.JSONDecodeError:
                json.loads(record.value)
    except (ValueError, InvalidKey, RecursionError):
        raise ProtocolError("bad_record") from None
    # The indexes and the Merkle tree pack these as unsigned 64-bit integers, and peers'
    # summaries must pass `decode_summaries`: out of range, the store write or the tree
    # update would fail (crashing this connection's node, or leaving the tree wrong).
    v = record.version
    numbers = (v.hlc, v.origin_joined, record.created_at, record.permissions)
    if not (
        # Not a bool (the codec takes one for an int): stored as the peer sent it, it would
        # go out in our summaries, which every peer refuses, and fail each exchange of its leaf.
        all(type(n) is int for n in numbers)
        and (record.expires_at is None or type(record.expires_at) is int)
        and 0 <= v.hlc <= MAX_INT
        and 0 <= v.origin_joined <= MAX_INT
        and 0 <= record.created_at <= MAX_INT
        and 0 <= (record.expires_at or 0) <= MAX_INT
        and 0 <= record.permissions <= 0xFFF
        and max(len(v.origin), len(v.uuid), len(record.owner), len(record.group)) <= MAX_ID_LEN
    ):
        raise ProtocolError("bad_record")
    return record
