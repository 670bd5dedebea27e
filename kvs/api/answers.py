"""How a record looks in an answer: a value (the Go KVS StoredValue shape), a version in a
history, a key's metadata."""

from __future__ import annotations

from typing import Any

from kvs.model import Record


def stored_value_json(record: Record) -> bytes:
    """The Go KVS StoredValue shape, spliced around the stored JSON bytes without re-parsing."""
    v = record.version
    assert record.value is not None
    return b'{"uuid":"%s","timestamp":%d,"data":%s}' % (v.uuid.encode(), v.timestamp, record.value)


def version_json(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"uuid": record.version.uuid, "timestamp": record.version.timestamp}
    if record.deleted:
        out["deleted"] = True
    else:
        out["data"] = record.data()
    return out


def metadata_json(record: Record, now_ms: int) -> dict[str, Any]:
    ttl = None
    if record.expires_at is not None:
        ttl = max(0.0, (record.expires_at - now_ms) / 1000)
    return {
        "owner_uuid": record.owner,
        "group_uuid": record.group,
        "permissions": record.permissions,
        "ttl": ttl,
        "created_at": record.created_at,
        "updated_at": record.version.timestamp,
    }
