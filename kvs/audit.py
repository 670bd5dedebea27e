"""The tamper-evident log: every accepted change and failed authentication, hash-chained.

Entry n stores its fields and `hash_n = SHA3-512(hash_{n-1} || msgpack(fields_n))` (hash_0
is 64 zero bytes). Changing, removing or reordering any entry breaks every hash after it, so
`verify` names the first entry that does not match. The log is local to each node (its own
LMDB environment, `<data_dir>/audit`): every node records what it accepted and which logins
failed there; it is not replicated. It proves the log was not edited after the fact, not
that a node with root on its machine could not rewrite the whole chain (for that, ship the
latest hash elsewhere, e.g. with `GET /api/audit/verify`, and compare later).

Appends are batched by one writer task: a caller awaits its entry's durable commit.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import trio

log = logging.getLogger(__name__)

GENESIS = b"\x00" * 64
_SEQ = struct.Struct(">Q")
AUDIT_DIR = "audit"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    ts: int  # ms since the epoch
    node: str
    action: str  # put, delete, metadata, user.create, token.revoke, auth.failed, ...
    user: str  # the acting user's uuid, "" for anonymous
    target: str  # key, user/group/token id, or client address
    detail: str
    hash: bytes

    def fields(self) -> list[Any]:
        return [self.seq, self.ts, self.node, self.action, self.user, self.target, self.detail]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "timestamp": self.ts,
            "node": self.node,
            "action": self.action,
            "user": self.user,
            "target": self.target,
            "detail": self.detail,
            "hash": self.hash.hex(),
        }


def chain_hash(previous: bytes, fields: list[Any]) -> bytes:
    return hashlib.sha3_512(previous + msgpack.packb(fields, use_bin_type=True)).digest()


def _decode(raw: bytes) -> Entry:
    seq, ts, node, action, user, target, detail, digest = msgpack.unpackb(raw, raw=False)
    return Entry(seq, ts, node, action, user, target, detail, digest)


def _encode(entry: Entry) -> bytes:
    return msgpack.packb([*entry.fields(), entry.hash], use_bin_type=True)


@dataclass
class _Pending:
    fields: tuple[int, str, str, str, str, str]
    done: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""
    last_hash: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "entries": self.entries, "last_hash": self.last_hash}
        if not self.ok:
            out["first_bad_seq"] = self.first_bad
            out["reason"] = self.reason
        return out


class AuditLog:
    def __init__(
        self, path: Path, *, node_id: str, sync: bool = True, in_thread: bool = True
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=1 << 30, max_dbs=1, sync=sync, metasync=sync)
        self.node_id = node_id
        self._in_thread = in_thread
        self._send, self._receive = trio.open_memory_channel[_Pending](65_536)
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.last():
                last = _decode(cursor.value())
                self._seq, self._hash = last.seq, last.hash
            else:
                self._seq, self._hash = 0, GENESIS

    def close(self) -> None:
        self.env.close()

    async def append(self, ts: int, action: str, user: str, target: str, detail: str = "") -> None:
        """Append one entry; returns once it is durable."""
        pending = _Pending((ts, self.node_id, action, user, target, detail))
        await self._send.send(pending)
        await pending.done.wait()

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            batch = [await self._receive.receive()]
            while len(batch) < 10_000:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                if self._in_thread:
                    await trio.to_thread.run_sync(self._write, batch)
                else:
                    self._write(batch)
            except lmdb.Error as exc:
                log.error("audit log write failed: %s", exc)
            for item in batch:
                item.done.set()

    def _write(self, batch: list[_Pending]) -> None:
        seq, digest = self._seq, self._hash
        entries = []
        for item in batch:
            seq += 1
            fields = [seq, *item.fields]
            digest = chain_hash(digest, fields)
            entries.append(Entry(seq, *item.fields, digest))
        with self.env.begin(write=True) as txn:
            for entry in entries:
                txn.put(_SEQ.pack(entry.seq), _encode(entry))
        self._seq, self._hash = seq, digest

    def read(self, since: int, limit: int) -> list[Entry]:
        return read_entries(self.env, since, limit)

    def verify(self) -> Verification:
        return verify_env(self.env)


def read_entries(env: lmdb.Environment, since: int, limit: int) -> list[Entry]:
    """Entries with seq > since, oldest first."""
    out: list[Entry] = []
    with env.begin() as txn:
        cursor = txn.cursor()
        ok = cursor.set_range(_SEQ.pack(since + 1))
        while ok and len(out) < limit:
            out.append(_decode(cursor.value()))
            ok = cursor.next()
    return out


def verify_env(
    env: lmdb.Environment, chunk: int = 4096, progress: Callable[[int], None] | None = None
) -> Verification:
    """Walk the whole chain; name the first entry whose hash, number or encoding is wrong."""
    previous, expected_seq, count = GENESIS, 1, 0
    position = b""
    while True:
        rows: list[tuple[bytes, bytes]] = []
        with env.begin() as txn:
            cursor = txn.cursor()
            ok = cursor.set_range(position)
            if ok and position and cursor.key() == position:
                ok = cursor.next()
            while ok and len(rows) < chunk:
                rows.append((bytes(cursor.key()), bytes(cursor.value())))
                ok = cursor.next()
        for key, raw in rows:
            try:
                entry = _decode(raw)
            except (ValueError, TypeError):
                return Verification(
                    False, count, expected_seq, "entry does not decode", previous.hex()
                )
            if entry.seq != expected_seq or key != _SEQ.pack(entry.seq):
                return Verification(
                    False,
                    count,
                    expected_seq,
                    f"entry {expected_seq} is missing or out of order",
                    previous.hex(),
                )
            if chain_hash(previous, entry.fields()) != entry.hash:
                return Verification(
                    False,
                    count,
                    entry.seq,
                    "hash does not match the entry and its predecessor",
                    previous.hex(),
                )
            previous, expected_seq, count = entry.hash, expected_seq + 1, count + 1
        if progress is not None:
            progress(count)
        if len(rows) < chunk:
            return Verification(True, count, last_hash=previous.hex())
        position = rows[-1][0]


def verify_dir(data_dir: Path) -> Verification:
    """Verify the log of a (running or stopped) node's data dir, read-only."""
    path = data_dir / AUDIT_DIR
    if not (path / "data.mdb").exists():
        raise FileNotFoundError(f"no audit log in {path}")
    env = lmdb.open(str(path), readonly=True, max_dbs=1)
    try:
        return verify_env(env)
    finally:
        env.close()
